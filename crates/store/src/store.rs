use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::envelope;
use crate::error::IoContext;
use crate::lock::{self, LockMode, StoreLock};
use crate::refs::sync_dir;
use crate::{Error, ObjectId, Result};

/// Version of the store's directory layout, written to `starling-store` at creation.
pub const STORE_FORMAT_VERSION: u32 = 1;
const VERSION_FILE: &str = "starling-store";
// Level 9: the measured point where the store beats ostree's zlib archive on bytes while
// importing several times faster (bench/results/store-import.md).
const DEFAULT_ZSTD_LEVEL: i32 = 9;

/// An object store rooted at a directory:
///
/// ```text
/// starling-store      "starling-store 1": layout version
/// objects/ab/cdef…    one envelope per object, named by its id
/// refs/<ns>/<name>    atomically replaced ref files
/// tmp/                temp files of writers in flight (swept by gc)
/// lock, refs.lock     advisory locks (see `lock`)
/// ```
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    level: i32,
    counters: StoreCounters,
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

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// Opens an existing store.
    pub fn open(root: impl AsRef<Path>) -> Result<Store> {
        let root = root.as_ref().to_path_buf();
        let vf = root.join(VERSION_FILE);
        let text = match fs::read_to_string(&vf) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(Error::NotAStore(root)),
            Err(e) => return Err(e).at(vf),
        };
        let found = text.trim().strip_prefix("starling-store ").unwrap_or("?");
        if found != STORE_FORMAT_VERSION.to_string() {
            return Err(Error::UnsupportedStoreVersion {
                path: root,
                found: found.to_string(),
                supported: STORE_FORMAT_VERSION,
            });
        }
        Ok(Store {
            root,
            level: DEFAULT_ZSTD_LEVEL,
            counters: StoreCounters::default(),
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
        for sub in ["objects", "refs", "tmp"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).at(&p)?;
        }
        for i in 0..=255u8 {
            let p = root.join("objects").join(hex::encode([i]));
            fs::create_dir_all(&p).at(&p)?;
        }
        let tmp = root
            .join("tmp")
            .join(format!("init-{}", std::process::id()));
        fs::write(&tmp, format!("starling-store {STORE_FORMAT_VERSION}\n")).at(&tmp)?;
        let vf = root.join(VERSION_FILE);
        fs::rename(&tmp, &vf).at(&vf)?;
        sync_dir(root)?;
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

    pub fn object_path(&self, id: &ObjectId) -> PathBuf {
        let hex = id.to_hex();
        self.root.join("objects").join(&hex[..2]).join(&hex[2..])
    }

    pub fn contains(&self, id: &ObjectId) -> bool {
        self.object_path(id).exists()
    }

    /// Stores `data` under its BLAKE3 id. Not durable until [`Store::sync`].
    pub fn put(&self, data: &[u8]) -> Result<PutOutcome> {
        let id = ObjectId::of(data);
        self.put_with_id(id, data)
    }

    /// Like [`Store::put`] for a caller that already hashed `data`.
    pub fn put_with_id(&self, id: ObjectId, data: &[u8]) -> Result<PutOutcome> {
        let dest = self.object_path(&id);
        if dest.exists() {
            return Ok(PutOutcome {
                id,
                new: false,
                stored_bytes: 0,
            });
        }
        let env = envelope::encode(data, self.level);
        self.install(&dest, &env)?;
        self.counters
            .objects_written
            .fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_written
            .fetch_add(env.len() as u64, Ordering::Relaxed);
        Ok(PutOutcome {
            id,
            new: true,
            stored_bytes: env.len() as u64,
        })
    }

    /// Stores an envelope received from elsewhere (a repository), after verifying it.
    pub fn put_envelope(&self, id: &ObjectId, env: &[u8]) -> Result<bool> {
        envelope::decode(id, env)?;
        let dest = self.object_path(id);
        if dest.exists() {
            return Ok(false);
        }
        self.install(&dest, env)?;
        Ok(true)
    }

    fn install(&self, dest: &Path, env: &[u8]) -> Result<()> {
        let (tmp, mut f) = self.temp_file()?;
        let r = f.write_all(env).at(&tmp).and_then(|()| {
            drop(f);
            fs::rename(&tmp, dest).at(dest)
        });
        if r.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        r
    }

    pub(crate) fn temp_file(&self) -> Result<(PathBuf, File)> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = format!(
            "{}-{}-{}",
            std::process::id(),
            nanos,
            TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = self.root.join("tmp").join(name);
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .at(&path)?;
        Ok((path, f))
    }

    /// Reads and verifies an object.
    pub fn get(&self, id: &ObjectId) -> Result<Vec<u8>> {
        let env = self.get_envelope(id)?;
        self.counters.objects_read.fetch_add(1, Ordering::Relaxed);
        envelope::decode(id, &env)
    }

    /// The stored envelope, unverified (callers that ship it verify on arrival).
    pub fn get_envelope(&self, id: &ObjectId) -> Result<Vec<u8>> {
        let path = self.object_path(id);
        match fs::read(&path) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(Error::NotFound(*id)),
            Err(e) => Err(e).at(path),
        }
    }

    /// Re-reads and re-hashes an object.
    pub fn verify(&self, id: &ObjectId) -> Result<()> {
        let env = self.get_envelope(id)?;
        envelope::decode(id, &env).map(|_| ())
    }

    /// Every object on disk with its stored size. Files whose names are not object ids are
    /// reported in the second list.
    pub fn list_objects(&self) -> Result<(Vec<ObjectInfo>, Vec<PathBuf>)> {
        let mut out = Vec::new();
        let mut strays = Vec::new();
        for i in 0..=255u8 {
            let prefix = hex::encode([i]);
            let dir = self.root.join("objects").join(&prefix);
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e).at(dir),
            };
            for ent in rd {
                let ent = ent.at(&dir)?;
                let name = ent.file_name();
                let parsed = name
                    .to_str()
                    .and_then(|n| format!("{prefix}{n}").parse::<ObjectId>().ok());
                match parsed {
                    Some(id) => {
                        let len = ent.metadata().at(ent.path())?.len();
                        out.push(ObjectInfo {
                            id,
                            stored_bytes: len,
                        });
                    }
                    None => strays.push(ent.path()),
                }
            }
        }
        Ok((out, strays))
    }

    pub fn remove_object(&self, id: &ObjectId) -> Result<()> {
        let path = self.object_path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).at(path),
        }
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

    /// Makes everything written so far durable (one `syncfs` instead of an fsync per object),
    /// to be called before writing a ref that names new objects.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_dedup_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_or_init(dir.path()).unwrap();
        let data = vec![42u8; 10_000];
        let a = s.put(&data).unwrap();
        assert!(a.new);
        let b = s.put(&data).unwrap();
        assert!(!b.new);
        assert_eq!(a.id, b.id);
        assert_eq!(s.get(&a.id).unwrap(), data);
        let (objs, strays) = s.list_objects().unwrap();
        assert_eq!(objs.len(), 1);
        assert!(strays.is_empty());

        let path = s.object_path(&a.id);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, bytes).unwrap();
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
