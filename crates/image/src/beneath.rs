//! Steps through a directory tree by descriptor, never through a symbolic link. An import
//! reads, and an export writes, a tree that someone else may change while it runs (a
//! directory swapped for a link to `/etc` between two steps); every step here is relative to
//! a directory descriptor already held and refuses a link where a directory or file was, so
//! a swap becomes an error rather than a read or write somewhere else on the host.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

use crate::error::{Error, IoContext, Result};

/// Opens the directory `path` names (following links: it is the caller's own choice).
pub fn open_root(path: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .at(path)
}

/// Opens the directory entry `name` of `dir`, refusing anything but a directory (a link
/// included). `shown` names it in errors.
pub fn sub_dir(dir: impl AsFd, name: &[u8], shown: &Path) -> Result<OwnedFd> {
    entry(dir, name, OFlags::RDONLY | OFlags::DIRECTORY, shown)
}

/// Opens entry `name` of `dir` with `flags`, never through a link.
fn entry(dir: impl AsFd, name: &[u8], flags: OFlags, shown: &Path) -> Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        OsStr::from_bytes(name),
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| refused_link(e, shown))
}

/// Opens `rel` (a `/`-joined path) beneath `root` with `flags`, refusing a symbolic link
/// anywhere on the way and any step out of `root`. Uses `openat2(RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS)` where the kernel has it (5.6 and later) and a seccomp profile lets
/// it through, one `openat(O_PATH | O_NOFOLLOW)` per component otherwise.
pub fn open_beneath(root: impl AsFd, rel: &[u8], flags: OFlags, shown: &Path) -> Result<OwnedFd> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    match rustix::fs::openat2(
        root.as_fd(),
        OsStr::from_bytes(rel),
        flags,
        Mode::empty(),
        how,
    ) {
        // Not in this kernel, or refused by a container's seccomp profile (Docker's before
        // 20.10 answered EPERM).
        Err(Errno::NOSYS | Errno::PERM) => {}
        r => return r.map_err(|e| refused_link(e, shown)),
    }
    let comps = crate::path::split(rel).ok_or_else(|| Error::Io {
        path: shown.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a path inside"),
    })?;
    let Some((last, parents)) = comps.split_last() else {
        return Err(refused_link(Errno::INVAL, shown));
    };
    let mut dir: Option<OwnedFd> = None;
    for c in parents {
        let at = match &dir {
            Some(d) => d.as_fd(),
            None => root.as_fd(),
        };
        // Passed through only: search permission is enough, as for a path lookup.
        dir = Some(entry(at, c, OFlags::PATH | OFlags::DIRECTORY, shown)?);
    }
    let at = match &dir {
        Some(d) => d.as_fd(),
        None => root.as_fd(),
    };
    entry(at, last, flags, shown)
}

/// A path that names entry `name` of the directory `dir` is open on, through `/proc`: for
/// the calls that have no descriptor-relative form (reading and setting a link's or a device
/// node's extended attributes). Only the last component is looked up by name.
pub fn proc_path(dir: impl AsFd, name: &[u8]) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_fd().as_raw_fd()));
    p.push(OsStr::from_bytes(name));
    p
}

/// Whether `fd` is the inode `st` described (a walk stats an entry, then opens it).
pub fn same_inode(fd: impl AsFd, st: &Stat, shown: &Path) -> Result<bool> {
    let now = rustix::fs::fstat(fd).at(shown)?;
    Ok(now.st_dev == st.st_dev && now.st_ino == st.st_ino)
}

/// ELOOP and ENOTDIR from a no-follow open mean a link (or a file) where a directory or file
/// was: said as such.
fn refused_link(e: Errno, shown: &Path) -> Error {
    let source: std::io::Error = match e {
        Errno::LOOP | Errno::XDEV => std::io::Error::other(
            "a symbolic link (or a step outside the tree) where a file or directory was; refused",
        ),
        Errno::NOTDIR => std::io::Error::other(
            "not a directory (a file or a symbolic link where a directory was); refused",
        ),
        e => e.into(),
    };
    Error::Io {
        path: shown.to_path_buf(),
        source,
    }
}
