//! The exec client against the real agent (`starling_guest::AGENT`) run on this host: `serve`
//! on a unix socket (the agent's test mode, STARLING_AGENT_UNIX) with a busybox-static root
//! that each command is chrooted into (so: root only).

use std::io::{Cursor, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use starling_guest::exec::{self, frame, ExecError, Outcome, Request, EXEC_PORT};
use starling_guest::initramfs::host_busybox;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// A running `starling-agent serve` over a busybox root; killed when dropped.
struct Agent {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn start() -> Option<Agent> {
        if !is_root() {
            starling_testkit::skip("the agent chroots into the image root: needs root");
            return None;
        }
        let Some(busybox) = host_busybox() else {
            starling_testkit::skip("no static busybox (Debian package busybox-static)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::copy(&busybox, root.join("bin/busybox")).unwrap();
        for applet in ["sh", "cat", "echo", "sleep", "head", "wc", "ls"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        std::fs::write(root.join("inside-the-root"), "yes\n").unwrap();
        std::fs::write(root.join("bin/notexec"), "#!/bin/sh\n").unwrap();
        let agent = dir.path().join("starling-agent");
        std::fs::write(&agent, starling_guest::AGENT).unwrap();
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(dir.path().join("state")).unwrap();
        let child = starling_testkit::spawn_written(
            Command::new(&agent)
                .arg("serve")
                .arg(&root)
                .env("STARLING_AGENT_UNIX", dir.path().join("agent.sock"))
                .env("STARLING_AGENT_STATE", dir.path().join("state")),
        )
        .unwrap();
        let a = Agent { child, dir };
        let started = Instant::now();
        while UnixStream::connect(a.socket()).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the agent did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(a)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn connect(&self) -> UnixStream {
        UnixStream::connect(self.socket()).unwrap()
    }

    /// Runs `req` with `stdin`; returns the outcome, stdout and stderr.
    fn run(&self, req: &Request, stdin: Option<Vec<u8>>) -> (Outcome, Vec<u8>, Vec<u8>) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let stdin = stdin.map(|b| Box::new(Cursor::new(b)) as Box<dyn Read + Send>);
        let outcome = exec::run(self.connect(), req, stdin, &mut out, &mut err).unwrap();
        (outcome, out, err)
    }

    /// Sends raw bytes; returns the frames the agent sent until it closed.
    fn raw(&self, bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut s = self.connect();
        // The agent may refuse and close before it has read everything sent.
        if let Err(e) = s.write_all(bytes) {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
        }
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut data = Vec::new();
        s.read_to_end(&mut data).unwrap();
        let mut frames = Vec::new();
        let mut rest = &data[..];
        while rest.len() >= 5 {
            let len = u32::from_le_bytes(rest[1..5].try_into().unwrap()) as usize;
            frames.push((rest[0], rest[5..5 + len].to_vec()));
            rest = &rest[5 + len..];
        }
        assert!(rest.is_empty(), "a torn frame: {rest:?}");
        frames
    }
}

fn sh(script: &str) -> Request {
    Request::new(&["sh", "-c", script])
}

#[test]
fn stdout_stderr_and_exit_status_come_back() {
    let Some(agent) = Agent::start() else { return };
    let (o, out, err) = agent.run(&sh("echo out; echo err >&2; exit 3"), None);
    assert_eq!(
        o,
        Outcome {
            status: 3,
            error: None
        }
    );
    assert_eq!(out, b"out\n");
    assert_eq!(err, b"err\n");
    // Inside the root, as root, in /, with the defaults and the given environment.
    let req =
        sh("cat /inside-the-root; pwd; echo $HOME $GREETING; echo $PATH").env("GREETING", "hi");
    let (o, out, _) = agent.run(&req, None);
    assert_eq!(o.status, 0);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "yes\n/\n/root hi\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    );
    // Killed by a signal: 128 + the signal.
    let (o, _, _) = agent.run(&sh("kill -9 $$"), None);
    assert_eq!(o.status, 128 + 9);
}

#[test]
fn stdin_is_relayed() {
    let Some(agent) = Agent::start() else { return };
    let (o, out, _) = agent.run(&Request::new(&["cat"]), Some(b"hello\nworld".to_vec()));
    assert_eq!((o.status, out.as_slice()), (0, &b"hello\nworld"[..]));
    // More than a pipe holds, both ways at once (the agent must not block on either side).
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (o, out, _) = agent.run(&Request::new(&["cat"]), Some(big.clone()));
    assert_eq!(o.status, 0);
    assert!(
        out == big,
        "cat returned {} of {} bytes",
        out.len(),
        big.len()
    );
    // No stdin: the command sees its end at once.
    let (o, out, _) = agent.run(&sh("wc -c"), None);
    assert_eq!((o.status, String::from_utf8_lossy(&out).trim()), (0, "0"));
}

#[test]
fn commands_that_cannot_start_are_reported() {
    let Some(agent) = Agent::start() else { return };
    let (o, out, _) = agent.run(&Request::new(&["no-such-command", "x"]), None);
    assert_eq!(o.status, 127);
    assert_eq!(
        o.error.as_deref(),
        Some("no-such-command: command not found")
    );
    assert!(out.is_empty());
    let (o, _, _) = agent.run(&Request::new(&["/bin/notexec"]), None);
    assert_eq!(o.status, 126);
    assert!(
        o.error
            .as_deref()
            .unwrap_or("")
            .contains("/bin/notexec: cannot execute"),
        "{o:?}"
    );
}

fn request_bytes(argv: &[&[u8]], flags: u32) -> Vec<u8> {
    let mut b = b"exec\n".to_vec();
    b.extend_from_slice(&(argv.len() as u32).to_le_bytes());
    for a in argv {
        b.extend_from_slice(&(a.len() as u32).to_le_bytes());
        b.extend_from_slice(a);
    }
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&flags.to_le_bytes());
    b
}

fn only_error(frames: &[(u8, Vec<u8>)]) -> String {
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].0, frame::ERROR, "{frames:?}");
    String::from_utf8_lossy(&frames[0].1).into_owned()
}

#[test]
fn oversized_and_malformed_requests_are_refused() {
    let Some(agent) = Agent::start() else { return };
    // Too many arguments: refused from the count alone.
    let mut b = b"exec\n".to_vec();
    b.extend_from_slice(&5000u32.to_le_bytes());
    let e = only_error(&agent.raw(&b));
    assert!(e.contains("5000 arguments (at most 4096)"), "{e}");
    // An argument over 128 KiB: refused from its length alone.
    let mut b = b"exec\n".to_vec();
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&(200u32 << 10).to_le_bytes());
    let e = only_error(&agent.raw(&b));
    assert!(
        e.contains("argument 0 is 204800 bytes (at most 131072)"),
        "{e}"
    );
    // Arguments over 2 MiB in all.
    let big = vec![b'a'; 100 << 10];
    let many: Vec<&[u8]> = std::iter::repeat_n(&big[..], 30).collect();
    let e = only_error(&agent.raw(&request_bytes(&many, 0)));
    assert!(e.contains("exceed 2097152 bytes"), "{e}");
    // Unknown flags, unknown requests, an over-long request line.
    let e = only_error(&agent.raw(&request_bytes(&[b"true"], 6)));
    assert!(e.contains("unknown flags 0x6"), "{e}");
    let e = only_error(&agent.raw(b"hello\n"));
    assert!(e.contains("unknown request 'hello'"), "{e}");
    let e = only_error(&agent.raw(&[b'x'; 100]));
    assert!(e.contains("request line is too long"), "{e}");
    // A stdin frame over 64 KiB while `cat` runs: refused, and the command is killed.
    let mut b = request_bytes(&[b"cat"], 0);
    b.push(frame::STDIN);
    b.extend_from_slice(&(100u32 << 10).to_le_bytes());
    let frames = agent.raw(&b);
    let e = only_error(&frames);
    assert!(
        e.contains("frame of 102400 bytes refused (at most 65536)"),
        "{e}"
    );
    // The client refuses what the agent would, before sending.
    let e = exec::run(
        agent.connect(),
        &Request::new(&vec!["x"; 4097]),
        None,
        &mut Vec::new(),
        &mut Vec::new(),
    )
    .unwrap_err();
    assert!(matches!(e, ExecError::Request(_)), "{e}");
    assert!(e.to_string().contains("4097 arguments"), "{e}");
    // The agent still serves.
    let (o, out, _) = agent.run(&sh("echo still here"), None);
    assert_eq!((o.status, out.as_slice()), (0, &b"still here\n"[..]));
}

/// Starts `sh -c SCRIPT` from the root's busybox as the "run" command (its own process group,
/// registered where `run` registers it).
fn run_command(agent: &Agent, script: &str) -> Child {
    let child = Command::new(agent.root().join("bin/busybox"))
        .args(["sh", "-c", script])
        .process_group(0)
        .spawn()
        .unwrap();
    std::fs::write(
        agent.dir.path().join("state/run.pid"),
        format!("{}\n", child.id()),
    )
    .unwrap();
    child
}

fn wait_for(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(started.elapsed() < limit, "still running after {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn stop_ends_the_running_command() {
    let Some(agent) = Agent::start() else { return };
    // Nothing to stop: the test mode never powers the machine off.
    let e = exec::stop(agent.connect()).unwrap_err().to_string();
    assert!(e.contains("no command is running"), "{e}");
    let mut child = run_command(&agent, "sleep 100");
    assert_eq!(exec::stop(agent.connect()).unwrap(), "command");
    let st = wait_for(&mut child, Duration::from_secs(5));
    assert_eq!(st.signal(), Some(15), "{st:?}");
    // One that ignores SIGTERM gets SIGKILL 10 s later.
    let mut child = run_command(&agent, "trap '' TERM; while :; do sleep 1; done");
    std::thread::sleep(Duration::from_millis(300));
    let sent = Instant::now();
    assert_eq!(exec::stop(agent.connect()).unwrap(), "command");
    let st = wait_for(&mut child, Duration::from_secs(20));
    assert_eq!(st.signal(), Some(9), "{st:?}");
    assert!(
        sent.elapsed() >= Duration::from_secs(9),
        "{:?}",
        sent.elapsed()
    );
}

/// A stand-in for the monitor's vsock socket: answers `CONNECT EXEC_PORT` with `OK` and
/// relays to the agent (or, with `refuse`, closes as the monitor does when nothing listens).
fn monitor(path: &Path, agent: PathBuf, refuse: bool) -> std::thread::JoinHandle<String> {
    let l = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let (mut host, _) = l.accept().unwrap();
        let mut line = Vec::new();
        let mut b = [0u8];
        while host.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        let line = String::from_utf8(line).unwrap();
        if refuse {
            return line;
        }
        host.write_all(b"OK 1073741824\n").unwrap();
        let guest = UnixStream::connect(agent).unwrap();
        let (mut h2, mut g2) = (host.try_clone().unwrap(), guest.try_clone().unwrap());
        let up = std::thread::spawn(move || {
            let _ = std::io::copy(&mut h2, &mut g2);
            let _ = g2.shutdown(std::net::Shutdown::Write);
        });
        let (mut g, mut h) = (guest, host);
        let _ = std::io::copy(&mut g, &mut h);
        let _ = h.shutdown(std::net::Shutdown::Write);
        let _ = up.join();
        line
    })
}

#[test]
fn the_client_connects_through_the_monitors_handshake() {
    let Some(agent) = Agent::start() else { return };
    let sock = agent.dir.path().join("vsock.sock");
    let m = monitor(&sock, agent.socket(), false);
    let s = exec::connect(&sock, EXEC_PORT).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let o = exec::run(s, &sh("echo through"), None, &mut out, &mut err).unwrap();
    assert_eq!((o.status, out.as_slice()), (0, &b"through\n"[..]));
    assert_eq!(m.join().unwrap(), format!("CONNECT {EXEC_PORT}"));
    assert_eq!(EXEC_PORT, 1398013953);
    let sock2 = agent.dir.path().join("vsock2.sock");
    let m = monitor(&sock2, agent.socket(), true);
    let e = exec::connect(&sock2, EXEC_PORT).unwrap_err().to_string();
    m.join().unwrap();
    assert!(e.contains("does not listen"), "{e}");
}

/// A devpts instance of its own in the root, unmounted when dropped.
struct Devpts(PathBuf);

impl Drop for Devpts {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_pty_gives_the_command_a_terminal_of_the_hosts_size() {
    let Some(agent) = Agent::start() else { return };
    let pts = agent.root().join("dev/pts");
    std::fs::create_dir_all(&pts).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "devpts", "-o", "newinstance,ptmxmode=0666", "devpts"])
        .arg(&pts)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        starling_testkit::skip("cannot mount a devpts instance (mount -t devpts -o newinstance)");
        return;
    }
    let _devpts = Devpts(pts);
    let mut req =
        sh("test -t 0 && test -t 1 && echo terminal $TERM; read x; echo got $x; stty size");
    req.tty = true;
    let mut s = exec::Session::start(agent.connect(), &req).unwrap();
    let input = s.input();
    input.resize(40, 100).unwrap();
    input.data(b"go\n").unwrap();
    let mut out = Vec::new();
    let status = loop {
        match s.next_event().unwrap() {
            exec::Event::Stdout(b) => out.extend_from_slice(&b),
            exec::Event::Exit(st) => break st,
            e => panic!("{e:?}"),
        }
    };
    let out = String::from_utf8_lossy(&out).replace('\r', "");
    assert_eq!(status, 0, "{out}");
    // The terminal echoes the input line too.
    assert!(out.contains("terminal xterm-256color\n"), "{out}");
    assert!(out.contains("got go\n"), "{out}");
    assert!(out.ends_with("40 100\n"), "{out}");
    // Without devpts in the root, a pty request is refused clearly.
    drop(_devpts);
    let (o, _, _) = agent.run(&req, None);
    assert_eq!(o.status, 126);
    assert!(o.error.unwrap_or_default().contains("no pseudo-terminal"));
}

/// `starling-agent modules LIST DIR` (the run init's module loader): a module it cannot load
/// is named on the console's stream and the status says so; blank lines are skipped. Loading
/// a real module is the tier-2 boots' part (not this host's kernel).
#[test]
fn the_module_loader_names_the_module_it_cannot_load() {
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("starling-agent");
    std::fs::write(&agent, starling_guest::AGENT).unwrap();
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let list = dir.path().join("modules");
    let run = || {
        let child = starling_testkit::spawn_written(
            Command::new(&agent)
                .arg("modules")
                .arg(&list)
                .arg(dir.path().join("lib"))
                .stdout(std::process::Stdio::piped()),
        )
        .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let load = |names: &str| {
        std::fs::write(&list, names).unwrap();
        run()
    };
    assert_eq!(load("\n\n"), (Some(0), String::new()));
    let (status, out) = load("\nnot_here\nnever_reached\n");
    assert_eq!(status, Some(1), "{out}");
    assert_eq!(
        out,
        "starling-init: cannot load kernel module not_here: No such file or directory\n"
    );
    std::fs::remove_file(&list).unwrap();
    let (status, out) = run();
    assert_eq!(status, Some(1), "{out}");
    assert!(out.contains("cannot read the module list"), "{out}");
}
