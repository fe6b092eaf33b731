//! Write transactions: a writer appends its new objects to pack segments in a private
//! directory under `tmp/` and publishes them (fsynced, indexed, renamed into `packs/`) only
//! when it succeeds, so an import that fails on bad input leaves the store exactly as it
//! was, and no other writer can deduplicate against an object that might vanish.

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};

use crate::envelope;
use crate::error::IoContext;
use crate::lock::StoreLock;
use crate::pack::{self, Record};
use crate::packset::{new_segment_name, pack_path};
use crate::store::SEGMENT_MAX;
use crate::{ObjectId, PutOutcome, Result, Store};

pub struct Txn<'s> {
    store: &'s Store,
    dir: PathBuf,
    staging: Mutex<Staging>,
    done: bool,
    /// Kept on failure for a later attempt (see [`Store::resume`]).
    keep: bool,
    _lock: Option<StoreLock>,
}

#[derive(Default)]
struct Staging {
    /// Segments written so far; the last one is appended to.
    parts: Vec<Part>,
    staged: HashMap<ObjectId, (usize, Record)>,
}

struct Part {
    name: String,
    file: File,
    end: u64,
    records: Vec<Record>,
}

impl Part {
    fn create(dir: &Path) -> Result<Part> {
        let name = new_segment_name();
        let p = pack_path(dir, &name);
        Ok(Part {
            file: File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&p)
                .at(&p)?,
            name,
            end: 0,
            records: Vec::new(),
        })
    }
}

impl Store {
    /// Starts a transaction (taking the writer lock for its lifetime).
    pub fn begin(&self) -> Result<Txn<'_>> {
        let lock = self.lock_writer()?;
        self.begin_with(Some(lock))
    }

    /// A transaction for a caller that already holds the exclusive lock (collection).
    pub(crate) fn begin_with(&self, lock: Option<StoreLock>) -> Result<Txn<'_>> {
        self.upgrade_format()?;
        self.reload()?;
        let dir = self
            .root()
            .join("tmp")
            .join(format!("{}.txn", new_segment_name()));
        fs::create_dir_all(&dir).at(&dir)?;
        Ok(Txn {
            store: self,
            dir,
            staging: Mutex::new(Staging::default()),
            done: false,
            keep: false,
            _lock: lock,
        })
    }

    /// A named transaction that survives failure: what it staged stays under
    /// `tmp/NAME.txn` for the next attempt with the same name (a pull that resumes) until
    /// it commits or `gc` clears `tmp/`. Staged records are re-verified when resumed; damaged
    /// ones are dropped, and a torn tail is cut.
    pub fn resume(&self, name: &str) -> Result<Txn<'_>> {
        let lock = self.lock_writer()?;
        self.upgrade_format()?;
        self.reload()?;
        let dir = self.root().join("tmp").join(format!("{name}.txn"));
        fs::create_dir_all(&dir).at(&dir)?;
        let mut staging = Staging::default();
        let mut names: Vec<String> = Vec::new();
        for ent in fs::read_dir(&dir).at(&dir)? {
            let n = ent.at(&dir)?.file_name().to_string_lossy().into_owned();
            match n.strip_suffix(".pack") {
                Some(stem) => names.push(stem.to_string()),
                // Indexes of a commit that did not finish are written again.
                None => fs::remove_file(dir.join(&n)).at(dir.join(&n))?,
            }
        }
        names.sort();
        for name in names {
            let p = pack_path(&dir, &name);
            let file = pack::open_rw(&p)?;
            let (found, _dead, end) = pack::scan(&file, &p)?;
            file.set_len(end).at(&p)?;
            let mut records = Vec::new();
            for rec in found {
                let good = pack::read(&file, &p, &rec)
                    .and_then(|env| envelope::decode(&rec.id, &env))
                    .is_ok();
                if good && !staging.staged.contains_key(&rec.id) {
                    staging.staged.insert(rec.id, (staging.parts.len(), rec));
                    records.push(rec);
                } else {
                    pack::kill(&file, &p, &rec)?;
                }
            }
            staging.parts.push(Part {
                name,
                file,
                end,
                records,
            });
        }
        Ok(Txn {
            store: self,
            dir,
            staging: Mutex::new(staging),
            done: false,
            keep: true,
            _lock: Some(lock),
        })
    }
}

impl Txn<'_> {
    pub fn store(&self) -> &Store {
        self.store
    }

    fn lock(&self) -> MutexGuard<'_, Staging> {
        // A panic elsewhere cannot leave the staging half-updated: each append is recorded
        // only after its bytes are written.
        self.staging.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stages `data` unless the store or this transaction already has it.
    pub fn put(&self, data: &[u8]) -> Result<PutOutcome> {
        let id = ObjectId::of(data);
        if self.contains(&id) {
            return Ok(PutOutcome {
                id,
                new: false,
                stored_bytes: 0,
            });
        }
        // Compressed outside the lock: that is where the time goes.
        let env = envelope::encode(data, self.store.level());
        let new = self.append(&id, &env)?;
        let c = self.store.counters();
        if new {
            c.objects_written.fetch_add(1, Ordering::Relaxed);
            c.bytes_written
                .fetch_add(env.len() as u64, Ordering::Relaxed);
        }
        Ok(PutOutcome {
            id,
            new,
            stored_bytes: if new { env.len() as u64 } else { 0 },
        })
    }

    /// Stages an envelope received from elsewhere (a repository, a cache) after verifying
    /// it against `id`; false if the store or this transaction already has it.
    pub fn put_envelope(&self, id: &ObjectId, env: &[u8]) -> Result<bool> {
        if self.contains(id) {
            return Ok(false);
        }
        envelope::decode(id, env)?;
        self.append(id, env)
    }

    /// Copies a record already in the store into this transaction's segments (a repack or a
    /// migration): staged even though the store has it.
    pub(crate) fn put_copy(&self, id: &ObjectId, env: &[u8]) -> Result<bool> {
        envelope::decode(id, env)?;
        self.append(id, env)
    }

    /// Appends a record unless another thread staged the same object first.
    fn append(&self, id: &ObjectId, env: &[u8]) -> Result<bool> {
        let rec = pack::encode_record(id, env)?;
        let mut s = self.lock();
        if s.staged.contains_key(id) {
            return Ok(false);
        }
        let full = s
            .parts
            .last()
            .is_none_or(|p| p.end > 0 && p.end + rec.len() as u64 > SEGMENT_MAX);
        if full {
            s.parts.push(Part::create(&self.dir)?);
        }
        let n = s.parts.len() - 1;
        let part = &mut s.parts[n];
        let p = pack_path(&self.dir, &part.name);
        part.file.write_all_at(&rec, part.end).at(&p)?;
        let r = Record {
            id: *id,
            offset: part.end,
            len: (rec.len() as u64 - pack::HEADER) as u32,
        };
        part.end = r.end();
        part.records.push(r);
        s.staged.insert(*id, (n, r));
        Ok(true)
    }

    /// In the store, or staged here.
    pub fn contains(&self, id: &ObjectId) -> bool {
        self.lock().staged.contains_key(id) || self.store.contains(id)
    }

    /// Reads and verifies an object, staged or stored.
    pub fn get(&self, id: &ObjectId) -> Result<Vec<u8>> {
        let env = {
            let s = self.lock();
            match s.staged.get(id) {
                Some((part, rec)) => {
                    let part = &s.parts[*part];
                    Some(pack::read(
                        &part.file,
                        &pack_path(&self.dir, &part.name),
                        rec,
                    )?)
                }
                None => None,
            }
        };
        match env {
            Some(env) => envelope::decode(id, &env),
            None => self.store.get(id),
        }
    }

    /// How many objects this transaction has staged.
    pub fn staged(&self) -> usize {
        self.lock().staged.len()
    }

    /// Publishes every staged segment into the store, durably. After this returns, a ref
    /// naming these objects may be written.
    pub fn commit(mut self) -> Result<usize> {
        let s = std::mem::take(&mut *self.lock());
        let packs = self.store.packs()?;
        for part in &s.parts {
            if part.records.is_empty() {
                continue;
            }
            packs.publish(&self.dir, &part.name, &part.records)?;
        }
        packs.sync_dir()?;
        self.done = true;
        let _ = fs::remove_dir_all(&self.dir);
        Ok(s.staged.len())
    }
}

impl Drop for Txn<'_> {
    fn drop(&mut self) {
        if !self.done && !self.keep {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abandoned_txn_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_or_init(dir.path()).unwrap();
        {
            let t = s.begin().unwrap();
            let o = t.put(b"some bytes").unwrap();
            assert!(o.new);
            assert!(!t.put(b"some bytes").unwrap().new);
            assert!(!s.contains(&o.id));
            assert_eq!(t.get(&o.id).unwrap(), b"some bytes");
        }
        assert!(s.list_objects().unwrap().0.is_empty());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);

        let t = s.begin().unwrap();
        let o = t.put(b"some bytes").unwrap();
        assert_eq!(t.commit().unwrap(), 1);
        assert_eq!(s.get(&o.id).unwrap(), b"some bytes");
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn resumed_txn_keeps_verified_objects_across_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_or_init(dir.path()).unwrap();
        let a = b"first object".to_vec();
        let b = b"second object".to_vec();
        let (ia, ib) = (ObjectId::of(&a), ObjectId::of(&b));
        let env = |d: &[u8]| envelope::encode(d, 3);
        {
            let t = s.resume("pull-x").unwrap();
            assert!(t.put_envelope(&ia, &env(&a)).unwrap());
            assert!(t.put_envelope(&ib, &env(&b)).unwrap());
            // A wrong envelope for an id is refused and not staged.
            assert!(t.put_envelope(&ia, &env(&b)).is_ok_and(|new| !new));
            assert!(t.put_envelope(&ObjectId::of(b"zz"), &env(&b)).is_err());
        }
        // Failed attempt: nothing in the store, both staged for the next one.
        assert!(s.list_objects().unwrap().0.is_empty());
        // Damage the second record's payload and tear the segment's tail.
        let tdir = dir.path().join("tmp/pull-x.txn");
        let seg = fs::read_dir(&tdir).unwrap().next().unwrap().unwrap().path();
        let mut bytes = fs::read(&seg).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 0xff;
        bytes.extend_from_slice(b"SLPK\x01\0\0\0\xff");
        fs::write(&seg, bytes).unwrap();
        let t = s.resume("pull-x").unwrap();
        assert!(t.contains(&ia));
        assert!(!t.contains(&ib), "a damaged staged record is dropped");
        assert_eq!(t.get(&ia).unwrap(), a);
        assert!(t.put_envelope(&ib, &env(&b)).unwrap());
        assert_eq!(t.commit().unwrap(), 2);
        assert_eq!(s.get(&ib).unwrap(), b);
        assert!(!tdir.exists());
        assert!(s.verify(&ia).is_ok() && s.verify(&ib).is_ok());
    }

    #[test]
    fn big_transactions_span_segments() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_or_init(dir.path()).unwrap();
        let t = s.begin().unwrap();
        // Incompressible 1 MiB objects: 130 MiB crosses the segment limit.
        let mut x = 1u64;
        let mut ids = Vec::new();
        for _ in 0..130 {
            let data: Vec<u8> = (0..1 << 20)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 24) as u8
                })
                .collect();
            ids.push(t.put(&data).unwrap().id);
        }
        t.commit().unwrap();
        let packs = fs::read_dir(dir.path().join("packs"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "pack")
            })
            .count();
        assert_eq!(packs, 2);
        let s2 = Store::open(dir.path()).unwrap();
        for id in &ids {
            s2.verify(id).unwrap();
        }
    }
}
