//! The daemon's VMs (`starling run`): each is one `starling-vmm` process in its own session,
//! so it outlives the CLI that asked for it and a restart of the daemon, with a directory
//! under `STATE/vms/NAME/`:
//!
//! ```text
//! vm.json        the record (format 1): image, version, source, command, pid, times, exit
//! config.json    the monitor's VmConfig
//! scratch.img    the writable layer (ext4, see starling_image::scratch)
//! console.log    the console, kept to its newest 16 MiB; console.sock attaches to it
//! api.sock       the monitor's API; vsock.sock its vsock device (exec through the agent)
//! monitor.log    the monitor's own messages; exit.json its exit status when it ends
//! ```
//!
//! A restarted daemon re-adopts the VMs whose monitors still run (checked by pid and start
//! time) and says so; the others are recorded as exited with their status.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use starling_image::browse::Browser;
use starling_image::manifest::{Commit, Node};
use starling_image::reference::ImageRef;
use starling_store::{ObjectId, ObjectSource, Store, MAX_MANIFEST};
use starling_vmm::config::{Console, DiskConfig, FsConfig, VsockConfig};
use starling_vmm::VmConfig;

use crate::api::{RunNet, RunRequest, Source, VmInfo, VmState};
use crate::sources::HostObjects;
use crate::DaemonError;

pub const RECORD_FORMAT: u32 = 1;
/// Guest CIDs handed out to VMs start here (2 is the host).
const FIRST_CID: u64 = 1000;
/// A graceful stop waits this long before the VM is stopped hard.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// What the daemon keeps about one VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmRecord {
    pub format: u32,
    pub name: String,
    /// As the user named it (`debian:bookworm`), and the version it resolved to.
    pub image: String,
    pub version: String,
    /// Where its objects come from: `repo:URL` or `store:PATH`.
    pub source: String,
    pub cmd: Vec<String>,
    pub rm: bool,
    pub mem_mib: u64,
    pub vcpus: u8,
    pub cid: u64,
    pub created_unix: u64,
    pub pid: Option<u32>,
    /// The monitor's start time (clock ticks since boot, /proc/PID/stat field 22): a pid
    /// reused by another process is not taken for the VM.
    pub pid_start: Option<u64>,
    pub ended_unix: Option<u64>,
    pub exit_status: Option<i32>,
    pub exit_reason: Option<String>,
    /// Its place on Starling's network while it runs (`--net nat`).
    #[serde(default)]
    pub net: Option<NetRecord>,
}

/// A VM's lease on Starling's network, as `starling_net::attach` gave it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetRecord {
    pub index: u32,
    pub tap: String,
    pub address: std::net::Ipv4Addr,
    pub published: Vec<starling_net::Publish>,
}

impl NetRecord {
    fn attachment(&self) -> starling_net::Attachment {
        starling_net::Attachment {
            index: self.index,
            tap: self.tap.clone(),
            address: self.address,
            gateway: starling_net::leases::gateway(),
            prefix: starling_net::PREFIX,
            dns: Vec::new(),
            published: self.published.clone(),
        }
    }
}

pub struct Vms {
    dir: PathBuf,
    table: Mutex<BTreeMap<String, VmRecord>>,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A VM name: what docker allows, so `ps` columns and paths stay sane.
pub fn check_name(name: &str) -> Result<(), DaemonError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(DaemonError::BadRequest(format!(
            "VM name {name:?}: use 1 to 63 letters, digits, '-', '_' or '.', starting with a letter or digit"
        )))
    }
}

/// Start time of process `pid` (field 22 of /proc/PID/stat), if it runs.
/// The start time of process `pid` (clock ticks after boot), None when it is gone or a zombie
/// (a monitor that died while no daemon was its parent may never be reaped).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    if matches!(fields.next(), Some("Z" | "X" | "x")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Resident memory of process `pid`, bytes.
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl VmRecord {
    fn alive(&self) -> bool {
        match (self.pid, self.pid_start) {
            (Some(pid), Some(t)) => start_time(pid) == Some(t),
            _ => false,
        }
    }
}

/// Paths of a VM's directory.
pub struct VmPaths(pub PathBuf);

impl VmPaths {
    pub fn record(&self) -> PathBuf {
        self.0.join("vm.json")
    }
    pub fn config(&self) -> PathBuf {
        self.0.join("config.json")
    }
    pub fn scratch(&self) -> PathBuf {
        self.0.join("scratch.img")
    }
    pub fn console_log(&self) -> PathBuf {
        self.0.join("console.log")
    }
    pub fn console_socket(&self) -> PathBuf {
        self.0.join("console.sock")
    }
    pub fn api(&self) -> PathBuf {
        self.0.join("api.sock")
    }
    pub fn vsock(&self) -> PathBuf {
        self.0.join("vsock.sock")
    }
    pub fn monitor_log(&self) -> PathBuf {
        self.0.join("monitor.log")
    }
    pub fn exit(&self) -> PathBuf {
        self.0.join("exit.json")
    }
}

fn write_json(path: &Path, v: &impl Serialize) -> Result<(), DaemonError> {
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(v).map_err(|e| DaemonError::Internal(e.to_string()))?;
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| DaemonError::Internal(format!("{}: {e}", path.display())))
}

/// A resolved image: where its objects are, which version, and how to show it.
pub struct Resolved {
    pub source: String,
    pub objects: Arc<dyn ObjectSource>,
    pub version: ObjectId,
    pub commit: Commit,
    pub display: String,
    /// Set when the repository was unreachable and the version is the one this host last
    /// verified: what to tell the user.
    pub offline: Option<String>,
}

/// Resolves a reference through a repository for the daemon's mounts and VMs: an image it
/// does not have is not found, other failures are upstream's, and a version that stands in
/// for an unreachable repository is logged.
pub fn resolve_repo(
    host: &HostObjects,
    access: &crate::sources::RepoAccess,
    r: &ImageRef,
) -> Result<starling_repo::pull::Resolution, DaemonError> {
    let res = host
        .runtime()
        .block_on(starling_repo::pull::resolve_at(
            host.dir(),
            &access.remote,
            access.root.as_deref(),
            &access.opts,
            r,
        ))
        .map_err(|e| match e {
            starling_repo::Error::UnknownImage(_) => DaemonError::NotFound(e.to_string()),
            _ => DaemonError::Upstream(e.to_string()),
        })?;
    if let Some(note) = &res.offline {
        tracing::warn!("{note}");
    }
    Ok(res)
}

/// The image a request names, resolved through the store or the repository's verified
/// metadata.
pub fn resolve(source: &Source, host: &HostObjects) -> Result<Resolved, DaemonError> {
    let bad = |e: String| DaemonError::BadRequest(e);
    match source {
        Source::Store { store, image } => {
            let st = Store::open(store).map_err(|e| bad(e.to_string()))?;
            let r = ImageRef::parse(image).map_err(|e| bad(e.to_string()))?;
            let v = starling_image::versions::resolve(&st, &r)
                .map_err(|e| DaemonError::NotFound(e.to_string()))?;
            Ok(Resolved {
                source: format!("store:{}", st.root().display()),
                display: v.display.clone(),
                version: v.id,
                commit: v.commit,
                objects: Arc::new(st),
                offline: None,
            })
        }
        Source::Repo { url, image, root } => {
            let access = host.repository(url, root.as_deref()).map_err(bad)?;
            let remote = &access.remote;
            let r = ImageRef::parse(image).map_err(|e| bad(e.to_string()))?;
            let res = resolve_repo(host, &access, &r)?;
            let id = res.version;
            let objects = host.remote(&access).map_err(|e| bad(e.to_string()))?;
            let bytes = objects
                .get(&id, MAX_MANIFEST)
                .map_err(|e| DaemonError::Upstream(e.to_string()))?;
            let commit =
                Commit::decode(&id, &bytes).map_err(|e| DaemonError::Upstream(e.to_string()))?;
            let display = match &r {
                ImageRef::Tag { name, tag } => format!("{name}:{tag}@{}", id.short(12)),
                ImageRef::Version { .. } | ImageRef::Name { .. } => {
                    format!("{}@{}", res.name, id.short(12))
                }
            };
            Ok(Resolved {
                source: format!("repo:{}", remote.base),
                objects,
                version: id,
                commit,
                display,
                offline: res.offline,
            })
        }
    }
}

/// Whether the image can start without a command: it has an init.
pub fn has_init(r: &Resolved) -> Result<bool, DaemonError> {
    let mut b = Browser::new(r.objects.as_ref());
    match b.lookup(&r.commit.root, b"/sbin/init", true) {
        Ok(Some(Node::File { .. })) => Ok(true),
        Ok(_) => Ok(false),
        Err(e) => Err(DaemonError::Upstream(format!(
            "reading /sbin/init of {}: {e}",
            r.display
        ))),
    }
}

impl Vms {
    /// Loads the VMs of `state/vms`, re-adopting those whose monitors still run; returns the
    /// table and one line per VM saying what became of it.
    pub fn open(state: &Path) -> (Vms, Vec<String>) {
        let dir = state.join("vms");
        let _ = std::fs::create_dir_all(&dir);
        let mut table = BTreeMap::new();
        let mut said = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let paths = VmPaths(e.path());
                let Ok(bytes) = std::fs::read(paths.record()) else {
                    continue;
                };
                let mut rec: VmRecord = match serde_json::from_slice(&bytes) {
                    Ok(r) => r,
                    Err(err) => {
                        said.push(format!(
                            "{}: not a VM record ({err}); left alone",
                            paths.record().display()
                        ));
                        continue;
                    }
                };
                if rec.format != RECORD_FORMAT {
                    said.push(format!(
                        "VM {}: record format {}; this build reads {RECORD_FORMAT}; left alone",
                        rec.name, rec.format
                    ));
                    continue;
                }
                if rec.exit_status.is_none() {
                    if rec.alive() {
                        said.push(format!(
                            "re-adopted VM {} (pid {})",
                            rec.name,
                            rec.pid.unwrap_or(0)
                        ));
                    } else {
                        Self::ended(&paths, &mut rec);
                        said.push(format!(
                            "VM {} ended while no daemon watched it (status {})",
                            rec.name,
                            rec.exit_status.map_or("unknown".into(), |s| s.to_string())
                        ));
                        let _ = write_json(&paths.record(), &rec);
                    }
                }
                table.insert(rec.name.clone(), rec);
            }
        }
        (
            Vms {
                dir,
                table: Mutex::new(table),
            },
            said,
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, VmRecord>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn paths(&self, name: &str) -> VmPaths {
        VmPaths(self.dir.join(name))
    }

    /// Records how a VM whose monitor is gone ended (its exit file, else unknown).
    fn ended(paths: &VmPaths, rec: &mut VmRecord) {
        #[derive(Deserialize)]
        struct Exit {
            status: i32,
            reason: String,
        }
        let exit: Option<Exit> = std::fs::read(paths.exit())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        rec.ended_unix = Some(now_unix());
        if let Some(n) = rec.net.take() {
            let _ = starling_net::detach(&n.attachment());
        }
        match exit {
            Some(e) => {
                rec.exit_status = Some(e.status);
                rec.exit_reason = Some(e.reason);
            }
            None => {
                rec.exit_status = Some(-1);
                rec.exit_reason = Some("the monitor ended without a status (killed?)".into());
            }
        }
    }

    fn info(&self, rec: &VmRecord) -> VmInfo {
        let paths = self.paths(&rec.name);
        let alive = rec.exit_status.is_none() && rec.alive();
        let state = if rec.exit_status.is_some() {
            VmState::Exited
        } else if !alive {
            VmState::Dead
        } else {
            match starling_vmm::api::client::Client::new(paths.api()).status() {
                Ok(s) if s.state == starling_vmm::api::Activity::Paused => VmState::Paused,
                Ok(_) => VmState::Running,
                Err(_) => VmState::Starting,
            }
        };
        VmInfo {
            name: rec.name.clone(),
            image: rec.image.clone(),
            version: rec.version.clone(),
            source: rec.source.clone(),
            state,
            exit_status: rec.exit_status,
            exit_reason: rec.exit_reason.clone(),
            pid: rec.pid.filter(|_| alive),
            created_unix: rec.created_unix,
            ended_unix: rec.ended_unix,
            mem_mib: rec.mem_mib,
            vcpus: rec.vcpus,
            rss_bytes: rec.pid.filter(|_| alive).and_then(rss),
            cmd: rec.cmd.clone(),
            rm: rec.rm,
            dir: paths.0.clone(),
            console_socket: paths.console_socket(),
            console_log: paths.console_log(),
            vsock_socket: paths.vsock(),
            api_socket: paths.api(),
            address: rec.net.as_ref().map(|n| n.address),
            ports: rec
                .net
                .as_ref()
                .map(|n| n.published.clone())
                .unwrap_or_default(),
            note: None,
        }
    }

    /// Every VM, with its state now (monitors that ended are recorded as exited; `--rm` VMs
    /// that ended are removed).
    pub fn list(&self) -> Vec<VmInfo> {
        self.reap();
        let t = self.lock();
        t.values().map(|r| self.info(r)).collect()
    }

    pub fn get(&self, name: &str) -> Result<VmInfo, DaemonError> {
        self.reap();
        let t = self.lock();
        t.get(name)
            .map(|r| self.info(r))
            .ok_or_else(|| DaemonError::NotFound(format!("no VM named {name}")))
    }

    /// Notices monitors that ended; removes the `--rm` ones.
    pub fn reap(&self) {
        let mut t = self.lock();
        let mut gone = Vec::new();
        for rec in t.values_mut() {
            if rec.exit_status.is_none() && rec.pid.is_some() && !rec.alive() {
                let paths = self.paths(&rec.name);
                Self::ended(&paths, rec);
                tracing::info!(
                    vm = %rec.name,
                    status = rec.exit_status,
                    reason = rec.exit_reason.as_deref().unwrap_or(""),
                    "VM ended"
                );
                let _ = write_json(&paths.record(), rec);
                if rec.rm {
                    gone.push(rec.name.clone());
                }
            }
        }
        for name in gone {
            t.remove(&name);
            let _ = std::fs::remove_dir_all(self.paths(&name).0);
        }
    }

    /// A free name from the image's (`debian-3f2a`).
    fn fresh_name(&self, image: &str) -> String {
        let base: String = image
            .split(['@', ':'])
            .next()
            .unwrap_or("vm")
            .rsplit('/')
            .next()
            .unwrap_or("vm")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(40)
            .collect();
        let base = if base.is_empty() { "vm".into() } else { base };
        let t = self.lock();
        let mut n = now_unix() ^ u64::from(std::process::id());
        loop {
            let name = format!("{base}-{:04x}", n & 0xffff);
            if !t.contains_key(&name) && !self.dir.join(&name).exists() {
                return name;
            }
            n = n
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
        }
    }

    fn next_cid(&self) -> u64 {
        let t = self.lock();
        let used: std::collections::HashSet<u64> = t
            .values()
            .filter(|r| r.exit_status.is_none())
            .map(|r| r.cid)
            .collect();
        (FIRST_CID..)
            .find(|c| !used.contains(c))
            .unwrap_or(FIRST_CID)
    }

    /// Creates and starts a VM: its directory, scratch disk and config, then the monitor in a
    /// session of its own. Everything is checked before the monitor starts; a failure leaves
    /// nothing behind.
    pub fn create(
        &self,
        req: &RunRequest,
        image: Resolved,
        boot: (PathBuf, PathBuf),
        objects_socket: &Path,
    ) -> Result<VmInfo, DaemonError> {
        let name = match &req.name {
            Some(n) => {
                check_name(n)?;
                n.clone()
            }
            None => self.fresh_name(&image.display),
        };
        if self.lock().contains_key(&name) || self.dir.join(&name).exists() {
            return Err(DaemonError::Conflict(format!(
                "a VM named {name} exists (remove it with `starling rm {name}`)"
            )));
        }
        if req.cmd.is_empty() && !has_init(&image)? {
            return Err(DaemonError::BadRequest(format!(
                "{} has no /sbin/init; give a command: starling run {} -- CMD",
                image.display,
                req.image_arg()
            )));
        }
        let paths = self.paths(&name);
        // create_dir, not create_dir_all: of two requests for one name, one gets it.
        std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::create_dir(&paths.0))
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => DaemonError::Conflict(format!(
                    "a VM named {name} exists (remove it with `starling rm {name}`)"
                )),
                _ => DaemonError::Internal(format!("{}: {e}", paths.0.display())),
            })?;
        let done = self.start(&name, req, &image, boot, objects_socket, &paths);
        if done.is_err() {
            let _ = std::fs::remove_dir_all(&paths.0);
            self.lock().remove(&name);
        }
        done
    }

    fn start(
        &self,
        name: &str,
        req: &RunRequest,
        image: &Resolved,
        (kernel, initrd): (PathBuf, PathBuf),
        objects_socket: &Path,
        paths: &VmPaths,
    ) -> Result<VmInfo, DaemonError> {
        let internal = |e: String| DaemonError::Internal(e);
        // Private to the daemon's user: guest memory, console and writes live here.
        std::fs::set_permissions(
            &paths.0,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .map_err(|e| internal(e.to_string()))?;
        scratch_disk(&paths.scratch(), req, image, false)?;
        let cid = self.next_cid();
        let mut config = run_config(
            req,
            image,
            (kernel, initrd),
            &paths.scratch(),
            objects_socket,
        );
        config.vsock = Some(VsockConfig {
            cid,
            path: paths.vsock(),
        });
        config.console = Console::Socket {
            socket: paths.console_socket(),
            log: paths.console_log(),
        };
        config.api_socket = Some(paths.api());
        config.hostname = name.to_string();
        config.run_dir = Some(paths.0.join("run"));
        config
            .validate()
            .map_err(|e| DaemonError::BadRequest(e.to_string()))?;
        // On Starling's network: the lease is the daemon's until the monitor is running,
        // then the monitor's (so that it is reaped with the monitor, whatever ends it).
        let net = match req.net {
            RunNet::None => None,
            RunNet::Nat => {
                let att =
                    starling_net::attach(std::process::id(), &req.publish).map_err(net_error)?;
                let (device, ip) = att.device(name);
                config.cmdline = format!("{} {ip}", config.cmdline);
                config.net.push(device);
                Some(att)
            }
        };
        let started = self.spawn_monitor(name, req, image, cid, &config, paths, net.as_ref());
        if started.is_err() {
            if let Some(att) = &net {
                let _ = starling_net::detach(att);
            }
        }
        started
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn_monitor(
        &self,
        name: &str,
        req: &RunRequest,
        image: &Resolved,
        cid: u64,
        config: &VmConfig,
        paths: &VmPaths,
        net: Option<&starling_net::Attachment>,
    ) -> Result<VmInfo, DaemonError> {
        let internal = |e: String| DaemonError::Internal(e);
        write_json(&paths.config(), config)?;

        let log =
            std::fs::File::create(paths.monitor_log()).map_err(|e| internal(e.to_string()))?;
        let log2 = log.try_clone().map_err(|e| internal(e.to_string()))?;
        let mut cmd = std::process::Command::new(starling_vmm::fork::clone_program());
        cmd.arg("--config")
            .arg(paths.config())
            .env("STARLING_EXIT_FILE", paths.exit())
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2);
        {
            use std::os::unix::process::CommandExt;
            // Its own session: a VM outlives the daemon and the CLI that started it.
            cmd.process_group(0);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| internal(format!("starting starling-vmm: {e}")))?;
        let pid = child.id();
        if let Some(att) = net {
            starling_net::adopt(att.index, pid).map_err(net_error)?;
        }
        let rec = VmRecord {
            format: RECORD_FORMAT,
            name: name.to_string(),
            image: image.display.clone(),
            version: image.version.to_hex(),
            source: image.source.clone(),
            cmd: req.cmd.clone(),
            rm: req.rm,
            mem_mib: req.mem_mib,
            vcpus: req.vcpus,
            cid,
            created_unix: now_unix(),
            pid: Some(pid),
            pid_start: start_time(pid),
            ended_unix: None,
            exit_status: None,
            exit_reason: None,
            net: net.map(|a| NetRecord {
                index: a.index,
                tap: a.tap.clone(),
                address: a.address,
                published: a.published.clone(),
            }),
        };
        write_json(&paths.record(), &rec)?;
        self.lock().insert(name.to_string(), rec);
        // Reap the child when it ends (the record is updated by the next look).
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        // The monitor checks everything before the guest runs; wait for its API (or its end).
        let api = starling_vmm::api::client::Client::new(paths.api());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if api.answers() {
                break;
            }
            let alive = self.lock().get(name).is_some_and(|r| r.alive());
            if !alive || std::time::Instant::now() > deadline {
                let why = std::fs::read_to_string(paths.monitor_log()).unwrap_or_default();
                let why = why.trim();
                return Err(DaemonError::BadRequest(format!(
                    "the VM did not start: {}",
                    if why.is_empty() {
                        "the monitor gave no reason"
                    } else {
                        why
                    }
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut info = self.get(name)?;
        info.note = image.offline.clone();
        tracing::info!(
            vm = %info.name,
            image = %info.image,
            version = %info.version,
            pid = info.pid,
            "VM started"
        );
        Ok(info)
    }

    /// Stops a VM: `force` stops it at once, else the guest is asked to power off (through
    /// the agent) and stopped hard after the grace period.
    pub fn stop(&self, name: &str, force: bool) -> Result<VmInfo, DaemonError> {
        let info = self.get(name)?;
        if matches!(info.state, VmState::Exited | VmState::Dead) {
            return Ok(info);
        }
        let api = starling_vmm::api::client::Client::new(&info.api_socket);
        if !force {
            let asked = crate::agent::stop(&info.vsock_socket).is_ok();
            let deadline =
                std::time::Instant::now() + if asked { STOP_GRACE } else { Duration::ZERO };
            while std::time::Instant::now() < deadline {
                if !self.lock().get(name).is_some_and(|r| r.alive()) {
                    return self.get(name);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = api.stop();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.lock().get(name).is_some_and(|r| r.alive()) {
            if std::time::Instant::now() > deadline {
                if let Some(pid) = info.pid {
                    // SAFETY-free: kill(2) through rustix on a pid we started and checked.
                    let _ = rustix::process::kill_process(
                        rustix::process::Pid::from_raw(pid as i32)
                            .ok_or_else(|| DaemonError::Internal("pid 0".into()))?,
                        rustix::process::Signal::KILL,
                    );
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(50));
        self.get(name)
    }

    /// Removes a VM that is not running (or, with `force`, stops it first).
    pub fn remove(&self, name: &str, force: bool) -> Result<VmInfo, DaemonError> {
        let info = self.get(name)?;
        if !matches!(info.state, VmState::Exited | VmState::Dead) {
            if !force {
                return Err(DaemonError::Conflict(format!(
                    "VM {name} is {}; stop it first or use --force",
                    info.state.word()
                )));
            }
            self.stop(name, true)?;
        }
        self.lock().remove(name);
        std::fs::remove_dir_all(self.paths(name).0)
            .map_err(|e| DaemonError::Internal(format!("removing VM {name}: {e}")))?;
        tracing::info!(vm = %name, "VM removed");
        Ok(info)
    }

    /// The record of a VM (for commit).
    pub fn record(&self, name: &str) -> Result<VmRecord, DaemonError> {
        self.lock()
            .get(name)
            .cloned()
            .ok_or_else(|| DaemonError::NotFound(format!("no VM named {name}")))
    }
}

/// A network error as the client should see it: what it asked for that cannot be had
/// (permission, a port taken, no addresses left) is its to fix.
pub(crate) fn net_error(e: starling_net::Error) -> DaemonError {
    match e {
        starling_net::Error::PortTaken(..) => DaemonError::Conflict(e.to_string()),
        starling_net::Error::Netlink(_) | starling_net::Error::State { .. } => {
            DaemonError::Internal(e.to_string())
        }
        _ => DaemonError::BadRequest(e.to_string()),
    }
}

fn nul_joined(items: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for i in items {
        out.extend_from_slice(i.as_bytes());
        out.push(0);
    }
    out
}

/// A `starling run` VM's monitor config but for its vsock, console and sockets: the boot
/// artifact, the kernel's command line, the scratch disk and the image as its root.
pub fn run_config(
    req: &RunRequest,
    image: &Resolved,
    (kernel, initrd): (PathBuf, PathBuf),
    scratch: &Path,
    objects_socket: &Path,
) -> VmConfig {
    let mut config = VmConfig::new(kernel);
    config.initrd = Some(initrd);
    // Only critical kernel messages on the console, which is the command's output: the run
    // init prints the kernel's log itself when the boot fails.
    config.cmdline = format!("{} quiet loglevel=3", starling_vmm::config::DEFAULT_CMDLINE);
    // Checked with the rest of the request (run.rs): one line, bounded.
    if let Some(extra) = &req.kernel_args {
        config.cmdline = format!("{} {extra}", config.cmdline);
    }
    config.mem_mib = req.mem_mib;
    config.vcpus = req.vcpus;
    config.disks.push(DiskConfig {
        path: scratch.to_path_buf(),
        read_only: false,
    });
    config.fs.push(FsConfig {
        tag: "root".into(),
        source: image.source.clone(),
        version: image.version.to_hex(),
        objects_socket: Some(objects_socket.to_path_buf()),
    });
    config
}

/// A VM's scratch disk: empty upper and work directories for the guest's overlay, and in
/// `/starling/` what the run init is told (the command, its environment; `pool`: dock at the
/// guest's `ready` first, run.rs's init takes the activation's environment and arguments).
pub fn scratch_disk(
    path: &Path,
    req: &RunRequest,
    image: &Resolved,
    pool: bool,
) -> Result<(), DaemonError> {
    let mut files: Vec<(&str, Vec<u8>)> = Vec::new();
    if !req.cmd.is_empty() {
        files.push(("cmd", nul_joined(&req.cmd)));
    }
    if !req.env.is_empty() {
        files.push(("env", nul_joined(&req.env)));
    }
    if pool {
        files.push(("pool", Vec::new()));
    }
    let cfg: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    starling_image::scratch::create(path, req.disk_bytes, &image.commit.root_meta, &cfg)
        .map_err(|e| DaemonError::Internal(format!("scratch disk: {e}")))
}

/// Names the program a monitor runs to give its clones addresses in the environment the
/// daemon's monitors inherit (`STARLING_NET_HELPER`), unless the caller named one. Only
/// monitors of VMs on Starling's network run it.
pub fn name_net_helper() {
    let var = starling_vmm::clone_net::HELPER_VAR;
    if std::env::var_os(var).is_none() {
        if let Some(helper) = net_helper_program() {
            std::env::set_var(var, helper);
        }
    }
}

/// `starling net-helper`: this program when it is `starling` (`starling daemon`), else the
/// `starling` beside it.
fn net_helper_program() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    if exe.file_name().is_some_and(|n| n == "starling") {
        return Some(exe);
    }
    let beside = exe.parent()?.join("starling");
    beside.is_file().then_some(beside)
}
