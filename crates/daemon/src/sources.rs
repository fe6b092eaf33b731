//! The host's object sources: the one host cache in front of every repository the daemon
//! reads (one HTTP client per repository, shared by all its mounts), and local stores.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use starling_repo::fetch::RemoteSource;
use starling_repo::pull::{ClientOptions, Remote};
use starling_store::cache::{CachedSource, HostCache};
use starling_store::{ObjectSource, Store};

use crate::config::Repository;
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
    /// The repositories the configuration lists (empty: any, trusted at first contact).
    repositories: Vec<Repository>,
    config_file: Option<PathBuf>,
}

/// A repository as the daemon reaches it: its URL and mirrors, the root to trust it with,
/// and the client options (proxies) for it.
#[derive(Debug, Clone)]
pub struct RepoAccess {
    pub remote: Remote,
    pub root: Option<PathBuf>,
    pub opts: ClientOptions,
}

impl HostObjects {
    pub fn open(
        dir: &Path,
        quota: u64,
        opts: ClientOptions,
        rt: tokio::runtime::Handle,
    ) -> starling_store::Result<HostObjects> {
        // Fetched objects of every image mounted here: the daemon's alone.
        starling_store::cache::private_dir(dir).map_err(|source| starling_store::Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let cache = HostCache::open(&dir.join("packs"), quota)?;
        Ok(HostObjects {
            cache: Arc::new(cache),
            fetch: Arc::new(FetchMetrics::default()),
            dir: dir.to_path_buf(),
            opts,
            rt,
            remotes: Mutex::new(HashMap::new()),
            stores: Mutex::new(HashMap::new()),
            repositories: Vec::new(),
            config_file: None,
        })
    }

    /// Serves only these repositories (from `file`), each with its pinned root.
    pub fn with_repositories(mut self, repos: Vec<Repository>, file: Option<PathBuf>) -> Self {
        self.repositories = repos;
        self.config_file = file;
        self
    }

    /// Whether `url` is a repository the configuration lists (with its pinned root).
    pub fn is_pinned(&self, url: &str) -> bool {
        Remote::parse(url).is_ok_and(|remote| {
            self.repositories
                .iter()
                .any(|r| r.remote.base == remote.base)
        })
    }

    /// The configuration file, for messages.
    pub fn config_file(&self) -> Option<&Path> {
        self.config_file.as_deref()
    }

    /// How to reach the repository at `url`, whose root a client may have given (`root`):
    /// a configured repository comes with its mirrors, proxies and pinned root (a client's
    /// root must be that one); an unlisted one is refused when the configuration lists any.
    pub fn repository(&self, url: &str, root: Option<&Path>) -> Result<RepoAccess, String> {
        let remote = Remote::parse(url).map_err(|e| e.to_string())?;
        let Some(r) = self
            .repositories
            .iter()
            .find(|r| r.remote.base == remote.base)
        else {
            if let Some(file) = self
                .config_file
                .as_ref()
                .filter(|_| !self.repositories.is_empty())
            {
                return Err(format!(
                    "repository {} is not one this host serves: {} lists the repositories \
                     starlingd mounts and runs images from; add a [[repository]] with its url \
                     and root there",
                    remote.base,
                    file.display()
                ));
            }
            return Ok(RepoAccess {
                remote,
                root: root.map(Path::to_path_buf),
                opts: self.opts.clone(),
            });
        };
        if let Some(given) = root {
            let b = std::fs::read(given).map_err(|e| format!("{}: {e}", given.display()))?;
            let info = starling_repo::trust::root_info(&b, &given.display().to_string())
                .map_err(|e| e.to_string())?;
            // The pinned file as it is now: loads read it again too, so both agree if it
            // was edited since the daemon started.
            let pinned = std::fs::read(&r.root)
                .map_err(|e| format!("{}: {e}", r.root.display()))
                .and_then(|b| {
                    starling_repo::trust::root_info(&b, &r.root.display().to_string())
                        .map_err(|e| e.to_string())
                })?;
            if info != pinned {
                return Err(format!(
                    "repository {} is trusted on this host with {} ({}); the root given, {}, \
                     is {info}: leave it out",
                    r.remote.base,
                    r.root.display(),
                    pinned,
                    given.display()
                ));
            }
        }
        let mut opts = self.opts.clone();
        if !r.proxies.is_empty() {
            opts.proxies = r.proxies.clone();
        }
        Ok(RepoAccess {
            remote: r.remote.clone(),
            root: Some(r.root.clone()),
            opts,
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
    pub fn remote(
        &self,
        access: &RepoAccess,
    ) -> Result<Arc<dyn ObjectSource>, starling_repo::Error> {
        let remote = &access.remote;
        let mut g = self.remotes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = g.get(remote.base.as_str()) {
            return Ok(Arc::new(s.clone()));
        }
        let inner = RemoteSource::new(remote.clone(), &access.opts, self.rt.clone())?;
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
            let access = self.repository(url, None)?;
            return self.remote(&access).map_err(|e| e.to_string());
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
