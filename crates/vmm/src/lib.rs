//! Starling's microVM monitor on KVM and the rust-vmm crates.
//!
//! A VM is built by `builder.rs` from a [`VmConfig`] ([`Vm::build`], every input checked
//! before the guest starts) or from a snapshot ([`Vm::restore`], a [`RestoreSpec`]), and run by
//! [`Vm::run`] until the guest powers off, resets or exits, or the operator stops it through a
//! [`VmHandle`] (API socket, signals); [`VmHandle::snapshot`] and [`VmHandle::fork`] save it
//! while it runs. What is saved is each component's own state (`persist.rs`: the `Persist`
//! trait, implemented beside each device), put together in `snapshot/`.
//!
//! Data that crosses process boundaries lives in leaf modules: `config.rs` (what a VM is
//! booted from), `spec.rs` (what a restore is given), `api/mod.rs` (the API's requests and
//! answers, served by `api/server.rs` and asked by the typed `api/client.rs`).

pub mod acpi;
pub mod api;
pub mod boot;
pub mod budget;
pub mod builder;
pub mod bus;
pub mod clone_net;
pub mod config;
pub mod devices;
pub mod exit;
pub mod flavour;
pub mod fork;
pub mod fuzzing;
pub mod jail;
pub mod layout;
pub mod lazy;
pub mod machine;
pub mod memory;
pub mod persist;
pub mod pool;
pub mod private;
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
pub use config::{Console, DiskConfig, Mac, NetConfig, VmConfig, VsockConfig};
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
    #[error("network device (TAP {tap}): {reason}")]
    Net { tap: String, reason: String },
    #[error("snapshot {path}: {reason}")]
    Snapshot { path: PathBuf, reason: String },
    #[error("snapshot key {path}: {reason}")]
    SnapshotKey { path: PathBuf, reason: String },
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
