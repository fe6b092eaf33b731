//! `starling image inventory|diff|search|update|derive`: fleet chores on manifests, without
//! booting or exporting images.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
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
    }
    Ok(ExitCode::SUCCESS)
}
