//! Lazy read-only file systems over Starling images: the inode table fills as directories
//! are visited, and file chunks are read (from the local store or the host cache in front of
//! a repository) only when a program reads them.

pub mod chunks;
pub mod imagefs;
pub mod inodes;
pub mod mountpoint;
pub mod objects;
pub mod persist;
pub mod record;
pub mod session;

pub use imagefs::ImageFs;
pub use mountpoint::Pinned;
pub use objects::{CounterValues, Counters, FsError, Objects};
pub use persist::FsState;
pub use session::{mount, MountError, Mounted, Owner};

#[cfg(test)]
mod tests;
