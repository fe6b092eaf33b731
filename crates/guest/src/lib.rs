//! What runs inside guests, and how it gets there: kernels fetched from the distribution's
//! packages into the store (`kernel.rs`), the initramfs builder (a newc cpio of busybox,
//! kernel modules resolved in dependency order from their `.modinfo`, and an init), the
//! kernel's payload decompressed on the host (`vmlinux.rs`), and the guest agent (`agent/`).

pub mod cpio;
pub mod initramfs;
pub mod kernel;
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
    #[error("{tool}: {reason}")]
    Tool { tool: String, reason: String },
    #[error(transparent)]
    Image(#[from] starling_image::Error),
    #[error(transparent)]
    Store(#[from] starling_store::Error),
}
