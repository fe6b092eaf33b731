//! The host cache: one set of verified objects shared by every mount and VM on the host,
//! filled from any [`ObjectSource`] on first use (a decorator over the source, as rustic's
//! cached backend). Each object is fetched at most once at a time (concurrent first reads
//! wait for the one download: single-flight), verified against its id before it is kept,
//! and evicted least-recently-used beyond a size quota, never while an open file needs it
//! (pinned).
//!
//! Objects live in pack segments appended in place (see [`crate::packset`]): a warm read is
//! one `pread`. The index is rebuilt from the segments on start (their indexes, and a scan
//! of the one being appended to), oldest first as the LRU order, so a restart loses nothing.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::packset::PackSet;
use crate::source::{opened, ObjectSource, Origin};
use crate::{envelope, Error, ObjectId, Result};

/// No chunk is larger than this (the chunker's maximum); a quota must hold at least one.
pub const MAX_CHUNK: u64 = 256 << 10;
/// Cache segments: small enough that an emptied one is soon deleted whole.
const SEGMENT_MAX: u64 = 64 << 20;
/// How long a slow failed download is remembered: asking again within it fails at once, so a
/// reader the kernel retries (readahead, then the page itself) waits out a stalled origin
/// once, not once per retry.
const FAILURE_MEMORY: std::time::Duration = std::time::Duration::from_secs(5);
/// A failure that took at least this long (a stall, a timeout) is remembered; a quick one (a
/// refused connection, a missing object) costs nothing to ask again, so an origin that
/// comes back is used at once.
const SLOW_FAILURE: std::time::Duration = std::time::Duration::from_secs(1);
/// Failures remembered at most (beyond it the expired ones go, then all).
const MAX_FAILURES: usize = 4096;

/// Makes `dir` (and any missing parents) and leaves it 0700, whatever mode it had: for the
/// daemon's state and cache, which hold the content of every image mounted and VM run.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
}

pub struct HostCache {
    _owner: crate::lock::StoreLock,
    packs: PackSet,
    quota: u64,
    index: Mutex<Index>,
    inflight: Mutex<HashMap<ObjectId, Arc<Flight>>>,
    /// Recent failed downloads: when, and why.
    failures: Mutex<HashMap<ObjectId, (std::time::Instant, String)>>,
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

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VerifyReport {
    pub checked: usize,
    pub removed: Vec<String>,
}

impl HostCache {
    /// Opens (creating) the cache's segments in `dir` with a quota in bytes. One process
    /// owns a cache directory (the daemon makes sure of that).
    pub fn open(dir: &Path, quota: u64) -> Result<HostCache> {
        if quota < MAX_CHUNK {
            return Err(Error::Invalid {
                what: format!("cache quota {quota} bytes"),
                reason: format!("is smaller than one chunk ({MAX_CHUNK} bytes)"),
            });
        }
        // The objects of every image mounted through it (an image's /etc/shadow among them):
        // its owner's alone, whatever mode it was made with.
        private_dir(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        // Before anything is read: a second owner would cut the first one's segment short.
        let owner = crate::lock::own(
            &dir.join("owner.lock"),
            "another process using this cache (a running starlingd)",
        )?;
        let packs = PackSet::open(dir, SEGMENT_MAX, true)?;
        let mut found = packs.entries();
        // Oldest segment and record first: the recovered LRU order.
        let names: HashMap<u32, String> = packs
            .segments()
            .into_iter()
            .map(|s| (s.seg, s.name))
            .collect();
        found.sort_by(|(_, a), (_, b)| {
            (names.get(&a.seg), a.rec.offset).cmp(&(names.get(&b.seg), b.rec.offset))
        });
        let mut index = Index::default();
        for (id, loc) in found {
            index.clock += 1;
            let size = u64::from(loc.rec.len);
            index.entries.insert(
                id,
                Slot {
                    size,
                    used: index.clock,
                    verified: false,
                },
            );
            index.bytes += size;
        }
        let c = HostCache {
            _owner: owner,
            packs,
            quota,
            index: Mutex::new(index),
            inflight: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            stats: CacheCounters::default(),
        };
        // A smaller quota than last time takes effect now.
        c.evict_to(quota, None);
        Ok(c)
    }

    /// A view of `inner` through this cache.
    pub fn over(self: &Arc<Self>, inner: Arc<dyn ObjectSource>) -> CachedSource {
        CachedSource {
            cache: self.clone(),
            inner,
        }
    }

    pub fn contains(&self, id: &ObjectId) -> bool {
        self.index().entries.contains_key(id)
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The object's verified bytes, from the cache or fetched from `inner` (once, however
    /// many callers ask at the same time).
    pub fn get(
        &self,
        inner: &dyn ObjectSource,
        id: &ObjectId,
        max_len: u64,
    ) -> Result<(Vec<u8>, Origin)> {
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
                    None if self.contains(id) => continue,
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
                    return Err(Error::Unavailable {
                        id: *id,
                        from: inner.describe(),
                        reason: e.clone(),
                    });
                }
                // Fetched by the leader: read it from the cache (it may have been evicted
                // already under a tiny quota; then go round again).
                continue;
            }
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            let r = self.fetch(inner, id, max_len);
            {
                let mut done = flight.done.lock().unwrap_or_else(|p| p.into_inner());
                *done = Some(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                flight.cv.notify_all();
            }
            self.inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id);
            return r.map(|b| (b, Origin::Remote));
        }
    }

    fn read_cached(&self, id: &ObjectId) -> Option<Vec<u8>> {
        self.cached(id, true)
    }

    /// A cached object's envelope, read once and not decoded when it was checked before:
    /// what a reader that verifies for itself is handed (a VM monitor over the object
    /// socket). A miss is `None`, as for [`HostCache::get`]'s cache check.
    pub fn cached_envelope(&self, id: &ObjectId) -> Option<Vec<u8>> {
        let env = self.cached(id, false)?;
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        Some(env)
    }

    /// A cached object's content (`content`) or envelope; checked against its id on its
    /// first read since the cache was opened, trusted after.
    fn cached(&self, id: &ObjectId, content: bool) -> Option<Vec<u8>> {
        let checked = {
            let mut g = self.index();
            g.clock += 1;
            let now = g.clock;
            let s = g.entries.get_mut(id)?;
            s.used = now;
            s.verified
        };
        let read = self
            .packs
            .locate(id)
            .ok_or(Error::NotFound(*id))
            .and_then(|loc| self.packs.read(&loc))
            .and_then(|env| match (checked, content) {
                (true, false) => Ok(env),
                (true, true) => envelope::unwrap(id, &env),
                (false, true) => envelope::decode(id, &env),
                (false, false) => envelope::decode(id, &env).map(|_| env),
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
                self.drop_objects(&[*id]);
                None
            }
        }
    }

    fn fetch(&self, inner: &dyn ObjectSource, id: &ObjectId, max_len: u64) -> Result<Vec<u8>> {
        let unavailable = |reason: String| Error::Unavailable {
            id: *id,
            from: inner.describe(),
            reason,
        };
        {
            let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((when, why)) = failures.get(id) {
                if when.elapsed() < FAILURE_MEMORY {
                    return Err(unavailable(format!(
                        "{why} ({:.1} s ago; not asked again for {} s)",
                        when.elapsed().as_secs_f64(),
                        FAILURE_MEMORY.as_secs()
                    )));
                }
            }
        }
        let asked = std::time::Instant::now();
        let (env, _) = match inner.envelope(id, max_len) {
            Ok(x) => {
                self.failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(id);
                x
            }
            Err(e) if asked.elapsed() < SLOW_FAILURE => return Err(e),
            Err(e) => {
                let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
                if failures.len() >= MAX_FAILURES {
                    failures.retain(|_, (when, _)| when.elapsed() < FAILURE_MEMORY);
                    if failures.len() >= MAX_FAILURES {
                        failures.clear();
                    }
                }
                failures.insert(*id, (std::time::Instant::now(), e.to_string()));
                return Err(e);
            }
        };
        self.stats
            .fetched_bytes
            .fetch_add(env.len() as u64, Ordering::Relaxed);
        // Verified before it is kept: a damaged object is refused and never cached.
        let data = opened(id, &env, max_len).map_err(|e| {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            Error::Unavailable {
                id: *id,
                from: inner.describe(),
                reason: e.to_string(),
            }
        })?;
        self.packs.append(id, &env)?;
        let size = env.len() as u64;
        {
            let mut g = self.index();
            g.clock += 1;
            let used = g.clock;
            let old = g.entries.insert(
                *id,
                Slot {
                    size,
                    used,
                    verified: true,
                },
            );
            g.bytes += size;
            if let Some(o) = old {
                g.bytes -= o.size;
            }
        }
        self.evict_to(self.quota, Some(id));
        Ok(data)
    }

    /// Removes objects from the index and their bytes from the packs; how many were there.
    fn drop_objects(&self, ids: &[ObjectId]) -> usize {
        let mut gone = Vec::new();
        {
            let mut g = self.index();
            for id in ids {
                if let Some(s) = g.entries.remove(id) {
                    g.bytes -= s.size;
                    gone.push(*id);
                }
            }
        }
        if let Err(e) = self.packs.remove(&gone) {
            eprintln!("starling cache: removing objects from the packs: {e}");
        }
        gone.len()
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
        let n = self.drop_objects(&victims);
        self.stats.evicted.fetch_add(n as u64, Ordering::Relaxed);
        if n > 0 {
            tracing::info!(
                objects = n,
                target_bytes = target,
                "host cache: evicted the least recently used to stay under its quota"
            );
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
        let ids: Vec<ObjectId> = self.index().entries.keys().copied().collect();
        let mut removed = Vec::new();
        for id in &ids {
            let ok = self
                .packs
                .locate(id)
                .and_then(|loc| self.packs.read(&loc).ok())
                .is_some_and(|env| envelope::decode(id, &env).is_ok());
            if !ok {
                self.drop_objects(&[*id]);
                removed.push(id.to_hex());
            }
        }
        VerifyReport {
            checked: ids.len(),
            removed,
        }
    }

    /// Bytes the cache's segments occupy on disk (holes excluded).
    pub fn disk_bytes(&self) -> u64 {
        self.packs.disk_bytes()
    }

    /// Where a cached object's envelope lies (for tools and tests).
    pub fn location(&self, id: &ObjectId) -> Option<crate::ObjectLocation> {
        let loc = self.packs.locate(id)?;
        Some(crate::ObjectLocation {
            path: self.packs.segment_path(loc.seg)?,
            offset: loc.rec.offset + crate::pack::HEADER,
            len: u64::from(loc.rec.len),
        })
    }
}

/// A source seen through the host cache.
#[derive(Clone)]
pub struct CachedSource {
    cache: Arc<HostCache>,
    inner: Arc<dyn ObjectSource>,
}

impl CachedSource {
    pub fn cache(&self) -> &Arc<HostCache> {
        &self.cache
    }
}

impl ObjectSource for CachedSource {
    fn envelope(&self, id: &ObjectId, max_len: u64) -> Result<(Vec<u8>, Origin)> {
        // Readers of envelopes keep them (a copy into a store) or verify them themselves:
        // a hit is the record as it lies in the cache, read once; a miss is fetched and
        // verified into the cache first, then its record handed out.
        if let Some(env) = self.cache.cached_envelope(id) {
            return Ok((env, Origin::Cache));
        }
        let (_, origin) = self.cache.get(self.inner.as_ref(), id, max_len)?;
        let loc = self.cache.packs.locate(id).ok_or(Error::NotFound(*id))?;
        Ok((self.cache.packs.read(&loc)?, origin))
    }

    fn read(&self, id: &ObjectId, max_len: u64) -> Result<(Vec<u8>, Origin)> {
        self.cache.get(self.inner.as_ref(), id, max_len)
    }

    fn pin(&self, ids: &[ObjectId]) {
        self.cache.pin(ids);
    }

    fn unpin(&self, ids: &[ObjectId]) {
        self.cache.unpin(ids);
    }

    fn describe(&self) -> String {
        format!("{} (through the host cache)", self.inner.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source that counts what it is asked and can be told to lie about one object.
    struct Origin0 {
        objects: HashMap<ObjectId, Vec<u8>>,
        asked: AtomicU64,
        damaged: Mutex<Option<ObjectId>>,
        /// This one fails, slowly (a stalled origin).
        stall: Mutex<Option<ObjectId>>,
    }

    impl ObjectSource for Origin0 {
        fn envelope(&self, id: &ObjectId, _max: u64) -> Result<(Vec<u8>, Origin)> {
            self.asked.fetch_add(1, Ordering::Relaxed);
            // Slow enough that concurrent first reads overlap.
            std::thread::sleep(std::time::Duration::from_millis(20));
            if *self.stall.lock().unwrap() == Some(*id) {
                std::thread::sleep(SLOW_FAILURE);
                return Err(Error::NotFound(*id));
            }
            let mut env = self.objects.get(id).cloned().ok_or(Error::NotFound(*id))?;
            if *self.damaged.lock().unwrap() == Some(*id) {
                let n = env.len();
                env[n - 3] ^= 1;
            }
            Ok((env, Origin::Remote))
        }
        fn describe(&self) -> String {
            "test origin".into()
        }
    }

    /// `n` incompressible objects of `size` bytes.
    fn origin(n: usize, size: usize) -> (Arc<Origin0>, Vec<ObjectId>) {
        let mut objects = HashMap::new();
        let mut ids = Vec::new();
        for i in 0..n {
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1);
            let data: Vec<u8> = (0..size)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 24) as u8
                })
                .collect();
            let id = ObjectId::of(&data);
            objects.insert(id, envelope::encode(&data, 3));
            ids.push(id);
        }
        (
            Arc::new(Origin0 {
                objects,
                asked: AtomicU64::new(0),
                damaged: Mutex::new(None),
                stall: Mutex::new(None),
            }),
            ids,
        )
    }

    #[test]
    fn quota_evicts_least_recently_used_but_never_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let (src, ids) = origin(5, 200_000);
        let open = |q| HostCache::open(&dir.path().join("cache"), q).map(Arc::new);
        assert!(open(1000).is_err(), "quota below one chunk refused");
        let c = open(450_000).unwrap();
        let e = open(450_000)
            .err()
            .expect("a second owner is refused")
            .to_string();
        assert!(e.contains("starlingd"), "{e}");
        let view = c.over(src.clone());
        let get = |v: &CachedSource, i: usize| v.read(&ids[i], 200_000).unwrap().1;
        assert_eq!(get(&view, 0), Origin::Remote);
        assert_eq!(get(&view, 0), Origin::Cache);
        c.pin(&ids[..1]);
        get(&view, 1);
        get(&view, 2);
        get(&view, 3);
        // 4 objects do not fit: the oldest unpinned ones went, the pinned one stayed.
        let held: Vec<bool> = ids.iter().map(|i| c.contains(i)).collect();
        assert!(held[0], "pinned object evicted: {held:?}");
        assert!(!held[1], "{held:?}");
        assert!(held[3], "{held:?}");
        assert!(c.stats().bytes <= 450_000, "{:?}", c.stats());
        assert!(c.stats().evicted >= 1);
        // An evicted object comes back from the origin.
        assert_eq!(get(&view, 1), Origin::Remote);
        // gc leaves only what is pinned.
        let s = c.gc(0);
        assert_eq!(s.objects, 1, "{s:?}");
        c.unpin(&ids[..1]);
        assert_eq!(c.gc(0).objects, 0);
        // Evicted bytes go back to the file system (holes punched).
        assert!(c.disk_bytes() < 64 << 10, "{}", c.disk_bytes());
        drop(view);
        drop(c);
        // The index survives a restart; damage on disk is found by verify and dropped.
        let c = open(10 << 20).unwrap();
        let view = c.over(src.clone());
        get(&view, 2);
        get(&view, 4);
        drop(view);
        drop(c);
        let c = open(10 << 20).unwrap();
        assert_eq!(c.stats().objects, 2);
        let loc = c.location(&ids[4]).unwrap();
        let mut b = std::fs::read(&loc.path).unwrap();
        let at = (loc.offset + loc.len - 1) as usize;
        b[at] ^= 0xff;
        std::fs::write(&loc.path, b).unwrap();
        let r = c.verify();
        assert_eq!((r.checked, r.removed.len()), (2, 1));
        assert_eq!(r.removed, vec![ids[4].to_hex()]);
        assert_eq!(get(&c.over(src.clone()), 4), Origin::Remote);
        // A smaller quota at the next start evicts down to it.
        drop(c);
        let c = open(MAX_CHUNK).unwrap();
        assert_eq!(c.stats().objects, 1, "{:?}", c.stats());
    }

    /// What the object socket hands a monitor: the cached record itself, read once; after a
    /// restart each record is checked on its first read, and a damaged one fetched again.
    #[test]
    fn envelopes_are_served_as_cached_and_checked_once_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (src, ids) = origin(2, 100_000);
        let open = || HostCache::open(&dir.path().join("cache"), 10 << 20).map(Arc::new);
        let c = open().unwrap();
        let view = c.over(src.clone());
        let (env, o) = view.envelope(&ids[0], 100_000).unwrap();
        assert_eq!(
            (env.as_slice(), o),
            (src.objects[&ids[0]].as_slice(), Origin::Remote)
        );
        let (again, o) = view.envelope(&ids[0], 100_000).unwrap();
        assert_eq!((again, o), (env, Origin::Cache));
        view.envelope(&ids[1], 100_000).unwrap();
        assert_eq!((c.stats().hits, src.asked.load(Ordering::Relaxed)), (1, 2));
        drop(view);
        drop(c);
        // Damage behind the cache's back while it was down.
        let c = open().unwrap();
        let loc = c.location(&ids[1]).unwrap();
        let mut b = std::fs::read(&loc.path).unwrap();
        let at = (loc.offset + loc.len - 1) as usize;
        b[at] ^= 0xff;
        std::fs::write(&loc.path, b).unwrap();
        let view = c.over(src.clone());
        assert_eq!(view.envelope(&ids[0], 100_000).unwrap().1, Origin::Cache);
        let (env, o) = view.envelope(&ids[1], 100_000).unwrap();
        assert_eq!(
            (env.as_slice(), o),
            (src.objects[&ids[1]].as_slice(), Origin::Remote)
        );
        assert_eq!(
            src.asked.load(Ordering::Relaxed),
            3,
            "the damaged one fetched again"
        );
    }

    #[test]
    fn concurrent_first_reads_fetch_once_and_bad_objects_are_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (src, ids) = origin(2, 100_000);
        let c = Arc::new(HostCache::open(&dir.path().join("cache"), 10 << 20).unwrap());
        let view = c.over(src.clone());
        std::thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| view.read(&ids[0], 100_000).unwrap());
            }
        });
        assert_eq!(c.stats().misses, 1, "{:?}", c.stats());
        assert_eq!(src.asked.load(Ordering::Relaxed), 1);
        // A damaged object at the origin is refused and not cached.
        *src.damaged.lock().unwrap() = Some(ids[1]);
        let e = view.read(&ids[1], 100_000).unwrap_err();
        assert!(e.to_string().contains("test origin"), "{e}");
        assert!(!c.contains(&ids[1]));
        assert_eq!(c.stats().refused, 1);
        // A quick failure (a missing object) is asked again at once...
        *src.damaged.lock().unwrap() = None;
        let missing = ObjectId::of(b"not at the origin");
        let asked = src.asked.load(Ordering::Relaxed);
        view.read(&missing, 1000).unwrap_err();
        view.read(&missing, 1000).unwrap_err();
        assert_eq!(src.asked.load(Ordering::Relaxed), asked + 2);
        // ... a slow one (a stalled origin) is asked once: a second read within
        // FAILURE_MEMORY fails at once with the first one's reason; other objects go on.
        let stalled = ObjectId::of(b"stalled");
        *src.stall.lock().unwrap() = Some(stalled);
        let asked = src.asked.load(Ordering::Relaxed);
        let first = view.read(&stalled, 1000).unwrap_err().to_string();
        let t = std::time::Instant::now();
        let again = view.read(&stalled, 1000).unwrap_err().to_string();
        assert!(t.elapsed() < SLOW_FAILURE);
        assert_eq!(src.asked.load(Ordering::Relaxed), asked + 1);
        assert!(again.contains("not asked again"), "{first} / {again}");
        view.read(&ids[0], 100_000).unwrap();
        // An object larger than the reader allows is refused before it is decoded.
        *src.damaged.lock().unwrap() = None;
        assert!(view.read(&ids[1], 1000).is_err());
        assert!(!c.contains(&ids[1]));
    }
}
