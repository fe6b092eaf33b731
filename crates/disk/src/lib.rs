//! Disk images read and written in userspace, with no loop device, mount or root.
//!
//! - [`device`]: a disk as random-access bytes: raw files and qcow2 (backing chains followed).
//! - [`partition`]: MBR and GPT partition tables, and the choice of the root partition.
//! - [`ext4`]: an ext2/3/4 reader that keeps everything an image needs (owners, nanosecond
//!   times, xattrs, device numbers, hard links) and a writer that makes a fresh ext4 file system
//!   `e2fsck` accepts.
//!
//! All parsing treats the image as hostile: every offset and length is checked and bad input is
//! an [`Error`] naming what is wrong, never a panic.
#![forbid(unsafe_code)]

pub mod device;
pub mod error;
pub mod ext4;
#[doc(hidden)]
pub mod fuzzing;
pub mod partition;

pub use error::{Error, Result};
