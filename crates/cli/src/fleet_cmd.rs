//! `starling image inventory|diff|search|update|derive`: fleet chores on manifests, without
//! booting or exporting images.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use starling_image::diff::Change;
use starling_image::pkg::Inventories;
use starling_image::reference::ImageRef;
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
