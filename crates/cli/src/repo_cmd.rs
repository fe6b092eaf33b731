//! `starling repo …`, `starling push`, `starling pull`: TUF-signed repositories.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use starling_image::reference::ImageRef;
use starling_repo::backend::Backend;
use starling_repo::keys::{KeyDir, Policy};
use starling_repo::meta::Repo;
use starling_repo::pull::{ClientOptions, Remote};
use starling_store::Store;

use crate::format::parse_duration;
use crate::progress::showing;

/// The default validity of timestamp, snapshot, targets and root metadata: the repository
/// library's `Policy::default()` as a user writes it (a test keeps the two equal).
const EXPIRES: [&str; 4] = ["1d", "30d", "90d", "365d"];

#[derive(Subcommand)]
pub enum RepoCmd {
    /// Create a repository: TUF root, targets, snapshot and timestamp roles with fresh ed25519
    /// keys kept in a key directory outside the repository
    Init {
        /// A directory, or s3://BUCKET[/PREFIX] (AWS_* environment variables give the
        /// endpoint, region and credentials)
        dest: String,
        /// Key directory [default: DIR.keys beside a directory repository; required for S3]
        #[arg(long, value_name = "DIR")]
        keys: Option<PathBuf>,
        /// Writes the root keys here instead of into the key directory (a removable disk,
        /// kept offline: publishing never needs them, a key rotation does)
        #[arg(long, value_name = "DIR")]
        offline_root: Option<PathBuf>,
        /// Signatures every role needs (each role gets that many keys)
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=16))]
        threshold: u64,
        /// Signatures the root role needs [default: --threshold]
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=16))]
        root_threshold: Option<u64>,
        /// Validity of timestamp metadata, e.g. 12h, 1d
        #[arg(long, default_value = EXPIRES[0], value_parser = parse_duration, value_name = "DURATION")]
        timestamp_expires: u64,
        /// Validity of snapshot metadata, e.g. 30d
        #[arg(long, default_value = EXPIRES[1], value_parser = parse_duration, value_name = "DURATION")]
        snapshot_expires: u64,
        /// Validity of targets metadata, e.g. 90d
        #[arg(long, default_value = EXPIRES[2], value_parser = parse_duration, value_name = "DURATION")]
        targets_expires: u64,
        /// Validity of root metadata, e.g. 1y, 365d
        #[arg(long, default_value = EXPIRES[3], value_parser = parse_duration, value_name = "DURATION")]
        root_expires: u64,
    },
    /// Re-sign the metadata that is due with the online keys, so that a repository nobody
    /// pushes to stays mountable: the timestamp past half its validity (the snapshot and
    /// targets too when due); says when root is due, which needs the root keys. Meant for a
    /// timer (dist/systemd/starling-repo-refresh.timer)
    Refresh {
        /// A directory, or s3://BUCKET[/PREFIX]
        repo: String,
        /// Key directory [default: DIR.keys beside a directory repository; required for S3]
        #[arg(long, value_name = "DIR")]
        keys: Option<PathBuf>,
        /// Re-sign targets, snapshot and timestamp now, due or not
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Keys of a repository
    #[command(subcommand)]
    Key(KeyCmd),
    /// The repositories this store trusts (their root metadata), and dropping one
    #[command(subcommand)]
    Trust(TrustCmd),
    /// Serve a repository directory over HTTP
    Serve {
        /// The repository directory
        dir: PathBuf,
        /// Address and port to listen on
        #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR:PORT")]
        listen: String,
    },
    /// Images, tags and versions a repository publishes (verified)
    Ls {
        /// The repository: http(s)://… or a directory
        url: String,
        /// Trusted root metadata, needed on first contact
        #[arg(long, value_name = "ROOT.json")]
        root: Option<PathBuf>,
        #[command(flatten)]
        routes: RouteArgs,
        #[arg(long)]
        json: bool,
    },
}

/// Where else a repository is served, and how to reach it.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RouteArgs {
    /// Another URL (or directory) serving a copy of the repository, tried in order after the
    /// repository's own when a request fails; everything is verified by the same root.
    /// Repeatable
    #[arg(long = "mirror", value_name = "URL")]
    pub mirrors: Vec<String>,
    /// An HTTP caching proxy to go through (http://HOST:PORT, or DIRECT for none), tried in
    /// order when one fails; repeatable [default: http_proxy, https_proxy, no_proxy]
    #[arg(long = "proxy", value_name = "URL")]
    pub proxies: Vec<String>,
}

impl RouteArgs {
    /// The repository at `url` with these mirrors, and client options with these proxies.
    pub fn apply(&self, url: &str, opts: ClientOptions) -> Result<(Remote, ClientOptions)> {
        let remote = Remote::parse(url)?.with_mirrors(&self.mirrors)?;
        let proxies = self
            .proxies
            .iter()
            .map(|p| starling_repo::mirrors::Proxy::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((
            remote,
            ClientOptions {
                proxies,
                notify: Some(say_route_failed),
                ..opts
            },
        ))
    }
}

/// A mirror or proxy failed and the next one is taken: worth a line, the pull goes on.
fn say_route_failed(m: &str) {
    eprintln!("starling: {m}");
}

#[derive(Subcommand)]
pub enum TrustCmd {
    /// Every trusted repository: its URL, the current root's version, the first root's digest
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Forget a repository: its roots, metadata and what it resolved (the next contact needs
    /// --root again)
    Rm {
        /// The repository: http(s)://… or a directory, as it was trusted
        url: String,
    },
}

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Replace a role's key: a new root version (signed by old and new root keys) names it,
    /// and the other metadata is signed again
    Rotate {
        /// root, targets, snapshot or timestamp
        role: String,
        /// Repository: a directory or s3://BUCKET[/PREFIX]
        repo: String,
        /// Key directory [default: REPO.keys]
        #[arg(long, value_name = "DIR")]
        keys: Option<PathBuf>,
        /// Where the root keys are, when `repo init --offline-root` kept them out of the key
        /// directory
        #[arg(long, value_name = "DIR")]
        root_keys: Option<PathBuf>,
    },
}

pub fn run_repo(store_dir: &Path, cmd: RepoCmd) -> Result<ExitCode> {
    let rt = starling_repo::runtime()?;
    match cmd {
        RepoCmd::Init {
            dest,
            keys,
            offline_root,
            threshold,
            root_threshold,
            timestamp_expires,
            snapshot_expires,
            targets_expires,
            root_expires,
        } => {
            let backend = Backend::parse(&dest)?;
            let keys = key_dir(&backend, keys)?;
            let mut policy = Policy {
                timestamp_expires,
                snapshot_expires,
                targets_expires,
                root_expires,
                threshold,
                ..Policy::default()
            };
            if let Some(t) = root_threshold {
                policy.thresholds.insert("root".into(), t);
            }
            if offline_root.as_deref().is_some_and(|r| same_dir(r, &keys)) {
                anyhow::bail!(
                    "--offline-root {}: it is the key directory itself; give a directory \
                     elsewhere (a removable disk)",
                    keys.display()
                );
            }
            let kd = KeyDir::create(&keys, &policy, offline_root.as_deref())?;
            let repo = rt
                .block_on(Repo::init(backend, &kd, &policy))
                .with_context(|| format!("creating repository {dest}"))?;
            let (_, root) = rt.block_on(repo.latest_root())?;
            // The trusted root for clients, beside the keys (for object storage there is no
            // local copy otherwise).
            let root_file = keys.join("1.root.json");
            std::fs::write(&root_file, root)
                .with_context(|| format!("writing {}", root_file.display()))?;
            println!("{}", root_file.display());
            eprintln!(
                "created {dest}; keys in {}; give clients {} as their trusted root",
                keys.display(),
                root_file.display()
            );
        }
        RepoCmd::Refresh {
            repo,
            keys,
            force,
            json,
        } => {
            let backend = Backend::parse(&repo)?;
            let kd = KeyDir::open(&key_dir(&backend, keys)?, None)?;
            let r = rt
                .block_on(async { Repo::open(backend).await?.refresh(&kd, force).await })
                .with_context(|| format!("refreshing the metadata of {repo}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else if r.resigned.is_empty() {
                println!(
                    "nothing due; timestamp {} expires {}",
                    r.timestamp_version, r.timestamp_expires
                );
            } else {
                println!(
                    "re-signed {}; timestamp {} expires {}",
                    r.resigned.join(", "),
                    r.timestamp_version,
                    r.timestamp_expires
                );
            }
            if let Some(w) = &r.warning {
                eprintln!("starling: warning: {repo}: {w}");
            }
            if r.root_due {
                eprintln!(
                    "starling: warning: root metadata of {repo} expires {}: sign a new root with \
                     the root keys before then (`starling repo key rotate root {repo}`)",
                    r.root_expires
                );
            }
        }
        RepoCmd::Key(KeyCmd::Rotate {
            role,
            repo,
            keys,
            root_keys,
        }) => {
            let backend = Backend::parse(&repo)?;
            let kd = KeyDir::open(&key_dir(&backend, keys)?, root_keys.as_deref())?;
            let v = rt
                .block_on(async { Repo::open(backend).await?.rotate_key(&kd, &role).await })
                .with_context(|| format!("rotating the {role} keys of {repo}"))?;
            eprintln!("{role} keys rotated; root metadata version {v}");
        }
        RepoCmd::Trust(TrustCmd::Ls { json }) => {
            let trusted = match Store::open(store_dir) {
                Ok(store) => starling_repo::trust::list(store.root())?,
                Err(starling_store::Error::NotAStore(_)) => Vec::new(),
                Err(e) => return Err(e.into()),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&trusted)?);
            } else if trusted.is_empty() {
                eprintln!("no repository is trusted here (pull --root ROOT.json trusts one)");
            } else {
                println!("{:<48} {:>5} ANCHOR", "REPOSITORY", "ROOT");
                for t in &trusted {
                    println!(
                        "{:<48} {:>5} {}",
                        t.url.as_deref().unwrap_or("(recorded before URLs were)"),
                        t.root_version
                            .map_or_else(|| "?".to_string(), |v| v.to_string()),
                        t.anchor_sha256.as_deref().map_or("?", |h| &h[..12])
                    );
                }
            }
        }
        RepoCmd::Trust(TrustCmd::Rm { url }) => {
            let remote = Remote::parse(&url)?;
            let store = Store::open(store_dir)?;
            starling_repo::trust::remove(store.root(), &remote)?;
            eprintln!("{url}: no longer trusted; the next pull needs --root");
        }
        RepoCmd::Serve { dir, listen } => {
            rt.block_on(starling_repo::serve::serve(dir, &listen))?;
        }
        RepoCmd::Ls {
            url,
            root,
            routes,
            json,
        } => {
            let (remote, opts) = routes.apply(&url, ClientOptions::default())?;
            let store = trust_store(store_dir, &url, root.as_deref())?;
            let recs = rt.block_on(async {
                let repo =
                    starling_repo::pull::open(&store, &remote, root.as_deref(), &opts).await?;
                starling_repo::pull::records(&repo).await
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&recs)?);
            } else {
                for r in &recs {
                    println!(
                        "{}:{}  {}  ({} versions)",
                        r.name,
                        r.tag,
                        &r.target[..12],
                        r.history.len()
                    );
                    for h in &r.history {
                        println!(
                            "    {}  parent {}  {} files",
                            &h.version[..12],
                            h.parent.as_deref().map_or("-", |p| &p[..12]),
                            h.files
                        );
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The store that keeps a repository's trust state, created only when there is a root to
/// trust: without `--root` and without a store this is a first contact, refused before
/// anything is written.
pub(crate) fn trust_store(store_dir: &Path, url: &str, root: Option<&Path>) -> Result<Store> {
    if root.is_some() {
        return Ok(Store::open_or_init(store_dir)?);
    }
    match Store::open(store_dir) {
        Ok(s) => Ok(s),
        Err(starling_store::Error::NotAStore(_)) => {
            anyhow::bail!("repository {url}: {}", starling_repo::pull::FIRST_CONTACT)
        }
        Err(e) => Err(e.into()),
    }
}

/// `--keys`, or `DIR.keys` beside a directory repository.
/// Whether two paths name one directory (either may not exist yet).
fn same_dir(a: &Path, b: &Path) -> bool {
    let norm = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    norm(a) == norm(b)
}

pub(crate) fn key_dir(backend: &Backend, keys: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(k) = keys {
        return Ok(k);
    }
    let Some(repo) = backend.dir() else {
        anyhow::bail!(
            "repository {} is in object storage: give its key directory with --keys",
            backend.describe()
        );
    };
    let name = repo
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "repo".into());
    Ok(repo.with_file_name(format!("{name}.keys")))
}

pub fn push(
    store_dir: &Path,
    image: &str,
    dest: &str,
    as_name: Option<&str>,
    keys: Option<PathBuf>,
    json: bool,
) -> Result<ExitCode> {
    let store = Store::open(store_dir)?;
    let what = ImageRef::parse(image)?;
    let as_name = as_name.map(ImageRef::parse_tag).transpose()?;
    let backend = Backend::parse(dest)?;
    let kd = KeyDir::open(&key_dir(&backend, keys)?, None)?;
    let rt = starling_repo::runtime()?;
    let r = showing("pushing", "objects", |p| {
        rt.block_on(async {
            let repo = Repo::open(backend).await?;
            starling_repo::push::push(&store, &what, &repo, &kd, as_name, p).await
        })
    })
    .with_context(|| format!("pushing {image} to {dest}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("{}:{} {}", r.name, r.tag, r.version);
        eprintln!(
            "pushed {} objects ({} new, {}); metadata version {}",
            r.objects,
            r.uploaded,
            crate::format::bytes(r.uploaded_bytes),
            r.metadata_version
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn pull(
    store_dir: &Path,
    url: &str,
    image: &str,
    root: Option<PathBuf>,
    timeout: u64,
    routes: &RouteArgs,
    json: bool,
) -> Result<ExitCode> {
    let (remote, opts) = routes.apply(
        url,
        ClientOptions {
            timeout: std::time::Duration::from_secs(timeout.max(1)),
            ..ClientOptions::default()
        },
    )?;
    let store = trust_store(store_dir, url, root.as_deref())?;
    let what = ImageRef::parse(image)?;
    let rt = starling_repo::runtime()?;
    let r = showing("pulling", "objects", |p| {
        rt.block_on(starling_repo::pull::pull(
            &store,
            &remote,
            &what,
            root.as_deref(),
            &opts,
            p,
        ))
    })
    .with_context(|| format!("pulling {image} from {url}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("{}:{} {}", r.name, r.tag, r.version);
        eprintln!(
            "{} objects, {} fetched ({})",
            r.objects,
            r.fetched,
            crate::format::bytes(r.fetched_bytes)
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_expiries_are_the_repository_policy() {
        let p = starling_repo::keys::Policy::default();
        let want = [
            p.timestamp_expires,
            p.snapshot_expires,
            p.targets_expires,
            p.root_expires,
        ];
        let got: Vec<u64> = super::EXPIRES
            .iter()
            .map(|s| super::parse_duration(s).unwrap())
            .collect();
        assert_eq!(got, want);
    }
}
