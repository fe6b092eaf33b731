//! A mount's view of its object source (the local store, or a repository through the host
//! cache): every read verified by the source, counted here by where it was answered from,
//! and the mount's background prefetch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use starling_store::{ObjectId, ObjectSource, Origin, MAX_MANIFEST};

/// Why the file system could not answer (the guest or reader gets EIO; this is logged).
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error(transparent)]
    Object(#[from] starling_store::Error),
    #[error(transparent)]
    Image(#[from] starling_image::Error),
    #[error("{0}")]
    Invalid(String),
}

pub type ObjResult<T> = std::result::Result<T, FsError>;

/// The objects of one mount.
pub struct Objects {
    source: Arc<dyn ObjectSource>,
    counters: Arc<Counters>,
}

impl Objects {
    pub fn new(source: Arc<dyn ObjectSource>, counters: Arc<Counters>) -> Objects {
        Objects { source, counters }
    }

    pub fn source(&self) -> &Arc<dyn ObjectSource> {
        &self.source
    }

    fn read(&self, id: &ObjectId, max_len: u64, meta: bool) -> ObjResult<Arc<Vec<u8>>> {
        let (b, origin) = self.source.read(id, max_len)?;
        self.count(b.len(), origin, meta);
        Ok(Arc::new(b))
    }

    fn count(&self, n: usize, origin: Origin, meta: bool) {
        let n = n as u64;
        match origin {
            Origin::Remote => {
                Counters::add(&self.counters.fetched, n);
                if meta {
                    Counters::add(&self.counters.fetched_meta, n);
                }
            }
            Origin::Cache | Origin::Local => Counters::add(&self.counters.cached, n),
        }
    }

    /// A commit or tree.
    pub fn manifest(&self, id: &ObjectId) -> ObjResult<Arc<Vec<u8>>> {
        self.read(id, MAX_MANIFEST, true)
    }

    /// Commits or trees, each handed to `each` with its index as it arrives: one request to a
    /// source with a round trip per request.
    pub fn manifests_each(
        &self,
        wanted: &[ObjectId],
        each: &mut dyn FnMut(usize, ObjResult<Arc<Vec<u8>>>),
    ) {
        let asked: Vec<(ObjectId, u64)> = wanted.iter().map(|id| (*id, MAX_MANIFEST)).collect();
        self.source.read_each(&asked, &mut |i, r| {
            let r = r.map_err(FsError::from).map(|(b, origin)| {
                self.count(b.len(), origin, true);
                Arc::new(b)
            });
            each(i, r);
        });
    }

    /// A chunk of `len` bytes (its length is checked).
    pub fn chunk(&self, id: &ObjectId, len: u32) -> ObjResult<Arc<Vec<u8>>> {
        let b = self.read(id, u64::from(len), false)?;
        check_chunk(id, len, b)
    }

    /// Chunks (with their lengths, checked), each handed to `each` with its index as it
    /// arrives: one request to a source with a round trip per request.
    pub fn chunks_each(
        &self,
        wanted: &[(ObjectId, u32)],
        each: &mut dyn FnMut(usize, ObjResult<Arc<Vec<u8>>>),
    ) {
        let asked: Vec<(ObjectId, u64)> = wanted
            .iter()
            .map(|(id, len)| (*id, u64::from(*len)))
            .collect();
        self.source.read_each(&asked, &mut |i, r| {
            let r = r.map_err(FsError::from).and_then(|(b, origin)| {
                self.count(b.len(), origin, false);
                check_chunk(&wanted[i].0, wanted[i].1, Arc::new(b))
            });
            each(i, r);
        });
    }

    /// Keeps objects an open file needs in a size-limited cache.
    pub fn pin(&self, ids: &[ObjectId]) {
        self.source.pin(ids);
    }

    pub fn unpin(&self, ids: &[ObjectId]) {
        self.source.unpin(ids);
    }

    /// Fetches objects in the background (a prefetch list); failures only log, since a later
    /// read fetches on demand and reports its own error.
    pub fn prefetch(&self, ids: &[(ObjectId, u64)]) {
        let queue = Arc::new(Mutex::new(std::collections::VecDeque::from(ids.to_vec())));
        for _ in 0..PREFETCH_THREADS {
            let queue = queue.clone();
            let source = self.source.clone();
            let counters = self.counters.clone();
            std::thread::spawn(move || loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                let Some((id, len)) = next else { break };
                match source.read(&id, len) {
                    Ok((b, Origin::Remote)) => Counters::add(&counters.prefetched, b.len() as u64),
                    Ok(_) => {}
                    Err(e) => eprintln!("starling prefetch: {e}"),
                }
            });
        }
    }
}

const PREFETCH_THREADS: usize = 8;

fn check_chunk(id: &ObjectId, len: u32, b: Arc<Vec<u8>>) -> ObjResult<Arc<Vec<u8>>> {
    if b.len() != len as usize {
        return Err(FsError::Invalid(format!(
            "chunk {} is {} bytes, its file says {len}",
            id.short(12),
            b.len()
        )));
    }
    Ok(b)
}

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
