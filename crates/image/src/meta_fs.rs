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
    Ok(Meta {
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime_sec: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec.clamp(0, 999_999_999) as u32,
        xattrs,
    })
}

pub fn unsupported(e: &std::io::Error) -> bool {
    rustix::io::Errno::from_io_error(e) == Some(rustix::io::Errno::OPNOTSUPP)
}
