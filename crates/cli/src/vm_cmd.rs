//! `starling vm …`: run a microVM, get a kernel, build an initramfs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use starling_vmm::{Console, DiskConfig, Vm, VmConfig, VsockConfig};

#[derive(Subcommand)]
pub enum VmCmd {
    /// Boot a microVM; the exit status follows the guest (0 poweroff, 3 reset, the guest's own
    /// status written to port 0x501, 128+N when stopped by signal N)
    Run(RunArgs),
}

#[derive(Args)]
pub struct RunArgs {
    /// Kernel: a bzImage or an ELF vmlinux (PVH note or 64-bit entry)
    #[arg(long, required_unless_present = "config")]
    kernel: Option<PathBuf>,
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line
    #[arg(long, default_value = starling_vmm::config::DEFAULT_CMDLINE)]
    cmdline: String,
    /// Guest memory (e.g. 256M, 1G)
    #[arg(long, default_value = "256M", value_parser = parse_mem)]
    mem: u64,
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// A raw disk image, as FILE or FILE,ro (repeatable; /dev/vda, /dev/vdb, … in order)
    #[arg(long = "disk", value_parser = parse_disk)]
    disks: Vec<DiskConfig>,
    /// virtio-vsock with this guest CID, as CID or CID,PATH (host socket; default
    /// /tmp/starling-vm-CID.vsock)
    #[arg(long, value_parser = parse_vsock)]
    vsock: Option<VsockConfig>,
    /// Where the serial console goes: stdio, off or a file path
    #[arg(long, default_value = "stdio")]
    console: String,
    /// No virtio-rng device
    #[arg(long)]
    no_rng: bool,
    /// Serve the VMM API (state, pause, resume, stop) on this unix socket
    #[arg(long)]
    api_socket: Option<PathBuf>,
    /// A JSON VM config file (the same fields; flags given as well override it)
    #[arg(long)]
    config: Option<PathBuf>,
}

fn parse_mem(s: &str) -> Result<u64, String> {
    let bytes = crate::format::parse_size(s).map_err(|e| e.to_string())?;
    if bytes % (1 << 20) != 0 {
        return Err(format!("{s}: memory must be a whole number of MiB"));
    }
    Ok(bytes >> 20)
}

fn parse_disk(s: &str) -> Result<DiskConfig, String> {
    let (path, ro) = match s.rsplit_once(',') {
        Some((p, "ro")) => (p, true),
        Some((p, "rw")) => (p, false),
        Some((_, opt)) => return Err(format!("{s}: unknown disk option {opt:?} (ro or rw)")),
        None => (s, false),
    };
    Ok(DiskConfig {
        path: path.into(),
        read_only: ro,
    })
}

fn parse_vsock(s: &str) -> Result<VsockConfig, String> {
    let (cid, path) = match s.split_once(',') {
        Some((c, p)) => (c, PathBuf::from(p)),
        None => (s, PathBuf::from(format!("/tmp/starling-vm-{s}.vsock"))),
    };
    let cid = cid
        .parse()
        .map_err(|_| format!("{s}: the guest CID must be a number"))?;
    Ok(VsockConfig { cid, path })
}

pub fn run(cmd: VmCmd) -> Result<ExitCode> {
    match cmd {
        VmCmd::Run(a) => run_vm(a),
    }
}

fn run_vm(a: RunArgs) -> Result<ExitCode> {
    let mut config = match &a.config {
        Some(p) => VmConfig::from_file(p)?,
        None => VmConfig::new(a.kernel.clone().unwrap_or_default()),
    };
    if a.config.is_none() || a.kernel.is_some() {
        if let Some(k) = a.kernel {
            config.kernel = k;
        }
        config.initrd = a.initrd.or(config.initrd);
        config.cmdline = a.cmdline;
        config.mem_mib = a.mem;
        config.vcpus = a.vcpus;
        config.rng = !a.no_rng;
    }
    if !a.disks.is_empty() {
        config.disks = a.disks;
    }
    if a.vsock.is_some() {
        config.vsock = a.vsock;
    }
    if a.api_socket.is_some() {
        config.api_socket = a.api_socket;
    }
    if a.config.is_none() || a.console != "stdio" {
        config.console = match a.console.as_str() {
            "stdio" => Console::Stdio,
            "off" => Console::Off,
            "" => bail!("--console: empty"),
            p => Console::File(p.into()),
        };
    }
    let vm = Vm::build(config).context("the VM was not started")?;
    starling_vmm::signals::stop_on_signals(vm.handle()).context("installing signal handling")?;
    let reason = vm.run()?;
    if std::env::var_os("STARLING_VM_QUIET").is_none() {
        eprintln!("starling: VM ended: {reason:?}");
    }
    Ok(ExitCode::from(reason.status().clamp(0, 255) as u8))
}
