//! Starling images: manifests (Merkle trees of directory entries) over the shared object
//! store, with importers and exporters for directory trees and tar archives.
//!
//! - [`manifest`]: the tree and commit formats.
//! - [`import`], [`export`]: sources in and out; [`chunk`] cuts file content.
//! - [`versions`], [`tags`], [`reference`]: naming, listing and moving versions.
//! - [`maint`]: stats, fsck and gc; [`walk`]: the one walk over what versions reference.
#![forbid(unsafe_code)]

mod beneath;
pub mod browse;
pub mod chunk;
pub mod deb;
pub mod diff;
pub mod edit;
pub mod error;
pub mod export;
pub mod extract;
#[doc(hidden)]
pub mod fuzzing;
pub mod import;
pub mod maint;
pub mod manifest;
mod meta_fs;
pub mod oci;
pub mod overlay;
pub mod path;
pub mod pkg;
pub mod reference;
pub mod scratch;
pub mod search;
mod stage;
pub mod tags;
mod tar_bound;
pub mod update;
pub mod versions;
pub mod walk;

pub use error::{Error, Result};

/// Wall-clock time as nanoseconds since the Unix epoch.
pub fn now_unix_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
