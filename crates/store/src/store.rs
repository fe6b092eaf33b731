use std::collections::HashSet;
use std::fs::{self, File};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::envelope;
use crate::error::IoContext;
use crate::lock::{self, LockMode, StoreLock};
use crate::loose::Loose;
use crate::packset::{Loc, PackSet};
use crate::refs::sync_dir;
use crate::{Error, ObjectId, Result};

/// Version of the store's layout, written to `starling-store`. Version 1 kept one file per
/// object (still read, see `loose`); version 2 keeps objects in pack segments.
pub const STORE_FORMAT_VERSION: u32 = 2;
/// The loose-object layout this build still reads and migrates.
pub const LEGACY_FORMAT_VERSION: u32 = 1;
const VERSION_FILE: &str = "starling-store";
// Level 9: the measured point where the store beats ostree's zlib archive on bytes while
// importing several times faster (bench/results/store-import.md).
const DEFAULT_ZSTD_LEVEL: i32 = 9;
/// Transactions start a new segment beyond this size.
pub(crate) const SEGMENT_MAX: u64 = 128 << 20;

/// An object store rooted at a directory:
///
/// ```text
/// starling-store        "starling-store 2": layout version
/// packs/NAME.pack       pack segments (see `pack`), each written whole by one transaction
/// packs/NAME.idx        the segment's index: a segment is visible once its pack is in place
/// objects/ab/cdef…      format 1's loose objects, read until migrated
/// refs/<ns>/<name>      atomically replaced ref files
/// tmp/                  transactions in flight (swept by gc)
/// lock, refs.lock       advisory locks (see `lock`)
/// ```
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    level: i32,
    counters: StoreCounters,
    packs: OnceLock<PackSet>,
    /// Format 1's loose objects, when the store still has any.
    loose: Option<Loose>,
}

impl std::fmt::Debug for PackSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackSet({})", self.dir().display())
    }
}

/// What this handle has done, for progress output and for tests that prove which objects an
/// operation read.
#[derive(Debug, Default)]
pub struct StoreCounters {
    pub objects_read: AtomicU64,
    pub objects_written: AtomicU64,
    pub bytes_written: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
pub struct PutOutcome {
    pub id: ObjectId,
    /// False when the object was already stored (deduplicated).
    pub new: bool,
    /// Envelope bytes added to the store (0 when deduplicated).
    pub stored_bytes: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct ObjectInfo {
    pub id: ObjectId,
    pub stored_bytes: u64,
}

/// Where an object's envelope is on disk: a file and a byte range (for tools and tests).
#[derive(Debug, Clone)]
pub struct ObjectLocation {
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
}

impl Store {
    /// Opens an existing store.
    pub fn open(root: impl AsRef<Path>) -> Result<Store> {
        let root = root.as_ref().to_path_buf();
        let format = read_format(&root)?;
        let loose = Loose::open(&root.join("objects"))?;
        Ok(Store {
            root,
            level: DEFAULT_ZSTD_LEVEL,
            counters: StoreCounters::default(),
            packs: OnceLock::new(),
            loose: loose.filter(|_| format == LEGACY_FORMAT_VERSION || format == 2),
        })
    }

    /// Opens the store at `root`, creating it if absent. Creation is idempotent and safe to
    /// race: the version file is written last, atomically.
    pub fn open_or_init(root: impl AsRef<Path>) -> Result<Store> {
        let root = root.as_ref();
        match Store::open(root) {
            Err(Error::NotAStore(_)) => {}
            other => return other,
        }
        for sub in ["packs", "refs", "tmp"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).at(&p)?;
        }
        write_format(root)?;
        Store::open(root)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Sets the zstd level used for new objects.
    pub fn set_compression_level(&mut self, level: i32) {
        self.level = level;
    }

    pub(crate) fn level(&self) -> i32 {
        self.level
    }

    pub fn counters(&self) -> &StoreCounters {
        &self.counters
    }

    pub(crate) fn packs(&self) -> Result<&PackSet> {
        if let Some(p) = self.packs.get() {
            return Ok(p);
        }
        let p = PackSet::open(&self.root.join("packs"), SEGMENT_MAX, false)?;
        Ok(self.packs.get_or_init(|| p))
    }

    /// Re-reads the pack directory from scratch: called by writers once they hold the writer
    /// lock, so a collection that ran since this handle opened is seen before they
    /// deduplicate against what it removed.
    pub(crate) fn reload(&self) -> Result<()> {
        self.packs()?.reload()
    }

    /// In the store (a pack, or a format-1 loose file).
    pub fn contains(&self, id: &ObjectId) -> bool {
        if self.packs().is_ok_and(|p| p.contains(id)) {
            return true;
        }
        self.loose.as_ref().is_some_and(|l| l.contains(id))
    }

    /// Reads and verifies an object.
    pub fn get(&self, id: &ObjectId) -> Result<Vec<u8>> {
        let env = self.get_envelope(id)?;
        self.counters.objects_read.fetch_add(1, Ordering::Relaxed);
        envelope::decode(id, &env)
    }

    /// The stored envelope, unverified (callers that ship it verify on arrival).
    pub fn get_envelope(&self, id: &ObjectId) -> Result<Vec<u8>> {
        let packs = self.packs()?;
        if let Some(loc) = packs.locate(id) {
            match packs.read(&loc) {
                Ok(env) => return Ok(env),
                // Repacked by a collection since this handle loaded: look again below.
                Err(Error::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(l) = &self.loose {
            match l.read(id) {
                Err(Error::NotFound(_)) => {}
                other => return other,
            }
        }
        // Published by another process since this handle loaded its index (a new segment),
        // or repacked by a collection (its segment gone: read everything again)?
        if !packs.load_new()? && packs.locate(id).is_some() {
            packs.reload()?;
        }
        match packs.locate(id) {
            Some(loc) => packs.read(&loc),
            None => Err(Error::NotFound(*id)),
        }
    }

    /// Re-reads and re-hashes an object.
    pub fn verify(&self, id: &ObjectId) -> Result<()> {
        let env = self.get_envelope(id)?;
        envelope::decode(id, &env).map(|_| ())
    }

    /// Where the object's envelope lies on disk.
    pub fn object_location(&self, id: &ObjectId) -> Result<Option<ObjectLocation>> {
        let packs = self.packs()?;
        if let Some(Loc { seg, rec }) = packs.locate(id) {
            if let Some(path) = packs.segment_path(seg) {
                return Ok(Some(ObjectLocation {
                    path,
                    offset: rec.offset + crate::pack::HEADER,
                    len: u64::from(rec.len),
                }));
            }
        }
        Ok(self.loose.as_ref().and_then(|l| l.location(id)))
    }

    /// Every object with its stored size. Files that are neither pack segments, their
    /// indexes nor loose objects are reported in the second list.
    pub fn list_objects(&self) -> Result<(Vec<ObjectInfo>, Vec<PathBuf>)> {
        let packs = self.packs()?;
        packs.reload()?;
        let mut seen = HashSet::new();
        let mut out: Vec<ObjectInfo> = packs
            .entries()
            .into_iter()
            .map(|(id, l)| {
                seen.insert(id);
                ObjectInfo {
                    id,
                    stored_bytes: u64::from(l.rec.len),
                }
            })
            .collect();
        let mut strays = Vec::new();
        let dir = self.root.join("packs");
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd {
                let p = e.at(&dir)?.path();
                let ok = p
                    .extension()
                    .is_some_and(|x| x == "pack" || x == "idx" || x == "tmp");
                if !ok {
                    strays.push(p);
                }
            }
        }
        if let Some(l) = &self.loose {
            let (objs, s) = l.list()?;
            out.extend(objs.into_iter().filter(|o| seen.insert(o.id)));
            strays.extend(s);
        }
        Ok((out, strays))
    }

    /// Bytes the objects occupy on disk (allocated blocks of packs and loose files).
    pub fn disk_bytes(&self) -> Result<u64> {
        let mut n = self.packs()?.disk_bytes();
        if let Some(l) = &self.loose {
            n += l.disk_bytes()?;
        }
        Ok(n)
    }

    /// Whether format-1 loose objects remain (see [`Store::migrate`]).
    pub fn has_loose_objects(&self) -> bool {
        self.loose.as_ref().is_some_and(|l| l.any())
    }

    /// Removes objects (collection): pack records are marked dead and their blocks given
    /// back, loose files deleted. Call only under the exclusive lock.
    pub fn remove_objects(&self, ids: &[ObjectId]) -> Result<usize> {
        let mut n = self.packs()?.remove(ids)?;
        if let Some(l) = &self.loose {
            for id in ids {
                if l.remove(id)? {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Removes leftovers of writers that died. Call only under the exclusive lock.
    pub fn clean_temp(&self) -> Result<u64> {
        let dir = self.root.join("tmp");
        let mut n = 0;
        for ent in fs::read_dir(&dir).at(&dir)? {
            let ent = ent.at(&dir)?;
            let p = ent.path();
            if ent.file_type().at(&p)?.is_dir() {
                fs::remove_dir_all(&p).at(&p)?;
            } else {
                fs::remove_file(&p).at(&p)?;
            }
            n += 1;
        }
        Ok(n)
    }

    /// Makes everything written so far durable (one `syncfs` for the whole file system).
    pub fn sync(&self) -> Result<()> {
        let f = File::open(&self.root).at(&self.root)?;
        rustix::fs::syncfs(&f).at(&self.root)
    }

    /// Shared lock held by writers; blocks while `gc` runs.
    pub fn lock_writer(&self) -> Result<StoreLock> {
        lock::acquire(&self.root.join("lock"), LockMode::Shared, true, "gc")
    }

    /// Exclusive lock held by `gc`: waits for (or, with `wait` false, refuses to run beside)
    /// writers in flight.
    pub fn lock_gc(&self, wait: bool) -> Result<StoreLock> {
        lock::acquire(
            &self.root.join("lock"),
            LockMode::Exclusive,
            wait,
            "a writer",
        )
    }

    /// Serialises read-modify-write of refs.
    pub fn lock_refs(&self) -> Result<StoreLock> {
        lock::acquire(
            &self.root.join("refs.lock"),
            LockMode::Exclusive,
            true,
            "a ref update",
        )
    }

    /// Makes sure the layout says version 2 before the first pack is written into a
    /// format-1 store, so older builds refuse it rather than miss the packed objects.
    pub(crate) fn upgrade_format(&self) -> Result<()> {
        if read_format(&self.root)? != STORE_FORMAT_VERSION {
            let p = self.root.join("packs");
            fs::create_dir_all(&p).at(&p)?;
            write_format(&self.root)?;
        }
        Ok(())
    }

    pub(crate) fn temp_file(&self) -> Result<(PathBuf, File)> {
        let path = self
            .root
            .join("tmp")
            .join(crate::packset::new_segment_name());
        let f = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .at(&path)?;
        Ok((path, f))
    }

    pub(crate) fn loose(&self) -> Option<&Loose> {
        self.loose.as_ref()
    }
}

fn read_format(root: &Path) -> Result<u32> {
    let vf = root.join(VERSION_FILE);
    let text = match fs::read_to_string(&vf) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(Error::NotAStore(root.into())),
        Err(e) => return Err(e).at(vf),
    };
    let found = text.trim().strip_prefix("starling-store ").unwrap_or("?");
    match found.parse::<u32>() {
        Ok(v) if v == STORE_FORMAT_VERSION || v == LEGACY_FORMAT_VERSION => Ok(v),
        _ => Err(Error::UnsupportedStoreVersion {
            path: root.into(),
            found: found.to_string(),
            supported: STORE_FORMAT_VERSION,
        }),
    }
}

fn write_format(root: &Path) -> Result<()> {
    let tmp = root
        .join("tmp")
        .join(format!("init-{}", std::process::id()));
    if let Some(d) = tmp.parent() {
        fs::create_dir_all(d).at(d)?;
    }
    fs::write(&tmp, format!("starling-store {STORE_FORMAT_VERSION}\n")).at(&tmp)?;
    let vf = root.join(VERSION_FILE);
    fs::rename(&tmp, &vf).at(&vf)?;
    sync_dir(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(s: &Store, data: &[u8]) -> ObjectId {
        let t = s.begin().unwrap();
        let id = t.put(data).unwrap().id;
        t.commit().unwrap();
        id
    }

    #[test]
    fn put_get_dedup_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_or_init(dir.path()).unwrap();
        let data = vec![42u8; 10_000];
        let t = s.begin().unwrap();
        let a = t.put(&data).unwrap();
        assert!(a.new);
        assert!(!t.put(&data).unwrap().new);
        t.commit().unwrap();
        let t = s.begin().unwrap();
        assert!(!t.put(&data).unwrap().new, "deduplicated against the store");
        drop(t);
        assert_eq!(s.get(&a.id).unwrap(), data);
        let (objs, strays) = s.list_objects().unwrap();
        assert_eq!(objs.len(), 1);
        assert!(strays.is_empty(), "{strays:?}");

        let loc = s.object_location(&a.id).unwrap().unwrap();
        let mut bytes = fs::read(&loc.path).unwrap();
        let last = (loc.offset + loc.len - 1) as usize;
        bytes[last] ^= 0xff;
        fs::write(&loc.path, bytes).unwrap();
        assert!(matches!(s.verify(&a.id), Err(Error::Corrupt { .. })));
        assert!(matches!(
            s.get(&ObjectId::of(b"absent")),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn open_refuses_non_store_and_future_version() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(Store::open(dir.path()), Err(Error::NotAStore(_))));
        Store::open_or_init(dir.path()).unwrap();
        fs::write(dir.path().join(VERSION_FILE), "starling-store 99\n").unwrap();
        let e = Store::open(dir.path()).unwrap_err();
        assert!(e.to_string().contains("version 99"), "{e}");
    }

    #[test]
    fn another_handle_sees_objects_published_after_it_opened() {
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open_or_init(dir.path()).unwrap();
        let b = Store::open(dir.path()).unwrap();
        let first = put(&a, b"first");
        assert_eq!(b.get(&first).unwrap(), b"first");
        let second = put(&a, b"second");
        assert_eq!(b.get(&second).unwrap(), b"second");
    }

    #[test]
    fn refs_replace_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_or_init(dir.path()).unwrap();
        assert_eq!(s.read_ref("tags", "a").unwrap(), None);
        s.write_ref("tags", "a", b"1").unwrap();
        s.write_ref("tags", "a", b"2").unwrap();
        assert_eq!(s.read_ref("tags", "a").unwrap().unwrap(), b"2");
        assert_eq!(s.list_refs("tags").unwrap(), vec!["a".to_string()]);
        assert!(s.read_ref("tags", "../x").is_err());
        assert!(s.remove_ref("tags", "a").unwrap());
        assert!(!s.remove_ref("tags", "a").unwrap());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn gc_lock_excludes_writers() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_or_init(dir.path()).unwrap();
        let w = s.lock_writer().unwrap();
        assert!(matches!(s.lock_gc(false), Err(Error::Busy { .. })));
        drop(w);
        let _g = s.lock_gc(false).unwrap();
    }
}
