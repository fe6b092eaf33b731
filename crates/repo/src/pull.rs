//! Pulling from a repository: TUF metadata verified first (root chain from the trusted root,
//! then timestamp, snapshot, targets), the tag's record read as a verified target, then every
//! object fetched in parallel and checked against its content address before it is stored.
//! Objects already in the local store are not fetched, so an interrupted pull resumes.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use starling_image::chunk::Progress;
use starling_image::manifest::Commit;
use starling_image::reference::ImageRef;
use starling_image::tags;
use starling_image::walk::Walker;
use starling_store::{ObjectId, Store, Txn};
use tough::{IntoVec, RepositoryLoader, TargetName};

use crate::error::{invalid, tuf, Error, IoContext, Result};
use crate::fetch::{Fetched, Fetcher};
use crate::mirrors::{Proxy, RoutedTransport, Routes};
use crate::record::{is_record_target, target_name, ImageRecord};

use starling_store::MAX_MANIFEST;

const PARALLEL: usize = 16;

/// Where a repository is: `http(s)://…` or a local directory, and the mirrors that serve
/// copies of it. The repository's own URL is its identity (its trust state, what messages
/// name); any mirror may serve any file, all verified by the same root.
#[derive(Debug, Clone)]
pub struct Remote {
    pub base: url::Url,
    pub mirrors: Vec<url::Url>,
}

impl Remote {
    pub fn parse(s: &str) -> Result<Remote> {
        Ok(Remote {
            base: Self::parse_base(s)?,
            mirrors: Vec::new(),
        })
    }

    /// The same repository, also served by `mirrors` (URLs or directories), tried in order
    /// after its own URL.
    pub fn with_mirrors(
        mut self,
        mirrors: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Result<Remote> {
        for m in mirrors {
            let u = Self::parse_base(m.as_ref())?;
            if u != self.base && !self.mirrors.contains(&u) {
                self.mirrors.push(u);
            }
        }
        Ok(self)
    }

    fn parse_base(s: &str) -> Result<url::Url> {
        let base =
            if s.starts_with("http://") || s.starts_with("https://") || s.starts_with("file://") {
                url::Url::parse(s)
                    .map_err(|e| invalid(format!("repository URL {s:?}"), e.to_string()))?
            } else if let Some((scheme, _)) = s.split_once("://") {
                return Err(invalid(
                    format!("repository {s:?}"),
                    format!(
                        "unknown scheme {scheme:?}: give http://, https://, file:// or a directory"
                    ),
                ));
            } else {
                let p = std::fs::canonicalize(s).at(s)?;
                url::Url::from_directory_path(&p)
                    .map_err(|_| invalid(s.to_string(), "not a directory"))?
            };
        let mut base = base;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        Ok(base)
    }

    pub fn join(&self, rel: &str) -> Result<url::Url> {
        self.base
            .join(rel)
            .map_err(|e| invalid(format!("{}{rel}", self.base), e.to_string()))
    }
}

/// Options of a client session.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Per-request timeout: a slow or stalled server fails the pull instead of hanging it.
    pub timeout: Duration,
    /// How long a connection may take before the route counts as down.
    pub connect_timeout: Duration,
    pub parallel: usize,
    /// HTTP caching proxies to go through, in order (`DIRECT` among them: no proxy); none:
    /// as the environment says (`http_proxy`, `no_proxy`).
    pub proxies: Vec<Proxy>,
    /// Told when a route fails and the next one is taken (the CLI prints it, the daemon logs it).
    pub notify: Option<fn(&str)>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            parallel: PARALLEL,
            proxies: Vec::new(),
            notify: None,
        }
    }
}

/// The local trust state for a remote: its datastore directory under the store.
pub fn datastore(store: &Store, remote: &Remote) -> PathBuf {
    datastore_in(store.root(), remote)
}

pub(crate) fn datastore_in(dir: &Path, remote: &Remote) -> PathBuf {
    let h = crate::meta::sha2_hex(remote.base.as_str().as_bytes());
    dir.join("remotes").join(&h[..16])
}

/// Loads and verifies the remote's TUF metadata. The first contact needs `trusted_root`; after
/// that the datastore's (possibly rotated) root is used.
pub async fn open(
    store: &Store,
    remote: &Remote,
    trusted_root: Option<&Path>,
    opts: &ClientOptions,
) -> Result<tough::Repository> {
    open_at(store.root(), remote, trusted_root, opts).await
}

/// Why a repository never trusted here cannot be opened without its root metadata.
pub const FIRST_CONTACT: &str =
    "first contact: give the repository's trusted root metadata with --root ROOT.json";

/// As [`open`], with the trust state kept under `dir/remotes/` (the host cache's).
pub async fn open_at(
    dir: &Path,
    remote: &Remote,
    trusted_root: Option<&Path>,
    opts: &ClientOptions,
) -> Result<tough::Repository> {
    let ds = datastore_in(dir, remote);
    // Locked before the stored root is read (a load beside removes and rewrites it), but only
    // where a trust state exists: nothing is written for a repository never trusted here.
    // A first contact with a root to trust writes the trust state: locked too, once the
    // root given is known to be root metadata (a refused one leaves nothing behind).
    if !ds.is_dir() {
        if let Some(p) = trusted_root {
            let b = std::fs::read(p).at(p)?;
            crate::trust::root_info(&b, &p.display().to_string())?;
            std::fs::create_dir_all(&ds).at(&ds)?;
        }
    }
    let mut lock = if ds.is_dir() {
        Some(lock_trust_state(&ds).await?)
    } else {
        None
    };
    let Some(root) = crate::trust::root_for(dir, remote, trusted_root)? else {
        return Err(invalid(
            format!("repository {}", remote.base),
            FIRST_CONTACT,
        ));
    };
    if lock.is_none() {
        lock = Some(lock_trust_state(&ds).await?);
    }
    let routes = Routes::shared(remote, opts)?;
    let loaded = load_through(&root, &ds, remote, routes).await;
    drop(lock);
    loaded
}

/// An exclusive lock on a repository's trust state, across threads and processes (a mount
/// resolving while a group is polled, two pulls): tough rewrites its datastore's files in
/// place as it loads, so a load beside another could read one half-written. Released when
/// the file is dropped.
async fn lock_trust_state(ds: &Path) -> Result<std::fs::File> {
    let ds = ds.to_path_buf();
    tokio::task::spawn_blocking(move || crate::backend::lock_dir(&ds))
        .await
        .map_err(|e| invalid("trust state lock", e.to_string()))?
}

/// Loads the metadata through the first route that serves metadata which verifies: a mirror
/// whose metadata is tampered with, stale (older than what this host saw) or expired is set
/// aside and the next one is tried; the error names every route's failure.
pub(crate) async fn load_through(
    root: &[u8],
    ds: &Path,
    remote: &Remote,
    routes: Arc<Routes>,
) -> Result<tough::Repository> {
    let what = format!("verifying the metadata of {}", remote.base);
    let mut refused: Vec<String> = Vec::new();
    let mut passed_over = Vec::new();
    loop {
        let transport = RoutedTransport::new(routes.clone());
        let loaded =
            RepositoryLoader::new(&root, remote.join("metadata/")?, remote.join("targets/")?)
                .datastore(ds)
                .transport(transport.clone())
                .load()
                .await;
        let e = match loaded {
            Ok(repo) => {
                if let Some(served) = transport.last_served() {
                    routes.took_over(served, &passed_over);
                }
                return Ok(repo);
            }
            Err(e) => tuf(what.clone())(e),
        };
        // The route whose file did not verify; none when every route failed to answer (the
        // transport tried them all), there is no other route, or the failure is this host's
        // (its trust state), not what a route served.
        let blamed = transport
            .last_served()
            .filter(|_| routes.len() > 1 && !transport.exhausted())
            .filter(|_| matches!(e, Error::Tuf { .. } | Error::Fetch { .. }));
        let why = match &e {
            Error::Tuf { source, .. } => source.to_string(),
            other => other.to_string(),
        };
        match blamed {
            Some(i) => {
                routes.failed(i);
                refused.push(format!("{}: {why}", routes.route(i).describe()));
                passed_over.push((i, why));
                if refused.len() >= routes.len() {
                    break;
                }
            }
            None if refused.is_empty() => return Err(e),
            // The rest could not be reached: that stays a failure to reach the repository
            // (the offline fallback and the exit status depend on it), naming the refusals.
            None => {
                return Err(match e {
                    Error::Fetch { url, reason } => Error::Fetch {
                        url,
                        reason: format!("{reason}; refused before: {}", refused.join("; ")),
                    },
                    other => other,
                })
            }
        }
    }
    Err(Error::Tuf {
        what,
        source: format!(
            "no route serves metadata that verifies: {}",
            refused.join("; ")
        )
        .into(),
    })
}

/// Every image record the repository publishes.
pub async fn records(repo: &tough::Repository) -> Result<Vec<ImageRecord>> {
    let names: Vec<TargetName> = repo
        .all_targets()
        .filter(|(n, _)| is_record_target(n.raw()))
        .map(|(n, _)| n.clone())
        .collect();
    let mut out = Vec::new();
    for n in names {
        out.push(
            read_record(repo, &n)
                .await?
                .ok_or_else(|| Error::UnknownImage(n.raw().into()))?,
        );
    }
    out.sort_by(|a, b| (&a.name, &a.tag).cmp(&(&b.name, &b.tag)));
    Ok(out)
}

async fn read_record(repo: &tough::Repository, n: &TargetName) -> Result<Option<ImageRecord>> {
    let Some(stream) = repo
        .read_target(n)
        .await
        .map_err(tuf(format!("reading target {}", n.raw())))?
    else {
        return Ok(None);
    };
    let bytes = stream
        .into_vec()
        .await
        .map_err(tuf(format!("reading target {}", n.raw())))?;
    Ok(Some(ImageRecord::parse(&bytes, n.raw())?))
}

#[derive(Debug, serde::Serialize)]
pub struct PullReport {
    pub name: String,
    pub tag: String,
    pub version: String,
    pub objects: usize,
    pub fetched: usize,
    pub fetched_bytes: u64,
}

/// The record and version a reference names in a verified repository: `NAME:TAG` (the
/// tag's current version) or `NAME@VERSION` (any version a tag of that name ever held).
pub async fn resolve(repo: &tough::Repository, what: &ImageRef) -> Result<(ImageRecord, ObjectId)> {
    let (rec, version) = match what {
        ImageRef::Name { name } => {
            let all = records(repo).await?;
            let tags: Vec<String> = all
                .iter()
                .filter(|r| r.name == *name)
                .map(|r| r.tag.clone())
                .collect();
            let chosen = starling_image::reference::default_tag(name, &tags)?;
            if let Some(tag) = chosen {
                let rec = all
                    .into_iter()
                    .find(|r| r.name == *name && r.tag == tag)
                    .ok_or_else(|| Error::UnknownImage(what.to_string()))?;
                let v = rec.target.clone();
                (rec, v)
            } else if starling_image::reference::is_version_prefix(name) {
                // A bare version id: the one version of any image whose id starts with it.
                let candidates: Vec<(String, String)> = all
                    .iter()
                    .flat_map(|r| {
                        r.history
                            .iter()
                            .map(|h| (r.name.clone(), h.version.clone()))
                    })
                    .collect();
                let (owner, version) =
                    starling_image::reference::one_version(name, "the repository", candidates)?
                        .ok_or_else(|| Error::UnknownImage(what.to_string()))?;
                let rec = all
                    .into_iter()
                    .find(|r| r.name == owner && r.history.iter().any(|h| h.version == version))
                    .ok_or_else(|| Error::UnknownImage(what.to_string()))?;
                (rec, version)
            } else {
                return Err(Error::UnknownImage(what.to_string()));
            }
        }
        ImageRef::Tag { name, tag } => {
            let n = TargetName::new(target_name(name, tag)).map_err(tuf("target name"))?;
            let rec = read_record(repo, &n)
                .await?
                .ok_or_else(|| Error::UnknownImage(what.to_string()))?;
            if rec.name != *name || rec.tag != *tag {
                return Err(invalid(
                    format!("record {}", n.raw()),
                    format!("names {}:{}, not {name}:{tag}", rec.name, rec.tag),
                ));
            }
            let v = rec.target.clone();
            (rec, v)
        }
        ImageRef::Version { name, prefix } => {
            let mut hit = None;
            for rec in records(repo).await?.into_iter().filter(|r| r.name == *name) {
                if let Some(h) = rec
                    .history
                    .iter()
                    .find(|h| h.version.starts_with(prefix.as_str()))
                {
                    hit = Some((rec.clone(), h.version.clone()));
                    break;
                }
            }
            hit.ok_or_else(|| Error::UnknownImage(what.to_string()))?
        }
    };
    let id: ObjectId = version.parse().map_err(|_| {
        invalid(
            format!("record {}:{}", rec.name, rec.tag),
            format!("bad version id {version:?}"),
        )
    })?;
    Ok((rec, id))
}

/// An image reference resolved for a host (the daemon's mounts and VMs).
#[derive(Debug, Clone)]
pub struct Resolution {
    /// The image record's name.
    pub name: String,
    pub version: ObjectId,
    /// Set when the repository could not be reached and the version is the one this host
    /// last verified (see [`crate::remembered`]): says so, for the user.
    pub offline: Option<String>,
}

/// Resolves `what` through the repository's verified metadata (the trust state under
/// `dir/remotes/`) and remembers the answer; when the repository cannot be reached, answers
/// what this host last verified, while the metadata it was verified under has not expired.
pub async fn resolve_at(
    dir: &Path,
    remote: &Remote,
    trusted_root: Option<&Path>,
    opts: &ClientOptions,
    what: &ImageRef,
) -> Result<Resolution> {
    let online = async {
        let repo = open_at(dir, remote, trusted_root, opts).await?;
        let (rec, id) = resolve(&repo, what).await?;
        Ok::<_, Error>((repo, rec, id))
    }
    .await;
    use crate::remembered;
    match online {
        Ok((repo, rec, id)) => {
            // Best effort: a host that cannot write its trust state still runs what it verified.
            let _ = remembered::remember(dir, remote, what, &rec.name, &id, &repo);
            Ok(Resolution {
                name: rec.name,
                version: id,
                offline: None,
            })
        }
        Err(e) if remembered::is_unreachable(&e) => {
            let unreachable = |fallback: String| Error::Unreachable {
                repo: remote.base.to_string(),
                reason: remembered::why_unreachable(&e),
                fallback,
            };
            let Some(last) = remembered::recall(dir, remote, what) else {
                return Err(unreachable(format!(
                    "{what} was never resolved on this host, so nothing cached can stand in"
                )));
            };
            remembered::usable(&last)
                .map_err(|why| unreachable(format!("{what} cannot start from the cache: {why}")))?;
            let version: ObjectId = last.version.parse().map_err(|_| {
                unreachable(format!(
                    "{what}: its remembered version is not an object id"
                ))
            })?;
            Ok(Resolution {
                offline: Some(format!(
                    "repository {} is unreachable; {what} is {}@{} as this host verified it at {} \
                     (that metadata expires at {}); only what the host cache holds can be read",
                    remote.base,
                    last.name,
                    version.short(12),
                    remembered::when(last.verified_unix),
                    remembered::when(last.expires_unix)
                )),
                name: last.name,
                version,
            })
        }
        Err(e) => Err(e),
    }
}

/// Pulls `what` (NAME[:TAG] or NAME@VERSION, any version the tag ever held) and tags it
/// locally as NAME:TAG.
pub async fn pull(
    store: &Store,
    remote: &Remote,
    what: &ImageRef,
    trusted_root: Option<&Path>,
    opts: &ClientOptions,
    progress: &Progress,
) -> Result<PullReport> {
    let repo = open(store, remote, trusted_root, opts).await?;
    let (rec, id) = resolve(&repo, what).await?;
    let version = id.to_hex();
    let _writer = store.lock_writer()?;
    // Fetched objects are staged (kept across failed attempts, so a pull resumes) and enter
    // the store only when the whole image is verified: a refused pull writes nothing there.
    let txn = store.resume(&format!("pull-{}", id.to_hex()))?;
    let fetcher = Fetcher::new(remote.clone(), opts)?;
    let mut report = PullReport {
        name: rec.name.clone(),
        tag: rec.tag.clone(),
        version: version.clone(),
        objects: 0,
        fetched: 0,
        fetched_bytes: 0,
    };
    // Commit, then trees level by level, then chunks; each level fetched in parallel.
    let mut walk = Walker::new([id]);
    while let Some(level) = walk.next_level() {
        let want: Vec<(ObjectId, u64)> = level.iter().map(|t| (*t, MAX_MANIFEST)).collect();
        fetch_all(&txn, &fetcher, &want, &mut report, progress).await?;
        if level == [id] {
            let commit = Commit::decode(&id, &txn.get(&id)?)?;
            if commit.name != rec.name {
                return Err(invalid(
                    format!("version {}", id.short(12)),
                    format!("is an image named {:?}, not {:?}", commit.name, rec.name),
                ));
            }
        }
        for t in &level {
            walk.feed(t, &txn.get(t)?)?;
        }
    }
    let chunks = walk.finish().chunks;
    fetch_all(&txn, &fetcher, &chunks, &mut report, progress).await?;
    txn.commit()?;
    let _refs = store.lock_refs()?;
    tags::point(store, &rec.name, &rec.tag, id, "pull")?;
    Ok(report)
}

/// Fetches the objects the store lacks, `parallel` at a time, verifying each.
async fn fetch_all(
    store: &Txn<'_>,
    f: &Fetcher,
    want: &[(ObjectId, u64)],
    report: &mut PullReport,
    progress: &Progress,
) -> Result<()> {
    report.objects += want.len();
    let missing: Vec<(ObjectId, u64)> = want
        .iter()
        .filter(|(id, _)| !store.contains(id))
        .copied()
        .collect();
    let sem = Arc::new(tokio::sync::Semaphore::new(f.parallel));
    let mut set = tokio::task::JoinSet::new();
    for (id, len) in missing {
        let f = f.clone();
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| invalid("download slots", e.to_string()))?;
        set.spawn(async move {
            let r = f.get(&id, len).await;
            drop(permit);
            (id, r)
        });
        while let Some(done) = set.try_join_next() {
            finish(store, done, report, progress)?;
        }
    }
    while let Some(done) = set.join_next().await {
        finish(store, done, report, progress)?;
    }
    Ok(())
}

fn finish(
    store: &Txn<'_>,
    done: Result<Fetched, tokio::task::JoinError>,
    report: &mut PullReport,
    progress: &Progress,
) -> Result<()> {
    let (id, r) = done.map_err(|e| invalid("download task", e.to_string()))?;
    let (env, url) = r?;
    store
        .put_envelope(&id, &env)
        .map_err(|e| Error::BadObject {
            id: id.to_hex(),
            url,
            reason: e.to_string(),
        })?;
    report.fetched += 1;
    report.fetched_bytes += env.len() as u64;
    progress.files.fetch_add(1, Ordering::Relaxed);
    progress
        .bytes
        .fetch_add(env.len() as u64, Ordering::Relaxed);
    Ok(())
}
