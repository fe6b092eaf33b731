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
        if !self.done {
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
}
