//! `starling pool …`: substrate pools, a thin layer over `starling_vmm::pool` (which holds
//! their lifecycle). A pool of an image (`--image [URL] IMAGE -- CMD`) is made by starlingd,
//! which boots it as `starling run` would (daemon/src/pools.rs); a pool of a kernel and
//! initramfs is made here, with a stored image as its ext4 disk (`--disk-image`) if asked.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use starling_vmm::pool::{self, CreateOptions, Pools, Removal};
use starling_vmm::{DiskConfig, VmConfig};

#[derive(Subcommand)]
pub enum PoolCmd {
    /// Boot a VM until its guest is ready, dock its snapshot in memory and keep SIZE
    /// substrates restored from it waiting
    Create(Box<CreateArgs>),
    /// Activate a VM from the pool without booting: it gets its environment and arguments as
    /// the answer to its `ready`, and runs on from there (a replacement docks in the
    /// background)
    Run(RunArgs),
    /// The pools, their substrates waiting and the VMs activated from them
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove a pool: stop its waiting substrates and delete its snapshot (refused while VMs
    /// activated from it run, unless --force, which stops them too)
    Rm {
        /// The pool's name
        name: String,
        /// Also stop the VMs activated from it
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args)]
pub struct RunArgs {
    /// The pool's name
    name: String,
    /// Environment for the guest (K=V, repeatable)
    #[arg(long = "env", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Arguments for the guest (one line)
    #[arg(long)]
    args: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct CreateArgs {
    /// The pool's name (letters, digits, '-', '_')
    name: String,
    /// `[URL] IMAGE`: substrates of an image, booted as `starling run` boots it (its root
    /// fetched on demand through starlingd's host cache) and docked once the run init says
    /// `ready`; activated, each runs CMD (or `pool run --args` through /bin/sh -c)
    #[arg(long, num_args = 1..=2, value_name = "[URL] IMAGE", conflicts_with_all = ["initrd", "cmdline", "disk_image", "disks"])]
    image: Vec<String>,
    /// The command an activated substrate of --image runs
    #[arg(last = true, value_name = "CMD", requires = "image")]
    cmd: Vec<String>,
    /// Kernel: a bzImage or an ELF vmlinux; with --image also a kernel image in the store or
    /// a kernel tree (as `starling run --kernel`)
    #[arg(long, required_unless_present = "image", value_name = "FILE|REF|DIR")]
    kernel: Option<String>,
    /// Initramfs (its init must run `starling-agent ready`)
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line [default: the monitor's]
    #[arg(long)]
    cmdline: Option<String>,
    /// With --image: appended to the kernel's command line
    #[arg(
        long,
        value_name = "ARGS",
        allow_hyphen_values = true,
        requires = "image"
    )]
    kernel_args: Option<String>,
    /// With --image: `KEY=VALUE` for CMD (repeatable; an activation's --env adds to it)
    #[arg(short, long = "env", value_name = "KEY=VALUE", requires = "image")]
    env: Vec<String>,
    /// With --image: trusted root metadata, needed on first contact with the repository
    #[arg(long, value_name = "ROOT.json", requires = "image")]
    root: Option<PathBuf>,
    /// With --image: size of each substrate's writable layer (a sparse scratch disk)
    #[arg(long, default_value = "8G", value_parser = crate::format::parse_size)]
    disk_size: u64,
    /// Guest memory (e.g. 256M)
    #[arg(long, default_value = "256M", value_parser = crate::vm_cmd::parse_mem)]
    mem: u64,
    /// Virtual CPUs
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// A stored image as the VM's disk (/dev/vda, ext4; each activated VM writes to its own
    /// copy-on-write overlay)
    #[arg(long)]
    disk_image: Option<String>,
    /// A raw disk image, FILE or FILE,ro (repeatable, after --disk-image)
    #[arg(long = "disk", value_parser = crate::vm_cmd::parse_disk)]
    disks: Vec<DiskConfig>,
    /// Substrates kept waiting
    #[arg(long, default_value_t = 1)]
    size: u32,
    /// How long the first boot may take to reach `ready`, e.g. 90s, 5m
    #[arg(long, default_value = "5m", value_parser = crate::format::parse_duration, value_name = "DURATION")]
    timeout: u64,
    /// `nat`: the pool's VMs are on Starling's network, each activation with an address, TAP
    /// and MAC of its own, given when it is activated (root); `none`: no network
    #[arg(long, default_value = "none", value_parser = ["none", "nat"])]
    net: String,
    #[arg(long, env = "STARLING_SOCKET", default_value = starling_daemon::DEFAULT_SOCKET)]
    socket: PathBuf,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.into(), v.into())),
        _ => Err(format!("{s}: expected NAME=VALUE")),
    }
}

pub fn run(store: &Path, cmd: PoolCmd) -> Result<ExitCode> {
    let pools = Pools::new(pool::default_root());
    match cmd {
        PoolCmd::Create(a) => create(&pools, store, *a),
        PoolCmd::Run(a) => activate(&pools, &a.name, &a.env, a.args.as_deref(), a.json),
        PoolCmd::Ls { json } => ls(&pools, json),
        PoolCmd::Rm { name, force } => {
            match pools.remove(&name, force)? {
                Removal::Unfinished => {
                    eprintln!("pool {name}: removed what an interrupted pool create left")
                }
                Removal::Removed { stopped } => {
                    eprintln!("pool {name} removed ({stopped} VMs stopped)")
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn create(pools: &Pools, store: &Path, a: CreateArgs) -> Result<ExitCode> {
    if !a.image.is_empty() {
        return create_of_image(pools, store, a);
    }
    let kernel = PathBuf::from(a.kernel.clone().unwrap_or_default());
    let draft = pools.begin(&a.name)?;
    let made = (|| -> Result<pool::PoolInfo> {
        let mut vm = VmConfig::new(kernel);
        vm.initrd = a.initrd.clone();
        vm.cmdline = a
            .cmdline
            .clone()
            .unwrap_or_else(|| starling_vmm::config::DEFAULT_CMDLINE.into());
        vm.mem_mib = a.mem;
        vm.vcpus = a.vcpus;
        if let Some(image) = &a.disk_image {
            let disk = draft.dir().join("rootfs.ext4");
            crate::vm_artifacts::export_ext4(store, image, &disk)?;
            vm.disks.push(DiskConfig {
                path: disk,
                read_only: false,
            });
        }
        vm.disks.extend(a.disks.iter().cloned());
        // On the network: the first boot has an address (its TAP goes with it); docked
        // substrates are off it until an activation gives each its own.
        let att = if a.net == "nat" {
            let att = starling_net::attach(std::process::id(), &[])?;
            let (device, ip) = att.device(&a.name);
            vm.cmdline = format!("{} {ip}", vm.cmdline);
            vm.net.push(device);
            crate::vm_cmd::set_net_helper();
            Some(att)
        } else {
            None
        };
        let display = crate::progress::Display::spinner(format!(
            "pool {}: booting the first VM, then docking {} substrates",
            a.name, a.size
        ));
        let made = draft.create(CreateOptions {
            vm,
            size: a.size,
            boot_timeout: Duration::from_secs(a.timeout),
            image: a.disk_image.clone(),
        });
        drop(display);
        if let Some(att) = &att {
            let _ = starling_net::detach(att);
        }
        Ok(made?)
    })();
    let info = made.with_context(|| format!("creating pool {}", a.name))?;
    created(&info);
    Ok(ExitCode::SUCCESS)
}

fn created(info: &pool::PoolInfo) {
    eprintln!(
        "pool {}: booted to ready in {} ms, {} bytes of memory docked, {} substrates waiting",
        info.name, info.boot_ms, info.snapshot_memory_bytes, info.size
    );
}

/// A pool of an image: starlingd boots it as `starling run` would and docks it.
fn create_of_image(pools: &Pools, store: &Path, a: CreateArgs) -> Result<ExitCode> {
    use crate::run_cmd::{check_env, kernel_arg, source};
    use starling_daemon::api::{PoolRequest, RunRequest};
    check_env(&a.env)?;
    let run = RunRequest {
        name: None,
        source: source(store, &a.image, a.root.as_deref())?,
        store: std::path::absolute(store)?,
        mem_mib: a.mem,
        vcpus: a.vcpus,
        kernel: kernel_arg(a.kernel.as_ref())?,
        kernel_args: a.kernel_args.clone(),
        cmd: a.cmd.clone(),
        env: a.env.clone(),
        rm: false,
        disk_bytes: a.disk_size,
        // The first boot's address; each activation gets its own (`pool run`).
        net: if a.net == "nat" {
            starling_daemon::api::RunNet::Nat
        } else {
            starling_daemon::api::RunNet::None
        },
        publish: Vec::new(),
    };
    let req = PoolRequest {
        name: a.name.clone(),
        run,
        size: a.size,
        boot_timeout_secs: a.timeout,
        pools: std::path::absolute(pools.root())?,
    };
    let display = crate::progress::Display::spinner(format!(
        "pool {}: starlingd boots {} until it is ready (at most {} s), then docks {} substrates",
        a.name,
        req.run.image_arg(),
        a.timeout,
        a.size
    ));
    let info: Result<pool::PoolInfo, _> =
        starling_daemon::client::Client::new(&a.socket)?.post("/v1/pools", &req);
    drop(display);
    let info = info.with_context(|| format!("creating pool {}", a.name))?;
    created(&info);
    Ok(ExitCode::SUCCESS)
}

fn activate(
    pools: &Pools,
    name: &str,
    env: &[(String, String)],
    args: Option<&str>,
    json: bool,
) -> Result<ExitCode> {
    let on_network = pools.info(name)?.network;
    // The activated VM's lease: taken for the monitor that will run it, or for this process
    // when a new one is restored (handed to that monitor once it runs).
    let mut lease: Option<(starling_net::Attachment, u32)> = None;
    let mut attach = |pid: u32| -> std::result::Result<starling_vmm::spec::NetAttach, String> {
        let att = starling_net::attach(pid, &[]).map_err(|e| e.to_string())?;
        let a = att.net_attach(name);
        lease = Some((att, pid));
        Ok(a)
    };
    if on_network {
        // Replacements docked from here may fork clones onto the network too.
        crate::vm_cmd::set_net_helper();
    }
    let activated = pools.activate(
        name,
        env,
        args,
        on_network.then_some(&mut attach as starling_vmm::pool::Attacher),
    );
    let a = match activated {
        Ok(a) => a,
        Err(e) => {
            if let Some((att, _)) = &lease {
                let _ = starling_net::detach(att);
            }
            return Err(e.into());
        }
    };
    if let Some((att, pid)) = &lease {
        if *pid != a.pid && a.pid != 0 {
            starling_net::adopt(att.index, a.pid)?;
        }
    }
    if json {
        println!("{}", serde_json::to_string(&a)?);
    } else {
        println!(
            "{} api {} vsock {} console {}{}",
            a.slot.display(),
            a.api_socket.display(),
            a.vsock.display(),
            a.console.display(),
            a.address
                .as_ref()
                .map_or_else(String::new, |ip| format!(" address {ip}"))
        );
        eprintln!(
            "activated from pool {name} in {} µs ({})",
            a.activated_us,
            if a.warm {
                "a waiting substrate"
            } else {
                "none waiting: restored a new one"
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn ls(pools: &Pools, json: bool) -> Result<ExitCode> {
    let list = pools.list();
    if json {
        println!("{}", serde_json::to_string(&list)?);
    } else {
        println!("NAME\tSIZE\tWAITING\tSTARTING\tACTIVE\tFAILED\tMEMORY\tDOCKED BYTES");
        for p in list {
            println!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}M\t{}",
                p.name,
                p.size,
                p.waiting,
                p.starting,
                p.active,
                p.failed,
                p.mem_mib,
                p.snapshot_memory_bytes
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
