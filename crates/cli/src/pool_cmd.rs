//! `starling pool …`: substrate pools, a thin layer over `starling_vmm::pool` (which holds
//! their lifecycle). The one thing a pool needs from the store is done here: a stored image
//! becomes the VM's ext4 disk in the pool's directory before the library boots it.

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
    Create(CreateArgs),
    /// Activate a VM from the pool without booting: it gets its environment and arguments as
    /// the answer to its `ready`, and runs on from there
    Run {
        name: String,
        /// Environment for the guest (K=V, repeatable)
        #[arg(long = "env", value_parser = parse_env)]
        env: Vec<(String, String)>,
        /// Arguments for the guest (one line)
        #[arg(long)]
        args: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The pools, their substrates waiting and the VMs activated from them
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove a pool: stop its waiting substrates and delete its snapshot (refused while VMs
    /// activated from it run, unless --force, which stops them too)
    Rm {
        name: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args)]
pub struct CreateArgs {
    name: String,
    /// Kernel: a bzImage or an ELF vmlinux
    #[arg(long)]
    kernel: PathBuf,
    #[arg(long)]
    initrd: Option<PathBuf>,
    #[arg(long, default_value = starling_vmm::config::DEFAULT_CMDLINE)]
    cmdline: String,
    /// Guest memory (e.g. 256M)
    #[arg(long, default_value = "256M", value_parser = crate::vm_cmd::parse_mem)]
    mem: u64,
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// A stored image as the VM's disk (/dev/vda, ext4; each activated VM writes to its own
    /// copy-on-write overlay)
    #[arg(long)]
    image: Option<String>,
    /// A raw disk image, FILE or FILE,ro (repeatable, after --image)
    #[arg(long = "disk", value_parser = crate::vm_cmd::parse_disk)]
    disks: Vec<DiskConfig>,
    /// Substrates kept waiting
    #[arg(long, default_value_t = 1)]
    size: u32,
    /// Seconds the first boot may take to reach `ready`
    #[arg(long, default_value_t = 300)]
    timeout: u64,
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
        PoolCmd::Create(a) => create(&pools, store, a),
        PoolCmd::Run {
            name,
            env,
            args,
            json,
        } => activate(&pools, &name, &env, args.as_deref(), json),
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
    let draft = pools.begin(&a.name)?;
    let made = (|| -> Result<pool::PoolInfo> {
        let mut vm = VmConfig::new(a.kernel.clone());
        vm.initrd = a.initrd.clone();
        vm.cmdline = a.cmdline.clone();
        vm.mem_mib = a.mem;
        vm.vcpus = a.vcpus;
        if let Some(image) = &a.image {
            let disk = draft.dir().join("rootfs.ext4");
            crate::vm_artifacts::export_ext4(store, image, &disk)?;
            vm.disks.push(DiskConfig {
                path: disk,
                read_only: false,
            });
        }
        vm.disks.extend(a.disks.iter().cloned());
        Ok(draft.create(CreateOptions {
            vm,
            size: a.size,
            boot_timeout: Duration::from_secs(a.timeout),
            image: a.image.clone(),
        })?)
    })();
    let info = made.with_context(|| format!("creating pool {}", a.name))?;
    eprintln!(
        "pool {}: booted to ready in {} ms, {} bytes of memory docked, {} substrates waiting",
        a.name, info.boot_ms, info.snapshot_memory_bytes, info.size
    );
    Ok(ExitCode::SUCCESS)
}

fn activate(
    pools: &Pools,
    name: &str,
    env: &[(String, String)],
    args: Option<&str>,
    json: bool,
) -> Result<ExitCode> {
    let a = pools.activate(name, env, args)?;
    if json {
        println!("{}", serde_json::to_string(&a)?);
    } else {
        println!(
            "{} api {} vsock {} console {}",
            a.slot.display(),
            a.api_socket.display(),
            a.vsock.display(),
            a.console.display()
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
        println!("NAME\tSIZE\tWAITING\tACTIVE\tMEMORY\tDOCKED BYTES");
        for p in list {
            println!(
                "{}\t{}\t{}\t{}\t{}M\t{}",
                p.name, p.size, p.waiting, p.active, p.mem_mib, p.snapshot_memory_bytes
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
