//! Advisory locks that order writers against `gc`.
//!
//! Writers (import, tag, rm) hold the store lock shared for their whole run; `gc` holds it
//! exclusive, so it never sweeps objects a live writer has stored but not yet referenced.
//! Read-modify-write of refs is serialised by a second, short-held exclusive lock.

use std::fs::{File, OpenOptions};
use std::path::Path;

use rustix::fs::{flock, FlockOperation};

use crate::error::IoContext;
use crate::{Error, Result};

/// Held until dropped (closing the file releases the lock).
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
}

/// An exclusive lock on `path` for a process that must own a directory alone (the host
/// cache's daemon); fails at once, naming `what` holds it, when another process does.
pub fn own(path: &Path, what: &'static str) -> Result<StoreLock> {
    acquire(path, LockMode::Exclusive, false, what)
}

pub(crate) fn acquire(
    path: &Path,
    mode: LockMode,
    wait: bool,
    what: &'static str,
) -> Result<StoreLock> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .at(path)?;
    let op = match (mode, wait) {
        (LockMode::Shared, true) => FlockOperation::LockShared,
        (LockMode::Shared, false) => FlockOperation::NonBlockingLockShared,
        (LockMode::Exclusive, true) => FlockOperation::LockExclusive,
        (LockMode::Exclusive, false) => FlockOperation::NonBlockingLockExclusive,
    };
    match flock(&file, op) {
        Ok(()) => Ok(StoreLock { _file: file }),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(Error::Busy {
            path: path.parent().unwrap_or(path).to_path_buf(),
            what,
        }),
        Err(e) => Err(e).at(path),
    }
}
