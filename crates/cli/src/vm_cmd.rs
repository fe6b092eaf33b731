//! `starling vm …`: run a microVM, get a kernel, build an initramfs.
//!
//! `vm run` and `vm restore` run the monitor in this process rather than exec `starling-vmm`:
//! a second program start was most of what the command line added to a VM's start
//! (bench/cli_overhead.py). Forks and pools still start `starling-vmm`, the smaller program.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use starling_vmm::api::Client;
use starling_vmm::{Console, DiskConfig, VmConfig, VsockConfig};

#[derive(Subcommand)]
pub enum VmCmd {
    /// Boot a microVM; the exit status follows the guest (0 poweroff, 3 reset, the guest's own
    /// status written to port 0x501, 128+N when stopped by signal N)
    Run(RunArgs),
    /// Guest kernels from the distribution's packages
    #[command(subcommand)]
    Kernel(KernelCmd),
    /// Build a busybox initramfs with a stored kernel's modules (dependencies included)
    Initramfs {
        /// Kernel image in the store (from `vm kernel fetch`), e.g. debian-kernel:6.1.0-56-cloud-amd64
        #[arg(long)]
        kernel_image: String,
        /// Modules to load at boot, comma-separated (their dependencies are added)
        #[arg(long, value_delimiter = ',', default_values_t = starling_guest::DEFAULT_MODULES.iter().map(|s| s.to_string()))]
        modules: Vec<String>,
        /// A statically linked busybox [default: /bin/busybox from busybox-static]
        #[arg(long)]
        busybox: Option<PathBuf>,
        /// Replace the default /init with this script
        #[arg(long)]
        init: Option<PathBuf>,
        /// Add a file: SRC:DEST (DEST absolute; /etc/starling/run is run by the default init)
        #[arg(long, value_parser = parse_add)]
        add: Vec<(PathBuf, String)>,
        /// Also write the kernel's vmlinuz (bzImage) here
        #[arg(long)]
        vmlinuz: Option<PathBuf>,
        /// Also write the uncompressed kernel (ELF with a PVH note; boots faster) here
        #[arg(long)]
        vmlinux: Option<PathBuf>,
        /// The initramfs to write
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Talk to a guest over vsock from the host (Firecracker-style unix sockets)
    #[command(subcommand)]
    Vsock(VsockCmd),
    /// Snapshot a running VM (given by its API socket) into DIR: a small state file and its
    /// memory; the VM then goes on, or stops with --stop
    Snapshot {
        /// The VM's API socket (`--api-socket` of `vm run`/`restore`, or `STATE/vms/NAME/api.sock`)
        vm: PathBuf,
        /// Where the snapshot goes (made; must not exist or be empty)
        dir: PathBuf,
        /// End the VM once the snapshot is taken (else it goes on)
        #[arg(long)]
        stop: bool,
        #[arg(long)]
        json: bool,
    },
    /// Restore a snapshot into a new VM that continues where the snapshot was taken
    Restore(RestoreArgs),
    /// A running VM's state (given by its API socket), as JSON
    Status {
        /// The VM's API socket (`--api-socket` of `vm run`/`restore`, or `STATE/vms/NAME/api.sock`)
        vm: PathBuf,
    },
    /// Pause a running VM's vCPUs
    Pause {
        /// The VM's API socket (`--api-socket` of `vm run`/`restore`, or `STATE/vms/NAME/api.sock`)
        vm: PathBuf,
    },
    /// Resume a paused VM
    Resume {
        /// The VM's API socket (`--api-socket` of `vm run`/`restore`, or `STATE/vms/NAME/api.sock`)
        vm: PathBuf,
    },
    /// Stop a VM (its monitor exits 0)
    Stop {
        /// The VM's API socket (`--api-socket` of `vm run`/`restore`, or `STATE/vms/NAME/api.sock`)
        vm: PathBuf,
    },
    /// Build the project's tier-1 test guest (for benchmarks and demos)
    #[command(hide = true)]
    TestGuest { out: PathBuf },
    /// Serve a snapshot's memory to lazy restores (`vm restore --lazy ADDR#HASH`) until killed:
    /// from its directory, or from another memory server (tls://HOST:PORT#HASH,
    /// tcp://HOST:PORT#HASH, unix:PATH#HASH), keeping each page fetched so that the clones on
    /// this host share one fetch of it. Prints ADDR#HASH first: the address pinned to this
    /// snapshot's state. Between hosts use tls:// (mutual TLS: both sides present a
    /// certificate of the fleet's CA); tcp:// serves whoever connects
    MemoryServer {
        /// A snapshot directory or an upstream memory server (ADDR#HASH)
        source: String,
        /// tls://HOST:PORT, tcp://HOST:PORT or a unix socket path (this user's alone)
        #[arg(long)]
        listen: String,
        #[command(flatten)]
        tls: crate::tls::TlsArgs,
    },
    /// Fork a running VM (given by its API socket) into N clones that continue from the same
    /// instant, memory and disks shared copy-on-write; prints each clone's id, pid, directory,
    /// API and vsock sockets
    Fork {
        /// The VM's API socket (`--api-socket` of `vm run`/`restore`, or `STATE/vms/NAME/api.sock`)
        vm: PathBuf,
        /// How many clones
        #[arg(short = 'n', long = "count")]
        count: u32,
        /// Where the clones' directories go [default: the VM's run directory]
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct RestoreArgs {
    /// A snapshot directory (from `vm snapshot`)
    dir: PathBuf,
    /// Serve the VMM API on this unix socket
    #[arg(long)]
    api_socket: Option<PathBuf>,
    /// Host side of the restored VM's vsock [default: RUN_DIR/vsock.sock]
    #[arg(long)]
    vsock_path: Option<PathBuf>,
    /// Where the serial console goes: stdio, off or a file path
    #[arg(long, default_value = "stdio")]
    console: String,
    /// The restored VM's own directory (disk overlays, sockets) [default: a private one per
    /// process in the user's runtime directory, $XDG_RUNTIME_DIR/starling/vm-PID,
    /// /run/starling/UID/vm-PID for root, else $TMPDIR/starling-UID/vm-PID]
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Take state and memory from this memory server (tls://HOST:PORT#HASH,
    /// tcp://HOST:PORT#HASH or unix:PATH#HASH, as `vm memory-server` prints it; the state must have that BLAKE3)
    /// instead of DIR, each page when the guest first touches it (DIR is then only where
    /// relative disk layers are found)
    #[arg(long)]
    lazy: Option<String>,
    /// For a tls:// memory server: this host's certificate of the fleet's CA
    #[command(flatten)]
    tls: crate::tls::TlsArgs,
    /// Put network device DEVICE on another TAP (`net0=tap3`), or none (`net0=`) [default:
    /// the snapshot's TAP]
    #[arg(long = "tap", value_parser = parse_tap)]
    taps: Vec<(String, String)>,
    /// `nat`: put the first network device on Starling's network with an address of its
    /// own (the guest's agent takes it on when told it was restored: `starling-agent watch`)
    #[arg(long, value_name = "nat")]
    net: Option<String>,
    /// Run the monitor without its seccomp filter (for debugging a call it refuses; also
    /// STARLING_SECCOMP=off). Clones of the VM inherit this
    #[arg(long)]
    no_seccomp: bool,
    /// Jail the monitor (as root; also STARLING_JAIL=on): a mount namespace showing only the
    /// VM's files, a user of its own with no capabilities; limits from STARLING_JAIL_MEMORY_MAX
    /// and STARLING_JAIL_PIDS_MAX (see docs/api/vmm.md). Clones are born inside it
    #[arg(long)]
    jail: bool,
}

/// A `--net` value: no device, or one over a TAP.
#[derive(Clone, Debug)]
pub(crate) enum NetArg {
    None,
    Nat,
    Tap(starling_vmm::NetConfig),
}

const NET_FORMS: &str = "none, nat or tap=NAME[,mac=MAC][,rx=RATE][,tx=RATE]";

pub(crate) fn parse_net(s: &str) -> Result<NetArg, String> {
    match s {
        "none" => return Ok(NetArg::None),
        "nat" => return Ok(NetArg::Nat),
        _ => {}
    }
    let mut parts = s.split(',');
    let Some(tap) = parts.next().and_then(|p| p.strip_prefix("tap=")) else {
        return Err(format!("{s:?}: expected {NET_FORMS}"));
    };
    let mut n = starling_vmm::NetConfig {
        tap: tap.to_owned(),
        mac: None,
        rx: None,
        tx: None,
        owned: false,
        ip: None,
    };
    let rate = |v: &str| -> Result<starling_vmm::config::Limit, String> {
        let bytes = crate::format::parse_size(v).map_err(|e| format!("{s:?}: {e}"))?;
        Ok(starling_vmm::config::Limit::bytes_per_sec(bytes))
    };
    for p in parts {
        match p.split_once('=') {
            Some(("mac", v)) => n.mac = Some(v.parse()?),
            Some(("rx", v)) => n.rx = Some(rate(v)?),
            Some(("tx", v)) => n.tx = Some(rate(v)?),
            _ => {
                return Err(format!(
                    "{s:?}: unknown option {p:?} (expected {NET_FORMS})"
                ))
            }
        }
    }
    n.validate().map_err(|e| e.to_string())?;
    Ok(NetArg::Tap(n))
}

fn parse_tap(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((dev, tap)) if dev.starts_with("net") && !dev[3..].is_empty() => {
            if !tap.is_empty() {
                starling_vmm::virtio::net::tap::check_name(tap)?;
            }
            Ok((dev.to_owned(), tap.to_owned()))
        }
        _ => Err(format!(
            "{s:?}: expected DEVICE=TAP, e.g. net0=tap3 (or net0= for no TAP)"
        )),
    }
}

#[derive(Subcommand)]
pub enum KernelCmd {
    /// Download a Debian kernel package (apt-get) and keep it in the store as
    /// debian-kernel:RELEASE
    Fetch {
        /// Package, or a meta package depending on one
        #[arg(default_value = "linux-image-cloud-amd64")]
        package: String,
        /// Also write vmlinuz-RELEASE into this directory
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum VsockCmd {
    /// Connect to guest port PORT through the VM's vsock socket; stdin/stdout are the stream
    Connect {
        /// The VM's vsock socket (`--vsock CID,PATH`)
        socket: PathBuf,
        /// The guest's port
        port: u32,
    },
    /// Wait for one guest connection to host port PORT (on SOCKET_PORT); stdin/stdout are the
    /// stream
    Listen {
        /// The VM's vsock socket (`--vsock CID,PATH`)
        socket: PathBuf,
        /// The host port the guest connects to
        port: u32,
    },
}

fn parse_add(s: &str) -> Result<(PathBuf, String), String> {
    match s.rsplit_once(':') {
        Some((src, dest)) if !src.is_empty() && dest.starts_with('/') => {
            Ok((PathBuf::from(src), dest.to_string()))
        }
        _ => Err(format!("{s}: expected SRC:/DEST")),
    }
}

#[derive(Args)]
pub struct RunArgs {
    /// Kernel: a bzImage or an ELF vmlinux (PVH note or 64-bit entry)
    #[arg(long, required_unless_present = "config")]
    kernel: Option<PathBuf>,
    /// Initramfs (e.g. from `vm initramfs`)
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line
    #[arg(long, default_value = starling_vmm::config::DEFAULT_CMDLINE)]
    cmdline: String,
    /// Guest memory (e.g. 256M, 1G)
    #[arg(long, default_value = "256M", value_parser = parse_mem)]
    mem: u64,
    /// Virtual CPUs
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
    /// A network device: `none` (the default), `nat` (Starling's bridge: an address of the
    /// VM's own, outbound NAT, `-p` ports; needs root) or
    /// `tap=NAME[,mac=MAC][,rx=RATE][,tx=RATE]` (your TAP; RATE in bytes a second, e.g. 10M).
    /// Repeatable: eth0, eth1, … in order
    #[arg(long = "net", value_parser = parse_net)]
    net: Vec<NetArg>,
    /// Publish a guest port on the host, as HOSTPORT:GUESTPORT[/tcp|/udp] (with --net nat;
    /// repeatable)
    #[arg(short = 'p', long = "publish")]
    publish: Vec<starling_net::Publish>,
    /// Serve the VMM API (state, pause, resume, stop) on this unix socket
    #[arg(long)]
    api_socket: Option<PathBuf>,
    /// How many clones the guest and every generation of its clones may fork in all, through
    /// the monitor's service (forks through the API are not counted) [default: 1024]
    #[arg(long, value_name = "N")]
    fork_budget: Option<u32>,
    /// A JSON VM config file (the same fields; flags given as well override it)
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run the monitor without its seccomp filter (for debugging a call it refuses; also
    /// STARLING_SECCOMP=off). Clones of the VM inherit this
    #[arg(long)]
    no_seccomp: bool,
    /// Jail the monitor (as root; also STARLING_JAIL=on): a mount namespace showing only the
    /// VM's files, a user of its own with no capabilities; limits from STARLING_JAIL_MEMORY_MAX
    /// and STARLING_JAIL_PIDS_MAX (see docs/api/vmm.md). Clones are born inside it
    #[arg(long)]
    jail: bool,
}

pub(crate) fn parse_mem(s: &str) -> Result<u64, String> {
    let bytes = crate::format::parse_size(s).map_err(|e| e.to_string())?;
    if bytes % (1 << 20) != 0 {
        return Err(format!("{s}: memory must be a whole number of MiB"));
    }
    Ok(bytes >> 20)
}

pub(crate) fn parse_disk(s: &str) -> Result<DiskConfig, String> {
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

pub fn run(store: &std::path::Path, cmd: VmCmd) -> Result<ExitCode> {
    match cmd {
        VmCmd::Run(a) => run_vm(a),
        VmCmd::Kernel(KernelCmd::Fetch { package, out, json }) => {
            let f = starling_guest::kernel::fetch(store, &package, out.as_deref())
                .with_context(|| format!("fetching kernel package {package}"))?;
            if json {
                println!("{}", serde_json::to_string(&f)?);
            } else {
                println!("{}", f.image);
                eprintln!("fetched {} {} into the store", f.package, f.version);
            }
            Ok(ExitCode::SUCCESS)
        }
        VmCmd::Initramfs {
            kernel_image,
            modules,
            busybox,
            init,
            add,
            vmlinuz,
            vmlinux,
            out,
        } => {
            let (size, loaded) = starling_guest::kernel::initramfs(
                store,
                starling_guest::kernel::InitramfsFromStore {
                    kernel_image: &kernel_image,
                    modules,
                    busybox,
                    init,
                    add,
                    out: &out,
                    vmlinuz_out: vmlinuz.as_deref(),
                    vmlinux_out: vmlinux.as_deref(),
                },
            )
            .with_context(|| format!("building {}", out.display()))?;
            eprintln!(
                "wrote {} ({} bytes); modules in load order: {}",
                out.display(),
                size,
                loaded.join(" ")
            );
            Ok(ExitCode::SUCCESS)
        }
        VmCmd::Vsock(c) => vsock(c),
        VmCmd::Snapshot {
            vm,
            dir,
            stop,
            json,
        } => {
            let dir = std::path::absolute(&dir)?;
            let v = Client::new(vm).snapshot(&dir, stop)?;
            if json {
                println!("{}", serde_json::to_string(&v)?);
            } else {
                eprintln!(
                    "snapshot in {}: {} bytes of state, {} bytes of memory; the guest was paused {} µs",
                    dir.display(),
                    v.state_bytes,
                    v.memory_bytes,
                    v.paused_us
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        VmCmd::Restore(a) => restore(a),
        VmCmd::Status { vm } => {
            let v = Client::new(vm).status()?;
            println!("{}", serde_json::to_string(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        VmCmd::Pause { vm } => {
            Client::new(vm).pause()?;
            Ok(ExitCode::SUCCESS)
        }
        VmCmd::Resume { vm } => {
            Client::new(vm).resume()?;
            Ok(ExitCode::SUCCESS)
        }
        VmCmd::Stop { vm } => {
            Client::new(vm).stop()?;
            Ok(ExitCode::SUCCESS)
        }
        VmCmd::TestGuest { out } => {
            let g = starling_vmm::test_guest::build(&out).map_err(anyhow::Error::msg)?;
            println!("{}", g.pvh.display());
            Ok(ExitCode::SUCCESS)
        }
        VmCmd::MemoryServer {
            source,
            listen,
            tls,
        } => {
            use starling_vmm::lazy::{Addr, MemoryServer};
            tls.for_memory(&[&source, &listen])?;
            let addr: Addr = listen.parse()?;
            let server = MemoryServer::open(&source)?;
            let pinned = server.pinned(&addr);
            std::sync::Arc::new(server).serve(&addr, || {
                // Confined once listening, before the first client is taken.
                if let Err(e) = starling_vmm::jail::confine(starling_vmm::jail::Kind::MemoryServer)
                {
                    eprintln!("starling: memory server: {e}");
                    std::process::exit(2);
                }
                // Scripts read the pinned address from the first line, once it connects.
                println!("{pinned}");
                eprintln!(
                    "serving the memory of {source} on {addr}; restore elsewhere with \
                     `starling vm restore DIR --lazy {pinned}` (HOST as that host reaches \
                     this one)"
                );
            })?;
            Ok(ExitCode::SUCCESS)
        }
        VmCmd::Fork {
            vm,
            count,
            dir,
            json,
        } => {
            let dir = dir.map(std::path::absolute).transpose()?;
            let v = Client::new(vm).fork(count, dir.as_deref())?;
            if json {
                println!("{}", serde_json::to_string(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            let shown = |p: &Option<PathBuf>| {
                p.as_ref()
                    .map_or_else(|| "-".to_string(), |p| p.display().to_string())
            };
            let mut detached = false;
            for c in &v.clones {
                let net = c
                    .api_socket
                    .as_ref()
                    .and_then(|a| Client::new(a).status().ok())
                    .and_then(|s| s.net.into_iter().next());
                detached |= net.as_ref().is_some_and(|n| n.tap.is_none());
                let address = net.and_then(|n| n.address);
                println!(
                    "clone {} pid {} dir {} api {} vsock {}{}",
                    c.id,
                    c.pid,
                    c.dir.display(),
                    shown(&c.api_socket),
                    shown(&c.vsock),
                    address.map_or_else(String::new, |a| format!(" address {a}"))
                );
            }
            eprintln!(
                "{count} clones running {} µs after the request; the parent was paused {} µs",
                v.total_us, v.paused_us
            );
            if detached {
                eprintln!(
                    "the clones' network devices are detached (link down): the parent is on \
                     its own TAP (--net tap=), which stays with it; `vm restore --tap \
                     net0=TAP` a snapshot to run a copy on a TAP of its own (VMs on --net nat \
                     fork clones with addresses of their own)"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn console_arg(s: &str) -> Result<Console> {
    Ok(match s {
        "stdio" => Console::Stdio,
        "off" => Console::Off,
        "" => bail!("--console: empty"),
        p => Console::File(p.into()),
    })
}

fn restore(a: RestoreArgs) -> Result<ExitCode> {
    if a.no_seccomp {
        starling_vmm::jail::disable();
    }
    if a.jail {
        starling_vmm::jail::plan::ask();
    }
    a.tls.for_memory(&[a.lazy.as_deref().unwrap_or_default()])?;
    let mut spec = starling_vmm::RestoreSpec {
        dir: std::path::absolute(&a.dir)?,
        api_socket: a.api_socket,
        vsock_path: a.vsock_path,
        console: Some(console_arg(&a.console)?),
        run_dir: a.run_dir,
        lazy: a.lazy,
        taps: a.taps.into_iter().collect(),
        ..Default::default()
    };
    match a.net.as_deref() {
        None => {}
        Some("nat") => {
            // This process becomes the monitor, so the lease is the monitor's.
            let att = starling_net::attach(std::process::id(), &[])?;
            if std::env::var_os("STARLING_VM_QUIET").is_none() {
                eprintln!(
                    "starling: VM address {} on {} ({})",
                    att.address,
                    starling_net::BRIDGE,
                    att.tap
                );
            }
            spec.networks.insert("net0".into(), att.net_attach(""));
            set_net_helper();
        }
        Some(other) => bail!("--net {other:?}: a restore takes `--net nat` (or --tap DEVICE=TAP)"),
    }
    Ok(ExitCode::from(starling_vmm::process::run_to_exit(
        starling_vmm::process::Start::Restore(spec),
    )))
}

/// Names this program as the monitor's network helper, so that its clones get addresses of
/// their own on the network (`starling net-helper`, starling-vmm's `clone_net`).
pub(crate) fn set_net_helper() {
    if let Ok(exe) = std::env::current_exe() {
        std::env::set_var(starling_vmm::clone_net::HELPER_VAR, exe);
    }
}

/// Copies stdin to the stream and the stream to stdout until both directions have ended.
fn pipe(stream: std::os::unix::net::UnixStream) -> Result<ExitCode> {
    let mut write_half = stream.try_clone()?;
    let to_guest = std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut write_half);
        let _ = write_half.shutdown(std::net::Shutdown::Write);
    });
    let mut read_half = stream;
    std::io::copy(&mut read_half, &mut std::io::stdout().lock())?;
    // The guest ending its side does not end ours: what stdin still holds goes out first.
    let _ = to_guest.join();
    Ok(ExitCode::SUCCESS)
}

fn vsock(cmd: VsockCmd) -> Result<ExitCode> {
    use std::io::{BufRead, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    match cmd {
        VsockCmd::Connect { socket, port } => {
            let mut s = UnixStream::connect(&socket)
                .with_context(|| format!("connecting to {}", socket.display()))?;
            writeln!(s, "CONNECT {port}")?;
            // Read the answer a byte at a time: what follows it belongs to the stream.
            let mut line = Vec::new();
            let mut r = std::io::BufReader::with_capacity(1, s.try_clone()?);
            r.read_until(b'\n', &mut line)?;
            if !line.starts_with(b"OK ") {
                bail!(
                    "guest port {port}: the VM answered {:?}",
                    String::from_utf8_lossy(&line).trim()
                );
            }
            pipe(s)
        }
        VsockCmd::Listen { socket, port } => {
            let path = format!("{}_{port}", socket.display());
            let _ = std::fs::remove_file(&path);
            let l = UnixListener::bind(&path).with_context(|| format!("listening on {path}"))?;
            let (s, _) = l.accept()?;
            let _ = std::fs::remove_file(&path);
            pipe(s)
        }
    }
}

/// The network devices `--net` asks for; `nat` puts the VM on Starling's network (its
/// address on the kernel command line as `ip=`, which Starling's initramfs applies).
fn net_devices(
    args: Vec<NetArg>,
    publish: &[starling_net::Publish],
    config: &mut VmConfig,
) -> Result<Vec<starling_vmm::NetConfig>> {
    let nats = args.iter().filter(|n| matches!(n, NetArg::Nat)).count();
    if nats > 1 {
        bail!("--net nat may be given once: a VM has one address on Starling's network");
    }
    if nats == 0 && !publish.is_empty() {
        bail!("-p publishes a port of a VM on Starling's network: add --net nat");
    }
    let mut devices = Vec::new();
    for n in args {
        match n {
            NetArg::None => {}
            NetArg::Tap(c) => devices.push(c),
            NetArg::Nat => {
                let att = starling_net::attach(std::process::id(), publish)?;
                if std::env::var_os("STARLING_VM_QUIET").is_none() {
                    let ports: Vec<String> = publish.iter().map(|p| p.to_string()).collect();
                    eprintln!(
                        "starling: VM address {} on {} ({}){}",
                        att.address,
                        starling_net::BRIDGE,
                        att.tap,
                        if ports.is_empty() {
                            String::new()
                        } else {
                            format!(", publishing {}", ports.join(" "))
                        }
                    );
                }
                let (device, ip) = att.device(&config.hostname);
                config.cmdline = format!("{} {ip}", config.cmdline);
                devices.push(device);
                set_net_helper();
            }
        }
    }
    Ok(devices)
}

fn run_vm(a: RunArgs) -> Result<ExitCode> {
    if a.no_seccomp {
        starling_vmm::jail::disable();
    }
    if a.jail {
        starling_vmm::jail::plan::ask();
    }
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
    if !a.net.is_empty() {
        config.net = net_devices(a.net, &a.publish, &mut config)?;
    } else if !a.publish.is_empty() {
        bail!("-p publishes a port of a VM on Starling's network: add --net nat");
    }
    if a.api_socket.is_some() {
        config.api_socket = a.api_socket;
    }
    if let Some(n) = a.fork_budget {
        config.fork_budget = n;
    }
    if a.config.is_none() || a.console != "stdio" {
        config.console = console_arg(&a.console)?;
    }
    Ok(ExitCode::from(starling_vmm::process::run_to_exit(
        starling_vmm::process::Start::Boot(config),
    )))
}
