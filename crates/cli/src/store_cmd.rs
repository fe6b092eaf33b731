//! `starling store …`

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use starling_image::maint;
use starling_store::Store;

use crate::format;

#[derive(Subcommand)]
pub enum StoreCmd {
    /// Objects, bytes stored and on disk, images and versions, dedup ratio
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every object; report corruption with the image paths that use it (exit 1)
    Fsck {
        #[arg(long)]
        json: bool,
    },
    /// Delete objects no tag's history reaches
    Gc {
        /// Report what would be deleted, delete nothing
        #[arg(long)]
        dry_run: bool,
        /// Fail instead of waiting when a writer is active
        #[arg(long)]
        no_wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Move objects a format-1 store kept one file each into pack segments
    Migrate {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(store_dir: &Path, cmd: StoreCmd) -> Result<ExitCode> {
    let store = Store::open(store_dir)?;
    match cmd {
        StoreCmd::Stats { json } => {
            let s = maint::stats(&store)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("store:          {}", store.root().display());
                println!(
                    "images:         {} names, {} tags, {} versions",
                    s.names, s.tags, s.versions
                );
                println!("objects:        {}", s.objects);
                println!(
                    "stored:         {} ({} on disk)",
                    format::bytes(s.stored_bytes),
                    format::bytes(s.disk_bytes)
                );
                println!(
                    "logical:        {} (all versions, whole)",
                    format::bytes(s.logical_bytes)
                );
                if s.stored_bytes > 0 {
                    println!(
                        "ratio:          {:.2}x",
                        s.logical_bytes as f64 / s.stored_bytes as f64
                    );
                }
            }
        }
        StoreCmd::Fsck { json } => {
            let r = maint::fsck(&store)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "checked {} objects of {} versions: {} problem(s), {} stray file(s), {} unreferenced object(s)",
                    r.objects_checked,
                    r.versions,
                    r.problems.len(),
                    r.strays.len(),
                    r.unreferenced
                );
                for p in &r.problems {
                    println!("object {}: {}", p.object, p.reason);
                    for u in &p.used_by {
                        println!("  used by {u}");
                    }
                }
                for s in &r.strays {
                    println!("stray file {}", s.display());
                }
            }
            if !r.clean() {
                return Ok(ExitCode::from(crate::exit::PROBLEMS));
            }
        }
        StoreCmd::Gc {
            dry_run,
            no_wait,
            json,
        } => {
            let r = maint::gc(&store, dry_run, !no_wait)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "{} {} objects ({}), kept {}, removed {} temp files",
                    if dry_run { "would remove" } else { "removed" },
                    r.objects_removed,
                    format::bytes(r.bytes_freed),
                    r.objects_kept,
                    r.temp_files_removed
                );
                if r.migrated > 0 || r.segments_repacked > 0 {
                    println!(
                        "moved {} loose objects into packs, repacked {} segments",
                        r.migrated, r.segments_repacked
                    );
                }
            }
        }
        StoreCmd::Migrate { json } => {
            let had = store.has_loose_objects();
            let moved = store.migrate()?;
            if json {
                println!("{}", serde_json::json!({ "migrated": moved }));
            } else if had {
                println!("moved {moved} objects into pack segments");
            } else {
                println!("nothing to migrate: every object is already in a pack segment");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
