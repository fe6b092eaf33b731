//! What runs inside guests, and how it gets there: the initramfs builder (a newc cpio of
//! busybox, kernel modules resolved in dependency order from their `.modinfo`, and an init).
//! The guest agent will live here too.

pub mod cpio;
pub mod initramfs;
pub mod modules;
pub mod vmlinux;

pub use initramfs::{Initramfs, DEFAULT_MODULES};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("kernel module {name}: {reason}")]
    Module { name: String, reason: String },
    #[error("{0}")]
    Invalid(String),
}
