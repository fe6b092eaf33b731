//! The monitor's seccomp jail, seen from outside: `starling-vmm` runs its guest under the
//! monitor filter with no_new_privs, its clones inherit that one filter instead of stacking
//! another, and a guest that makes the monitor call something the filter forbids (through the
//! test-only probe port) ends the monitor with one line naming the thread and the call.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use starling_vmm::test_guest::TestGuest;
use starling_vmm::{Console, VmConfig, VsockConfig};

/// The test guest, compiled once per test run; None after a loud skip (a failure under CI)
/// when this host has no /dev/kvm or C compiler.
fn guests() -> Option<&'static TestGuest> {
    starling_vmm::test_guest::once(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("jail-guest"))
        .map_err(starling_testkit::skip)
        .ok()
}

macro_rules! guests_or_skip {
    () => {
        match guests() {
            Some(g) => g,
            None => return,
        }
    };
}

fn config(g: &TestGuest, cmdline: &str, dir: &Path) -> VmConfig {
    let mut c = VmConfig::new(g.pvh.clone());
    c.cmdline = cmdline.into();
    c.mem_mib = 64;
    c.console = Console::File(dir.join("console.log"));
    c.run_dir = Some(dir.join("run"));
    c
}

fn monitor(c: &VmConfig) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_starling-vmm"));
    cmd.arg("--config-json")
        .arg(serde_json::to_string(c).unwrap())
        .env_remove("STARLING_SECCOMP")
        .env_remove("STARLING_SECCOMP_INHERITED")
        .env("STARLING_VMM", env!("CARGO_BIN_EXE_starling-vmm"))
        .stdin(Stdio::null());
    cmd
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `Seccomp`, `Seccomp_filters` and `NoNewPrivs` lines of a process's status.
fn confinement(pid: u32) -> (String, String, String) {
    let status = read(&PathBuf::from(format!("/proc/{pid}/status")));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status:\n{status}"))
    };
    (
        field("Seccomp:"),
        field("Seccomp_filters:"),
        field("NoNewPrivs:"),
    )
}

fn api(sock: &Path, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: vm\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out[9..12].parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
    (
        code,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

#[test]
fn a_guest_making_the_monitor_call_a_forbidden_syscall_stops_it_with_the_call_named() {
    let g = guests_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let c = config(g, "seccomp-probe exit=7", dir.path());
    let out = monitor(&c)
        .env("STARLING_SECCOMP_PROBE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(i32::from(starling_vmm::jail::FORBIDDEN_EXIT_STATUS)),
        "{err}"
    );
    assert!(
        err.contains(
            "starling: seccomp stopped the monitor: its thread vcpu0 made the system call \
             socket (41) for domain 17, which its filter forbids"
        ),
        "{err}"
    );
    assert_eq!(
        err.matches("seccomp stopped").count(),
        1,
        "said once: {err}"
    );
    assert!(!err.contains("seccomp probe: socket"), "{err}");
    let console = read(&dir.path().join("console.log"));
    assert!(console.contains("cmdline: seccomp-probe"), "{console}");
    assert!(!console.contains("seccomp probe survived"), "{console}");

    // The same guest with the filter off (for debugging): the call is made, the guest goes on.
    let dir = tempfile::tempdir().unwrap();
    let c = config(g, "seccomp-probe exit=7", dir.path());
    let out = monitor(&c)
        .env("STARLING_SECCOMP_PROBE", "1")
        .env("STARLING_SECCOMP", "off")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(
        err.contains("STARLING_SECCOMP=off: the monitor runs without its seccomp filter"),
        "{err}"
    );
    assert!(
        err.contains("starling-vmm: seccomp probe: socket(AF_PACKET)"),
        "{err}"
    );
    assert!(read(&dir.path().join("console.log")).contains("seccomp probe survived"));

    // Without the probe variable the port is not there: the write goes nowhere.
    let dir = tempfile::tempdir().unwrap();
    let c = config(g, "seccomp-probe exit=7", dir.path());
    let out = monitor(&c).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(!err.contains("seccomp probe: socket"), "{err}");
}

#[test]
fn the_monitor_and_its_clones_run_under_one_filter_with_no_new_privs() {
    let g = guests_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(g, "counter", dir.path());
    let sock = dir.path().join("api.sock");
    c.api_socket = Some(sock.clone());
    c.vsock = Some(VsockConfig {
        cid: 3,
        path: dir.path().join("vsock.sock"),
    });
    let mut vm = monitor(&c).stderr(Stdio::piped()).spawn().unwrap();
    let log = dir.path().join("console.log");
    wait_for("the guest's ticks", 60, || {
        read(&log).matches("tick").count() >= 3 && sock.exists()
    });
    assert_eq!(
        confinement(vm.id()),
        ("2".into(), "1".into(), "1".into()),
        "the monitor: (Seccomp, Seccomp_filters, NoNewPrivs)"
    );
    // What the guest prints is the owner's alone.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&log).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A clone, started by the confined monitor, inherits its filter and adds none.
    let (code, info) = api(&sock, "POST", "/v1/vm/fork", r#"{"count": 1}"#);
    assert_eq!(code, 200, "{info}");
    let clone = &info["clones"][0];
    let pid = clone["pid"].as_u64().unwrap() as u32;
    let clone_log = PathBuf::from(clone["dir"].as_str().unwrap()).join("console.log");
    wait_for("the clone's ticks", 60, || {
        read(&clone_log).matches("tick").count() >= 3
    });
    assert_eq!(
        confinement(pid),
        ("2".into(), "1".into(), "1".into()),
        "the clone: (Seccomp, Seccomp_filters, NoNewPrivs)"
    );

    // A snapshot written by the confined monitor restores, under the filter again.
    let snap = dir.path().join("snap");
    let (code, info) = api(
        &sock,
        "POST",
        "/v1/vm/snapshot",
        &format!(r#"{{"dir": "{}", "stop": true}}"#, snap.display()),
    );
    assert_eq!(code, 200, "{info}");
    vm.wait().unwrap();
    let mut err = String::new();
    vm.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(!err.contains("seccomp stopped"), "{err}");
    // SAFETY: SIGKILL to the clone's pid, which the fork answer named; at worst it is gone.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };

    let restored_log = dir.path().join("restored.log");
    let spec = starling_vmm::RestoreSpec {
        dir: snap,
        console: Some(Console::File(restored_log.clone())),
        run_dir: Some(dir.path().join("restored")),
        ..Default::default()
    };
    let mut restored = Command::new(env!("CARGO_BIN_EXE_starling-vmm"))
        .arg("--restore-json")
        .arg(serde_json::to_string(&spec).unwrap())
        .env_remove("STARLING_SECCOMP")
        .env_remove("STARLING_SECCOMP_INHERITED")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the restored guest's ticks", 60, || {
        read(&restored_log).matches("tick").count() >= 3
    });
    assert_eq!(
        confinement(restored.id()),
        ("2".into(), "1".into(), "1".into()),
        "the restored monitor: (Seccomp, Seccomp_filters, NoNewPrivs)"
    );
    restored.kill().unwrap();
    restored.wait().unwrap();
}
