//! Where a mount's objects come from: a local store, or the host cache in front of a
//! repository. Every source hands out verified bytes only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use starling_repo::cache::{HostCache, Origin};
use starling_repo::pull::Remote;
use starling_store::{ObjectId, Store};

/// A failed read, with the line to log (the file system answers EIO).
pub type ObjResult<T> = std::result::Result<T, String>;

pub trait Objects: Send + Sync + 'static {
    /// The object's bytes, verified against `id`. `max_len` bounds what may be fetched for it
    /// (its known size for chunks).
    fn get(&self, id: &ObjectId, max_len: u64) -> ObjResult<Arc<Vec<u8>>>;

    /// Marks objects an open file needs, so a size-limited cache keeps them (see
    /// [`Objects::unpin`]). Sources without eviction ignore it.
    fn pin(&self, _ids: &[ObjectId]) {}
    fn unpin(&self, _ids: &[ObjectId]) {}

    /// Starts fetching objects in the background (prefetch); sources that read locally
    /// ignore it.
    fn prefetch(&self, _ids: &[(ObjectId, u64)]) {}
}

/// A local store: objects are read (and verified) from disk.
pub struct LocalObjects {
    store: Store,
    counters: Arc<Counters>,
}

impl LocalObjects {
    pub fn new(store: Store, counters: Arc<Counters>) -> Self {
        LocalObjects { store, counters }
    }
}

impl Objects for LocalObjects {
    fn get(&self, id: &ObjectId, _max_len: u64) -> ObjResult<Arc<Vec<u8>>> {
        let b = self
            .store
            .get(id)
            .map_err(|e| format!("object {}: {e}", id.short(12)))?;
        Counters::add(&self.counters.cached, b.len() as u64);
        Ok(Arc::new(b))
    }
}

/// A repository through the host cache: objects come from the cache, or are fetched (once
/// per host) and verified.
pub struct RemoteObjects {
    cache: Arc<HostCache>,
    remote: Remote,
    counters: Arc<Counters>,
}

impl RemoteObjects {
    pub fn new(cache: Arc<HostCache>, remote: Remote, counters: Arc<Counters>) -> Self {
        RemoteObjects {
            cache,
            remote,
            counters,
        }
    }
}

impl Objects for RemoteObjects {
    fn get(&self, id: &ObjectId, max_len: u64) -> ObjResult<Arc<Vec<u8>>> {
        match self.cache.get(&self.remote, id, max_len) {
            Ok((b, Origin::Cache)) => {
                Counters::add(&self.counters.cached, b.len() as u64);
                Ok(Arc::new(b))
            }
            Ok((b, Origin::Fetched)) => {
                Counters::add(&self.counters.fetched, b.len() as u64);
                if max_len == crate::inodes::MAX_MANIFEST {
                    Counters::add(&self.counters.fetched_meta, b.len() as u64);
                }
                Ok(Arc::new(b))
            }
            Err(e) => Err(format!("object {}: {e}", id.short(12))),
        }
    }

    fn pin(&self, ids: &[ObjectId]) {
        self.cache.pin(ids);
    }

    fn unpin(&self, ids: &[ObjectId]) {
        self.cache.unpin(ids);
    }

    fn prefetch(&self, ids: &[(ObjectId, u64)]) {
        // A few background threads work through the list; failures only log (a later read
        // fetches on demand and reports its own error).
        let queue = Arc::new(Mutex::new(std::collections::VecDeque::from(ids.to_vec())));
        for _ in 0..PREFETCH_THREADS {
            let queue = queue.clone();
            let cache = self.cache.clone();
            let remote = self.remote.clone();
            let counters = self.counters.clone();
            std::thread::spawn(move || loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                let Some((id, len)) = next else { break };
                match cache.get(&remote, &id, len) {
                    Ok((b, Origin::Fetched)) => Counters::add(&counters.prefetched, b.len() as u64),
                    Ok(_) => {}
                    Err(e) => eprintln!("starling prefetch: {e}"),
                }
            });
        }
    }
}

const PREFETCH_THREADS: usize = 8;

/// Per-mount traffic counters.
#[derive(Default, Debug)]
pub struct Counters {
    /// Bytes returned to readers.
    pub served: AtomicU64,
    /// Object bytes this mount had fetched from the origin.
    pub fetched: AtomicU64,
    /// Of those, fetched ahead of use from a prefetch list.
    pub prefetched: AtomicU64,
    /// Of those, manifests (the commit and directory trees): metadata.
    pub fetched_meta: AtomicU64,
    /// Object bytes this mount read from the host cache (or the local store).
    pub cached: AtomicU64,
    pub reads: AtomicU64,
    pub errors: AtomicU64,
}

#[derive(Debug, Serialize, Deserialize, Clone, Copy)]
pub struct CounterValues {
    pub served: u64,
    pub fetched: u64,
    pub prefetched: u64,
    #[serde(default)]
    pub fetched_meta: u64,
    pub cached: u64,
    pub reads: u64,
    pub errors: u64,
}

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    pub fn values(&self) -> CounterValues {
        CounterValues {
            served: Self::get(&self.served),
            fetched: Self::get(&self.fetched),
            prefetched: Self::get(&self.prefetched),
            fetched_meta: Self::get(&self.fetched_meta),
            cached: Self::get(&self.cached),
            reads: Self::get(&self.reads),
            errors: Self::get(&self.errors),
        }
    }
}
