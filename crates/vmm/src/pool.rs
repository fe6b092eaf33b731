//! Substrate pools (VM substrates, VEE'11): a VM booted once until its guest says `ready` to
//! the monitor's service, snapshotted there and docked in memory (the pools live on tmpfs),
//! with SIZE monitors restored from that snapshot waiting paused. Activating takes one, hands
//! the guest its configuration (the answer to its `ready`) and lets it go, then docks a
//! replacement; with none waiting it restores a fresh one.
//!
//! Layout of a pool directory: `pool.json` (written last: a directory without it is an
//! interrupted create), `snap/` (the snapshot), `boot.log` and `boot-monitor.log` (the first
//! boot's console and monitor), `slots/N/` per substrate (`api.sock`, `vsock.sock`,
//! `console.log`, `monitor.log`, `run/`, and `free` while nobody has taken it). Disks are
//! paths the caller prepares (in the pool's directory, see [`Draft::dir`]); every activated
//! VM writes to an overlay of its own.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::api::{Client, ClientError};
use crate::config::{Console, VmConfig, VsockConfig};
use crate::spec::{NetAttach, RestoreSpec};

/// How an activation gets onto the pool's network: given the pid of the monitor that will run
/// the VM (a docked substrate's; or this process's, for a VM restored now, whose lease the
/// caller hands to [`Activation::pid`]), a TAP made for it and its address.
pub type Attacher<'a> = &'a mut dyn FnMut(u32) -> Result<NetAttach, String>;

/// Most substrates one pool keeps waiting.
pub const MAX_SIZE: u32 = 64;
/// How long a substrate may take to restore.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the first boot is asked whether its guest is ready: a boot takes seconds, and
/// polling faster only takes CPU from it (and, in nested test hosts, provoked failures).
const READY_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("pool name {0:?}: 1 to 40 letters, digits, '-' and '_'")]
    BadName(String),
    #[error("{0} substrates: at most {MAX_SIZE} per pool")]
    TooBig(u32),
    #[error("pool {name} exists ({}); remove it first", dir.display())]
    Exists { name: String, dir: PathBuf },
    #[error("no pool named {name} (in {})", root.display())]
    NoSuchPool { name: String, root: PathBuf },
    #[error(
        "pool {name} was never finished (its create was interrupted); removing it with force \
         clears what it left in {}", dir.display()
    )]
    Unfinished { name: String, dir: PathBuf },
    #[error(
        "pool {name}: {count} VMs activated from it still run (stop them, or remove it with force)"
    )]
    StillRunning { name: String, count: usize },
    #[error("{0}")]
    Boot(String),
    #[error("substrate {} did not start ({why}): {log}", slot.display())]
    Substrate {
        slot: PathBuf,
        why: String,
        log: String,
    },
    #[error("{0}")]
    Activation(String),
    #[error(
        "the monitor {} is not there (starling-vmm is installed beside starling; \
         STARLING_VMM names another)", .0.display()
    )]
    NoMonitor(PathBuf),
    #[error(transparent)]
    Vm(#[from] ClientError),
    #[error(transparent)]
    Config(#[from] crate::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PoolError {
    let what = what.into();
    move |source| PoolError::Io { what, source }
}

/// `pool.json`: what the pool was made from and what its first boot cost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolInfo {
    pub name: String,
    pub size: u32,
    pub mem_mib: u64,
    pub vcpus: u8,
    pub kernel: PathBuf,
    /// The image the caller made the pool's disk from, as it names it (a label).
    pub image: Option<String>,
    pub created_unix: u64,
    pub boot_ms: u128,
    pub snapshot_memory_bytes: u64,
    /// The pool's VMs are on Starling's network: each activation gets its own address.
    #[serde(default)]
    pub network: bool,
}

impl Pools {
    /// What pool `name` was made with (`pool.json`).
    pub fn info(&self, name: &str) -> Result<PoolInfo, PoolError> {
        let dir = self.dir(name)?;
        let path = dir.join("pool.json");
        let bytes = std::fs::read(&path).map_err(io(format!("reading {}", path.display())))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| PoolError::Activation(format!("{}: {e}", path.display())))
    }
}

/// A pool as listed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolSummary {
    pub name: String,
    pub size: u32,
    /// Substrates docked and answering.
    pub waiting: u32,
    /// VMs activated from the pool that still run.
    pub active: u32,
    /// Replacement substrates being restored in the background.
    #[serde(default)]
    pub starting: u32,
    /// Replacements that never docked (their slot's `monitor.log` says why).
    #[serde(default)]
    pub failed: u32,
    pub mem_mib: u64,
    pub image: Option<String>,
    pub snapshot_memory_bytes: u64,
    pub boot_ms: u128,
}

/// A VM activated from a pool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Activation {
    pub pool: String,
    pub slot: PathBuf,
    /// A docked substrate was taken (false: none waited, a new one was restored).
    pub warm: bool,
    pub activated_us: u128,
    pub api_socket: PathBuf,
    pub vsock: PathBuf,
    pub console: PathBuf,
    /// The VM's monitor.
    #[serde(default)]
    pub pid: u32,
    /// Its address on the pool's network, when it has one.
    #[serde(default)]
    pub address: Option<String>,
}

/// What [`Pools::remove`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Removal {
    /// A pool and the VMs it had (docked or activated) stopped.
    Removed { stopped: usize },
    /// What an interrupted create left (perhaps its boot VM, stopped).
    Unfinished,
}

/// How to make a pool: the VM (its kernel, command line, size and disks; the pool sets its
/// hostname, vsock, console, API socket and run directory), how many substrates to keep
/// waiting, and how long the first boot may take to reach `ready`.
pub struct CreateOptions {
    pub vm: VmConfig,
    pub size: u32,
    pub boot_timeout: Duration,
    /// Recorded as the pool's `image`.
    pub image: Option<String>,
}

/// `$STARLING_POOLS`, else /dev/shm/starling-pools (memory: the docked snapshots stay there).
pub fn default_root() -> PathBuf {
    std::env::var_os("STARLING_POOLS")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("/dev/shm/starling-pools"), PathBuf::from)
}

/// The pools under one directory.
#[derive(Clone, Debug)]
pub struct Pools {
    root: PathBuf,
}

fn check_name(name: &str) -> Result<(), PoolError> {
    if name.is_empty()
        || name.len() > 40
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(PoolError::BadName(name.into()));
    }
    Ok(())
}

/// The last lines of a log, for errors.
fn tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

fn monitor() -> Result<PathBuf, PoolError> {
    let p = crate::fork::clone_program();
    if !p.is_file() {
        return Err(PoolError::NoMonitor(p));
    }
    Ok(p)
}

/// A pool being made: its directory exists (for the caller to put disks in) and is removed
/// again unless [`Draft::create`] finishes.
pub struct Draft {
    name: String,
    dir: PathBuf,
    done: bool,
}

impl Drop for Draft {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Pools {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Pools { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Starts making pool `name`: refused if the name is taken.
    pub fn begin(&self, name: &str) -> Result<Draft, PoolError> {
        check_name(name)?;
        let dir = self.root.join(name);
        if dir.exists() {
            return Err(PoolError::Exists {
                name: name.into(),
                dir,
            });
        }
        crate::private::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        Ok(Draft {
            name: name.into(),
            dir,
            done: false,
        })
    }

    fn dir(&self, name: &str) -> Result<PathBuf, PoolError> {
        check_name(name)?;
        let d = self.root.join(name);
        if !d.join("pool.json").is_file() {
            return Err(PoolError::NoSuchPool {
                name: name.into(),
                root: self.root.clone(),
            });
        }
        Ok(d)
    }

    /// Activates a VM from pool `name`: a waiting substrate if there is one (and a
    /// replacement docked after), else a new one; its guest gets `env` and `args` as the
    /// answer to its `ready`.
    pub fn activate(
        &self,
        name: &str,
        env: &[(String, String)],
        args: Option<&str>,
        mut network: Option<Attacher>,
    ) -> Result<Activation, PoolError> {
        let dir = self.dir(name)?;
        let line = crate::service::activation_line(env, args).map_err(PoolError::Activation)?;
        let t = Instant::now();
        let mut taken = None;
        let mut attached = None;
        // Newest first: replacements dock in new slots, and activated VMs that ended keep
        // theirs (their consoles) until the pool is removed, so the waiting substrates are at
        // the end; oldest first, every activation tried every ended slot before them.
        for slot in slots(&dir).into_iter().rev() {
            // Whoever renames the marker first has the substrate.
            if std::fs::rename(slot.join("free"), slot.join("taken")).is_err() {
                continue;
            }
            attached = None;
            // No probe first: a monitor that is gone fails the first request.
            let vm = Client::new(slot.join("api.sock"));
            let activated = (|| {
                if let Some(attach) = network.as_mut() {
                    let pid = vm.status()?.pid;
                    attached = Some(attach(pid).map_err(PoolError::Activation)?);
                }
                Ok::<_, PoolError>(vm.activate(env, args, attached.as_ref())?.pid)
            })();
            match activated {
                Ok(pid) => {
                    taken = Some((slot, pid));
                    break;
                }
                // Gone, or dying: not answering, or not with an answer. The next one.
                Err(PoolError::Vm(ClientError::Io { .. } | ClientError::BadAnswer { .. })) => {
                    let _ = vm.stop();
                    let _ = std::fs::remove_dir_all(&slot);
                }
                Err(e) => {
                    // A substrate that cannot be activated is of no use to anyone.
                    let _ = vm.stop();
                    let _ = std::fs::remove_dir_all(&slot);
                    return Err(e);
                }
            }
        }
        let (slot, warm, pid) = match taken {
            Some((slot, pid)) => (slot, true, pid),
            None => {
                if let Some(attach) = network.as_mut() {
                    attached = Some(attach(std::process::id()).map_err(PoolError::Activation)?);
                }
                let (slot, pid) = spawn_slot(&dir, false, Some(line), attached.as_ref())?;
                std::fs::write(slot.join("taken"), b"")
                    .map_err(io(format!("marking {} taken", slot.display())))?;
                (slot, false, pid)
            }
        };
        let activated_us = t.elapsed().as_micros();
        // Keep the pool at its size, without making this caller wait for it.
        if warm {
            dock_in_background(&dir)?;
        }
        Ok(Activation {
            pool: name.into(),
            api_socket: slot.join("api.sock"),
            vsock: slot.join("vsock.sock"),
            console: slot.join("console.log"),
            slot,
            warm,
            activated_us,
            pid,
            address: attached.map(|a| crate::config::ip_param_address(&a.ip).to_owned()),
        })
    }

    /// Every pool with its substrates waiting and its VMs still running.
    pub fn list(&self) -> Vec<PoolSummary> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.root)
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
            let (mut waiting, mut active, mut starting, mut failed) = (0, 0, 0, 0);
            for s in slots(&e.path()) {
                match slot_state(&s) {
                    SlotState::Waiting => waiting += 1,
                    SlotState::Active => active += 1,
                    SlotState::Starting => starting += 1,
                    SlotState::Failed => failed += 1,
                    SlotState::Ended => {}
                }
            }
            out.push(PoolSummary {
                name: info.name,
                size: info.size,
                waiting,
                active,
                starting,
                failed,
                mem_mib: info.mem_mib,
                image: info.image,
                snapshot_memory_bytes: info.snapshot_memory_bytes,
                boot_ms: info.boot_ms,
            });
        }
        out
    }

    /// Removes pool `name`: its waiting substrates stop and its snapshot goes; refused while
    /// VMs activated from it run, unless `force`, which stops them too. What an interrupted
    /// create left is removed only with `force`.
    pub fn remove(&self, name: &str, force: bool) -> Result<Removal, PoolError> {
        check_name(name)?;
        let unfinished = self.root.join(name);
        if unfinished.is_dir() && !unfinished.join("pool.json").is_file() {
            if !force {
                return Err(PoolError::Unfinished {
                    name: name.into(),
                    dir: unfinished,
                });
            }
            let boot = Client::new(unfinished.join("boot.sock"));
            if boot.answers() {
                let _ = boot.stop();
            }
            std::fs::remove_dir_all(&unfinished)
                .map_err(io(format!("removing {}", unfinished.display())))?;
            return Ok(Removal::Unfinished);
        }
        let dir = self.dir(name)?;
        let all = slots(&dir);
        let active = all
            .iter()
            .filter(|s| slot_state(s) == SlotState::Active)
            .count();
        if active > 0 && !force {
            return Err(PoolError::StillRunning {
                name: name.into(),
                count: active,
            });
        }
        // Only monitors that answer are stopped and counted: activated VMs that ended keep
        // their slots (their consoles) until now.
        let mut stopped = 0;
        for s in &all {
            let vm = Client::new(s.join("api.sock"));
            if vm.answers() {
                let _ = vm.stop();
                stopped += 1;
            }
        }
        std::fs::remove_dir_all(&dir).map_err(io(format!("removing {}", dir.display())))?;
        Ok(Removal::Removed { stopped })
    }
}

impl Draft {
    /// The pool's directory: disks the VM is to have may be put here.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Boots the VM until its guest says `ready`, snapshots it there (stopping it), records
    /// the pool and docks `size` substrates. The boot VM dies with the thread that calls this
    /// (PR_SET_PDEATHSIG), so an interrupted create leaves no VM behind.
    pub fn create(mut self, opts: CreateOptions) -> Result<PoolInfo, PoolError> {
        if opts.size > MAX_SIZE {
            return Err(PoolError::TooBig(opts.size));
        }
        let dir = self.dir.clone();
        let mut config = opts.vm;
        config.hostname = self.name.clone();
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
        let json = serde_json::to_string(&config)
            .map_err(|e| PoolError::Boot(format!("VM config: {e}")))?;
        let log = crate::private::create_file(&dir.join("boot-monitor.log"))
            .map_err(io("creating boot-monitor.log"))?;
        let mut cmd = Command::new(monitor()?);
        cmd.arg("--config-json")
            .arg(json)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        crate::fork::die_with_parent(&mut cmd);
        let mut vm = cmd.spawn().map_err(io("starting the VM"))?;
        let boot = Client::new(&sock);
        let logs = || {
            format!(
                "its monitor said:\n{}\nits console ends:\n{}",
                tail(&dir.join("boot-monitor.log")),
                tail(&dir.join("boot.log"))
            )
        };
        let snapped = (|| {
            let deadline = t + opts.boot_timeout;
            loop {
                if let Some(status) = vm.try_wait().map_err(io("waiting for the VM"))? {
                    return Err(PoolError::Boot(format!(
                        "the VM ended ({status}) before its guest said ready; {}",
                        logs()
                    )));
                }
                if Instant::now() > deadline {
                    return Err(PoolError::Boot(format!(
                        "the guest did not say ready within {} s (does it ask the monitor's \
                         service `ready`?); {}",
                        opts.boot_timeout.as_secs(),
                        logs()
                    )));
                }
                if boot.status().is_ok_and(|st| st.guest_ready) {
                    break;
                }
                std::thread::sleep(READY_POLL);
            }
            let boot_ms = t.elapsed().as_millis();
            Ok((boot_ms, boot.snapshot(&dir.join("snap"), true)?))
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
        vm.wait().map_err(io("waiting for the VM"))?;
        let info = PoolInfo {
            name: self.name.clone(),
            size: opts.size,
            mem_mib: config.mem_mib,
            vcpus: config.vcpus,
            kernel: config.kernel.clone(),
            image: opts.image,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            boot_ms,
            snapshot_memory_bytes: snap.memory_bytes,
            network: config.net.first().is_some_and(|n| n.ip.is_some()),
        };
        let json = serde_json::to_vec_pretty(&info)
            .map_err(|e| PoolError::Boot(format!("pool.json: {e}")))?;
        std::fs::write(dir.join("pool.json"), json).map_err(io("writing pool.json"))?;
        // From here on it is a pool: a failure to dock leaves it, smaller.
        self.done = true;
        for _ in 0..info.size {
            dock(&dir)?;
        }
        Ok(info)
    }
}

/// Restores one more substrate from the pool's snapshot, paused, and waits until it is docked;
/// returns its slot directory.
fn dock(dir: &Path) -> Result<PathBuf, PoolError> {
    spawn_slot(dir, true, None, None).map(|(slot, _)| slot)
}

/// Starts restoring a replacement substrate without waiting for it: its monitor marks the
/// slot `free` itself once docked; one that never docks leaves its slot unmarked with its
/// `monitor.log`, and listings count it failed.
fn dock_in_background(dir: &Path) -> Result<PathBuf, PoolError> {
    let (slot, spec, log) = prepare_slot(dir, true, None, true)?;
    // Not waited for: it ends as the VM it becomes ends. Its pid tells a listing whether a
    // slot not marked yet is still starting.
    let child =
        crate::fork::start_restore_detached(spec, log).map_err(io("starting a substrate"))?;
    std::fs::write(slot.join("pid"), child.id().to_string())
        .map_err(io(format!("writing {}/pid", slot.display())))?;
    Ok(slot)
}

/// A new slot directory, the spec restoring the pool's snapshot into it (its monitor creating
/// `free` itself once docked when `marks_itself`), and its monitor's log file.
fn prepare_slot(
    dir: &Path,
    paused: bool,
    activate: Option<String>,
    marks_itself: bool,
) -> Result<(PathBuf, RestoreSpec, std::fs::File), PoolError> {
    monitor()?;
    let slots = dir.join("slots");
    crate::private::create_dir_all(&slots).map_err(io(format!("creating {}", slots.display())))?;
    let mut n = std::fs::read_dir(&slots).map_or(0, |d| d.count() as u32);
    let slot = loop {
        let s = slots.join(n.to_string());
        match std::fs::DirBuilder::new().mode(0o700).create(&s) {
            Ok(()) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
            Err(e) => return Err(io(format!("creating {}", s.display()))(e)),
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
        ready_file: marks_itself.then(|| slot.join("free")),
        ..Default::default()
    };
    let log = crate::private::create_file(&slot.join("monitor.log"))
        .map_err(io(format!("creating {}/monitor.log", slot.display())))?;
    Ok((slot, spec, log))
}

/// A new slot with a monitor restored from the pool's snapshot: docked (paused, marked
/// `free`) or activated at once with `activate` as the answer to the guest's `ready`; the
/// slot and its monitor's pid.
fn spawn_slot(
    dir: &Path,
    paused: bool,
    activate: Option<String>,
    network: Option<&NetAttach>,
) -> Result<(PathBuf, u32), PoolError> {
    let (slot, mut spec, log) = prepare_slot(dir, paused, activate, false)?;
    if let Some(a) = network {
        spec.networks.insert("net0".into(), a.clone());
    }
    let started = crate::fork::start_restore(spec, log).map_err(io("starting a substrate"))?;
    let monitor = started
        .wait(START_TIMEOUT)
        .map_err(|why| PoolError::Substrate {
            log: tail(&slot.join("monitor.log")),
            slot: slot.clone(),
            why,
        })?;
    if paused {
        std::fs::write(slot.join("free"), b"")
            .map_err(io(format!("marking {} free", slot.display())))?;
    }
    Ok((slot, monitor.id()))
}

fn alive(slot: &Path) -> bool {
    Client::new(slot.join("api.sock")).answers()
}

#[derive(Debug, PartialEq, Eq)]
enum SlotState {
    /// Docked, answering, marked `free`.
    Waiting,
    /// Taken by an activation and still running.
    Active,
    /// Restoring in the background (not marked yet, and answering or young).
    Starting,
    /// Unmarked, not answering and older than a restore may take.
    Failed,
    /// An activated VM that ended (its console stays for whoever activated it).
    Ended,
}

fn slot_state(slot: &Path) -> SlotState {
    let up = alive(slot);
    if slot.join("free").exists() {
        return if up {
            SlotState::Waiting
        } else {
            SlotState::Failed
        };
    }
    if slot.join("taken").exists() {
        return if up {
            SlotState::Active
        } else {
            SlotState::Ended
        };
    }
    if up || restoring(slot) {
        SlotState::Starting
    } else {
        SlotState::Failed
    }
}

/// Whether the monitor started for `slot` in the background still runs: the process its
/// `pid` file names is a monitor of this slot (a reused pid is another program's), or, before
/// that file is written, the slot is younger than a restore may take.
fn restoring(slot: &Path) -> bool {
    match std::fs::read_to_string(slot.join("pid")) {
        Ok(pid) => {
            let cmdline =
                std::fs::read(format!("/proc/{}/cmdline", pid.trim())).unwrap_or_default();
            let needle = slot.as_os_str().as_encoded_bytes();
            !needle.is_empty() && cmdline.windows(needle.len()).any(|w| w == needle)
        }
        Err(_) => std::fs::metadata(slot)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age < START_TIMEOUT),
    }
}

/// A pool's slot directories, in number order.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_missing_pools_are_refused_by_name() {
        let root = tempfile::tempdir().unwrap();
        let pools = Pools::new(root.path());
        for bad in ["", "a/b", "..", &"x".repeat(41)] {
            let e = pools.begin(bad).err().unwrap().to_string();
            assert!(e.contains("pool name"), "{bad:?}: {e}");
        }
        let e = pools
            .activate("nosuch", &[], None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no pool named nosuch"), "{e}");
        // A draft that is dropped leaves nothing; one that is kept blocks the name.
        drop(pools.begin("web").unwrap());
        assert!(!root.path().join("web").exists());
        let d = pools.begin("web").unwrap();
        let e = pools.begin("web").err().unwrap().to_string();
        assert!(e.contains("exists"), "{e}");
        // Left without pool.json, it is an interrupted create: refused, removed with force.
        let e = pools.remove("web", false).unwrap_err().to_string();
        assert!(e.contains("never finished"), "{e}");
        assert_eq!(pools.remove("web", true).unwrap(), Removal::Unfinished);
        assert!(!root.path().join("web").exists());
        drop(d);
        assert!(pools.list().is_empty());
    }
}
