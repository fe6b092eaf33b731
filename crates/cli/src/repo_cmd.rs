//! `starling repo …`, `starling push`, `starling pull`: TUF-signed repositories.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use starling_image::reference::ImageRef;
use starling_repo::keys::{KeyDir, Policy};
use starling_repo::meta::RepoDir;
use starling_repo::pull::{ClientOptions, Remote};
use starling_store::Store;

#[derive(Subcommand)]
pub enum RepoCmd {
    /// Create a repository: TUF root, targets, snapshot and timestamp roles with fresh ed25519
    /// keys kept in a key directory outside the repository
    Init {
        dir: PathBuf,
        /// Key directory [default: DIR.keys beside the repository]
        #[arg(long, value_name = "DIR")]
        keys: Option<PathBuf>,
        /// Validity of timestamp metadata, seconds
        #[arg(long, default_value_t = Policy::default().timestamp_expires)]
        timestamp_expires: u64,
        /// Validity of snapshot metadata, seconds
        #[arg(long, default_value_t = Policy::default().snapshot_expires)]
        snapshot_expires: u64,
        /// Validity of targets metadata, seconds
        #[arg(long, default_value_t = Policy::default().targets_expires)]
        targets_expires: u64,
        /// Validity of root metadata, seconds
        #[arg(long, default_value_t = Policy::default().root_expires)]
        root_expires: u64,
    },
    /// Keys of a repository
    #[command(subcommand)]
    Key(KeyCmd),
    /// Serve a repository directory over HTTP
    Serve {
        dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
    },
    /// Images, tags and versions a repository publishes (verified)
    Ls {
        url: String,
        /// Trusted root metadata, needed on first contact
        #[arg(long, value_name = "ROOT.json")]
        root: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Replace a role's key: a new root version (signed by old and new root keys) names it,
    /// and the other metadata is signed again
    Rotate {
        /// root, targets, snapshot or timestamp
        role: String,
        /// Repository directory
        repo: PathBuf,
        /// Key directory [default: REPO.keys]
        #[arg(long, value_name = "DIR")]
        keys: Option<PathBuf>,
    },
}

pub fn run_repo(store_dir: &Path, cmd: RepoCmd) -> Result<ExitCode> {
    let rt = starling_repo::runtime()?;
    match cmd {
        RepoCmd::Init {
            dir,
            keys,
            timestamp_expires,
            snapshot_expires,
            targets_expires,
            root_expires,
        } => {
            let keys = keys.unwrap_or_else(|| default_keys(&dir));
            let policy = Policy {
                timestamp_expires,
                snapshot_expires,
                targets_expires,
                root_expires,
                ..Policy::default()
            };
            let kd = KeyDir::create(&keys, &policy)?;
            let repo = rt
                .block_on(RepoDir::init(&dir, &kd, &policy))
                .with_context(|| format!("creating repository {}", dir.display()))?;
            let (_, root) = repo.latest_root()?;
            println!("{}", root.display());
            eprintln!(
                "created {}; keys in {}; give clients {} as their trusted root",
                dir.display(),
                keys.display(),
                root.display()
            );
        }
        RepoCmd::Key(KeyCmd::Rotate { role, repo, keys }) => {
            let r = RepoDir::open(&repo)?;
            let kd = KeyDir::open(&keys.unwrap_or_else(|| default_keys(&repo)))?;
            let v = rt
                .block_on(r.rotate_key(&kd, &role))
                .with_context(|| format!("rotating the {role} key of {}", repo.display()))?;
            eprintln!("{role} key rotated; root metadata version {v}");
        }
        RepoCmd::Serve { dir, listen } => {
            rt.block_on(starling_repo::serve::serve(dir, &listen))?;
        }
        RepoCmd::Ls { url, root, json } => {
            let store = Store::open_or_init(store_dir)?;
            let remote = Remote::parse(&url)?;
            let recs = rt.block_on(async {
                let repo = starling_repo::pull::open(
                    &store,
                    &remote,
                    root.as_deref(),
                    &ClientOptions::default(),
                )
                .await?;
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

fn default_keys(repo: &Path) -> PathBuf {
    let name = repo
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "repo".into());
    repo.with_file_name(format!("{name}.keys"))
}

pub fn push(
    store_dir: &Path,
    image: &str,
    dest: &Path,
    as_name: Option<&str>,
    keys: Option<PathBuf>,
    json: bool,
) -> Result<ExitCode> {
    let store = Store::open(store_dir)?;
    let what = ImageRef::parse(image)?;
    let as_name = as_name.map(ImageRef::parse_tag).transpose()?;
    let repo = RepoDir::open(dest)?;
    let kd = KeyDir::open(&keys.unwrap_or_else(|| default_keys(dest)))?;
    let rt = starling_repo::runtime()?;
    let r = rt
        .block_on(starling_repo::push::push(
            &store, &what, &repo, &kd, as_name,
        ))
        .with_context(|| format!("pushing {image} to {}", dest.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("{}:{} {}", r.name, r.tag, r.version);
        eprintln!(
            "pushed {} objects ({} new, {} bytes); metadata version {}",
            r.objects, r.uploaded, r.uploaded_bytes, r.metadata_version
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
    json: bool,
) -> Result<ExitCode> {
    let opts = ClientOptions {
        timeout: std::time::Duration::from_secs(timeout.max(1)),
        ..ClientOptions::default()
    };
    let store = Store::open_or_init(store_dir)?;
    let remote = Remote::parse(url)?;
    let what = ImageRef::parse(image)?;
    let rt = starling_repo::runtime()?;
    let r = rt
        .block_on(starling_repo::pull::pull(
            &store,
            &remote,
            &what,
            root.as_deref(),
            &opts,
        ))
        .with_context(|| format!("pulling {image} from {url}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("{}:{} {}", r.name, r.tag, r.version);
        eprintln!(
            "{} objects, {} fetched ({} bytes)",
            r.objects, r.fetched, r.fetched_bytes
        );
    }
    Ok(ExitCode::SUCCESS)
}
