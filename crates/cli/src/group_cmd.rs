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
        /// A host's starlingd: its API socket, or https://HOST:PORT (its remote_api, mutual
        /// TLS); repeat for each host [default: this host's socket]
        #[arg(long = "host", value_name = "SOCKET|URL")]
        hosts: Vec<String>,
        #[command(flatten)]
        tls: crate::tls::TlsArgs,
        #[arg(long)]
        json: bool,
    },
}

fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    starling_store::innermost(e)
}

/// The most a host's answer to `group status` may be.
const MAX_REPLY: usize = 16 << 20;

/// A host's groups over https (its remote_api).
fn remote_groups(
    rt: &tokio::runtime::Runtime,
    client: &Result<reqwest::Client, String>,
    url: &str,
) -> Result<Vec<GroupStatus>, String> {
    let client = client.as_ref().map_err(Clone::clone)?;
    let u = format!("{}/v1/groups", url.trim_end_matches('/'));
    rt.block_on(async {
        let mut r = client.get(&u).send().await.map_err(|e| innermost(&e))?;
        let status = r.status();
        // A host's answer is small; a host sending without end is cut off.
        let mut body = Vec::new();
        while let Some(piece) = r.chunk().await.map_err(|e| innermost(&e))? {
            body.extend_from_slice(&piece);
            if body.len() > MAX_REPLY {
                return Err(format!("more than {MAX_REPLY} bytes of answer"));
            }
        }
        if !status.is_success() {
            return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
        }
        serde_json::from_slice(&body).map_err(|e| format!("not a group list: {e}"))
    })
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
                    let short: String = i.version.chars().take(12).collect();
                    println!("  {}  {}@{short}", i.reference, i.name);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        GroupCmd::Status {
            group,
            hosts,
            tls,
            json,
        } => {
            let hosts = if hosts.is_empty() {
                vec![socket.display().to_string()]
            } else {
                hosts
            };
            let remote = hosts.iter().any(|h| h.starts_with("https://"));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let client = if remote {
                tls.client()
            } else {
                Err(String::new())
            };
            let mut rows: Vec<(String, Result<Vec<GroupStatus>, String>)> = Vec::new();
            for h in &hosts {
                let got = if h.starts_with("https://") {
                    remote_groups(&rt, &client, h)
                } else if h.starts_with("http://") {
                    Err(
                        "plain http is not served: give https://HOST:PORT (the host's \
                         remote_api, mutual TLS) or its API socket"
                            .into(),
                    )
                } else {
                    Client::new(Path::new(h))
                        .and_then(|c| c.get::<Vec<GroupStatus>>("/v1/groups"))
                        .map_err(|e| e.to_string())
                };
                let got = got.map(|l| {
                    l.into_iter()
                        .filter(|g| group.as_ref().is_none_or(|n| *n == g.name))
                        .collect()
                });
                rows.push((h.clone(), got));
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
                let mut errors = Vec::new();
                let mut table = vec![[
                    "HOST".to_string(),
                    "GROUP".into(),
                    "GENERATION".into(),
                    "STATE".into(),
                    "IMAGES".into(),
                ]];
                for (h, r) in &rows {
                    match r {
                        Err(e) => {
                            table.push([
                                h.clone(),
                                "-".into(),
                                "-".into(),
                                "unreachable".into(),
                                "-".into(),
                            ]);
                            errors.push(format!("{h}: {e}"));
                        }
                        Ok(l) if l.is_empty() => table.push([
                            h.clone(),
                            group.clone().unwrap_or_else(|| "-".into()),
                            "-".into(),
                            "not followed here".into(),
                            "-".into(),
                        ]),
                        Ok(l) => {
                            for g in l {
                                if let Some(e) = &g.error {
                                    errors.push(format!("{h}: group {}: {e}", g.name));
                                }
                                table.push([
                                    h.clone(),
                                    g.name.clone(),
                                    generation(g),
                                    state(g),
                                    images(g),
                                ]);
                            }
                        }
                    }
                }
                print_table(&table);
                for e in errors {
                    println!("{e}");
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

/// Columns as wide as their widest cell (the last one as it is).
fn print_table(rows: &[[String; 5]]) {
    let mut width = [0usize; 5];
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        println!("{}", line.trim_end());
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
    if g.error.is_some() {
        format!("{base}, error (below)")
    } else {
        base.to_string()
    }
}

fn images(g: &GroupStatus) -> String {
    if g.images.is_empty() {
        return "-".into();
    }
    g.images
        .iter()
        .map(|i| {
            format!(
                "{}@{}",
                i.name,
                i.version.chars().take(12).collect::<String>()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
