//! `starling image inventory|diff|search|update|derive`: fleet chores on manifests, without
//! booting or exporting images.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use starling_image::diff::Change;
use starling_image::manifest::Node;
use starling_image::pkg::Inventories;
use starling_image::reference::ImageRef;
use starling_image::search::{self, Query, VersionExpr};
use starling_image::versions;
use starling_store::Store;

#[derive(Subcommand)]
pub enum FleetCmd {
    /// Installed packages (name, version, architecture, source) and OS release of each image,
    /// read from its package database (dpkg, apk)
    Inventory {
        /// NAME[:TAG] or NAME@VERSION, one or more
        #[arg(required = true)]
        images: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Files added, removed and changed (content, mode, owner, xattrs, link target, mtime)
    /// and packages added, removed, upgraded from A to B; unchanged subtrees are skipped
    Diff {
        a: String,
        b: String,
        #[arg(long)]
        json: bool,
    },
    /// Which image versions (every version in every tag's history) have a package (optionally
    /// in a version range), a path matching a glob, or a file with given content; exits 1
    /// when nothing matches
    #[command(group(clap::ArgGroup::new("query").required(true).args(["package", "path", "content_id"])))]
    Search {
        /// Installed package name
        #[arg(long)]
        package: Option<String>,
        /// With --package: 'OP VERSION', OP one of < <= = >= > != (package manager's ordering)
        #[arg(long, requires = "package", allow_hyphen_values = true)]
        version: Option<String>,
        /// Image path glob: * within a name, ** across directories (e.g. '/usr/bin/python3*')
        #[arg(long)]
        path: Option<String>,
        /// A file content id (`image stat` shows it) or a chunk object id
        #[arg(long)]
        content_id: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Metadata and content id of one path in an image (symlinks not followed)
    Stat {
        image: String,
        path: String,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(store_dir: &Path, cmd: FleetCmd) -> Result<ExitCode> {
    match cmd {
        FleetCmd::Inventory { images, json } => {
            let store = Store::open(store_dir)?;
            let mut inv = Inventories::new(&store);
            let mut all = Vec::new();
            for image in &images {
                let r = versions::resolve(&store, &ImageRef::parse(image)?)?;
                let i = inv
                    .of(&r.commit.root, &r.display)
                    .with_context(|| format!("inventory of {}", r.display))?;
                all.push((r, i));
            }
            if json {
                let v: Vec<_> = all
                    .iter()
                    .map(|(r, i)| {
                        serde_json::json!({
                            "image": r.display, "version": r.id, "db": i.db,
                            "os_release": i.os_release, "packages": i.packages,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for (r, i) in &all {
                    let os = i
                        .os_release
                        .get("PRETTY_NAME")
                        .cloned()
                        .unwrap_or_else(|| "unknown OS".into());
                    println!(
                        "# {}: {os}; {} packages ({})",
                        r.display,
                        i.packages.len(),
                        i.db.name()
                    );
                    let w = i.packages.iter().map(|p| p.name.len()).max().unwrap_or(4);
                    let wv = i
                        .packages
                        .iter()
                        .map(|p| p.version.len())
                        .max()
                        .unwrap_or(7);
                    for p in &i.packages {
                        println!(
                            "{:w$}  {:wv$}  {:6}  {}",
                            p.name, p.version, p.architecture, p.source
                        );
                    }
                }
            }
        }
        FleetCmd::Search {
            package,
            version,
            path,
            content_id,
            json,
        } => {
            let store = Store::open(store_dir)?;
            let q = if let Some(name) = package {
                Query::Package {
                    name,
                    version: version.as_deref().map(VersionExpr::parse).transpose()?,
                }
            } else if let Some(p) = path {
                Query::Path(search::glob(&p)?)
            } else {
                let id = content_id.unwrap_or_default();
                Query::Content(
                    id.parse()
                        .map_err(|e| anyhow::anyhow!("--content-id {id:?}: {e}"))?,
                )
            };
            let (hits, stats) = search::search(&store, &q)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&hits)?);
            } else {
                for h in &hits {
                    println!("{}  [{}]", h.image, h.tags.join(" "));
                    for m in h.matches.iter().take(50) {
                        println!("    {m}");
                    }
                    if h.matches.len() > 50 {
                        println!("    … and {} more", h.matches.len() - 50);
                    }
                }
                eprintln!("{} of {} versions match", hits.len(), stats.versions);
            }
            if hits.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
        FleetCmd::Stat { image, path, json } => {
            let store = Store::open(store_dir)?;
            let r = versions::resolve(&store, &ImageRef::parse(&image)?)?;
            let mut b = starling_image::browse::Browser::new(&store);
            let node = b
                .lookup(&r.commit.root, path.as_bytes(), false)?
                .ok_or_else(|| anyhow::anyhow!("{}: no {path:?} in the image", r.display))?;
            let cid = match &node {
                Node::File { data, .. } => Some(search::content_id(data)),
                _ => None,
            };
            let meta = node.meta().cloned().unwrap_or_default();
            let size = match &node {
                Node::File { size, .. } => *size,
                _ => 0,
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "image": r.display, "path": path, "kind": node.kind_name(),
                        "size": size, "mode": meta.mode, "uid": meta.uid, "gid": meta.gid,
                        "mtime_sec": meta.mtime_sec, "mtime_nsec": meta.mtime_nsec,
                        "xattrs": meta.xattrs.iter().map(|x| String::from_utf8_lossy(&x.name).into_owned()).collect::<Vec<_>>(),
                        "content_id": cid,
                    }))?
                );
            } else {
                println!("{}: {path}", r.display);
                println!("kind:       {}", node.kind_name());
                println!("size:       {size}");
                println!(
                    "mode:       {:o}  owner {}:{}",
                    meta.mode, meta.uid, meta.gid
                );
                if let Some(c) = cid {
                    println!("content id: {c}");
                }
            }
        }
        FleetCmd::Diff { a, b, json } => {
            let store = Store::open(store_dir)?;
            let ra = versions::resolve(&store, &ImageRef::parse(&a)?)?;
            let rb = versions::resolve(&store, &ImageRef::parse(&b)?)?;
            let mut inv = Inventories::new(&store);
            let d = starling_image::diff::diff(
                &mut inv,
                (&ra.commit.root, &ra.commit.root_meta),
                (&rb.commit.root, &rb.commit.root_meta),
            )
            .with_context(|| format!("diff of {} and {}", ra.display, rb.display))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "a": ra.display, "b": rb.display,
                        "files": d.files, "packages": d.packages,
                    }))?
                );
            } else {
                for f in &d.files {
                    let sign = match f.change {
                        Change::Added => '+',
                        Change::Removed => '-',
                        Change::Modified => 'M',
                    };
                    if f.details.is_empty() {
                        println!("{sign} {} ({})", f.path, f.kind);
                    } else {
                        println!("{sign} {} ({}: {})", f.path, f.kind, f.details.join(", "));
                    }
                }
                match &d.packages {
                    None => println!("# packages: not compared (no package database in both)"),
                    Some(p) if p.is_empty() => println!("# packages: no changes"),
                    Some(ps) => {
                        println!("# packages:");
                        for p in ps {
                            println!(
                                "{} {} {}",
                                p.change,
                                p.name,
                                match (&p.old, &p.new) {
                                    (Some(o), Some(n)) => format!("{o} → {n}"),
                                    (Some(o), None) => o.clone(),
                                    (None, Some(n)) => n.clone(),
                                    _ => String::new(),
                                }
                            );
                        }
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
