//! Export to disk images: ext4 written straight from the manifest (no staging tree, no root
//! needed, nanosecond times and owners kept), optionally wrapped in qcow2; and EROFS through
//! the format owner's `mkfs.erofs` on a staged tree.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;

use starling_disk::ext4::{Ext4Builder, NewInode, NewKind, WriteOptions};
use starling_store::{ObjectId, Store};

use crate::chunk::Progress;
use crate::error::{Error, IoContext, Result};
use crate::export::{ContentReader, ExportReport};
use crate::manifest::{FileData, Meta, Node, Tree};
use crate::path;
use crate::versions::Resolved;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskKind {
    Ext4,
    Qcow2,
    Erofs,
}

/// Writes `image` as a disk image at `dest`, atomically (beside it, then renamed).
pub(crate) fn export(
    store: &Store,
    image: &Resolved,
    dest: &Path,
    kind: DiskKind,
    size: Option<u64>,
    progress: &Progress,
) -> Result<ExportReport> {
    let tmp = partial(dest, "");
    let result = match kind {
        DiskKind::Ext4 => write_ext4(store, image, &tmp, size, progress),
        DiskKind::Qcow2 => {
            let raw = partial(dest, ".raw");
            let r = write_ext4(store, image, &raw, size, progress).and_then(|rep| {
                starling_disk::device::raw_to_qcow2(&raw, &tmp).map_err(|e| Error::Disk {
                    source_path: dest.to_path_buf(),
                    source: e,
                })?;
                Ok(rep)
            });
            let _ = fs::remove_file(&raw);
            r
        }
        DiskKind::Erofs => write_erofs(store, image, &tmp, progress),
    };
    match result {
        Ok(rep) => {
            fs::rename(&tmp, dest).at(dest)?;
            Ok(rep)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn partial(dest: &Path, suffix: &str) -> PathBuf {
    dest.with_file_name(format!(
        ".{}.partial-{}{suffix}",
        dest.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ))
}

fn new_inode(kind: NewKind, meta: &Meta) -> NewInode {
    NewInode {
        kind,
        perm: meta.mode & 0o7777,
        uid: meta.uid,
        gid: meta.gid,
        mtime_sec: meta.mtime_sec,
        mtime_nsec: meta.mtime_nsec,
        xattrs: meta
            .xattrs
            .iter()
            .map(|x| (x.name.to_vec(), x.value.to_vec()))
            .collect(),
    }
}

struct Collect<'a> {
    store: &'a Store,
    image: &'a Resolved,
    builder: Ext4Builder,
    /// Hard-link holders: path → inode.
    holders: HashMap<Vec<u8>, u32>,
    files: HashMap<u32, FileData>,
    report: ExportReport,
}

fn write_ext4(
    store: &Store,
    image: &Resolved,
    out: &Path,
    size: Option<u64>,
    progress: &Progress,
) -> Result<ExportReport> {
    let disk_err = |e| Error::Disk {
        source_path: out.to_path_buf(),
        source: e,
    };
    let builder =
        Ext4Builder::new(new_inode(NewKind::Dir, &image.commit.root_meta)).map_err(disk_err)?;
    let mut c = Collect {
        store,
        image,
        builder,
        holders: HashMap::new(),
        files: HashMap::new(),
        report: ExportReport::default(),
    };
    c.dir(&image.commit.root, 2, &mut Vec::new())?;
    let Collect {
        builder,
        files,
        report,
        ..
    } = c;
    let created = image.commit.created_unix_ns / 1_000_000_000;
    let id = image.id.as_bytes();
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&id[..16]);
    uuid[6] = (uuid[6] & 0x0f) | 0x40; // a v4-shaped UUID, but derived: same image, same bytes
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    let opts = WriteOptions {
        size,
        uuid,
        label: image.commit.name.chars().take(16).collect(),
        time: created,
    };
    builder
        .write(out, &opts, &mut |ino, sink| {
            let data = files
                .get(&ino)
                .ok_or_else(|| std::io::Error::other(format!("no content for inode {ino}")))?;
            let mut r = ContentReader::new(store, data);
            while let Some(piece) = r.next_piece()? {
                progress
                    .bytes
                    .fetch_add(piece.len() as u64, Ordering::Relaxed);
                sink(&piece)?;
            }
            progress.files.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
        .map_err(disk_err)?;
    Ok(report)
}

impl Collect<'_> {
    fn dir(&mut self, id: &ObjectId, ino: u32, comps: &mut Vec<Vec<u8>>) -> Result<()> {
        let tree = Tree::decode(id, &self.store.get(id)?)?;
        for e in tree.entries {
            comps.push(e.name.to_vec());
            let err = |e: starling_disk::Error, comps: &[Vec<u8>]| Error::Export {
                image: self.image.display.clone(),
                path: path::display(&path::join(comps)),
                reason: e.to_string(),
            };
            let kind = match &e.node {
                Node::Dir { meta, tree } => {
                    let sub = self
                        .builder
                        .add(ino, &e.name, new_inode(NewKind::Dir, meta))
                        .map_err(|x| err(x, comps))?;
                    self.dir(tree, sub, comps)?;
                    comps.pop();
                    continue;
                }
                Node::Hardlink { target } => {
                    let holder =
                        *self
                            .holders
                            .get(target.as_slice())
                            .ok_or_else(|| Error::Export {
                                image: self.image.display.clone(),
                                path: path::display(&path::join(comps)),
                                reason: format!(
                                    "hard link to {:?}, which comes later or is missing",
                                    path::display(target)
                                ),
                            })?;
                    self.builder
                        .link(ino, &e.name, holder)
                        .map_err(|x| err(x, comps))?;
                    comps.pop();
                    continue;
                }
                Node::File { meta, size, data } => {
                    self.report.files += 1;
                    self.report.bytes += size;
                    (NewKind::File { size: *size }, meta, Some(data))
                }
                Node::Symlink { meta, target } => (NewKind::Symlink(target.to_vec()), meta, None),
                Node::CharDevice { meta, rdev } => (NewKind::CharDevice(*rdev), meta, None),
                Node::BlockDevice { meta, rdev } => (NewKind::BlockDevice(*rdev), meta, None),
                Node::Fifo { meta } => (NewKind::Fifo, meta, None),
                Node::Socket { meta } => (NewKind::Socket, meta, None),
            };
            let (k, meta, data) = kind;
            let new = self
                .builder
                .add(ino, &e.name, new_inode(k, meta))
                .map_err(|x| err(x, comps))?;
            if let Some(d) = data {
                self.files.insert(new, d.clone());
            }
            self.holders.insert(path::join(comps), new);
            comps.pop();
        }
        Ok(())
    }
}

/// EROFS through erofs-utils' `mkfs.erofs`, from a tree exported to a scratch directory beside
/// the destination (owners and devices need root there, as for any directory export).
fn write_erofs(
    store: &Store,
    image: &Resolved,
    out: &Path,
    progress: &Progress,
) -> Result<ExportReport> {
    let stage = partial(out, ".tree");
    let _ = fs::remove_dir_all(&stage);
    let r = (|| {
        let report = crate::export::dir::export(store, image, &stage, progress)?;
        if let Some((path, reason)) = erofs_utils_limit(&stage, &stage)? {
            return Err(Error::Export {
                image: image.display.clone(),
                path,
                reason: format!(
                    "{reason}, which mkfs.erofs of erofs-utils 1.5 cannot store correctly; \
                     export to ext4 instead"
                ),
            });
        }
        let id = image.id.to_string();
        // A UUID derived from the version: the same image gives the same bytes.
        let uuid = format!(
            "{}-{}-4{}-8{}-{}",
            &id[0..8],
            &id[8..12],
            &id[13..16],
            &id[17..20],
            &id[20..32]
        );
        // erofs-utils 1.5 opens its output without O_CREAT.
        fs::File::create(out).at(out)?;
        let o = Command::new("mkfs.erofs")
            .arg(format!("-U{uuid}"))
            .arg(out)
            .arg(&stage)
            .output()
            .map_err(|e| Error::Export {
                image: image.display.clone(),
                path: "/".into(),
                reason: format!("cannot run mkfs.erofs ({e}); install erofs-utils"),
            })?;
        if !o.status.success() {
            return Err(Error::Export {
                image: image.display.clone(),
                path: "/".into(),
                reason: format!(
                    "mkfs.erofs failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
            });
        }
        Ok(report)
    })();
    let _ = fs::remove_dir_all(&stage);
    r
}

/// The first entry below `dir` that erofs-utils 1.5 gets wrong: it follows symlinks when
/// reading xattrs and truncates 255-byte names.
fn erofs_utils_limit(top: &Path, dir: &Path) -> Result<Option<(String, &'static str)>> {
    use std::os::unix::ffi::OsStrExt;
    for e in fs::read_dir(dir).at(dir)? {
        let e = e.at(dir)?;
        let p = e.path();
        let ft = e.file_type().at(&p)?;
        let shown = || format!("/{}", p.strip_prefix(top).unwrap_or(&p).display());
        if e.file_name().as_bytes().len() >= 255 {
            return Ok(Some((shown(), "a 255-byte name")));
        }
        if ft.is_symlink() {
            if xattr::list(&p).at(&p)?.next().is_some() {
                return Ok(Some((shown(), "a symlink with xattrs")));
            }
        } else if ft.is_dir() {
            if let Some(found) = erofs_utils_limit(top, &p)? {
                return Ok(Some(found));
            }
        }
    }
    Ok(None)
}
