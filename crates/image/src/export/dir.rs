//! Export to a directory. Entries are created in depth-first name order (so a hard link's
//! target always exists before the link); each inode's metadata is applied after its content,
//! in the order that keeps it: owner, then mode (chown clears setuid), then xattrs (a write or
//! chown drops security.capability), then times. Directories get theirs after their children.
//! Everything is created relative to the descriptor of its directory, never through a link
//! (`beneath`), and directories stay 0700 until their children are done: nobody else can
//! plant a link in them meanwhile, and a destination whose entries someone else can change is
//! refused.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::Ordering;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use rustix::process::{Gid, Uid};
use starling_store::{ObjectId, Store};

use crate::beneath;
use crate::chunk::Progress;
use crate::error::{Error, IoContext, Result};
use crate::export::{ContentReader, ExportReport};
use crate::manifest::{Meta, Node, Tree};
use crate::path;
use crate::versions::Resolved;

struct DirExport<'a> {
    store: &'a Store,
    /// The destination, which hard links are resolved beneath.
    root: OwnedFd,
    image: String,
    privileged: bool,
    report: ExportReport,
    progress: &'a Progress,
}

/// Where metadata goes: an inode open here, or a link or device node named in a directory
/// held open (those are not opened: opening a FIFO blocks, a device's open has effects).
#[derive(Clone, Copy)]
enum Target<'a> {
    Open(std::os::fd::BorrowedFd<'a>),
    Named {
        dir: std::os::fd::BorrowedFd<'a>,
        name: &'a [u8],
        link: bool,
    },
}

pub(crate) fn export(
    store: &Store,
    image: &Resolved,
    dest: &Path,
    progress: &Progress,
) -> Result<ExportReport> {
    let root = open_destination(dest)?;
    let mut ex = DirExport {
        store,
        root,
        image: image.display.clone(),
        privileged: rustix::process::geteuid().is_root(),
        report: ExportReport::default(),
        progress,
    };
    let mut comps = Vec::new();
    let root = ex.root.try_clone().at(dest)?;
    ex.tree(&image.commit.root, &root, dest, &mut comps)?;
    ex.apply_meta(
        Target::Open(root.as_fd()),
        &image.commit.root_meta,
        dest,
        &comps,
    )?;
    Ok(ex.report)
}

/// Opens (making it, 0700, if it is not there) the empty directory to export into. One that
/// exists must be the caller's own: it is made 0700 for the export's length (the image's
/// mode for its root comes last), so nobody else can add, swap or rename entries meanwhile.
fn open_destination(dest: &Path) -> Result<OwnedFd> {
    match rustix::fs::mkdir(dest, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(e).at(dest),
    }
    let fd = match beneath::open_root(dest) {
        Ok(fd) => fd,
        Err(_) => return Err(Error::DestinationNotEmpty(dest.to_path_buf())),
    };
    let st = rustix::fs::fstat(&fd).at(dest)?;
    let me = rustix::process::geteuid().as_raw();
    if st.st_uid != me {
        return Err(Error::DestinationNotYours {
            dest: dest.to_path_buf(),
            owner: st.st_uid,
        });
    }
    // Empty before it is closed to others (a refused one keeps its mode), and still empty
    // after (nothing added in between).
    let empty = |fd: &OwnedFd| -> Result<()> {
        for e in rustix::fs::Dir::read_from(fd).at(dest)? {
            let name = e.at(dest)?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                return Err(Error::DestinationNotEmpty(dest.to_path_buf()));
            }
        }
        Ok(())
    };
    empty(&fd)?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700)).at(dest)?;
    empty(&fd)?;
    Ok(fd)
}

impl DirExport<'_> {
    fn fail(&self, comps: &[Vec<u8>], reason: impl ToString) -> Error {
        Error::Export {
            image: self.image.clone(),
            path: path::display(&path::join(comps)),
            reason: reason.to_string(),
        }
    }

    fn tree(
        &mut self,
        id: &ObjectId,
        dir: &OwnedFd,
        shown: &Path,
        comps: &mut Vec<Vec<u8>>,
    ) -> Result<()> {
        let tree = Tree::decode(id, &self.store.get(id)?)?;
        for entry in &tree.entries {
            comps.push(entry.name.to_vec());
            let p = shown.join(OsStr::from_bytes(&entry.name));
            self.node(&entry.node, dir, &entry.name, &p, comps)?;
            comps.pop();
        }
        Ok(())
    }

    fn node(
        &mut self,
        node: &Node,
        dir: &OwnedFd,
        name: &[u8],
        p: &Path,
        comps: &mut Vec<Vec<u8>>,
    ) -> Result<()> {
        let n = OsStr::from_bytes(name);
        let named = |link| Target::Named {
            dir: dir.as_fd(),
            name,
            link,
        };
        match node {
            Node::Dir { meta, tree } => {
                rustix::fs::mkdirat(dir, n, Mode::from_raw_mode(0o700)).at(p)?;
                let sub = beneath::sub_dir(dir, name, p)?;
                self.tree(tree, &sub, p, comps)?;
                self.apply_meta(Target::Open(sub.as_fd()), meta, p, comps)?;
            }
            Node::File { meta, size, data } => {
                let fd = rustix::fs::openat(
                    dir,
                    n,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .at(p)?;
                let mut f = File::from(fd);
                self.write_content(&mut f, data, *size, comps)?;
                self.apply_meta(Target::Open(f.as_fd()), meta, p, comps)?;
                self.progress.files.fetch_add(1, Ordering::Relaxed);
                self.report.files += 1;
                self.report.bytes += size;
            }
            Node::Symlink { meta, target } => {
                rustix::fs::symlinkat(OsStr::from_bytes(target), dir, n).at(p)?;
                self.apply_meta(named(true), meta, p, comps)?;
            }
            Node::Hardlink { target } => {
                // Resolved beneath the destination without following a link: an image's
                // symlink `l -> /etc` and a hard link to `l/shadow` must not reach the host.
                let t = path::split(target)
                    .ok_or_else(|| self.fail(comps, "invalid hard-link target"))?;
                let Some((last, parents)) = t.split_last() else {
                    return Err(self.fail(comps, "invalid hard-link target"));
                };
                let within;
                let from = if parents.is_empty() {
                    self.root.as_fd()
                } else {
                    // O_PATH: a directory of the image that is execute-only (0711) by now
                    // may still be passed through, as link(2) by path would.
                    within = beneath::open_beneath(
                        &self.root,
                        &path::join(parents),
                        OFlags::PATH | OFlags::DIRECTORY,
                        p,
                    )
                    .map_err(|e| self.fail(comps, format!("hard-link target: {e}")))?;
                    within.as_fd()
                };
                rustix::fs::linkat(from, OsStr::from_bytes(last), dir, n, AtFlags::empty())
                    .at(p)?;
            }
            Node::CharDevice { meta, rdev } => {
                self.special(dir, name, p, FileType::CharacterDevice, meta, *rdev, comps)?
            }
            Node::BlockDevice { meta, rdev } => {
                self.special(dir, name, p, FileType::BlockDevice, meta, *rdev, comps)?
            }
            Node::Fifo { meta } => self.special(dir, name, p, FileType::Fifo, meta, 0, comps)?,
            Node::Socket { meta } => {
                self.special(dir, name, p, FileType::Socket, meta, 0, comps)?
            }
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

    #[allow(clippy::too_many_arguments)]
    fn special(
        &mut self,
        dir: &OwnedFd,
        name: &[u8],
        p: &Path,
        ft: FileType,
        meta: &Meta,
        rdev: u64,
        comps: &[Vec<u8>],
    ) -> Result<()> {
        let n = OsStr::from_bytes(name);
        match rustix::fs::mknodat(dir, n, ft, Mode::from_raw_mode(0o600), rdev) {
            Ok(()) => {
                let target = Target::Named {
                    dir: dir.as_fd(),
                    name,
                    link: false,
                };
                self.apply_meta(target, meta, p, comps)
            }
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
        target: Target<'_>,
        meta: &Meta,
        p: &Path,
        comps: &[Vec<u8>],
    ) -> Result<()> {
        let nofollow = AtFlags::SYMLINK_NOFOLLOW;
        if self.privileged {
            let (uid, gid) = (Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)));
            match target {
                Target::Open(fd) => rustix::fs::fchown(fd, uid, gid),
                Target::Named { dir, name, .. } => {
                    rustix::fs::chownat(dir, OsStr::from_bytes(name), uid, gid, nofollow)
                }
            }
            .at(p)?;
        } else if meta.uid != rustix::process::geteuid().as_raw() {
            self.report.warnings.push(format!(
                "{}: owner {}:{} not set (needs root)",
                path::display(&path::join(comps)),
                meta.uid,
                meta.gid
            ));
        }
        let mode = Mode::from_raw_mode(meta.mode);
        match target {
            Target::Open(fd) => rustix::fs::fchmod(fd, mode).at(p)?,
            // A device node or FIFO in a directory only this export can change (0700).
            Target::Named {
                dir,
                name,
                link: false,
            } => rustix::fs::chmodat(dir, OsStr::from_bytes(name), mode, AtFlags::empty()).at(p)?,
            Target::Named { link: true, .. } => {}
        }
        for x in &meta.xattrs {
            let name = OsStr::from_bytes(&x.name);
            let set = match target {
                Target::Open(fd) => rustix::fs::fsetxattr(fd, name, &x.value, XattrFlags::empty()),
                Target::Named {
                    dir, name: entry, ..
                } => rustix::fs::lsetxattr(
                    beneath::proc_path(dir, entry),
                    name,
                    &x.value,
                    XattrFlags::empty(),
                ),
            };
            if let Err(e) = set {
                let e = std::io::Error::from(e);
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
        match target {
            Target::Open(fd) => rustix::fs::futimens(fd, &times),
            Target::Named { dir, name, .. } => {
                rustix::fs::utimensat(dir, OsStr::from_bytes(name), &times, nofollow)
            }
        }
        .at(p)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Commit, Entry, FileData};
    use serde_bytes::ByteBuf;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn meta(mode: u32) -> Meta {
        Meta {
            mode,
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            ..Meta::default()
        }
    }

    fn entry(name: &str, node: Node) -> Entry {
        Entry {
            name: ByteBuf::from(name.as_bytes().to_vec()),
            node,
        }
    }

    fn file(name: &str, text: &str) -> Entry {
        entry(
            name,
            Node::File {
                meta: meta(0o644),
                size: text.len() as u64,
                data: FileData::Inline(ByteBuf::from(text.as_bytes().to_vec())),
            },
        )
    }

    /// Stores a version whose root holds `entries` (sorted by the caller).
    fn image(store: &Store, entries: Vec<Entry>) -> Resolved {
        let txn = store.begin().unwrap();
        let root = txn.put(&Tree { entries }.encode()).unwrap().id;
        let commit = Commit {
            root,
            root_meta: meta(0o755),
            parent: None,
            created_unix_ns: 0,
            name: "t".into(),
            labels: Default::default(),
            boot: None,
            stats: Default::default(),
            source: String::new(),
        };
        let id = txn.put(&commit.encode()).unwrap().id;
        txn.commit().unwrap();
        Resolved {
            id,
            commit,
            display: "t".into(),
        }
    }

    fn dir_of(store: &Store, entries: Vec<Entry>) -> Node {
        let txn = store.begin().unwrap();
        let tree = txn.put(&Tree { entries }.encode()).unwrap().id;
        txn.commit().unwrap();
        Node::Dir {
            meta: meta(0o755),
            tree,
        }
    }

    #[test]
    fn a_hard_link_through_a_link_in_the_image_cannot_reach_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_init(dir.path().join("store")).unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("shadow"), b"host secret").unwrap();
        let link = Node::Symlink {
            meta: meta(0o777),
            target: ByteBuf::from(outside.as_os_str().as_bytes().to_vec()),
        };
        let hard = Node::Hardlink {
            target: ByteBuf::from(b"a/shadow".to_vec()),
        };
        let img = image(&store, vec![entry("a", link), entry("h", hard)]);
        let dest = dir.path().join("dest");
        let e = export(&store, &img, &dest, &Progress::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("hard-link target") && e.contains("symbolic link"),
            "{e}"
        );
        assert_eq!(
            std::fs::metadata(outside.join("shadow")).unwrap().nlink(),
            1
        );
        assert!(!dest.join("h").exists());
    }

    #[test]
    fn a_destination_that_is_not_empty_or_not_the_caller_s_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_init(dir.path().join("store")).unwrap();
        let img = image(&store, vec![file("f", "x")]);
        let dest = dir.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("there"), b"").unwrap();
        let e = export(&store, &img, &dest, &Progress::default()).unwrap_err();
        assert!(matches!(e, Error::DestinationNotEmpty(_)), "{e}");
        // An empty one of the caller's, open to all: closed while it fills, the image's
        // root mode at the end.
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        export(&store, &img, &open, &Progress::default()).unwrap();
        assert_eq!(std::fs::read(open.join("f")).unwrap(), b"x");
        assert_eq!(std::fs::metadata(&open).unwrap().mode() & 0o7777, 0o755);
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIP the other user's destination: needs root to make one");
            return;
        }
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let e = export(&store, &img, &theirs, &Progress::default()).unwrap_err();
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
        assert!(!theirs.join("f").exists());
    }

    /// Someone who can change the destination swaps a directory the export made for a link
    /// to a host directory, over and over while the export fills it: nothing lands outside.
    #[test]
    fn a_directory_swapped_for_a_link_while_it_fills_gets_nothing_outside() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_init(dir.path().join("store")).unwrap();
        let names: Vec<String> = (0..400).map(|i| format!("f{i:03}")).collect();
        let sub = dir_of(&store, names.iter().map(|n| file(n, n)).collect());
        let img = image(&store, vec![entry("d", sub)]);
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        for round in 0..5 {
            let dest = dir.path().join(format!("dest{round}"));
            let done = std::sync::atomic::AtomicBool::new(false);
            std::thread::scope(|s| {
                s.spawn(|| {
                    let (d, moved) = (dest.join("d"), dest.join(format!("moved{round}")));
                    while !done.load(Ordering::Relaxed) {
                        if std::fs::rename(&d, &moved).is_ok() {
                            let _ = std::os::unix::fs::symlink(&outside, &d);
                        }
                        std::thread::yield_now();
                    }
                });
                let _ = export(&store, &img, &dest, &Progress::default());
                done.store(true, Ordering::Relaxed);
            });
            let planted = std::fs::read_dir(&outside).unwrap().count();
            assert_eq!(planted, 0, "round {round}: files written outside");
        }
    }
}
