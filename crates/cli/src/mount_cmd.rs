//! `starling daemon`, `mount`, `umount`, `mounts`, `cache`: lazy mounts through starlingd.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use starling_daemon::api::*;
use starling_daemon::client::Client;

use crate::format;

#[derive(clap::Args)]
pub struct MountArgs {
    /// `URL NAME[:TAG|@VERSION] MOUNTPOINT` (a repository, through the host cache), or
    /// `NAME[:TAG|@VERSION] MOUNTPOINT` (the local store)
    #[arg(num_args = 2..=3, required = true, value_name = "[URL] IMAGE MOUNTPOINT")]
    pub args: Vec<String>,
    /// Trusted root metadata, needed on first contact with the repository
    #[arg(long, value_name = "ROOT.json")]
    pub root: Option<PathBuf>,
    /// Record the objects the workload reads into FILE (written at unmount)
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Fetch the objects a recorded FILE lists in the background from the start
    #[arg(long, value_name = "FILE")]
    pub prefetch: Option<PathBuf>,
    /// Writable: a copy-on-write layer (kernel overlayfs) over the lazy image; `starling
    /// commit` stores the changes as a new version; they are discarded at unmount
    #[arg(long)]
    pub writable: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum CacheCmd {
    /// Objects, bytes, quota, hits and misses of the host cache
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Evict unpinned objects down to a size (default: everything that can go)
    Gc {
        /// Evict down to this size (e.g. 5G) [default: 0, everything that can go]
        #[arg(long, value_parser = format::parse_size)]
        target: Option<u64>,
    },
    /// Re-hash every cached object; damaged ones are removed (and fetched again when used)
    Verify,
}

fn abs(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("path {}", p.display()))
}

pub fn mount(socket: &Path, store: &Path, a: MountArgs) -> Result<ExitCode> {
    let (source, mountpoint) = match a.args.as_slice() {
        [url, image, mp] => (
            Source::Repo {
                url: url.clone(),
                image: image.clone(),
                root: a.root.as_deref().map(abs).transpose()?,
            },
            mp,
        ),
        [image, mp] => {
            if a.root.is_some() {
                bail!("--root is for repository mounts (give URL IMAGE MOUNTPOINT)");
            }
            (
                Source::Store {
                    store: abs(store)?,
                    image: image.clone(),
                },
                mp,
            )
        }
        _ => bail!("give [URL] IMAGE MOUNTPOINT"),
    };
    let req = MountRequest {
        mountpoint: abs(Path::new(mountpoint))?,
        source,
        record: a.record.as_deref().map(abs).transpose()?,
        prefetch: a.prefetch.as_deref().map(abs).transpose()?,
        writable: a.writable,
    };
    let info: MountInfo = Client::new(socket)?
        .post("/v1/mounts", &req)
        .with_context(|| format!("mounting at {mountpoint}"))?;
    if let Some(note) = &info.note {
        eprintln!("starling: {note}");
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        println!(
            "{} {}",
            info.mountpoint.display(),
            shown(&info.image, &info.version)
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn commit(
    socket: &Path,
    store: &Path,
    mountpoint: &Path,
    image: &str,
    json: bool,
) -> Result<ExitCode> {
    let info: CommitInfo = Client::new(socket)?
        .post(
            "/v1/commit",
            &CommitRequest {
                mountpoint: abs(mountpoint)?,
                store: abs(store)?,
                image: image.to_string(),
            },
        )
        .with_context(|| format!("committing {} as {image}", mountpoint.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        println!("{} {}", info.image, info.version);
        eprintln!(
            "{} entries put, {} removed; parent {}",
            info.put,
            info.removed,
            &info.parent[..12]
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn umount(socket: &Path, mountpoint: &Path) -> Result<ExitCode> {
    let info: MountInfo = Client::new(socket)?
        .delete(
            "/v1/mounts",
            &UnmountRequest {
                mountpoint: abs(mountpoint)?,
            },
        )
        .with_context(|| format!("unmounting {}", mountpoint.display()))?;
    eprintln!(
        "unmounted {} ({} served, {} fetched)",
        info.mountpoint.display(),
        format::bytes(info.counters.served),
        format::bytes(info.counters.fetched)
    );
    Ok(ExitCode::SUCCESS)
}

/// An image as mounted: the reference as given (without a version it named) and the version,
/// `web:v1@9b0ab408970e`, `web@9b0ab408970e` (not the version twice when the reference was
/// one), or the bare version when the reference was an id.
fn shown(image: &str, version: &str) -> String {
    let short = version.get(..12).unwrap_or(version);
    let base = image.split('@').next().unwrap_or(image);
    if version.starts_with(base) {
        short.to_string()
    } else {
        format!("{base}@{short}")
    }
}

pub fn mounts(socket: &Path, json: bool) -> Result<ExitCode> {
    let list: Vec<MountInfo> = Client::new(socket)?.get("/v1/mounts")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    for m in &list {
        // Another user's mount (starlingd serves them when configured to) says whose.
        let whose = match m.owner {
            0 => String::new(),
            uid => format!("  user {uid}"),
        };
        // What each counts: docs/ARCHITECTURE.md, "Counters".
        println!(
            "{}{whose}  {}  from {}  served {}  fetched {}  cached {}  errors {}",
            m.mountpoint.display(),
            shown(&m.image, &m.version),
            m.source,
            format::bytes(m.counters.served),
            format::bytes(m.counters.fetched),
            format::bytes(m.counters.cached),
            m.counters.errors
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn cache(socket: &Path, cmd: CacheCmd) -> Result<ExitCode> {
    let c = Client::new(socket)?;
    match cmd {
        CacheCmd::Stats { json } => {
            let s: CacheStats = c.get("/v1/cache")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!(
                    "{} objects, {} of {} quota; {} hits, {} misses, {} fetched (compressed), {} evicted, {} refused",
                    s.objects,
                    format::bytes(s.bytes),
                    format::bytes(s.quota),
                    s.hits,
                    s.misses,
                    format::bytes(s.fetched_bytes),
                    s.evicted,
                    s.refused
                );
            }
        }
        CacheCmd::Gc { target } => {
            let s: CacheStats = c.post(
                "/v1/cache/gc",
                &GcRequest {
                    target_bytes: target.unwrap_or(0),
                },
            )?;
            println!("{} objects, {} left", s.objects, format::bytes(s.bytes));
        }
        CacheCmd::Verify => {
            let r: VerifyReport = c.post("/v1/cache/verify", &serde_json::json!({}))?;
            println!("{} objects checked, {} removed", r.checked, r.removed.len());
            for id in &r.removed {
                println!("removed damaged {id}");
            }
            if !r.removed.is_empty() {
                return Ok(ExitCode::from(crate::exit::PROBLEMS));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_mounted_image_names_its_version_once() {
        let v = "9b0ab408970e1234567890";
        assert_eq!(super::shown("web:v1", v), "web:v1@9b0ab408970e");
        assert_eq!(super::shown("web@9b0ab408970e", v), "web@9b0ab408970e");
        assert_eq!(super::shown("web@9b0a", v), "web@9b0ab408970e");
        assert_eq!(super::shown("9b0ab4", v), "9b0ab408970e");
    }
}
