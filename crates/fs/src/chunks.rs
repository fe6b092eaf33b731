//! A small in-memory cache of decoded chunks, so reads that split a chunk (the kernel asks
//! in 128 KiB pieces, chunks are cut by content) decode it once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use starling_store::ObjectId;

pub struct ChunkCache {
    inner: Mutex<Inner>,
    budget: usize,
}

struct Inner {
    map: HashMap<ObjectId, (Arc<Vec<u8>>, u64)>,
    bytes: usize,
    tick: u64,
}

impl ChunkCache {
    pub fn new(budget: usize) -> ChunkCache {
        ChunkCache {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                bytes: 0,
                tick: 0,
            }),
            budget,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `id` is held (without counting as a use).
    pub fn contains(&self, id: &ObjectId) -> bool {
        self.lock().map.contains_key(id)
    }

    pub fn get(&self, id: &ObjectId) -> Option<Arc<Vec<u8>>> {
        let mut g = self.lock();
        g.tick += 1;
        let t = g.tick;
        g.map.get_mut(id).map(|e| {
            e.1 = t;
            e.0.clone()
        })
    }

    pub fn insert(&self, id: ObjectId, data: Arc<Vec<u8>>) {
        let mut g = self.lock();
        g.tick += 1;
        let t = g.tick;
        let len = data.len();
        if g.map.insert(id, (data, t)).is_none() {
            g.bytes += len;
        }
        // Evict least recently used entries (a scan: the map holds a few hundred chunks).
        while g.bytes > self.budget && g.map.len() > 1 {
            let Some(old) = g.map.iter().min_by_key(|(_, v)| v.1).map(|(k, _)| *k) else {
                break;
            };
            if let Some((d, _)) = g.map.remove(&old) {
                g.bytes -= d.len();
            }
        }
    }
}
