//! `starling group`: publish a group's desired state to a repository (`apply`), and see how
//! the hosts that follow it stand (`status`, from each host's starlingd).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use starling_daemon::api::GroupStatus;
use starling_daemon::client::Client;
use starling_repo::backend::Backend;
use starling_repo::group::GroupSpec;
use starling_repo::keys::KeyDir;
use starling_repo::meta::Repo;

#[derive(Subcommand)]
pub enum GroupCmd {
    /// Publish a group's desired state (SPEC.toml: its name, the hosts it selects by label,
    /// the images they keep in their host caches) as signed metadata of a repository; each
    /// host's starlingd that follows the group converges to it (docs/config.md, "Groups")
    Apply {
        /// The group's spec (TOML)
        spec: PathBuf,
        /// The repository: a directory, or s3://BUCKET[/PREFIX]
        repo: String,
        /// Key directory [default: DIR.keys beside a directory repository; required for S3]
        #[arg(long, value_name = "DIR")]
        keys: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// How the hosts following a group stand: generation, convergence, images, errors
    Status {
        /// Only this group
        group: Option<String>,
        /// A host's starlingd API socket; repeat for each host [default: this host's]
        #[arg(long = "host", value_name = "SOCKET")]
        hosts: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(socket: &Path, cmd: GroupCmd) -> Result<ExitCode> {
    match cmd {
        GroupCmd::Apply {
            spec,
            repo,
            keys,
            json,
        } => {
            let text = std::fs::read_to_string(&spec)
                .with_context(|| format!("reading {}", spec.display()))?;
            let spec_ = GroupSpec::parse(&text, &spec.display().to_string())?;
            let backend = Backend::parse(&repo)?;
            let kd = KeyDir::open(&crate::repo_cmd::key_dir(&backend, keys)?, None)?;
            let rt = starling_repo::runtime()?;
            let state = rt
                .block_on(async { Repo::open(backend).await?.apply_group(&kd, &spec_).await })
                .with_context(|| format!("applying group {} to {repo}", spec_.name))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&state)?);
            } else {
                println!("group {} generation {}", state.name, state.generation);
                for i in &state.images {
                    println!("  {}  {}@{}", i.reference, i.name, &i.version[..12]);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        GroupCmd::Status { group, hosts, json } => {
            let hosts = if hosts.is_empty() {
                vec![socket.to_path_buf()]
            } else {
                hosts
            };
            let mut rows: Vec<(String, Result<Vec<GroupStatus>, String>)> = Vec::new();
            for h in &hosts {
                let got = Client::new(h)
                    .and_then(|c| c.get::<Vec<GroupStatus>>("/v1/groups"))
                    .map_err(|e| e.to_string())
                    .map(|l| {
                        l.into_iter()
                            .filter(|g| group.as_ref().is_none_or(|n| *n == g.name))
                            .collect()
                    });
                rows.push((h.display().to_string(), got));
            }
            let unreachable = rows.iter().filter(|(_, r)| r.is_err()).count();
            let behind = rows
                .iter()
                .filter_map(|(_, r)| r.as_ref().ok())
                .flatten()
                .filter(|g| !g.converged || g.error.is_some())
                .count();
            if json {
                let v: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|(h, r)| match r {
                        Ok(l) => serde_json::json!({"host": h, "groups": l}),
                        Err(e) => serde_json::json!({"host": h, "error": e}),
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("HOST  GROUP  GENERATION  STATE  IMAGES");
                for (h, r) in &rows {
                    match r {
                        Err(e) => println!("{h}  -  -  unreachable  {e}"),
                        Ok(l) if l.is_empty() => println!("{h}  -  -  follows no such group  -"),
                        Ok(l) => {
                            for g in l {
                                println!(
                                    "{h}  {}  {}  {}  {}",
                                    g.name,
                                    generation(g),
                                    state(g),
                                    images(g)
                                );
                            }
                        }
                    }
                }
            }
            // As a check: 1 when a host is behind, in error or unreachable.
            Ok(if unreachable + behind > 0 {
                ExitCode::from(crate::exit::PROBLEMS)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

fn generation(g: &GroupStatus) -> String {
    match (g.generation, g.latest) {
        (Some(h), Some(l)) if h != l => format!("{h} (latest {l})"),
        (Some(h), _) => h.to_string(),
        (None, Some(l)) => format!("- (latest {l})"),
        (None, None) => "-".into(),
    }
}

fn state(g: &GroupStatus) -> String {
    let base = match (g.selected, g.converged) {
        (Some(false), _) => "not selected",
        (None, _) => "not yet verified",
        (Some(true), true) => "converged",
        (Some(true), false) => "converging",
    };
    match &g.error {
        Some(e) => format!("{base}; error: {e}"),
        None => base.to_string(),
    }
}

fn images(g: &GroupStatus) -> String {
    if g.images.is_empty() {
        return "-".into();
    }
    g.images
        .iter()
        .map(|i| format!("{}@{}", i.name, &i.version[..12.min(i.version.len())]))
        .collect::<Vec<_>>()
        .join(", ")
}
