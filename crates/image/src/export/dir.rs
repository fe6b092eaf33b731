//! Export to a directory. Entries are created in depth-first name order (so a hard link's
//! target always exists before the link); each inode's metadata is applied after its content,
//! in the order that keeps it: owner, then mode (chown clears setuid), then xattrs (a write or
//! chown drops security.capability), then times. Directories get theirs after their children.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, CWD};
use rustix::process::{Gid, Uid};
use starling_store::{ObjectId, Store};

use crate::chunk::Progress;
use crate::error::{Error, IoContext, Result};
use crate::export::{ContentReader, ExportReport};
use crate::manifest::{Meta, Node, Tree};
use crate::path;
use crate::versions::Resolved;

struct DirExport<'a> {
    store: &'a Store,
    root: PathBuf,
    image: String,
    privileged: bool,
    report: ExportReport,
    progress: &'a Progress,
}

pub(crate) fn export(
    store: &Store,
    image: &Resolved,
    dest: &Path,
    progress: &Progress,
) -> Result<ExportReport> {
    match fs::read_dir(dest) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                return Err(Error::DestinationNotEmpty(dest.to_path_buf()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir(dest).at(dest)?;
        }
        Err(_) => return Err(Error::DestinationNotEmpty(dest.to_path_buf())),
    }
    let mut ex = DirExport {
        store,
        root: dest.to_path_buf(),
        image: image.display.clone(),
        privileged: rustix::process::geteuid().is_root(),
        report: ExportReport::default(),
        progress,
    };
    let mut comps = Vec::new();
    ex.tree(&image.commit.root, dest, &mut comps)?;
    ex.apply_meta(dest, &image.commit.root_meta, false, &comps)?;
    Ok(ex.report)
}

impl DirExport<'_> {
    fn fail(&self, comps: &[Vec<u8>], reason: impl ToString) -> Error {
        Error::Export {
            image: self.image.clone(),
            path: path::display(&path::join(comps)),
            reason: reason.to_string(),
        }
    }

    fn tree(&mut self, id: &ObjectId, dir: &Path, comps: &mut Vec<Vec<u8>>) -> Result<()> {
        let tree = Tree::decode(id, &self.store.get(id)?)?;
        for entry in &tree.entries {
            comps.push(entry.name.to_vec());
            let p = dir.join(OsStr::from_bytes(&entry.name));
            self.node(&entry.node, &p, comps)?;
            comps.pop();
        }
        Ok(())
    }

    fn node(&mut self, node: &Node, p: &Path, comps: &mut Vec<Vec<u8>>) -> Result<()> {
        match node {
            Node::Dir { meta, tree } => {
                fs::create_dir(p).at(p)?;
                self.tree(tree, p, comps)?;
                self.apply_meta(p, meta, false, comps)?;
            }
            Node::File { meta, size, data } => {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(p)
                    .at(p)?;
                self.write_content(&mut f, data, *size, comps)?;
                drop(f);
                self.apply_meta(p, meta, false, comps)?;
                self.progress.files.fetch_add(1, Ordering::Relaxed);
                self.report.files += 1;
                self.report.bytes += size;
            }
            Node::Symlink { meta, target } => {
                std::os::unix::fs::symlink(OsStr::from_bytes(target), p).at(p)?;
                self.apply_meta(p, meta, true, comps)?;
            }
            Node::Hardlink { target } => {
                let t = path::split(target)
                    .ok_or_else(|| self.fail(comps, "invalid hard-link target"))?;
                let mut tp = self.root.clone();
                for c in &t {
                    tp.push(OsStr::from_bytes(c));
                }
                fs::hard_link(&tp, p).at(p)?;
            }
            Node::CharDevice { meta, rdev } => {
                self.special(p, FileType::CharacterDevice, meta, *rdev, comps)?
            }
            Node::BlockDevice { meta, rdev } => {
                self.special(p, FileType::BlockDevice, meta, *rdev, comps)?
            }
            Node::Fifo { meta } => self.special(p, FileType::Fifo, meta, 0, comps)?,
            Node::Socket { meta } => self.special(p, FileType::Socket, meta, 0, comps)?,
        }
        Ok(())
    }

    /// Writes content, leaving holes where whole chunks are zero (sparse files stay sparse).
    fn write_content(
        &mut self,
        f: &mut File,
        data: &crate::manifest::FileData,
        size: u64,
        comps: &[Vec<u8>],
    ) -> Result<()> {
        let mut reader = ContentReader::new(self.store, data);
        let mut written = 0u64;
        let mut hole = false;
        while let Some(piece) = reader.next_piece().map_err(|e| self.fail(comps, e))? {
            if piece.len() >= 4096 && piece.iter().all(|&b| b == 0) {
                f.seek(SeekFrom::Current(piece.len() as i64))
                    .map_err(|e| self.fail(comps, e))?;
                hole = true;
            } else {
                f.write_all(&piece).map_err(|e| self.fail(comps, e))?;
            }
            written += piece.len() as u64;
            self.progress
                .bytes
                .fetch_add(piece.len() as u64, Ordering::Relaxed);
        }
        if written != size {
            return Err(self.fail(
                comps,
                format!("content is {written} bytes, the manifest says {size}"),
            ));
        }
        if hole {
            f.set_len(size).map_err(|e| self.fail(comps, e))?;
        }
        Ok(())
    }

    fn special(
        &mut self,
        p: &Path,
        ft: FileType,
        meta: &Meta,
        rdev: u64,
        comps: &[Vec<u8>],
    ) -> Result<()> {
        match rustix::fs::mknodat(CWD, p, ft, Mode::from_raw_mode(0o600), rdev) {
            Ok(()) => self.apply_meta(p, meta, false, comps),
            Err(rustix::io::Errno::PERM) if !self.privileged => {
                self.report.warnings.push(format!(
                    "{}: {ft:?} not created (needs root)",
                    path::display(&path::join(comps))
                ));
                Ok(())
            }
            Err(e) => Err(e).at(p),
        }
    }

    fn apply_meta(
        &mut self,
        p: &Path,
        meta: &Meta,
        symlink: bool,
        comps: &[Vec<u8>],
    ) -> Result<()> {
        let nofollow = AtFlags::SYMLINK_NOFOLLOW;
        if self.privileged {
            rustix::fs::chownat(
                CWD,
                p,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
                nofollow,
            )
            .at(p)?;
        } else if meta.uid != rustix::process::geteuid().as_raw() {
            self.report.warnings.push(format!(
                "{}: owner {}:{} not set (needs root)",
                path::display(&path::join(comps)),
                meta.uid,
                meta.gid
            ));
        }
        if !symlink {
            rustix::fs::chmodat(CWD, p, Mode::from_raw_mode(meta.mode), AtFlags::empty()).at(p)?;
        }
        for x in &meta.xattrs {
            let name = OsStr::from_bytes(&x.name);
            if let Err(e) = xattr::set(p, name, &x.value) {
                let denied = e.kind() == std::io::ErrorKind::PermissionDenied
                    || crate::meta_fs::unsupported(&e);
                if denied && !self.privileged || crate::meta_fs::unsupported(&e) {
                    self.report.warnings.push(format!(
                        "{}: xattr {} not set: {e}",
                        path::display(&path::join(comps)),
                        String::from_utf8_lossy(&x.name)
                    ));
                } else {
                    return Err(self.fail(
                        comps,
                        format!("xattr {}: {e}", String::from_utf8_lossy(&x.name)),
                    ));
                }
            }
        }
        let t = Timespec {
            tv_sec: meta.mtime_sec,
            tv_nsec: meta.mtime_nsec as _,
        };
        let times = Timestamps {
            last_access: t,
            last_modification: t,
        };
        rustix::fs::utimensat(CWD, p, &times, nofollow).at(p)?;
        Ok(())
    }
}
