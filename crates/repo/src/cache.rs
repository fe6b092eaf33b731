//! The host cache: one store of verified objects shared by every mount and VM on the host,
//! filled from repositories on first use. Each object is fetched at most once at a time
//! (concurrent first reads wait for the one download: single-flight), verified against its
//! id before it is kept, and evicted least-recently-used beyond a size quota, never while an
//! open file needs it (pinned).
//!
//! Objects live in pack files (`pack`): a warm read is one `pread`. The index (where each
//! object is, its size) is rebuilt from the packs on start, oldest first as the LRU order,
//! so a restart loses nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use serde::{Deserialize, Serialize};
use starling_store::ObjectId;

use crate::error::{invalid, Error, IoContext, Result};
use crate::pack::{Loc, Packs};
use crate::pull::{ClientOptions, Fetcher, Remote};

/// No chunk is larger than this (the chunker's maximum); a quota must hold at least one.
pub const MAX_CHUNK: u64 = 256 << 10;
pub struct HostCache {
    dir: PathBuf,
    packs: Packs,
    quota: u64,
    index: Mutex<Index>,
    inflight: Mutex<HashMap<ObjectId, Arc<Flight>>>,
    fetchers: Mutex<HashMap<String, Fetcher>>,
    opts: ClientOptions,
    rt: tokio::runtime::Handle,
    pub stats: CacheCounters,
}

#[derive(Default)]
struct Index {
    entries: HashMap<ObjectId, Slot>,
    bytes: u64,
    pins: HashMap<ObjectId, u32>,
    clock: u64,
}

struct Slot {
    size: u64,
    /// Last use, as a tick of `Index::clock`.
    used: u64,
    loc: Loc,
    /// Hashed since this process started (on arrival or first read back): later reads skip
    /// the hash. `verify` re-hashes everything.
    verified: bool,
}

#[derive(Default)]
struct Flight {
    done: Mutex<Option<std::result::Result<(), String>>>,
    cv: Condvar,
}

#[derive(Default, Debug)]
pub struct CacheCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub fetched_bytes: AtomicU64,
    pub evicted: AtomicU64,
    pub refused: AtomicU64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheStats {
    pub objects: usize,
    pub bytes: u64,
    pub quota: u64,
    pub pinned: usize,
    pub hits: u64,
    pub misses: u64,
    pub fetched_bytes: u64,
    pub evicted: u64,
    pub refused: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyReport {
    pub checked: usize,
    pub removed: Vec<String>,
}

/// Where a `get` found its object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Cache,
    Fetched,
}

impl HostCache {
    /// Opens (creating) the cache at `dir` (`packs/`, and `remotes/` for the repositories'
    /// trust state) with a quota in bytes.
    pub fn open(
        dir: &Path,
        quota: u64,
        opts: ClientOptions,
        rt: tokio::runtime::Handle,
    ) -> Result<HostCache> {
        if quota < MAX_CHUNK {
            return Err(invalid(
                format!("cache quota {quota} bytes"),
                format!("is smaller than one chunk ({MAX_CHUNK} bytes)"),
            ));
        }
        std::fs::create_dir_all(dir).at(dir)?;
        let (packs, found) = Packs::open(&dir.join("packs"))?;
        let mut index = Index::default();
        for (id, loc) in found {
            index.clock += 1;
            let size = u64::from(loc.len);
            let old = index.entries.insert(
                id,
                Slot {
                    size,
                    used: index.clock,
                    loc,
                    verified: false,
                },
            );
            index.bytes += size;
            if let Some(o) = old {
                // Stored twice (a race between two daemons is impossible, but a crash
                // between put and index is not): keep the newer copy.
                index.bytes -= o.size;
                let _ = packs.remove(&o.loc);
            }
        }
        Ok(HostCache {
            dir: dir.to_path_buf(),
            packs,
            quota,
            index: Mutex::new(index),
            inflight: Mutex::new(HashMap::new()),
            fetchers: Mutex::new(HashMap::new()),
            opts,
            rt,
            stats: CacheCounters::default(),
        })
    }

    /// The cache directory (repositories' trust state lives under `remotes/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn contains(&self, id: &ObjectId) -> bool {
        self.index().entries.contains_key(id)
    }

    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.rt
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The object's verified bytes, from the cache or fetched from `remote` (once, however
    /// many callers ask at the same time). Call from a thread that is not a runtime worker.
    pub fn get(&self, remote: &Remote, id: &ObjectId, max_len: u64) -> Result<(Vec<u8>, Origin)> {
        loop {
            if let Some(b) = self.read_cached(id) {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                return Ok((b, Origin::Cache));
            }
            let (flight, leader) = {
                let mut g = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
                match g.get(id) {
                    Some(f) => (f.clone(), false),
                    // A download that finished between the cache check above and this lock
                    // (leaders index the object before they leave the in-flight table).
                    None if self.index().entries.contains_key(id) => continue,
                    None => {
                        let f = Arc::new(Flight::default());
                        g.insert(*id, f.clone());
                        (f, true)
                    }
                }
            };
            if !leader {
                let mut done = flight.done.lock().unwrap_or_else(|p| p.into_inner());
                while done.is_none() {
                    done = flight.cv.wait(done).unwrap_or_else(|p| p.into_inner());
                }
                if let Some(Err(e)) = done.as_ref() {
                    return Err(Error::Fetch {
                        url: remote.join(&crate::push::object_rel(id))?.to_string(),
                        reason: e.clone(),
                    });
                }
                // Fetched by the leader: read it from the cache (it may have been evicted
                // already under a tiny quota; then go round again).
                continue;
            }
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            let r = self.fetch(remote, id, max_len);
            {
                let mut done = flight.done.lock().unwrap_or_else(|p| p.into_inner());
                *done = Some(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                flight.cv.notify_all();
            }
            self.inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id);
            return r.map(|b| (b, Origin::Fetched));
        }
    }

    fn read_cached(&self, id: &ObjectId) -> Option<Vec<u8>> {
        let (loc, checked) = {
            let mut g = self.index();
            g.clock += 1;
            let now = g.clock;
            let s = g.entries.get_mut(id)?;
            s.used = now;
            (s.loc, s.verified)
        };
        let read = self
            .packs
            .get(&loc)
            .map_err(|e| e.to_string())
            .and_then(|env| {
                if checked {
                    starling_store::unwrap_envelope(id, &env)
                } else {
                    starling_store::decode_envelope(id, &env)
                }
                .map_err(|e| e.to_string())
            });
        match read {
            Ok(b) => {
                if !checked {
                    if let Some(s) = self.index().entries.get_mut(id) {
                        s.verified = true;
                    }
                }
                Some(b)
            }
            Err(e) => {
                // Damaged on disk: drop it and fetch again.
                eprintln!("starling cache: object {id} unreadable ({e}); refetching");
                self.drop_object(id);
                None
            }
        }
    }

    fn fetcher(&self, remote: &Remote) -> Result<Fetcher> {
        let mut g = self.fetchers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = g.get(remote.base.as_str()) {
            return Ok(f.clone());
        }
        let f = Fetcher::new(remote.clone(), &self.opts)?;
        g.insert(remote.base.to_string(), f.clone());
        Ok(f)
    }

    fn fetch(&self, remote: &Remote, id: &ObjectId, max_len: u64) -> Result<Vec<u8>> {
        let f = self.fetcher(remote)?;
        let (env, url) = self.rt.block_on(f.get(id, max_len))?;
        self.stats
            .fetched_bytes
            .fetch_add(env.len() as u64, Ordering::Relaxed);
        // Verified before it is kept: a damaged object is refused and never cached.
        let data = starling_store::decode_envelope(id, &env).map_err(|e| {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            Error::BadObject {
                id: id.to_hex(),
                url: url.clone(),
                reason: e.to_string(),
            }
        })?;
        let loc = self.packs.put(id, &env)?;
        let size = env.len() as u64;
        {
            let mut g = self.index();
            g.clock += 1;
            let used = g.clock;
            g.bytes += size;
            let slot = Slot {
                size,
                used,
                loc,
                verified: true,
            };
            if let Some(old) = g.entries.insert(*id, slot) {
                g.bytes -= old.size;
                let _ = self.packs.remove(&old.loc);
            }
        }
        self.evict(id);
        Ok(data)
    }

    /// Removes an object from the index and its bytes from the packs.
    fn drop_object(&self, id: &ObjectId) -> bool {
        let slot = {
            let mut g = self.index();
            let s = g.entries.remove(id);
            if let Some(s) = &s {
                g.bytes -= s.size;
            }
            s
        };
        match slot {
            Some(s) => self.packs.remove(&s.loc).is_ok(),
            None => false,
        }
    }

    /// Removes least recently used, unpinned objects until the cache fits its quota.
    /// `keep` (just fetched) stays.
    fn evict(&self, keep: &ObjectId) {
        self.evict_to(self.quota, Some(keep));
    }

    /// Removes least recently used objects, never pinned ones nor `keep`, until the cache
    /// holds at most `target` bytes (or nothing more can go).
    fn evict_to(&self, target: u64, keep: Option<&ObjectId>) {
        let victims: Vec<ObjectId> = {
            let g = self.index();
            if g.bytes <= target {
                return;
            }
            let mut cands: Vec<(&ObjectId, &Slot)> = g
                .entries
                .iter()
                .filter(|(id, _)| Some(*id) != keep && !g.pins.contains_key(*id))
                .collect();
            cands.sort_by_key(|(_, s)| s.used);
            let mut bytes = g.bytes;
            let mut v = Vec::new();
            for (id, s) in cands {
                if bytes <= target {
                    break;
                }
                v.push(*id);
                bytes -= s.size;
            }
            v
        };
        for id in victims {
            if self.drop_object(&id) {
                self.stats.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn pin(&self, ids: &[ObjectId]) {
        let mut g = self.index();
        for id in ids {
            *g.pins.entry(*id).or_insert(0) += 1;
        }
    }

    pub fn unpin(&self, ids: &[ObjectId]) {
        let mut g = self.index();
        for id in ids {
            if let Some(n) = g.pins.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    g.pins.remove(id);
                }
            }
        }
    }

    pub fn stats(&self) -> CacheStats {
        let g = self.index();
        let c = &self.stats;
        CacheStats {
            objects: g.entries.len(),
            bytes: g.bytes,
            quota: self.quota,
            pinned: g.pins.len(),
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            fetched_bytes: c.fetched_bytes.load(Ordering::Relaxed),
            evicted: c.evicted.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
        }
    }

    /// Evicts everything not pinned down to `target` bytes (0: all that can go).
    pub fn gc(&self, target: u64) -> CacheStats {
        self.evict_to(target, None);
        self.stats()
    }

    /// Re-hashes every cached object and removes the damaged ones (they are fetched again on
    /// next use).
    pub fn verify(&self) -> VerifyReport {
        let ids: Vec<(ObjectId, Loc)> = self
            .index()
            .entries
            .iter()
            .map(|(id, s)| (*id, s.loc))
            .collect();
        let mut removed = Vec::new();
        for (id, loc) in &ids {
            let ok = self
                .packs
                .get(loc)
                .ok()
                .is_some_and(|env| starling_store::decode_envelope(id, &env).is_ok());
            if !ok {
                self.drop_object(id);
                removed.push(id.to_hex());
            }
        }
        VerifyReport {
            checked: ids.len(),
            removed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository directory holding `n` incompressible objects of `size` bytes.
    fn origin(dir: &Path, n: usize, size: usize) -> (Remote, Vec<ObjectId>) {
        let st = starling_store::Store::open_or_init(dir.join("src")).unwrap();
        let mut ids = Vec::new();
        for i in 0..n {
            // xorshift: incompressible, so envelope sizes are the data sizes.
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1);
            let data: Vec<u8> = (0..size)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 24) as u8
                })
                .collect();
            let id = st.put(&data).unwrap().id;
            let rel = crate::push::object_rel(&id);
            let dest = dir.join("repo").join(&rel);
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::write(&dest, st.get_envelope(&id).unwrap()).unwrap();
            ids.push(id);
        }
        let remote = Remote::parse(dir.join("repo").to_str().unwrap()).unwrap();
        (remote, ids)
    }

    #[test]
    fn quota_evicts_least_recently_used_but_never_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let (remote, ids) = origin(dir.path(), 5, 200_000);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let open = |q| {
            HostCache::open(
                &dir.path().join("cache"),
                q,
                ClientOptions::default(),
                rt.handle().clone(),
            )
        };
        assert!(open(1000).is_err(), "quota below one chunk refused");
        let c = open(450_000).unwrap();
        let fetch = |c: &HostCache, i: usize| c.get(&remote, &ids[i], 200_000).unwrap().1;
        let get = |i: usize| fetch(&c, i);
        assert_eq!(get(0), Origin::Fetched);
        assert_eq!(get(0), Origin::Cache);
        c.pin(&ids[..1]);
        get(1);
        get(2);
        get(3);
        // 4 objects do not fit: the oldest unpinned ones went, the pinned one stayed.
        let held: Vec<bool> = ids.iter().map(|i| c.contains(i)).collect();
        assert!(held[0], "pinned object evicted: {held:?}");
        assert!(!held[1], "{held:?}");
        assert!(held[3], "{held:?}");
        assert!(c.stats().bytes <= 450_000, "{:?}", c.stats());
        assert!(c.stats().evicted >= 1);
        // An evicted object comes back from the origin.
        assert_eq!(get(1), Origin::Fetched);
        // gc leaves only what is pinned.
        let s = c.gc(0);
        assert_eq!(s.objects, 1, "{s:?}");
        c.unpin(&ids[..1]);
        assert_eq!(c.gc(0).objects, 0);
        // Evicted bytes go back to the file system (holes punched, empty segments deleted).
        assert!(c.packs.disk_bytes() < 64 << 10, "{}", c.packs.disk_bytes());
        drop(c);
        // The index survives a restart; damage on disk is found by verify and dropped.
        let c = open(10 << 20).unwrap();
        fetch(&c, 2);
        fetch(&c, 4);
        drop(c);
        let c = open(10 << 20).unwrap();
        assert_eq!(c.stats().objects, 2);
        // Damage the last byte of object 4's envelope inside its pack segment.
        let loc = c.index().entries[&ids[4]].loc;
        let p = dir
            .path()
            .join(format!("cache/packs/{:08}.pack", loc.segment));
        let mut b = std::fs::read(&p).unwrap();
        let at = (loc.offset + 48 + u64::from(loc.len) - 1) as usize;
        b[at] ^= 0xff;
        std::fs::write(&p, b).unwrap();
        let r = c.verify();
        assert_eq!((r.checked, r.removed.len()), (2, 1));
        assert_eq!(fetch(&c, 4), Origin::Fetched);
    }

    #[test]
    fn concurrent_first_reads_fetch_once_and_bad_objects_are_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (remote, ids) = origin(dir.path(), 2, 100_000);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let c = HostCache::open(
            &dir.path().join("cache"),
            10 << 20,
            ClientOptions::default(),
            rt.handle().clone(),
        )
        .unwrap();
        std::thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| c.get(&remote, &ids[0], 100_000).unwrap());
            }
        });
        assert_eq!(c.stats().misses, 1, "{:?}", c.stats());
        // A damaged object at the origin is refused and not cached.
        let p = dir
            .path()
            .join("repo")
            .join(crate::push::object_rel(&ids[1]));
        let mut b = std::fs::read(&p).unwrap();
        let n = b.len();
        b[n - 3] ^= 1;
        std::fs::write(&p, b).unwrap();
        assert!(c.get(&remote, &ids[1], 100_000).is_err());
        assert!(!c.contains(&ids[1]));
        assert_eq!(c.stats().refused, 1);
    }
}
