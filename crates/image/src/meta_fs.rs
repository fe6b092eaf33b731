//! Reading inode metadata from, and applying it to, a real file system.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde_bytes::ByteBuf;

use crate::error::{IoContext, Result};
use crate::manifest::{Meta, Xattr};

/// Metadata from `st` with the xattrs of `path` (not following a link in its last
/// component; see `beneath::proc_path`); `shown` names the entry in errors.
pub fn read_meta(path: &Path, shown: &Path, st: &rustix::fs::Stat) -> Result<Meta> {
    let mut xattrs = Vec::new();
    match xattr::list(path) {
        Ok(names) => {
            for name in names {
                // An attribute can vanish between list and get; skip it then.
                if let Some(value) = xattr::get(path, &name).at(shown)? {
                    xattrs.push(Xattr {
                        name: ByteBuf::from(name.as_bytes().to_vec()),
                        value: ByteBuf::from(value),
                    });
                }
            }
        }
        Err(e) if unsupported(&e) => {}
        Err(e) => return Err(e).at(shown),
    }
    xattrs.sort();
    let mut meta = read_meta_parts(st);
    meta.xattrs = xattrs;
    Ok(meta)
}

/// Everything of [`Meta`] but the xattrs, from `st`.
fn read_meta_parts(st: &rustix::fs::Stat) -> Meta {
    Meta {
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime_sec: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec.clamp(0, 999_999_999) as u32,
        xattrs: Vec::new(),
    }
}

pub fn unsupported(e: &std::io::Error) -> bool {
    rustix::io::Errno::from_io_error(e) == Some(rustix::io::Errno::OPNOTSUPP)
}

/// As [`read_meta`], the xattrs read through `fd` (a directory already opened and checked,
/// so a name swapped since cannot hand over another inode's).
pub fn read_meta_fd(
    fd: impl std::os::fd::AsFd,
    shown: &Path,
    st: &rustix::fs::Stat,
) -> Result<Meta> {
    use rustix::io::Errno;
    let fd = fd.as_fd();
    let names = match sized(
        || rustix::fs::flistxattr_query(fd),
        |buf| rustix::fs::flistxattr(fd, buf),
    ) {
        Ok(names) => names,
        Err(Errno::OPNOTSUPP) => Vec::new(),
        Err(e) => return Err(e).at(shown),
    };
    let mut xattrs = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let key = std::ffi::OsStr::from_bytes(name);
        match sized(
            || rustix::fs::fgetxattr_query(fd, key),
            |buf| rustix::fs::fgetxattr(fd, key, buf),
        ) {
            Ok(value) => xattrs.push(Xattr {
                name: ByteBuf::from(name.to_vec()),
                value: ByteBuf::from(value),
            }),
            // Removed between list and get.
            Err(Errno::NODATA) => {}
            Err(e) => return Err(e).at(shown),
        }
    }
    xattrs.sort();
    let mut meta = read_meta_parts(st);
    meta.xattrs = xattrs;
    Ok(meta)
}

/// A value asked for its size first (`query`), then read into a buffer of that size
/// (`fill`); asked again if it grew in between.
fn sized(
    query: impl Fn() -> rustix::io::Result<usize>,
    fill: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
) -> rustix::io::Result<Vec<u8>> {
    loop {
        let mut buf = vec![0u8; query()?];
        match fill(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}
