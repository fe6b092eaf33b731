//! Importers: a source (directory or tar archive) becomes a new image version.

mod dir;
mod disk;
mod tar;

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
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
    let (format, compression) = detect(opts.source, opts.format)?;
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
    let (root, pending, kind) = match format {
        SourceFormat::Dir => {
            let (root, pending) = dir::stage(&txn, opts.source, &opts.chunking, progress)?;
            (root, pending, "dir".to_string())
        }
        SourceFormat::Disk => {
            let (root, pending, src) =
                disk::stage(&txn, opts.source, opts.partition, &opts.chunking, progress)?;
            let kind = match src.partition {
                Some(n) => format!("{}:partition{n}", src.format),
                None => src.format.to_string(),
            };
            (root, pending, kind)
        }
        SourceFormat::Tar => (
            tar::stage(&txn, opts.source, compression, &opts.chunking, progress)?,
            Vec::new(),
            "tar".to_string(),
        ),
    };
    let mut stats = TreeStats::default();
    let root_tree = root.write(&txn, &pending, &mut stats)?;
    let source = format!("{kind}:{}", absolute(opts.source).display());

    let _refs = store.lock_refs()?;
    let parent = tags::read(store, opts.name, opts.tag)?.map(|r| r.target);
    let commit = Commit {
        root: root_tree,
        root_meta: root.meta.clone(),
        parent,
        created_unix_ns: now_unix_ns(),
        name: opts.name.to_string(),
        labels: opts.labels.clone(),
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
        return match forced {
            None | Some(SourceFormat::Dir) => Ok((SourceFormat::Dir, Compression::None)),
            Some(SourceFormat::Tar | SourceFormat::Disk) => Err(Error::UnknownFormat {
                source_path: source.to_path_buf(),
            }),
        };
    }
    if forced == Some(SourceFormat::Dir) {
        return Err(Error::UnknownFormat {
            source_path: source.to_path_buf(),
        });
    }
    if forced == Some(SourceFormat::Disk) {
        return Ok((SourceFormat::Disk, Compression::None));
    }
    let mut head = [0u8; 512];
    let n = read_up_to(&mut File::open(source).at(source)?, &mut head).at(source)?;
    let head = &head[..n];
    let compression = if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    };
    let looks_tar = compression != Compression::None || (n == 512 && tar_checksum_ok(head));
    if looks_tar || forced == Some(SourceFormat::Tar) {
        Ok((SourceFormat::Tar, compression))
    } else if disk::looks_like_disk(source) {
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
