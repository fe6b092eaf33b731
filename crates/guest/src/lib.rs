//! What runs inside guests, and how it gets there: kernels fetched from the distribution's
//! packages into the store (`kernel.rs`), the initramfs builder (a newc cpio of busybox,
//! kernel modules resolved in dependency order from their `.modinfo`, and an init), the
//! kernel's payload decompressed on the host (`vmlinux.rs`), the guest agent (`agent/`, C,
//! compiled by build.rs into [`AGENT`]) and its host-side exec client (`exec.rs`), and the
//! boot artifact that runs an image as a VM's root (`run.rs`, with `init/run-init.sh`).
#![forbid(unsafe_code)]

pub mod cpio;
pub mod exec;
pub mod initramfs;
pub mod kernel;
pub mod modules;
pub mod run;
pub mod vmlinux;

pub use exec::EXEC_PORT;
pub use initramfs::{Initramfs, DEFAULT_MODULES};
pub use run::{artifact, RunArtifact};

/// The guest agent (agent/starling-agent.c), a static x86-64 executable.
pub const AGENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/starling-agent"));

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
