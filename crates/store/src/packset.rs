//! A directory of pack segments and the index of where each object is: the storage engine
//! under both the local store (segments written whole by transactions, then published) and
//! the host cache (one segment appended to in place, sealed when full).

use std::collections::HashMap;
use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::IoContext;
use crate::pack::{self, Record};
use crate::{Error, ObjectId, Result};

/// Where an object is: a segment (by its number in this set) and its record there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    pub seg: u32,
    pub rec: Record,
}

struct Seg {
    name: String,
    file: Option<Arc<File>>,
    /// Has an index file that matches it (the appended-to segment has none).
    sealed: bool,
    len: u64,
    /// Records the set's index points at in this segment, and their envelope bytes.
    live: usize,
    live_bytes: u64,
}

#[derive(Default)]
struct Inner {
    segs: HashMap<u32, Seg>,
    by_name: HashMap<String, u32>,
    next: u32,
    index: HashMap<ObjectId, Loc>,
}

/// The segment being appended to in place (the host cache's).
struct Appender {
    seg: u32,
    file: Arc<File>,
    end: u64,
}

pub struct PackSet {
    dir: PathBuf,
    segment_max: u64,
    /// Owned by one process that appends in place (the cache): unindexed segments other than
    /// the last are sealed at open and torn tails cut.
    owner: bool,
    inner: RwLock<Inner>,
    appender: Mutex<Option<Appender>>,
}

static NAME_SEQ: AtomicU64 = AtomicU64::new(0);

/// A new segment name: sorts by creation time (older segments first), unique across
/// processes.
pub fn new_segment_name() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{nanos:020}-{}-{}",
        std::process::id(),
        NAME_SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn pack_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.pack"))
}

pub fn index_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.idx"))
}

/// Writes `bytes` to `path` through a temporary file, fsynced before the rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).at(&tmp)?;
    f.write_all(bytes).at(&tmp)?;
    f.sync_all().at(&tmp)?;
    std::fs::rename(&tmp, path).at(path)
}

/// What opening one segment found.
struct Loaded {
    records: Vec<Record>,
    sealed: bool,
    len: u64,
    /// Where the last whole record ends, when the tail is torn.
    torn_at: Option<u64>,
}

fn load_segment(dir: &Path, name: &str) -> Result<Loaded> {
    let p = pack_path(dir, name);
    let len = std::fs::metadata(&p).at(&p)?.len();
    let ip = index_path(dir, name);
    match std::fs::read(&ip) {
        Ok(b) => match pack::decode_index(&b, len) {
            Ok(records) => {
                return Ok(Loaded {
                    records,
                    sealed: true,
                    len,
                    torn_at: None,
                })
            }
            Err(pack::BadIndex(why)) => {
                eprintln!("starling store: {}: {why}; scanning the pack", ip.display())
            }
        },
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).at(ip),
    }
    let f = File::open(&p).at(&p)?;
    let (records, _dead, end) = pack::scan(&f, &p)?;
    Ok(Loaded {
        records,
        sealed: false,
        len,
        torn_at: (end < len).then_some(end),
    })
}

fn segment_names(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(e).at(dir),
    };
    for e in rd {
        let name = e.at(dir)?.file_name().to_string_lossy().into_owned();
        if let Some(n) = name.strip_suffix(".pack") {
            names.push(n.to_string());
        }
    }
    names.sort();
    Ok(names)
}

impl PackSet {
    /// Opens the segments in `dir` (created if absent). `owner`: this process alone writes
    /// here and appends in place (see the field).
    pub fn open(dir: &Path, segment_max: u64, owner: bool) -> Result<PackSet> {
        if owner {
            std::fs::create_dir_all(dir).at(dir)?;
        }
        let set = PackSet {
            dir: dir.to_path_buf(),
            segment_max,
            owner,
            inner: RwLock::new(Inner::default()),
            appender: Mutex::new(None),
        };
        set.load_new()?;
        if owner {
            set.prepare_appender()?;
        }
        Ok(set)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn read_inner(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_inner(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads segments that appeared since the last load (published by other processes).
    /// Returns whether any did.
    pub fn load_new(&self) -> Result<bool> {
        let names = segment_names(&self.dir)?;
        let fresh: Vec<String> = {
            let g = self.read_inner();
            names
                .into_iter()
                .filter(|n| !g.by_name.contains_key(n))
                .collect()
        };
        if fresh.is_empty() {
            return Ok(false);
        }
        let mut loaded = Vec::new();
        for n in fresh {
            match load_segment(&self.dir, &n) {
                Ok(l) => loaded.push((n, l)),
                // Removed by a collection between the listing and here.
                Err(Error::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let mut g = self.write_inner();
        for (name, l) in loaded {
            let n = g.next;
            g.next += 1;
            let mut seg = Seg {
                name: name.clone(),
                file: None,
                sealed: l.sealed,
                len: l.torn_at.unwrap_or(l.len),
                live: 0,
                live_bytes: 0,
            };
            if self.owner && l.torn_at.is_some() {
                // A crash while appending: cut the torn record off.
                let p = pack_path(&self.dir, &name);
                let f = pack::open_rw(&p)?;
                f.set_len(seg.len).at(&p)?;
                seg.file = Some(Arc::new(f));
            }
            g.segs.insert(n, seg);
            g.by_name.insert(name, n);
            for rec in l.records {
                // Segments load oldest first: a later copy of an object wins.
                let old = g.index.insert(rec.id, Loc { seg: n, rec });
                if let Some(o) = old {
                    if let Some(s) = g.segs.get_mut(&o.seg) {
                        s.live -= 1;
                        s.live_bytes -= u64::from(o.rec.len);
                    }
                }
                if let Some(s) = g.segs.get_mut(&n) {
                    s.live += 1;
                    s.live_bytes += u64::from(rec.len);
                }
            }
        }
        Ok(true)
    }

    /// Forgets everything and loads the directory again (after another process collected).
    /// Segment numbers are never reused: a number held from before the reload names nothing
    /// afterwards rather than another segment.
    pub fn reload(&self) -> Result<()> {
        {
            let mut g = self.write_inner();
            let next = g.next;
            *g = Inner {
                next,
                ..Inner::default()
            };
        }
        self.load_new()?;
        Ok(())
    }

    /// For the in-place writer: seals every unindexed segment but the last, and appends to
    /// the last while it has room.
    fn prepare_appender(&self) -> Result<()> {
        let unsealed: Vec<u32> = {
            let g = self.read_inner();
            let mut v: Vec<(String, u32)> = g
                .segs
                .iter()
                .filter(|(_, s)| !s.sealed)
                .map(|(n, s)| (s.name.clone(), *n))
                .collect();
            v.sort();
            v.into_iter().map(|(_, n)| n).collect()
        };
        let last_name = segment_names(&self.dir)?.pop();
        let mut app = None;
        for n in unsealed {
            let (name, len) = {
                let g = self.read_inner();
                let s = &g.segs[&n];
                (s.name.clone(), s.len)
            };
            if Some(&name) == last_name.as_ref() && len < self.segment_max {
                let p = pack_path(&self.dir, &name);
                let file = Arc::new(pack::open_rw(&p)?);
                if let Some(s) = self.write_inner().segs.get_mut(&n) {
                    s.file = Some(file.clone());
                }
                app = Some(Appender {
                    seg: n,
                    file,
                    end: len,
                });
            } else {
                self.seal(n)?;
            }
        }
        *self.appender.lock().unwrap_or_else(|p| p.into_inner()) = app;
        Ok(())
    }

    /// The records the index points at in segment `n`.
    fn records_of(&self, n: u32) -> Vec<Record> {
        let g = self.read_inner();
        let mut v: Vec<Record> = g
            .index
            .values()
            .filter(|l| l.seg == n)
            .map(|l| l.rec)
            .collect();
        v.sort_by_key(|r| r.offset);
        v
    }

    /// Writes segment `n`'s index from the records the set holds in it.
    fn seal(&self, n: u32) -> Result<()> {
        let records = self.records_of(n);
        let (name, len) = {
            let g = self.read_inner();
            let Some(s) = g.segs.get(&n) else {
                return Ok(());
            };
            (s.name.clone(), s.len)
        };
        let p = pack_path(&self.dir, &name);
        File::open(&p).and_then(|f| f.sync_all()).at(&p)?;
        write_atomic(
            &index_path(&self.dir, &name),
            &pack::encode_index(&records, len),
        )?;
        if let Some(s) = self.write_inner().segs.get_mut(&n) {
            s.sealed = true;
        }
        Ok(())
    }

    pub fn locate(&self, id: &ObjectId) -> Option<Loc> {
        self.read_inner().index.get(id).copied()
    }

    pub fn contains(&self, id: &ObjectId) -> bool {
        self.read_inner().index.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.read_inner().index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every indexed object.
    pub fn entries(&self) -> Vec<(ObjectId, Loc)> {
        self.read_inner()
            .index
            .iter()
            .map(|(id, l)| (*id, *l))
            .collect()
    }

    fn file(&self, seg: u32) -> Result<(Arc<File>, PathBuf)> {
        let name = {
            let g = self.read_inner();
            let s = g.segs.get(&seg).ok_or_else(|| Error::Io {
                path: self.dir.clone(),
                source: std::io::Error::new(ErrorKind::NotFound, "pack segment is gone"),
            })?;
            if let Some(f) = &s.file {
                return Ok((f.clone(), pack_path(&self.dir, &s.name)));
            }
            s.name.clone()
        };
        let p = pack_path(&self.dir, &name);
        let f = Arc::new(File::open(&p).at(&p)?);
        if let Some(s) = self.write_inner().segs.get_mut(&seg) {
            s.file.get_or_insert_with(|| f.clone());
        }
        Ok((f, p))
    }

    /// The envelope at `loc` (unverified: the caller hashes it).
    pub fn read(&self, loc: &Loc) -> Result<Vec<u8>> {
        let (f, p) = self.file(loc.seg)?;
        pack::read(&f, &p, &loc.rec)
    }

    /// The path of the segment holding `loc` (for tools and tests).
    pub fn segment_path(&self, seg: u32) -> Option<PathBuf> {
        self.read_inner()
            .segs
            .get(&seg)
            .map(|s| pack_path(&self.dir, &s.name))
    }

    /// Appends an object in place (owner only). Not durable until the segment is sealed; the
    /// owner verifies objects it reads back after a restart.
    pub fn append(&self, id: &ObjectId, env: &[u8]) -> Result<Loc> {
        let rec = pack::encode_record(id, env)?;
        let mut app = self.appender.lock().unwrap_or_else(|p| p.into_inner());
        let full = app
            .as_ref()
            .is_some_and(|a| a.end > 0 && a.end + rec.len() as u64 > self.segment_max);
        if full {
            if let Some(a) = app.take() {
                self.seal(a.seg)?;
            }
        }
        if app.is_none() {
            let name = new_segment_name();
            let p = pack_path(&self.dir, &name);
            let file = Arc::new(pack::open_rw(&p)?);
            let mut g = self.write_inner();
            let n = g.next;
            g.next += 1;
            g.segs.insert(
                n,
                Seg {
                    name: name.clone(),
                    file: Some(file.clone()),
                    sealed: false,
                    len: 0,
                    live: 0,
                    live_bytes: 0,
                },
            );
            g.by_name.insert(name, n);
            *app = Some(Appender {
                seg: n,
                file,
                end: 0,
            });
        }
        let Some(a) = app.as_mut() else {
            unreachable!("appender set above")
        };
        let p = self.segment_path(a.seg).unwrap_or_else(|| self.dir.clone());
        a.file.write_all_at(&rec, a.end).at(&p)?;
        let r = Record {
            id: *id,
            offset: a.end,
            len: (rec.len() as u64 - pack::HEADER) as u32,
        };
        a.end = r.end();
        let loc = Loc { seg: a.seg, rec: r };
        self.insert(loc, a.end);
        Ok(loc)
    }

    fn insert(&self, loc: Loc, seg_len: u64) {
        let mut g = self.write_inner();
        if let Some(s) = g.segs.get_mut(&loc.seg) {
            s.len = s.len.max(seg_len);
            s.live += 1;
            s.live_bytes += u64::from(loc.rec.len);
        }
        if let Some(old) = g.index.insert(loc.rec.id, loc) {
            if let Some(s) = g.segs.get_mut(&old.seg) {
                s.live -= 1;
                s.live_bytes -= u64::from(old.rec.len);
            }
        }
    }

    /// Adds a segment another writer made whole in `from_dir` (a transaction's staging
    /// directory): its pack is fsynced, its index written and fsynced, then both are renamed
    /// in (the pack first: a pack without its index is scanned, never lost) and the
    /// directory fsynced.
    pub fn publish(&self, from_dir: &Path, name: &str, records: &[Record]) -> Result<()> {
        std::fs::create_dir_all(&self.dir).at(&self.dir)?;
        let from = pack_path(from_dir, name);
        let f = File::open(&from).at(&from)?;
        f.sync_all().at(&from)?;
        let len = f.metadata().at(&from)?.len();
        let idx_from = index_path(from_dir, name);
        write_atomic(&idx_from, &pack::encode_index(records, len))?;
        let to = pack_path(&self.dir, name);
        std::fs::rename(&from, &to).at(&to)?;
        let idx_to = index_path(&self.dir, name);
        std::fs::rename(&idx_from, &idx_to).at(&idx_to)?;
        let mut g = self.write_inner();
        let n = g.next;
        g.next += 1;
        g.segs.insert(
            n,
            Seg {
                name: name.to_string(),
                file: Some(Arc::new(f)),
                sealed: true,
                len,
                live: 0,
                live_bytes: 0,
            },
        );
        g.by_name.insert(name.to_string(), n);
        drop(g);
        for rec in records {
            self.insert(Loc { seg: n, rec: *rec }, len);
        }
        Ok(())
    }

    /// Makes published segments durable in the directory.
    pub fn sync_dir(&self) -> Result<()> {
        crate::refs::sync_dir(&self.dir)
    }

    /// Removes objects: each record is marked dead and its blocks punched out; the indexes of
    /// the segments touched are rewritten, and segments left with nothing live are deleted
    /// (except the one being appended to).
    pub fn remove(&self, ids: &[ObjectId]) -> Result<usize> {
        let mut by_seg: HashMap<u32, Vec<Record>> = HashMap::new();
        {
            let mut g = self.write_inner();
            for id in ids {
                if let Some(l) = g.index.remove(id) {
                    if let Some(s) = g.segs.get_mut(&l.seg) {
                        s.live -= 1;
                        s.live_bytes -= u64::from(l.rec.len);
                    }
                    by_seg.entry(l.seg).or_default().push(l.rec);
                }
            }
        }
        let appending = self
            .appender
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|a| a.seg);
        let mut removed = 0;
        for (seg, recs) in by_seg {
            let (empty, sealed, name) = {
                let g = self.read_inner();
                let Some(s) = g.segs.get(&seg) else { continue };
                (s.live == 0, s.sealed, s.name.clone())
            };
            removed += recs.len();
            if empty && Some(seg) != appending {
                self.drop_segment(seg, &name)?;
                continue;
            }
            // A sealed segment's index goes first: an index that still listed killed records
            // after a crash would make the store hold objects it no longer has (an import
            // then skips writing them). Records left alive but unlisted are only garbage.
            if sealed {
                self.seal(seg)?;
            }
            let (f, p) = self.file_rw(seg)?;
            for r in &recs {
                pack::kill(&f, &p, r)?;
            }
        }
        Ok(removed)
    }

    fn file_rw(&self, seg: u32) -> Result<(Arc<File>, PathBuf)> {
        let p = self.segment_path(seg).ok_or_else(|| Error::Io {
            path: self.dir.clone(),
            source: std::io::Error::new(ErrorKind::NotFound, "pack segment is gone"),
        })?;
        // Opened for writing each time: read-only handles are what readers cache.
        Ok((Arc::new(pack::open_rw(&p)?), p))
    }

    fn drop_segment(&self, seg: u32, name: &str) -> Result<()> {
        {
            let mut g = self.write_inner();
            g.segs.remove(&seg);
            g.by_name.remove(name);
            g.index.retain(|_, l| l.seg != seg);
        }
        // The index first: a pack without one is scanned, an index without a pack is junk.
        for p in [index_path(&self.dir, name), pack_path(&self.dir, name)] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e).at(p),
            }
        }
        Ok(())
    }

    /// Segments with their live and total bytes, oldest first (for collection decisions).
    pub fn segments(&self) -> Vec<SegmentInfo> {
        let g = self.read_inner();
        let mut v: Vec<SegmentInfo> = g
            .segs
            .iter()
            .map(|(n, s)| SegmentInfo {
                seg: *n,
                name: s.name.clone(),
                len: s.len,
                live: s.live,
                live_bytes: s.live_bytes,
                sealed: s.sealed,
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Deletes a segment whose live objects were copied elsewhere (a repack), named by its
    /// file name: a name, unlike a number, means the same segment across reloads.
    pub fn retire(&self, name: &str) -> Result<()> {
        let Some(seg) = self.read_inner().by_name.get(name).copied() else {
            return Ok(());
        };
        self.drop_segment(seg, name)
    }

    /// Bytes the segment files occupy on disk (holes excluded).
    pub fn disk_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let g = self.read_inner();
        g.segs
            .values()
            .filter_map(|s| std::fs::metadata(pack_path(&self.dir, &s.name)).ok())
            .map(|m| m.blocks() * 512)
            .sum()
    }
}

#[derive(Debug, Clone)]
pub struct SegmentInfo {
    pub seg: u32,
    pub name: String,
    pub len: u64,
    pub live: usize,
    pub live_bytes: u64,
    pub sealed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(i: u8, size: usize) -> (ObjectId, Vec<u8>) {
        // Incompressible, so envelope sizes are the data sizes.
        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (u64::from(i) + 1);
        let data: Vec<u8> = (0..size + i as usize)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        (ObjectId::of(&data), crate::envelope::encode(&data, 3))
    }

    #[test]
    fn appended_records_survive_reopen_torn_tails_and_removal() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("packs");
        let envs: Vec<(ObjectId, Vec<u8>)> = (0..5u8).map(|i| env(i, 10_000)).collect();
        {
            let p = PackSet::open(&d, 64 << 20, true).unwrap();
            assert!(p.is_empty());
            for (id, e) in &envs {
                p.append(id, e).unwrap();
            }
        }
        // A torn append at the end is cut at the next open by the owner.
        let seg = segment_names(&d).unwrap().pop().unwrap();
        let path = pack_path(&d, &seg);
        let before = std::fs::metadata(&path).unwrap().len();
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            f.write_all(b"SLPK\x01\0\0\0\xff\xff\0\0partial").unwrap();
        }
        let p = PackSet::open(&d, 64 << 20, true).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), before);
        assert_eq!(p.len(), 5);
        for (id, e) in &envs {
            assert_eq!(&p.read(&p.locate(id).unwrap()).unwrap(), e);
        }
        assert_eq!(p.remove(&[envs[1].0]).unwrap(), 1);
        assert!(!p.contains(&envs[1].0));
        let again = p.append(&envs[1].0, &envs[1].1).unwrap();
        assert!(again.rec.offset >= before, "appended after the old records");
        drop(p);
        let p = PackSet::open(&d, 64 << 20, true).unwrap();
        assert_eq!(p.len(), 5, "the dead record is skipped, the new one found");
        assert_eq!(p.read(&p.locate(&envs[1].0).unwrap()).unwrap(), envs[1].1);
    }

    #[test]
    fn full_segments_are_sealed_and_empty_ones_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("packs");
        let envs: Vec<(ObjectId, Vec<u8>)> = (0..6u8).map(|i| env(i, 30_000)).collect();
        let p = PackSet::open(&d, 64 << 10, true).unwrap();
        for (id, e) in &envs {
            p.append(id, e).unwrap();
        }
        let segs = p.segments();
        assert!(segs.len() >= 3, "{segs:?}");
        assert!(segs[..segs.len() - 1].iter().all(|s| s.sealed), "{segs:?}");
        assert!(index_path(&d, &segs[0].name).exists());
        // Empty the first segment: its files go.
        let first: Vec<ObjectId> = p
            .entries()
            .into_iter()
            .filter(|(_, l)| l.seg == segs[0].seg)
            .map(|(id, _)| id)
            .collect();
        p.remove(&first).unwrap();
        assert!(!pack_path(&d, &segs[0].name).exists());
        assert!(!index_path(&d, &segs[0].name).exists());
        drop(p);
        // Reopened read-only (not the owner): indexes are used, nothing is written.
        let p = PackSet::open(&d, 64 << 10, false).unwrap();
        assert_eq!(p.len(), envs.len() - first.len());
        for (id, e) in &envs[first.len()..] {
            assert_eq!(&p.read(&p.locate(id).unwrap()).unwrap(), e);
        }
    }
}
