//! Starting clones: one `starling-vmm` process per clone, each restoring the parent's state
//! over the parent's frozen memfd (inherited, mapped MAP_PRIVATE) in a directory of its own.
//! Clones restore with their vCPUs held paused and say so through a pipe; once every one has,
//! the parent releases them all at once (it closes the write end of a second pipe whose read
//! end each clone holds) and each says again once it runs. So clones still restoring never
//! compete for the CPUs with clones already running a busy guest.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::api::CloneInfo;
use crate::config::Console;
use crate::service::Services;
use crate::spec::RestoreSpec;

/// How long clones get to start before the fork is reported failed.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The monitor binary clones run: `STARLING_VMM`, this program if it is `starling-vmm`, or
/// `starling-vmm` beside it (or beside its directory, for test binaries in `deps/`).
pub fn clone_program() -> PathBuf {
    if let Some(p) = std::env::var_os("STARLING_VMM") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| "starling-vmm".into());
    if exe.file_name().is_some_and(|n| n == "starling-vmm") {
        return exe;
    }
    let dir = exe.parent().unwrap_or(Path::new("."));
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        let p = d.join("starling-vmm");
        if p.is_file() {
            return p;
        }
    }
    "starling-vmm".into()
}

/// A monitor restoring a snapshot in a process of its own (`start_restore`), not yet known to
/// run.
pub struct Restoring {
    child: Child,
    ready: File,
}

/// Starts `starling-vmm --restore-json SPEC` in its own process group (it may outlive whoever
/// started it), its stderr into `log`. It says through an inherited pipe when its vCPUs run (or
/// stand paused, as asked) and its API answers, so the caller waits without polling.
pub fn start_restore(mut spec: RestoreSpec, log: File) -> std::io::Result<Restoring> {
    let program = clone_program();
    let (ready_r, ready_w) = pipe()?;
    spec.ready_fd = Some(ready_w.as_raw_fd());
    let child = restore_command(&program, &spec, log, &[ready_w.as_raw_fd()])
        .and_then(|mut cmd| spawn(&mut cmd, &program));
    drop(ready_w);
    Ok(Restoring {
        child: child?,
        ready: ready_r,
    })
}

/// Starts `starling-vmm --restore-json SPEC` as [`start_restore`] does, without a ready pipe:
/// for a monitor nobody waits for (it says it is ready through `spec.ready_file`, if given).
pub fn start_restore_detached(spec: RestoreSpec, log: File) -> std::io::Result<Child> {
    let program = clone_program();
    restore_command(&program, &spec, log, &[]).and_then(|mut cmd| spawn(&mut cmd, &program))
}

impl Restoring {
    /// The running monitor, or — when it ended or did not say ready within `timeout` (it is
    /// then killed) — why not.
    pub fn wait(mut self, timeout: Duration) -> Result<Child, String> {
        let heard = next_ready(&mut self.ready, Instant::now() + timeout);
        if heard == Heard::Ready {
            return Ok(self.child);
        }
        // A monitor that failed closes the pipe without a word as it exits (give it a moment
        // to become reapable, for its status); one that hangs is stopped.
        let mut status = None;
        for _ in 0..100 {
            status = self.child.try_wait().ok().flatten();
            if status.is_some() || heard == Heard::Nothing {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let why = match status {
            Some(status) => format!("it exited ({status})"),
            None if heard == Heard::Nothing => format!("it did not start within {timeout:?}"),
            None => "it closed its ready pipe".to_owned(),
        };
        let _ = self.child.kill();
        let _ = self.child.wait();
        Err(why)
    }
}

/// Clones started and not yet known to run.
pub struct PendingClones {
    started: Instant,
    ready: File,
    /// The write end of the clones' release pipe: closing it lets them all run.
    release: Option<File>,
    clones: Vec<(CloneInfo, Child)>,
}

/// `starling-vmm --restore-json SPEC`, its stderr into `log`, inheriting `fds`, in a process
/// group of its own: it may outlive whoever started it, and a Ctrl-C for that is not for it.
fn restore_command(
    program: &Path,
    spec: &RestoreSpec,
    log: File,
    fds: &[i32],
) -> std::io::Result<Command> {
    let json = serde_json::to_string(spec).map_err(std::io::Error::other)?;
    let mut cmd = Command::new(program);
    cmd.arg("--restore-json")
        .arg(json)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0);
    crate::jail::pass_on(&mut cmd);
    inherit(&mut cmd, fds);
    Ok(cmd)
}

/// Starts `cmd`; a failure names `program`.
fn spawn(cmd: &mut Command, program: &Path) -> std::io::Result<Child> {
    cmd.spawn()
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", program.display())))
}

/// What came through a ready pipe by its deadline.
#[derive(PartialEq)]
enum Heard {
    /// One monitor's 4-byte message: its vCPUs run and its API answers.
    Ready,
    /// The pipe closed (every writer ended) or failed.
    Closed,
    Nothing,
}

fn next_ready(ready: &mut File, deadline: Instant) -> Heard {
    let n = loop {
        let mut pfd = libc::pollfd {
            fd: ready.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_millis();
        // SAFETY: one valid pollfd, count 1.
        let n = unsafe { libc::poll(&mut pfd, 1, left.min(i32::MAX as u128) as i32) };
        if n >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break n;
        }
    };
    let mut buf = [0u8; 4];
    match n {
        0 => Heard::Nothing,
        n if n > 0 && matches!(ready.read(&mut buf), Ok(4)) => Heard::Ready,
        _ => Heard::Closed,
    }
}

/// Lets the child `cmd` starts inherit `fds` (ours stay close-on-exec, so that no other
/// process started meanwhile by another thread gets them).
fn inherit(cmd: &mut Command, fds: &[i32]) {
    // Without a pre_exec hook std starts the child with posix_spawn (vfork), not fork: for a
    // caller as big as `starling`, copying its page tables was most of `pool run`'s time
    // after the activation (the replacement substrate it starts).
    if fds.is_empty() {
        return;
    }
    let fds = fds.to_vec();
    // SAFETY: the closure runs in the child between fork and exec and only calls fcntl, which
    // is async-signal-safe, on descriptors the child inherited from us.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        })
    };
}

/// Makes the child `cmd` starts get SIGKILL when the thread that started it ends (the whole
/// process, for a single-threaded command): for a VM that must not outlive its caller.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl, which
    // is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
}

pub fn set_cloexec(fd: i32, on: bool) -> std::io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    let flags = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn pipe() -> std::io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid two-element array for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

/// What each clone gets in its own directory, as its parent has: an API socket, a vsock
/// socket, a console (off when the parent's is).
#[derive(Clone, Copy, Debug)]
pub struct CloneWiring {
    pub api: bool,
    pub vsock: bool,
    pub console: bool,
}

/// Starts `count` clones of the snapshot in `dir` (its `state`) over `memory`.
pub fn spawn_clones(
    dir: &Path,
    count: u32,
    memory: &File,
    wiring: &CloneWiring,
    networks: Option<&crate::clone_net::CloneNetworks>,
    budget_fd: i32,
) -> std::io::Result<PendingClones> {
    let program = clone_program();
    let (ready_r, ready_w) = pipe()?;
    let (release_r, release_w) = pipe()?;
    let started = Instant::now();
    let mut clones = Vec::new();
    let mut result = Ok(());
    for id in 1..=count {
        let cdir = dir.join(format!("clone-{id}"));
        if let Err(e) = crate::private::create_dir_all(&cdir) {
            result = Err(e);
            break;
        }
        let spec = RestoreSpec {
            dir: dir.to_owned(),
            memory_fd: Some(memory.as_raw_fd()),
            clone_id: Some(id),
            run_dir: Some(cdir.clone()),
            api_socket: wiring.api.then(|| cdir.join("api.sock")),
            vsock_path: wiring.vsock.then(|| cdir.join("vsock.sock")),
            console: Some(if wiring.console {
                Console::File(cdir.join("console.log"))
            } else {
                Console::Off
            }),
            ready_fd: Some(ready_w.as_raw_fd()),
            release_fd: Some(release_r.as_raw_fd()),
            networks: networks.map(|n| n.for_clone(id)).unwrap_or_default(),
            budget_fd: Some(budget_fd),
            ..Default::default()
        };
        let log = match crate::private::create_file(&cdir.join("monitor.log")) {
            Ok(f) => f,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        // The clone's memory, the pipe it says it is ready through, the one that releases
        // it, and the family's fork budget.
        let child = restore_command(
            &program,
            &spec,
            log,
            &[
                memory.as_raw_fd(),
                ready_w.as_raw_fd(),
                release_r.as_raw_fd(),
                budget_fd,
            ],
        )
        .and_then(|mut cmd| spawn(cmd.env("STARLING_VM_QUIET", "1"), &program));
        match child {
            Ok(child) => clones.push((
                CloneInfo {
                    id,
                    pid: child.id(),
                    dir: cdir.clone(),
                    api_socket: spec.api_socket.clone(),
                    vsock: spec.vsock_path.clone(),
                },
                child,
            )),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    drop(ready_w);
    drop(release_r);
    let pending = PendingClones {
        started,
        ready: ready_r,
        release: Some(release_w),
        clones,
    };
    match result {
        Ok(()) => Ok(pending),
        Err(e) => {
            pending.kill();
            Err(e)
        }
    }
}

impl PendingClones {
    /// Stops every clone (before their release: none of them ran).
    fn kill(self) {
        for (_, mut c) in self.clones {
            let _ = c.kill();
            let _ = c.wait();
        }
        drop(self.release);
    }

    /// Waits until every clone is restored, releases them all at once, and waits until
    /// every one runs; they are then the parent's to join. A clone that fails to start fails
    /// the fork (the others are stopped, never released) with its own message.
    pub fn wait(mut self, services: &Services) -> Result<Vec<CloneInfo>, String> {
        let want = self.clones.len();
        // Each clone says so twice: held and ready, then released.
        for round in 0..2 {
            for _ in 0..want {
                if next_ready(&mut self.ready, self.started + START_TIMEOUT) != Heard::Ready {
                    let why = self.failure();
                    self.kill();
                    return Err(why);
                }
            }
            if round == 0 {
                self.release = None;
            }
        }
        let infos = self.clones.iter().map(|(i, _)| i.clone()).collect();
        for (_, child) in self.clones {
            services.adopt(child);
        }
        Ok(infos)
    }

    fn failure(&mut self) -> String {
        // The ready pipe closes as the last clone exits, a moment before its status can be
        // had: give it a second before calling the clones merely slow.
        let end = Instant::now() + Duration::from_secs(1);
        loop {
            for (info, c) in &mut self.clones {
                if let Ok(Some(status)) = c.try_wait() {
                    let log =
                        std::fs::read_to_string(info.dir.join("monitor.log")).unwrap_or_default();
                    let last = log.lines().last().unwrap_or("no message");
                    return format!("clone {} exited ({status}) before running: {last}", info.id);
                }
            }
            if Instant::now() >= end {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if self.started.elapsed() >= START_TIMEOUT {
            format!("clones did not start within {START_TIMEOUT:?}")
        } else {
            "clones closed their ready pipe without starting".to_owned()
        }
    }
}
