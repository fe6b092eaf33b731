//! `starling image …`

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Subcommand, ValueEnum};
use starling_image::chunk::ChunkParams;
use starling_image::export::{self, ExportFormat};
use starling_image::import::{self, ImportOptions, SourceFormat};
use starling_image::reference::ImageRef;
use starling_image::versions;
use starling_store::Store;

use crate::format;
use crate::progress::showing;
use starling_registry::RegistryRef;

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Import a directory, tar archive (.tar, .tar.gz, .tar.zst) or disk image (raw or qcow2
    /// with ext2/3/4, whole-disk or partitioned) as a new version of NAME[:TAG]
    Import {
        /// What to import: a directory, archive or disk image file, oci:LAYOUT[:REF], or a
        /// registry image docker://[HOST/]NAME[:TAG|@DIGEST] (its linux/amd64 image)
        source: PathBuf,
        /// NAME[:TAG] (tag defaults to "latest")
        image: String,
        /// Source format [default: detected from content]
        #[arg(long, value_enum)]
        format: Option<InFormat>,
        /// Disk images: partition number to import [default: the root partition]
        #[arg(long, value_name = "N")]
        partition: Option<u32>,
        /// qcow2: read the backing file or external data file the image's header names (a
        /// path on this host chosen by whoever made the image: refused unless asked)
        #[arg(long)]
        allow_backing: bool,
        /// Label to record on the version (repeatable)
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        login: crate::registry_cmd::Login,
        /// Average chunk size in bytes (benchmarking; the default is the measured choice)
        #[arg(long, hide = true)]
        chunk_avg: Option<u32>,
        /// Largest file kept inline in its tree entry (benchmarking)
        #[arg(long, hide = true)]
        inline_max: Option<usize>,
        /// zstd level for new objects (benchmarking)
        #[arg(long, hide = true)]
        zstd_level: Option<i32>,
    },
    /// Export a version (NAME[:TAG] or NAME@VERSION) to a directory, tar archive or disk image
    Export {
        /// NAME[:TAG], NAME@VERSION or a version id prefix
        image: String,
        /// Destination: an absent or empty directory (of your own), an archive or image file
        /// (- for stdout when it is not a terminal), oci:LAYOUT[:REF], or a registry
        /// docker://HOST/NAME:TAG; an existing file only with --force
        dest: PathBuf,
        /// [default: by DEST's extension: .tar/.tar.gz/.tgz/.tar.zst or - → tar, .qcow2 → qcow2,
        /// .erofs → erofs, .ext4/.raw/.img → ext4; none (or an existing directory) → dir; any
        /// other extension is refused]
        #[arg(long, value_enum)]
        format: Option<OutFormat>,
        /// ext4/qcow2: file system size (e.g. 2G, 512M) [default: fits the image with headroom]
        #[arg(long, value_parser = format::parse_size)]
        size: Option<u64>,
        /// Replace a file already at DEST (an archive or disk image)
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        login: crate::registry_cmd::Login,
    },
    /// List images (one row per tag)
    Ls {
        /// Only this image: NAME (all its tags) or NAME:TAG
        #[arg(value_name = "NAME[:TAG]")]
        filter: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show a version's commit: id, parent, time, labels, counts
    Inspect {
        /// NAME[:TAG], NAME@VERSION or a version id prefix
        image: String,
        #[arg(long)]
        json: bool,
    },
    /// Versions a tag has held, newest first
    History {
        /// NAME[:TAG]
        image: String,
        #[arg(long)]
        json: bool,
    },
    /// Point NAME[:TAG] at the version SOURCE names
    Tag {
        /// The version to tag: NAME[:TAG], NAME@VERSION or a version id prefix
        source: String,
        /// The new tag: NAME[:TAG] ("latest" if no tag is given)
        target: String,
    },
    /// Remove a tag (NAME[:TAG]) or one old version (NAME@VERSION); `store gc` frees the space
    Rm {
        /// NAME[:TAG] (a tag) or NAME@VERSION (one version)
        image: String,
    },
    #[command(flatten)]
    Fleet(crate::fleet_cmd::FleetCmd),
}

#[derive(Clone, Copy, ValueEnum)]
pub enum InFormat {
    Dir,
    Tar,
    /// raw or qcow2 disk image
    Disk,
    /// OCI image layout directory (also: SOURCE given as oci:DIR[:REF])
    Oci,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum OutFormat {
    Dir,
    Tar,
    /// raw ext4 file system image
    Ext4,
    /// ext4 in a qcow2 disk image
    Qcow2,
    /// EROFS image (needs mkfs.erofs from erofs-utils)
    Erofs,
    /// OCI image layout directory (also: DEST given as oci:DIR[:REF])
    Oci,
}

/// The export destinations whose name says their format.
const BY_EXTENSION: [(&str, OutFormat); 9] = [
    (".tar", OutFormat::Tar),
    (".tar.gz", OutFormat::Tar),
    (".tgz", OutFormat::Tar),
    (".tar.zst", OutFormat::Tar),
    (".qcow2", OutFormat::Qcow2),
    (".erofs", OutFormat::Erofs),
    (".ext4", OutFormat::Ext4),
    (".raw", OutFormat::Ext4),
    (".img", OutFormat::Ext4),
];

/// The format an export destination's name gives: `-` a tar, a known extension its format,
/// no extension (or an existing directory) a directory; None for an extension no format has
/// (`out.tar.xz`, `out.zip`), which must not become a directory.
fn format_by_name(dest: &Path) -> Option<OutFormat> {
    let d = dest.to_string_lossy();
    if d == "-" {
        return Some(OutFormat::Tar);
    }
    if let Some((_, f)) = BY_EXTENSION.iter().find(|(ext, _)| d.ends_with(ext)) {
        return Some(*f);
    }
    if dest.extension().is_none() || dest.is_dir() {
        return Some(OutFormat::Dir);
    }
    None
}

pub fn run(store_dir: &Path, cmd: ImageCmd) -> Result<ExitCode> {
    match cmd {
        ImageCmd::Fleet(c) => return crate::fleet_cmd::run(store_dir, c),
        ImageCmd::Import {
            source,
            image,
            format,
            partition,
            allow_backing,
            labels,
            json,
            login,
            chunk_avg,
            inline_max,
            zstd_level,
        } => {
            let (name, tag) = ImageRef::parse_tag(&image)?;
            let labels = parse_labels(&labels)?;
            let mut chunking = chunk_avg.map(ChunkParams::with_avg).unwrap_or_default();
            if let Some(n) = inline_max {
                chunking.inline_max = n;
            }
            let mut store = Store::open_or_init(store_dir)?;
            if let Some(level) = zstd_level {
                store.set_compression_level(level);
            }
            // A registry image is pulled into a layout first; the layout is what is imported.
            let shown = source.display().to_string();
            let pulled = match source.to_str().filter(|s| RegistryRef::is_registry(s)) {
                Some(src) => Some(crate::registry_cmd::pull(
                    &store,
                    src,
                    login.creds.as_deref(),
                )?),
                None => None,
            };
            let (source, format) = match &pulled {
                Some(p) => (p.source.clone(), Some(InFormat::Oci)),
                None => (source, format),
            };
            let started = std::time::Instant::now();
            let options = ImportOptions {
                source: &source,
                format: format.map(|f| match f {
                    InFormat::Dir => SourceFormat::Dir,
                    InFormat::Tar => SourceFormat::Tar,
                    InFormat::Disk => SourceFormat::Disk,
                    InFormat::Oci => SourceFormat::Oci,
                }),
                name: &name,
                tag: &tag,
                labels,
                chunking,
                partition,
                allow_backing,
            };
            let report = showing("importing", "files", |p| {
                import::import(&store, &options, p)
            })
            .with_context(|| format!("importing {shown} as {name}:{tag}"))?;
            drop(pulled);
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "version": report.version,
                        "parent": report.parent,
                        "name": name, "tag": tag,
                        "stats": report.stats,
                        "new_objects": report.new_objects,
                        "new_stored_bytes": report.new_stored_bytes,
                    })
                );
            } else {
                println!("{}", report.version);
                eprintln!(
                    "imported {name}:{tag}: {} files, {} in {:.1}s; {} new objects, {} added to the store",
                    report.stats.files,
                    format::bytes(report.stats.bytes),
                    started.elapsed().as_secs_f64(),
                    report.new_objects,
                    format::bytes(report.new_stored_bytes)
                );
            }
        }
        ImageCmd::Export {
            image,
            dest,
            format,
            size,
            force,
            login,
        } => {
            let store = Store::open(store_dir)?;
            let parsed = versions::concrete(&store, &ImageRef::parse(&image)?)?;
            let resolved = versions::resolve(&store, &parsed)?;
            if let Some(d) = dest.to_str().filter(|d| RegistryRef::is_registry(d)) {
                if format.is_some_and(|f| !matches!(f, OutFormat::Oci)) || size.is_some() {
                    bail!("a registry takes OCI images: no --format other than oci, no --size");
                }
                crate::registry_cmd::push(&store, &resolved, d, login.creds.as_deref())?;
                return Ok(ExitCode::SUCCESS);
            }
            // oci:DIR[:REF] names the layout and the image's name in it.
            let oci_dest = dest.to_str().is_some_and(|d| d.starts_with("oci:"));
            let (dest, oci_ref) = match dest.to_str().and_then(|d| d.strip_prefix("oci:")) {
                Some(rest) => match rest.rsplit_once(':') {
                    Some((dir, r)) if !r.is_empty() && !r.contains('/') => {
                        (PathBuf::from(dir), Some(r.to_string()))
                    }
                    _ => (PathBuf::from(rest), None),
                },
                None => (dest, None),
            };
            let oci_name = oci_ref.clone().unwrap_or_else(|| match &parsed {
                ImageRef::Tag { tag, .. } => tag.clone(),
                ImageRef::Version { .. } | ImageRef::Name { .. } => resolved.id.short(12),
            });
            let format = match format {
                _ if oci_dest => ExportFormat::Oci { ref_name: oci_name },
                Some(OutFormat::Oci) => ExportFormat::Oci { ref_name: oci_name },
                Some(OutFormat::Dir) => ExportFormat::Dir,
                Some(OutFormat::Tar) => ExportFormat::Tar,
                Some(OutFormat::Ext4) => ExportFormat::Ext4 { size },
                Some(OutFormat::Qcow2) => ExportFormat::Qcow2 { size },
                Some(OutFormat::Erofs) => ExportFormat::Erofs,
                None => match format_by_name(&dest) {
                    Some(OutFormat::Tar) => ExportFormat::Tar,
                    Some(OutFormat::Qcow2) => ExportFormat::Qcow2 { size },
                    Some(OutFormat::Erofs) => ExportFormat::Erofs,
                    Some(OutFormat::Ext4) => ExportFormat::Ext4 { size },
                    Some(OutFormat::Dir | OutFormat::Oci) => ExportFormat::Dir,
                    None => bail!(
                        "{}: no format has the extension {:?}; give --format \
                         (dir, tar, ext4, qcow2, erofs, oci) or name it {}",
                        dest.display(),
                        dest.extension().unwrap_or_default(),
                        BY_EXTENSION.map(|(ext, _)| ext).join(", ")
                    ),
                },
            };
            if dest.as_os_str() == "-" && std::io::stdout().is_terminal() {
                bail!(
                    "not writing an archive to a terminal; redirect standard output \
                     (> out.tar) or give a file name"
                );
            }
            let file_format = matches!(
                format,
                ExportFormat::Tar
                    | ExportFormat::Ext4 { .. }
                    | ExportFormat::Qcow2 { .. }
                    | ExportFormat::Erofs
            );
            if file_format && dest.as_os_str() != "-" && !force {
                if let Ok(m) = std::fs::symlink_metadata(&dest) {
                    if m.is_dir() {
                        bail!(
                            "{} is a directory; give a file name for this format, or \
                             --format dir",
                            dest.display()
                        );
                    }
                    bail!("{} exists; give --force to replace it", dest.display());
                }
            }
            if size.is_some()
                && !matches!(
                    format,
                    ExportFormat::Ext4 { .. } | ExportFormat::Qcow2 { .. }
                )
            {
                bail!("--size applies to ext4 and qcow2 exports only");
            }
            if !matches!(format, ExportFormat::Dir | ExportFormat::Tar) && dest.as_os_str() == "-" {
                bail!("disk images cannot be written to stdout; give a file name");
            }
            if format == ExportFormat::Dir && dest.as_os_str() == "-" {
                bail!("cannot export a directory to stdout; use --format tar");
            }
            let report = showing("exporting", "files", |p| {
                export::export(&store, &resolved, &dest, format, p)
            })
            .with_context(|| format!("exporting {} to {}", resolved.display, dest.display()))?;
            for w in report.warnings.iter().take(20) {
                eprintln!("warning: {w}");
            }
            if report.warnings.len() > 20 {
                eprintln!("warning: … and {} more", report.warnings.len() - 20);
            }
            if dest.as_os_str() != "-" {
                eprintln!(
                    "exported {} to {}: {} files, {}",
                    resolved.display,
                    dest.display(),
                    report.files,
                    format::bytes(report.bytes)
                );
            }
        }
        ImageCmd::Ls { filter, json } => {
            let filter = filter.as_deref().map(ImageRef::parse).transpose()?;
            let mut rows = match Store::open(store_dir) {
                Ok(store) => versions::list(&store)?,
                Err(starling_store::Error::NotAStore(_)) => Vec::new(),
                Err(e) => return Err(e.into()),
            };
            match &filter {
                None => {}
                Some(ImageRef::Name { name }) => rows.retain(|r| &r.name == name),
                Some(ImageRef::Tag { name, tag }) => {
                    rows.retain(|r| &r.name == name && &r.tag == tag)
                }
                Some(ImageRef::Version { .. }) => {
                    anyhow::bail!("image ls: filter by NAME or NAME:TAG, not by version")
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<32} {:<12} {:<12} {:<19} {:>8} {:>10} {:>8}",
                    "NAME", "TAG", "VERSION", "CREATED", "FILES", "SIZE", "VERSIONS"
                );
                for r in rows {
                    println!(
                        "{:<32} {:<12} {:<12} {:<19} {:>8} {:>10} {:>8}",
                        r.name,
                        r.tag,
                        r.version.short(12),
                        format::time(r.created_unix_ns),
                        r.files,
                        format::bytes(r.bytes),
                        r.versions
                    );
                }
            }
        }
        ImageCmd::Inspect { image, json } => {
            let store = Store::open(store_dir)?;
            let r = versions::resolve(&store, &ImageRef::parse(&image)?)?;
            let c = &r.commit;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "version": r.id,
                        "name": c.name,
                        "parent": c.parent,
                        "root_tree": c.root,
                        "created_unix_ns": c.created_unix_ns,
                        "labels": c.labels,
                        "boot": c.boot,
                        "stats": c.stats,
                        "source": c.source,
                    }))?
                );
            } else {
                println!("version:  {}", r.id);
                println!("name:     {}", c.name);
                println!(
                    "parent:   {}",
                    c.parent
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "-".into())
                );
                println!("created:  {} UTC", format::time(c.created_unix_ns));
                println!("source:   {}", c.source);
                println!("root:     {}", c.root);
                println!(
                    "contents: {} files ({}), {} dirs, {} symlinks, {} hardlinks, {} special",
                    c.stats.files,
                    format::bytes(c.stats.bytes),
                    c.stats.dirs,
                    c.stats.symlinks,
                    c.stats.hardlinks,
                    c.stats.special
                );
                for (k, v) in &c.labels {
                    println!("label:    {k}={v}");
                }
            }
        }
        ImageCmd::History { image, json } => {
            let store = Store::open(store_dir)?;
            let ImageRef::Tag { name, tag } =
                versions::concrete(&store, &ImageRef::parse(&image)?)?
            else {
                anyhow::bail!(
                    "image history {image}: give a tag (NAME[:TAG]); a version has no history of its own"
                );
            };
            let rows = versions::history(&store, &name, &tag)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<2}{:<14} {:<14} {:<19} {:<7} {:>8} {:>10}",
                    "", "VERSION", "PARENT", "TAGGED", "OP", "FILES", "SIZE"
                );
                for r in rows {
                    println!(
                        "{:<2}{:<14} {:<14} {:<19} {:<7} {:>8} {:>10}",
                        if r.current { "*" } else { "" },
                        r.version.short(12),
                        r.parent.map(|p| p.short(12)).unwrap_or_else(|| "-".into()),
                        format::time(r.tagged_unix_ns),
                        r.op,
                        r.files,
                        format::bytes(r.bytes)
                    );
                }
            }
        }
        ImageCmd::Tag { source, target } => {
            let store = Store::open(store_dir)?;
            let (name, tag) = ImageRef::parse_tag(&target)?;
            let id = versions::tag(&store, &ImageRef::parse(&source)?, &name, &tag)?;
            eprintln!("{name}:{tag} -> {}", id.short(12));
        }
        ImageCmd::Rm { image } => {
            let store = Store::open(store_dir)?;
            let msg = versions::remove(&store, &ImageRef::parse(&image)?)?;
            eprintln!("{msg}; run `starling store gc` to free space");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for l in labels {
        let Some((k, v)) = l.split_once('=') else {
            bail!("label {l:?} is not KEY=VALUE");
        };
        if k.is_empty() {
            bail!("label {l:?} has an empty key");
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}
