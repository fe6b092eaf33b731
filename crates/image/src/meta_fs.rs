//! Reading inode metadata from, and applying it to, a real file system.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde_bytes::ByteBuf;

use crate::error::{IoContext, Result};
use crate::manifest::{Meta, Xattr};

/// Metadata of `path` (not following symlinks), xattrs included.
pub fn read_meta(path: &Path, md: &std::fs::Metadata) -> Result<Meta> {
    let mut xattrs = Vec::new();
    match xattr::list(path) {
        Ok(names) => {
            for name in names {
                // An attribute can vanish between list and get; skip it then.
                if let Some(value) = xattr::get(path, &name).at(path)? {
                    xattrs.push(Xattr {
                        name: ByteBuf::from(name.as_bytes().to_vec()),
                        value: ByteBuf::from(value),
                    });
                }
            }
        }
        Err(e) if unsupported(&e) => {}
        Err(e) => return Err(e).at(path),
    }
    xattrs.sort();
    Ok(Meta {
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime_sec: md.mtime(),
        mtime_nsec: md.mtime_nsec().clamp(0, 999_999_999) as u32,
        xattrs,
    })
}

pub fn unsupported(e: &std::io::Error) -> bool {
    rustix::io::Errno::from_io_error(e) == Some(rustix::io::Errno::OPNOTSUPP)
}
