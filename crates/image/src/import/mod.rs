//! Importers: a source (directory or tar archive) becomes a new image version.

mod dir;
pub(crate) mod disk;
mod oci;
pub(crate) mod tar;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use starling_store::{ObjectId, Store};

use crate::chunk::{ChunkParams, Progress};
use crate::error::{Error, IoContext, Result};
use crate::manifest::{Commit, TreeStats};
use crate::{now_unix_ns, tags};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    Dir,
    Tar,
    /// A raw or qcow2 disk image holding ext2/3/4, whole-disk or partitioned.
    Disk,
    /// An OCI image layout directory (`oci:DIR[:REF]`, or a directory with `oci-layout`).
    Oci,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
}

/// A reader of the decompressed stream (gzip members concatenated are read through).
pub(crate) fn decompress(r: Box<dyn Read>, c: Compression) -> std::io::Result<Box<dyn Read>> {
    Ok(match c {
        Compression::None => r,
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
    })
}

pub struct ImportOptions<'a> {
    pub source: &'a Path,
    /// `None`: detect from the source's content.
    pub format: Option<SourceFormat>,
    pub name: &'a str,
    pub tag: &'a str,
    pub labels: BTreeMap<String, String>,
    pub chunking: ChunkParams,
    /// Disk images: the partition to read (1-based); `None` picks the root partition.
    pub partition: Option<u32>,
    /// Disk images: follow the backing file or external data file a qcow2 header names (files
    /// of this host named by whoever made the image); refused otherwise.
    pub allow_backing: bool,
}

#[derive(Debug, Clone)]
pub struct ImportReport {
    pub version: ObjectId,
    pub parent: Option<ObjectId>,
    pub stats: TreeStats,
    pub new_objects: usize,
    /// Envelope bytes this import added to the store.
    pub new_stored_bytes: u64,
}

/// Imports `opts.source` as a new version of `name:tag`, whose parent is the tag's previous
/// version. Bad input fails before anything becomes visible or stays on disk.
pub fn import(
    store: &Store,
    opts: &ImportOptions<'_>,
    progress: &Progress,
) -> Result<ImportReport> {
    crate::reference::check_name(opts.name).map_err(|reason| Error::BadRef {
        input: opts.name.to_string(),
        reason,
    })?;
    crate::reference::check_tag(opts.tag).map_err(|reason| Error::BadRef {
        input: opts.tag.to_string(),
        reason,
    })?;
    let (source, oci_ref) = split_oci(opts.source);
    let forced = if oci_ref.is_some()
        || opts
            .source
            .as_os_str()
            .as_encoded_bytes()
            .starts_with(b"oci:")
    {
        Some(SourceFormat::Oci)
    } else {
        opts.format
    };
    let source = source.as_path();
    let (format, compression) = detect(source, forced)?;
    if opts.partition.is_some() && format != SourceFormat::Disk {
        return Err(Error::Disk {
            source_path: opts.source.to_path_buf(),
            source: starling_disk::Error::Invalid {
                what: "--partition".into(),
                detail: "applies to disk images only".into(),
            },
        });
    }
    let _writer = store.lock_writer()?;
    let written_before = store
        .counters()
        .bytes_written
        .load(std::sync::atomic::Ordering::Relaxed);
    let txn = store.begin()?;
    let mut labels = BTreeMap::new();
    let (root, pending, kind) = match format {
        SourceFormat::Oci => {
            let img = oci::stage(&txn, source, oci_ref.as_deref(), &opts.chunking, progress)?;
            labels = img.labels;
            (img.root, Vec::new(), format!("oci@{}", img.manifest_digest))
        }
        SourceFormat::Dir => {
            let (root, pending) = dir::stage(&txn, source, &opts.chunking, progress)?;
            (root, pending, "dir".to_string())
        }
        SourceFormat::Disk => {
            let (root, pending, src) = disk::stage(
                &txn,
                source,
                opts.partition,
                opts.allow_backing,
                &opts.chunking,
                progress,
            )?;
            let kind = match src.partition {
                Some(n) => format!("{}:partition{n}", src.format),
                None => src.format.to_string(),
            };
            (root, pending, kind)
        }
        SourceFormat::Tar => (
            tar::stage(&txn, source, compression, &opts.chunking, progress)?,
            Vec::new(),
            "tar".to_string(),
        ),
    };
    let mut stats = TreeStats {
        xattrs: Some(0),
        ..TreeStats::default()
    };
    stats.count_xattrs(&root.meta);
    let root_tree = root.write(&txn, &pending, &mut stats)?;
    let source = format!("{kind}:{}", absolute(source).display());
    labels.extend(opts.labels.clone());

    let _refs = store.lock_refs()?;
    let parent = tags::read(store, opts.name, opts.tag)?.map(|r| r.target);
    let commit = Commit {
        root: root_tree,
        root_meta: root.meta.clone(),
        parent,
        created_unix_ns: now_unix_ns(),
        name: opts.name.to_string(),
        labels,
        boot: None,
        stats,
        source,
    };
    let version = txn.put(&commit.encode())?.id;
    let new_stored_bytes = store
        .counters()
        .bytes_written
        .load(std::sync::atomic::Ordering::Relaxed)
        - written_before;
    let new_objects = txn.commit()?;
    tags::point(store, opts.name, opts.tag, version, "import")?;
    Ok(ImportReport {
        version,
        parent,
        stats,
        new_objects,
        new_stored_bytes,
    })
}

/// A directory staged with its contents stored in `txn` (for overlays).
pub(crate) fn stage_dir(
    txn: &starling_store::Txn<'_>,
    dir: &Path,
    params: &ChunkParams,
    progress: &Progress,
) -> Result<crate::stage::StageDir> {
    if !dir.is_dir() {
        return Err(Error::MissingSource(dir.to_path_buf()));
    }
    let (mut root, pending) = dir::stage(txn, dir, params, progress)?;
    root.resolve_pending(&pending);
    Ok(root)
}

/// `oci:DIR[:REF]` → (DIR, REF); anything else is a plain path.
fn split_oci(source: &Path) -> (PathBuf, Option<String>) {
    let Some(rest) = source.to_str().and_then(|s| s.strip_prefix("oci:")) else {
        return (source.to_path_buf(), None);
    };
    if Path::new(rest).is_dir() {
        return (PathBuf::from(rest), None);
    }
    match rest.rsplit_once(':') {
        Some((dir, r)) if !r.is_empty() && !r.contains('/') => {
            (PathBuf::from(dir), Some(r.to_string()))
        }
        _ => (PathBuf::from(rest), None),
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Format by content: a directory, or a tar stream (possibly gzip or zstd compressed).
fn detect(source: &Path, forced: Option<SourceFormat>) -> Result<(SourceFormat, Compression)> {
    let md = match std::fs::metadata(source) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::MissingSource(source.to_path_buf()))
        }
        Err(e) => return Err(e).at(source),
    };
    if md.is_dir() {
        let layout = source.join("oci-layout").is_file();
        return match forced {
            Some(SourceFormat::Oci) => Ok((SourceFormat::Oci, Compression::None)),
            None if layout => Ok((SourceFormat::Oci, Compression::None)),
            None | Some(SourceFormat::Dir) => Ok((SourceFormat::Dir, Compression::None)),
            Some(SourceFormat::Tar | SourceFormat::Disk) => Err(Error::UnknownFormat {
                source_path: source.to_path_buf(),
            }),
        };
    }
    if matches!(forced, Some(SourceFormat::Dir | SourceFormat::Oci)) {
        return Err(Error::UnknownFormat {
            source_path: source.to_path_buf(),
        });
    }
    if forced == Some(SourceFormat::Disk) {
        return Ok((SourceFormat::Disk, Compression::None));
    }
    // Enough for a tar header, an MBR and an ext superblock's magic.
    let mut head = [0u8; 2048];
    let n = read_up_to(&mut File::open(source).at(source)?, &mut head).at(source)?;
    let head = &head[..n];
    let compression = if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    };
    let looks_tar = compression != Compression::None || (n >= 512 && tar_checksum_ok(&head[..512]));
    if looks_tar || forced == Some(SourceFormat::Tar) {
        Ok((SourceFormat::Tar, compression))
    } else if disk::looks_like_disk(head) {
        Ok((SourceFormat::Disk, Compression::None))
    } else {
        Err(Error::UnknownFormat {
            source_path: source.to_path_buf(),
        })
    }
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The header checksum of a tar block: sum of bytes with the checksum field as spaces.
fn tar_checksum_ok(block: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(&block[148..156]) else {
        return false;
    };
    let Ok(stored) = u32::from_str_radix(text.trim_matches([' ', '\0']), 8) else {
        return false;
    };
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                b' ' as u32
            } else {
                b as u32
            }
        })
        .sum();
    sum == stored
}
