//! Starling's microVM monitor on KVM and the rust-vmm crates.
//!
//! A VM is built from a [`VmConfig`] by [`Vm::build`] (every input checked before the guest
//! starts) and run by [`Vm::run`] until the guest powers off, resets or exits, or the operator
//! stops it through a [`VmHandle`] (API socket, signals). [`Vm::restore`] builds one from a
//! snapshot instead; [`VmHandle::snapshot`] and [`VmHandle::fork`] take one while it runs.

pub mod acpi;
pub mod api;
pub mod boot;
pub mod bus;
pub mod config;
pub mod devices;
pub mod exit;
pub mod flavour;
pub mod fork;
pub mod fuzzing;
pub mod layout;
pub mod lazy;
pub mod memory;
pub mod process;
pub mod service;
pub mod signals;
pub mod snapshot;
pub mod spec;
#[doc(hidden)]
pub mod test_guest;
pub mod vcpu;
pub mod virtio;
pub mod vm;

use std::path::PathBuf;

pub use api::{CloneInfo, ForkInfo, SnapshotInfo, VmStatus};
pub use config::{Console, DiskConfig, VmConfig, VsockConfig};
pub use exit::ExitReason;
pub use flavour::Flavour;
pub use spec::RestoreSpec;
pub use vm::{Vm, VmHandle};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kernel {path}: {reason}")]
    Kernel { path: PathBuf, reason: String },
    #[error("initrd {path}: {reason}")]
    Initrd { path: PathBuf, reason: String },
    #[error("disk {path}: {reason}")]
    Disk { path: PathBuf, reason: String },
    #[error("snapshot {path}: {reason}")]
    Snapshot { path: PathBuf, reason: String },
    #[error("VM config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("{0}")]
    Invalid(String),
    #[error("guest memory layout: {0}")]
    Layout(String),
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}
