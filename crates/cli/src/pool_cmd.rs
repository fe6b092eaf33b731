//! `starling pool …`: substrate pools (VM substrates). A pool is one VM booted until its guest
//! says `ready` to the monitor's service, snapshotted there and docked in memory (the pool
//! directory lives on tmpfs): SIZE monitors restored from that snapshot wait paused. `pool run`
//! takes one, hands the guest its configuration (the answer to `ready`) and lets it go, then
//! docks a replacement; with none waiting it restores a fresh one.
//!
//! Layout of a pool directory: `pool.json`, `snap/` (the snapshot), `boot.log` (the first
//! boot's console), `slots/N/` per substrate (`api.sock`, `console.log`, `monitor.log`, and
//! `free` while nobody has taken it).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use starling_vmm::api::Client;
use starling_vmm::{Console, DiskConfig, RestoreSpec, VmConfig, VsockConfig};

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

#[derive(Serialize, Deserialize)]
struct PoolInfo {
    name: String,
    size: u32,
    mem_mib: u64,
    vcpus: u8,
    kernel: PathBuf,
    image: Option<String>,
    created_unix: u64,
    boot_ms: u128,
    snapshot_memory_bytes: u64,
}

/// `$STARLING_POOLS`, else /dev/shm/starling-pools (memory: the docked snapshots stay there).
pub fn pools_root() -> PathBuf {
    std::env::var_os("STARLING_POOLS")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("/dev/shm/starling-pools"), PathBuf::from)
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 40
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        bail!("pool name {name:?}: 1 to 40 letters, digits, '-' and '_'");
    }
    Ok(())
}

fn pool_dir(name: &str) -> Result<PathBuf> {
    check_name(name)?;
    let d = pools_root().join(name);
    if !d.join("pool.json").is_file() {
        bail!("no pool named {name} (in {})", pools_root().display());
    }
    Ok(d)
}

fn vmm_program() -> Result<PathBuf> {
    let p = starling_vmm::fork::clone_program();
    if !p.is_file() {
        bail!(
            "starling-vmm is not installed beside starling ({})",
            p.display()
        );
    }
    Ok(p)
}

fn tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

pub fn run(store: &Path, cmd: PoolCmd) -> Result<ExitCode> {
    match cmd {
        PoolCmd::Create(a) => create(store, a),
        PoolCmd::Run {
            name,
            env,
            args,
            json,
        } => activate(&name, &env, args.as_deref(), json),
        PoolCmd::Ls { json } => ls(json),
        PoolCmd::Rm { name, force } => rm(&name, force),
    }
}

fn create(store: &Path, a: CreateArgs) -> Result<ExitCode> {
    check_name(&a.name)?;
    if a.size > 64 {
        bail!("--size {}: at most 64 substrates per pool", a.size);
    }
    let dir = pools_root().join(&a.name);
    if dir.exists() {
        bail!(
            "pool {} exists ({}); pool rm it first",
            a.name,
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let made = (|| -> Result<PoolInfo> {
        let mut config = VmConfig::new(a.kernel.clone());
        config.initrd = a.initrd.clone();
        config.cmdline = a.cmdline.clone();
        config.mem_mib = a.mem;
        config.vcpus = a.vcpus;
        config.hostname = a.name.clone();
        if let Some(image) = &a.image {
            let disk = dir.join("rootfs.ext4");
            crate::vm_artifacts::export_ext4(store, image, &disk)?;
            config.disks.push(DiskConfig {
                path: disk,
                read_only: false,
            });
        }
        config.disks.extend(a.disks.iter().cloned());
        config.vsock = Some(VsockConfig {
            cid: 3,
            path: dir.join("boot.vsock"),
        });
        config.console = Console::File(dir.join("boot.log"));
        let sock = dir.join("boot.sock");
        config.api_socket = Some(sock.clone());
        config.run_dir = Some(dir.join("boot-run"));
        config.validate()?;
        let t = Instant::now();
        let mut cmd = Command::new(vmm_program()?);
        cmd.arg("--config-json")
            .arg(serde_json::to_string(&config)?)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("boot-monitor.log"))?);
        // Killed or interrupted, this command takes its boot VM along (pool rm --force then
        // clears the directory).
        starling_vmm::fork::die_with_parent(&mut cmd);
        let mut vm = cmd.spawn().context("starting the VM")?;
        let boot = Client::new(&sock);
        let snapped = (|| -> Result<(u128, starling_vmm::SnapshotInfo)> {
            let deadline = t + Duration::from_secs(a.timeout);
            loop {
                if let Some(status) = vm.try_wait()? {
                    bail!(
                        "the VM ended ({status}) before its guest said ready; its monitor said:\n{}\n\
                         its console ends:\n{}",
                        tail(&dir.join("boot-monitor.log")),
                        tail(&dir.join("boot.log"))
                    );
                }
                if Instant::now() > deadline {
                    let _ = vm.kill();
                    bail!(
                        "the guest did not say ready within {} s (does it ask the monitor's service \
                         `ready`?); its monitor said:\n{}\nits console ends:\n{}",
                        a.timeout,
                        tail(&dir.join("boot-monitor.log")),
                        tail(&dir.join("boot.log"))
                    );
                }
                if boot.status().is_ok_and(|st| st.guest_ready) {
                    break;
                }
                // A boot takes seconds; polling faster only takes CPU from it.
                std::thread::sleep(Duration::from_millis(100));
            }
            let boot_ms = t.elapsed().as_millis();
            let snap = boot.snapshot(&dir.join("snap"), true)?;
            Ok((boot_ms, snap))
        })();
        let (boot_ms, snap) = match snapped {
            Ok(v) => v,
            Err(e) => {
                // The boot VM must not outlive the pool it was for.
                let _ = vm.kill();
                let _ = vm.wait();
                return Err(e);
            }
        };
        vm.wait()?;
        Ok(PoolInfo {
            name: a.name.clone(),
            size: a.size,
            mem_mib: a.mem,
            vcpus: a.vcpus,
            kernel: a.kernel.clone(),
            image: a.image.clone(),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            boot_ms,
            snapshot_memory_bytes: snap.memory_bytes,
        })
    })();
    let info = match made {
        Ok(i) => i,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e.context(format!("creating pool {}", a.name)));
        }
    };
    std::fs::write(dir.join("pool.json"), serde_json::to_vec_pretty(&info)?)?;
    for _ in 0..a.size {
        dock(&dir)?;
    }
    eprintln!(
        "pool {}: booted to ready in {} ms, {} bytes of memory docked, {} substrates waiting",
        a.name, info.boot_ms, info.snapshot_memory_bytes, a.size
    );
    Ok(ExitCode::SUCCESS)
}

/// Restores one more substrate from the pool's snapshot, paused; returns its slot directory.
fn dock(dir: &Path) -> Result<PathBuf> {
    spawn_slot(dir, true, None).map(|(slot, _)| slot)
}

fn spawn_slot(dir: &Path, paused: bool, activate: Option<String>) -> Result<(PathBuf, u32)> {
    let slots = dir.join("slots");
    std::fs::create_dir_all(&slots)?;
    let mut n = std::fs::read_dir(&slots)?.count() as u32;
    let slot = loop {
        let s = slots.join(n.to_string());
        match std::fs::create_dir(&s) {
            Ok(()) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
            Err(e) => return Err(e.into()),
        }
    };
    let spec = RestoreSpec {
        dir: dir.join("snap"),
        run_dir: Some(slot.join("run")),
        api_socket: Some(slot.join("api.sock")),
        vsock_path: Some(slot.join("vsock.sock")),
        console: Some(Console::File(slot.join("console.log"))),
        paused,
        activate,
        ..Default::default()
    };
    vmm_program()?;
    let log = std::fs::File::create(slot.join("monitor.log"))?;
    starling_vmm::fork::start_restore(spec, log)
        .context("starting a substrate")?
        .wait(Duration::from_secs(30))
        .map_err(|why| {
            anyhow::anyhow!(
                "substrate {} did not start ({why}): {}",
                slot.display(),
                tail(&slot.join("monitor.log"))
            )
        })?;
    if paused {
        std::fs::write(slot.join("free"), b"")?;
    }
    Ok((slot, n))
}

fn alive(slot: &Path) -> bool {
    Client::new(slot.join("api.sock")).answers()
}

fn slots(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<(u32, PathBuf)> = std::fs::read_dir(dir.join("slots"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path())))
        .collect();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

fn activate(
    name: &str,
    env: &[(String, String)],
    args: Option<&str>,
    json: bool,
) -> Result<ExitCode> {
    let dir = pool_dir(name)?;
    let line = starling_vmm::service::activation_line(env, args).map_err(anyhow::Error::msg)?;
    let t = Instant::now();
    let mut taken = None;
    for slot in slots(&dir) {
        // Whoever renames the marker first has the substrate.
        if std::fs::rename(slot.join("free"), slot.join("taken")).is_err() {
            continue;
        }
        if alive(&slot) {
            taken = Some(slot);
            break;
        }
        let _ = std::fs::remove_dir_all(&slot);
    }
    let (slot, warm) = match taken {
        Some(slot) => {
            let vm = Client::new(slot.join("api.sock"));
            if let Err(e) = vm.activate(env, args) {
                // A substrate that cannot be activated is of no use to anyone.
                let _ = vm.stop();
                let _ = std::fs::remove_dir_all(&slot);
                return Err(e.into());
            }
            (slot, true)
        }
        None => {
            let (slot, _) = spawn_slot(&dir, false, Some(line))?;
            std::fs::write(slot.join("taken"), b"")?;
            (slot, false)
        }
    };
    let activated_us = t.elapsed().as_micros();
    // Keep the pool at its size.
    if warm {
        dock(&dir)?;
    }
    let out = serde_json::json!({
        "pool": name,
        "slot": slot,
        "warm": warm,
        "activated_us": activated_us,
        "api_socket": slot.join("api.sock"),
        "vsock": slot.join("vsock.sock"),
        "console": slot.join("console.log"),
    });
    if json {
        println!("{out}");
    } else {
        println!(
            "{} api {} vsock {} console {}",
            slot.display(),
            slot.join("api.sock").display(),
            slot.join("vsock.sock").display(),
            slot.join("console.log").display()
        );
        eprintln!(
            "activated from pool {name} in {activated_us} µs ({})",
            if warm {
                "a waiting substrate"
            } else {
                "none waiting: restored a new one"
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn ls(json: bool) -> Result<ExitCode> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(pools_root())
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(info) = std::fs::read(e.path().join("pool.json")) else {
            continue;
        };
        let Ok(info) = serde_json::from_slice::<PoolInfo>(&info) else {
            continue;
        };
        let (mut waiting, mut active) = (0, 0);
        for s in slots(&e.path()) {
            if !alive(&s) {
                continue;
            }
            if s.join("free").exists() {
                waiting += 1;
            } else {
                active += 1;
            }
        }
        out.push(serde_json::json!({
            "name": info.name, "size": info.size, "waiting": waiting, "active": active,
            "mem_mib": info.mem_mib, "image": info.image,
            "snapshot_memory_bytes": info.snapshot_memory_bytes, "boot_ms": info.boot_ms,
        }));
    }
    if json {
        println!("{}", serde_json::Value::Array(out));
    } else {
        println!("NAME\tSIZE\tWAITING\tACTIVE\tMEMORY\tDOCKED BYTES");
        for p in out {
            println!(
                "{}\t{}\t{}\t{}\t{}M\t{}",
                p["name"].as_str().unwrap_or(""),
                p["size"],
                p["waiting"],
                p["active"],
                p["mem_mib"],
                p["snapshot_memory_bytes"]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn rm(name: &str, force: bool) -> Result<ExitCode> {
    check_name(name)?;
    let unfinished = pools_root().join(name);
    if unfinished.is_dir() && !unfinished.join("pool.json").is_file() {
        // What an interrupted `pool create` left: perhaps its boot VM, and no pool.json.
        if !force {
            bail!(
                "pool {name} was never finished (its pool create was interrupted); \
                 pool rm --force removes what it left in {}",
                unfinished.display()
            );
        }
        let boot = Client::new(unfinished.join("boot.sock"));
        if boot.answers() {
            let _ = boot.stop();
        }
        std::fs::remove_dir_all(&unfinished)
            .with_context(|| format!("removing {}", unfinished.display()))?;
        eprintln!("pool {name}: removed what an interrupted pool create left");
        return Ok(ExitCode::SUCCESS);
    }
    let dir = pool_dir(name)?;
    let all = slots(&dir);
    let active: Vec<&PathBuf> = all
        .iter()
        .filter(|s| !s.join("free").exists() && alive(s))
        .collect();
    if !active.is_empty() && !force {
        bail!(
            "pool {name}: {} VMs activated from it still run (stop them, or pool rm --force)",
            active.len()
        );
    }
    for s in &all {
        if alive(s) {
            let _ = Client::new(s.join("api.sock")).stop();
        }
    }
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    eprintln!("pool {name} removed ({} VMs stopped)", all.len());
    Ok(ExitCode::SUCCESS)
}
