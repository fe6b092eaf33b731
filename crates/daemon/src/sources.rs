//! The host's object sources: the one host cache in front of every repository the daemon
//! reads (one HTTP client per repository, shared by all its mounts), and local stores.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use starling_repo::fetch::RemoteSource;
use starling_repo::pull::{ClientOptions, Remote};
use starling_store::cache::{CachedSource, HostCache};
use starling_store::{ObjectSource, Store};

use crate::metrics::{FetchMetrics, Timed};

pub struct HostObjects {
    pub cache: Arc<HostCache>,
    /// Every repository fetch's latency and failures (`GET /metrics`).
    pub fetch: Arc<FetchMetrics>,
    /// The cache's directory: `packs/` (the cache's segments), `remotes/` (each repository's
    /// TUF trust state).
    dir: PathBuf,
    pub opts: ClientOptions,
    rt: tokio::runtime::Handle,
    remotes: Mutex<HashMap<String, CachedSource>>,
    stores: Mutex<HashMap<String, Arc<Store>>>,
}

impl HostObjects {
    pub fn open(
        dir: &Path,
        quota: u64,
        opts: ClientOptions,
        rt: tokio::runtime::Handle,
    ) -> starling_store::Result<HostObjects> {
        let cache = HostCache::open(&dir.join("packs"), quota)?;
        Ok(HostObjects {
            cache: Arc::new(cache),
            fetch: Arc::new(FetchMetrics::default()),
            dir: dir.to_path_buf(),
            opts,
            rt,
            remotes: Mutex::new(HashMap::new()),
            stores: Mutex::new(HashMap::new()),
        })
    }

    /// Where repositories' trust state lives (`remotes/` below it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.rt
    }

    /// A repository's objects through the host cache.
    pub fn remote(&self, remote: &Remote) -> Result<Arc<dyn ObjectSource>, starling_repo::Error> {
        let mut g = self.remotes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = g.get(remote.base.as_str()) {
            return Ok(Arc::new(s.clone()));
        }
        let inner = RemoteSource::new(remote.clone(), &self.opts, self.rt.clone())?;
        let timed = Timed {
            inner: Arc::new(inner),
            metrics: self.fetch.clone(),
        };
        let s = self.cache.over(Arc::new(timed));
        g.insert(remote.base.to_string(), s.clone());
        Ok(Arc::new(s))
    }

    /// The source a name gives: `repo:URL` through the host cache, `store:PATH` a local store
    /// (as the object socket and VM records name them).
    pub fn object_source(&self, name: &str) -> Result<Arc<dyn ObjectSource>, String> {
        if let Some(url) = name.strip_prefix("repo:") {
            let remote = Remote::parse(url).map_err(|e| e.to_string())?;
            return self.remote(&remote).map_err(|e| e.to_string());
        }
        if let Some(path) = name.strip_prefix("store:") {
            let mut g = self.stores.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = g.get(path) {
                return Ok(s.clone());
            }
            let s = Arc::new(Store::open(path).map_err(|e| e.to_string())?);
            g.insert(path.to_string(), s.clone());
            return Ok(s);
        }
        Err(format!(
            "object source {name:?} is neither repo:URL nor store:PATH"
        ))
    }
}
