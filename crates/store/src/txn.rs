//! Write transactions: a writer stages its new objects in a private directory and moves them
//! into `objects/` only when it succeeds, so an import that fails on bad input leaves the store
//! exactly as it was, and no other writer can deduplicate against an object that might vanish.

use std::collections::HashSet;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use crate::envelope;
use crate::error::IoContext;
use crate::{ObjectId, PutOutcome, Result, Store};

pub struct Txn<'s> {
    store: &'s Store,
    dir: PathBuf,
    staged: Mutex<HashSet<ObjectId>>,
    done: bool,
    /// Kept on failure for a later attempt (see [`Store::resume`]).
    keep: bool,
}

impl Store {
    /// Starts a transaction. Hold [`Store::lock_writer`] for as long as it lives.
    pub fn begin(&self) -> Result<Txn<'_>> {
        let (tmp, f) = self.temp_file()?;
        drop(f);
        fs::remove_file(&tmp).at(&tmp)?;
        let mut dir = tmp.into_os_string();
        dir.push(".txn");
        let dir = PathBuf::from(dir);
        fs::create_dir(&dir).at(&dir)?;
        Ok(Txn {
            store: self,
            dir,
            staged: Mutex::new(HashSet::new()),
            done: false,
            keep: false,
        })
    }

    /// A named transaction that survives failure: what it staged stays under
    /// `tmp/NAME.txn` for the next attempt with the same name (a pull that resumes) until
    /// it commits or `gc` clears `tmp/`. Staged files are re-verified when resumed; damaged
    /// ones are dropped. Hold [`Store::lock_writer`] for as long as it lives.
    pub fn resume(&self, name: &str) -> Result<Txn<'_>> {
        let dir = self.root().join("tmp").join(format!("{name}.txn"));
        fs::create_dir_all(&dir).at(&dir)?;
        let mut staged = HashSet::new();
        for ent in fs::read_dir(&dir).at(&dir)? {
            let p = ent.at(&dir)?.path();
            let id = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<ObjectId>().ok());
            let good = id.filter(|id| {
                fs::read(&p)
                    .ok()
                    .is_some_and(|env| envelope::decode(id, &env).is_ok())
            });
            match good {
                Some(id) => {
                    staged.insert(id);
                }
                None => fs::remove_file(&p).at(&p)?,
            }
        }
        Ok(Txn {
            store: self,
            dir,
            staged: Mutex::new(staged),
            done: false,
            keep: true,
        })
    }
}

impl Txn<'_> {
    pub fn store(&self) -> &Store {
        self.store
    }

    /// Stages `data` unless the store or this transaction already has it.
    pub fn put(&self, data: &[u8]) -> Result<PutOutcome> {
        let id = ObjectId::of(data);
        if self.store.contains(&id) || self.is_staged(&id) {
            return Ok(PutOutcome {
                id,
                new: false,
                stored_bytes: 0,
            });
        }
        let env = envelope::encode(data, self.store.level());
        let path = self.dir.join(id.to_hex());
        fs::write(&path, &env).at(&path)?;
        // Two threads may race to stage the same object; both wrote identical bytes.
        let new = self.lock_staged().insert(id);
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

    /// Stages an envelope received from elsewhere (a repository) after verifying it against
    /// `id`; false if the store or this transaction already has it.
    pub fn put_envelope(&self, id: &ObjectId, env: &[u8]) -> Result<bool> {
        if self.contains(id) {
            return Ok(false);
        }
        envelope::decode(id, env)?;
        let path = self.dir.join(id.to_hex());
        // Written under a temporary name: a resumed transaction trusts only whole files.
        let tmp = self.dir.join(format!(".{}.part", id.to_hex()));
        fs::write(&tmp, env).at(&tmp)?;
        fs::rename(&tmp, &path).at(&path)?;
        Ok(self.lock_staged().insert(*id))
    }

    /// In the store, or staged here.
    pub fn contains(&self, id: &ObjectId) -> bool {
        self.is_staged(id) || self.store.contains(id)
    }

    /// Reads and verifies an object, staged or stored.
    pub fn get(&self, id: &ObjectId) -> Result<Vec<u8>> {
        if self.is_staged(id) {
            let p = self.dir.join(id.to_hex());
            let env = fs::read(&p).at(&p)?;
            return envelope::decode(id, &env);
        }
        self.store.get(id)
    }

    fn is_staged(&self, id: &ObjectId) -> bool {
        self.lock_staged().contains(id)
    }

    fn lock_staged(&self) -> std::sync::MutexGuard<'_, HashSet<ObjectId>> {
        // A panic elsewhere cannot leave the set half-updated: insert is atomic.
        self.staged.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves every staged object into the store and makes it durable. After this returns, a
    /// ref naming these objects may be written.
    pub fn commit(mut self) -> Result<usize> {
        let ids: Vec<ObjectId> = self.lock_staged().iter().copied().collect();
        for id in &ids {
            let from = self.dir.join(id.to_hex());
            let to = self.store.object_path(id);
            fs::rename(&from, &to).at(&to)?;
        }
        self.store.sync()?;
        self.done = true;
        let _ = fs::remove_dir_all(&self.dir);
        Ok(ids.len())
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
        }
        assert!(s.list_objects().unwrap().0.is_empty());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);

        let t = s.begin().unwrap();
        let o = t.put(b"some bytes").unwrap();
        assert_eq!(t.commit().unwrap(), 1);
        assert_eq!(s.get(&o.id).unwrap(), b"some bytes");
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
        let staged = dir.path().join("tmp/pull-x.txn").join(ib.to_hex());
        fs::write(&staged, b"damaged").unwrap();
        let t = s.resume("pull-x").unwrap();
        assert!(t.contains(&ia));
        assert!(!t.contains(&ib), "a damaged staged file is dropped");
        assert_eq!(t.get(&ia).unwrap(), a);
        assert!(t.put_envelope(&ib, &env(&b)).unwrap());
        assert_eq!(t.commit().unwrap(), 2);
        assert_eq!(s.get(&ib).unwrap(), b);
        assert!(!dir.path().join("tmp/pull-x.txn").exists());
    }
}
