//! The state a file system keeps across a snapshot: enough for a restored (or forked)
//! monitor to answer the node ids and file handles its guest already holds, without the
//! guest noticing (no ESTALE, no EIO). Node ids follow from the order directories were
//! loaded (see [`crate::inodes::Inodes`]); handles are listed with their inodes.

use serde::{Deserialize, Serialize};
use starling_store::ObjectId;

use crate::objects::{FsError, ObjResult};

pub const FS_STATE_FORMAT: u32 = 1;
/// Bounds a hostile or damaged state: no image has more directories than this.
const MAX_LOADS: usize = 1 << 24;
const MAX_HANDLES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsState {
    pub format: u32,
    /// The image version served.
    pub commit: ObjectId,
    /// Directories in the order their entries were numbered.
    pub loads: Vec<u64>,
    /// Open file handles and their inodes.
    pub handles: Vec<(u64, u64)>,
    pub next_handle: u64,
}

impl FsState {
    pub fn check(&self) -> ObjResult<()> {
        if self.format != FS_STATE_FORMAT {
            return Err(FsError::Invalid(format!(
                "file system state format {}; this build reads {FS_STATE_FORMAT}",
                self.format
            )));
        }
        if self.loads.len() > MAX_LOADS || self.handles.len() > MAX_HANDLES {
            return Err(FsError::Invalid(format!(
                "file system state lists {} directories and {} handles, more than any image has",
                self.loads.len(),
                self.handles.len()
            )));
        }
        if self.handles.iter().any(|(h, _)| *h >= self.next_handle) {
            return Err(FsError::Invalid(
                "file system state has a handle beyond its next handle".into(),
            ));
        }
        Ok(())
    }
}
