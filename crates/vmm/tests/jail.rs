//! The monitor's seccomp jail, seen from outside: `starling-vmm` runs its guest under the
//! monitor filter with no_new_privs, its clones inherit that one filter instead of stacking
//! another, and a guest that makes the monitor call something the filter forbids (through the
//! test-only probe port) ends the monitor with one line naming the thread and the call.

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
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
        .env_remove("STARLING_JAIL")
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
    (
        status_field(pid, "Seccomp:"),
        status_field(pid, "Seccomp_filters:"),
        status_field(pid, "NoNewPrivs:"),
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
    let mut vm = Killed(monitor(&c).stderr(Stdio::piped()).spawn().unwrap());
    let vm = &mut vm.0;
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
    assert_eq!(
        std::fs::metadata(&log).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A clone, started by the confined monitor, inherits its filter and adds none.
    let (code, info) = api(&sock, "POST", "/v1/vm/fork", r#"{"count": 1}"#);
    assert_eq!(code, 200, "{info}");
    let clone = &info["clones"][0];
    let pid = clone["pid"].as_u64().unwrap() as u32;
    let clone_guard = KilledPid(pid);
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
    drop(clone_guard);

    let restored_log = dir.path().join("restored.log");
    let spec = starling_vmm::RestoreSpec {
        dir: snap,
        console: Some(Console::File(restored_log.clone())),
        run_dir: Some(dir.path().join("restored")),
        ..Default::default()
    };
    let mut restored = Killed(
        Command::new(env!("CARGO_BIN_EXE_starling-vmm"))
            .arg("--restore-json")
            .arg(serde_json::to_string(&spec).unwrap())
            .env_remove("STARLING_SECCOMP")
            .env_remove("STARLING_SECCOMP_INHERITED")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let restored = &mut restored.0;
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

/// A status line's value (`Uid:`, `CapEff:` …) of process `pid`.
fn status_field(pid: u32, name: &str) -> String {
    let status = read(&PathBuf::from(format!("/proc/{pid}/status")));
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status:\n{status}"))
}

/// Whose a process is and what it may still do: (Uid, Gid, CapEff, CapBnd, NoNewPrivs).
fn identity(pid: u32) -> [String; 5] {
    ["Uid:", "Gid:", "CapEff:", "CapBnd:", "NoNewPrivs:"].map(|f| status_field(pid, f))
}

fn mount_ns(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap()
}

fn jailed(c: &VmConfig) -> Command {
    let mut cmd = monitor(c);
    cmd.env("STARLING_JAIL", "on")
        .env_remove("STARLING_JAIL_USER")
        .env_remove("STARLING_JAIL_MEMORY_MAX")
        .env_remove("STARLING_JAIL_PIDS_MAX")
        .env_remove("STARLING_JAIL_SHOW");
    cmd
}

/// A monitor killed when the test ends, passed or not.
struct Killed(std::process::Child);

/// A process (a clone, in its own process group) killed when the test ends, passed or not.
struct KilledPid(u32);

impl Drop for KilledPid {
    fn drop(&mut self) {
        // SAFETY: SIGKILL to a pid the fork answer named; at worst it is gone.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn a_jailed_monitor_sees_only_its_vm_s_files_as_a_user_of_its_own_with_no_capabilities() {
    let g = guests_or_skip!();
    if !is_root() {
        starling_testkit::skip("the jail needs root to make its namespace and drop to a user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Something beside the VM's files that the monitor must not see.
    std::fs::write(dir.path().join("secret"), "not for the guest").unwrap();
    let run = dir.path().join("run");
    let mut c = config(g, "counter", dir.path());
    // The sockets go beside the run directory, not in it: bound for the monitor before it
    // gives root up, in a directory it neither sees nor could write.
    let sock = dir.path().join("api.sock");
    c.api_socket = Some(sock.clone());
    c.vsock = Some(VsockConfig {
        cid: 3,
        path: dir.path().join("vsock.sock"),
    });
    let mut cmd = jailed(&c);
    // A careless caller hands it a descriptor of the host's root (fd 9, inherited): through
    // it `openat(9, "..")` would leave any jail, so the jail closes it.
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: between fork and exec: open and dup2 are async-signal-safe, the path is a
        // static C string.
        unsafe {
            cmd.pre_exec(|| {
                let fd = libc::open(c"/".as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY);
                if fd < 0 || libc::dup2(fd, 9) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
    }
    let mut vm = Killed(cmd.stderr(Stdio::piped()).spawn().unwrap());
    let vm = &mut vm.0;
    let log = dir.path().join("console.log");
    wait_for("the jailed guest's ticks", 60, || {
        read(&log).matches("tick").count() >= 3 && sock.exists()
    });
    let pid = vm.id();
    let uid = (starling_vmm::jail::user::FIRST_UID + pid).to_string();
    let ids = format!("{uid} {uid} {uid} {uid}");
    let zero = "0000000000000000".to_string();
    assert_eq!(
        identity(pid),
        [
            ids.clone(),
            ids.clone(),
            zero.clone(),
            zero.clone(),
            "1".into()
        ],
        "the monitor: Uid, Gid, CapEff, CapBnd, NoNewPrivs"
    );
    assert_eq!(confinement(pid).0, "2", "and its seccomp filter");
    assert_ne!(mount_ns(pid), mount_ns(std::process::id()));
    // (The number may be in use again, by something the monitor opened since.)
    let fd9 = PathBuf::from(format!("/proc/{pid}/fd/9"));
    assert!(
        !std::fs::metadata(&fd9).is_ok_and(|m| m.is_dir()),
        "the inherited directory descriptor was closed: {:?}",
        std::fs::read_link(&fd9)
    );

    // Its root holds what the VM needs, at the paths it was named by, and nothing else.
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let inside = |p: &Path| root.join(p.strip_prefix("/").unwrap());
    assert!(inside(&g.pvh).is_file(), "the kernel is shown");
    // The console file was opened for it before it gave root up: it stays its caller's.
    assert!(!inside(&log).exists(), "the console log is not shown");
    let log_md = std::fs::metadata(&log).unwrap();
    assert_eq!(
        (log_md.uid(), log_md.permissions().mode() & 0o777),
        (0, 0o600)
    );
    assert!(inside(&run).is_dir(), "the run directory");
    let sock_md = std::fs::metadata(&sock).unwrap();
    assert!(sock_md.file_type().is_socket());
    assert_eq!(
        (sock_md.uid(), sock_md.mode() & 0o777),
        (0, 0o600),
        "the API socket"
    );
    assert!(
        !inside(&dir.path().join("secret")).exists(),
        "a file beside them is not"
    );
    assert!(!root.join("etc/shadow").exists(), "nor the host's /etc");
    assert!(!root.join("home").exists());
    let kvm = std::fs::metadata(root.join("dev/kvm")).unwrap();
    assert!(kvm.file_type().is_char_device());
    assert_eq!(
        (kvm.uid().to_string(), kvm.mode() & 0o777),
        (uid.clone(), 0o600)
    );
    // Its namespace holds these mounts and no others: the read-only root, its /proc (its own
    // user's processes only, no /proc/sys), and each thing it was shown.
    let mounts: Vec<(String, String)> = read(&PathBuf::from(format!("/proc/{pid}/mountinfo")))
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-").unwrap();
            (
                f[4].to_string(),
                format!("{} {} {}", f[5], f[sep + 1], f[sep + 3]),
            )
        })
        .collect();
    let of = |p: &str| {
        mounts
            .iter()
            .find(|(m, _)| m == p)
            .map(|(_, o)| o.clone())
            .unwrap_or_else(|| panic!("no mount at {p}: {mounts:#?}"))
    };
    assert!(of("/").starts_with("ro,"), "{}", of("/"));
    let proc_opts = of("/proc");
    assert!(
        proc_opts.contains("hidepid=invisible") && proc_opts.contains("subset=pid"),
        "{proc_opts}"
    );
    assert!(of(&run.display().to_string()).starts_with("rw,nosuid,nodev,noexec"));
    assert!(of(&g.pvh.display().to_string()).starts_with("ro,nosuid,nodev,noexec"));
    for (m, _) in &mounts {
        let expected = m == "/"
            || m == "/proc"
            || m.starts_with("/sys/kernel/mm/transparent_hugepage")
            || Path::new(m) == g.pvh
            || Path::new(m) == run
            || Path::new(m) == Path::new(env!("CARGO_BIN_EXE_starling-vmm"))
            || m.contains("/lib");
        assert!(
            expected,
            "an unexpected mount in the jail: {m}: {mounts:#?}"
        );
    }
    // The run directory is the jail user's, private; the root is read-only to it.
    let run_md = std::fs::metadata(&run).unwrap();
    assert_eq!(
        (
            run_md.uid().to_string(),
            run_md.permissions().mode() & 0o777
        ),
        (uid.clone(), 0o700)
    );

    // Its clones are born in the same jail, as the same user, under the same filter.
    let (code, info) = api(&sock, "POST", "/v1/vm/fork", r#"{"count": 1}"#);
    assert_eq!(code, 200, "{info}");
    let clone = &info["clones"][0];
    let clone_pid = clone["pid"].as_u64().unwrap() as u32;
    let clone_guard = KilledPid(clone_pid);
    let clone_log = PathBuf::from(clone["dir"].as_str().unwrap()).join("console.log");
    wait_for("the clone's ticks", 60, || {
        read(&clone_log).matches("tick").count() >= 3
    });
    assert_eq!(
        identity(clone_pid),
        [
            ids.clone(),
            ids.clone(),
            zero.clone(),
            zero.clone(),
            "1".into()
        ],
        "the clone"
    );
    assert_eq!(mount_ns(clone_pid), mount_ns(pid), "the clone's namespace");
    assert_eq!(confinement(clone_pid), ("2".into(), "1".into(), "1".into()));

    // A snapshot goes where the jail shows (the run directory), and nowhere else.
    let (code, info) = api(
        &sock,
        "POST",
        "/v1/vm/snapshot",
        &format!(r#"{{"dir": "{}"}}"#, dir.path().join("outside").display()),
    );
    assert_ne!(code, 200, "a snapshot outside the jail: {info}");
    let said = info["error"].as_str().unwrap_or_default();
    assert!(
        said.contains("outside (a jailed monitor writes only in its run directory"),
        "{said}"
    );
    assert!(!dir.path().join("outside").exists());
    let snap = run.join("snap");
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
    drop(clone_guard);

    // Restored in a jail of its own, the snapshot shown read-only.
    let restored_log = dir.path().join("restored.log");
    let spec = starling_vmm::RestoreSpec {
        dir: snap.clone(),
        console: Some(Console::File(restored_log.clone())),
        run_dir: Some(dir.path().join("restored")),
        ..Default::default()
    };
    let mut restored = Killed(
        Command::new(env!("CARGO_BIN_EXE_starling-vmm"))
            .arg("--restore-json")
            .arg(serde_json::to_string(&spec).unwrap())
            .env_remove("STARLING_SECCOMP")
            .env_remove("STARLING_SECCOMP_INHERITED")
            .env("STARLING_JAIL", "on")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let restored = &mut restored.0;
    wait_for("the restored guest's ticks", 60, || {
        read(&restored_log).matches("tick").count() >= 3
    });
    let r = restored.id();
    // As the snapshot's VM's user (the guest is the same party), in a namespace of its own.
    assert_eq!(status_field(r, "Uid:"), ids);
    assert_ne!(mount_ns(r), mount_ns(std::process::id()));
    assert_eq!(status_field(r, "CapEff:"), zero);
    let rroot = PathBuf::from(format!("/proc/{r}/root"));
    assert!(rroot
        .join(snap.strip_prefix("/").unwrap())
        .join("state")
        .is_file());
    assert!(
        !rroot.join(log.strip_prefix("/").unwrap()).exists(),
        "the first VM's console"
    );
    restored.kill().unwrap();
    restored.wait().unwrap();
}

#[test]
fn a_guest_that_takes_the_jailed_monitor_over_finds_no_host_files() {
    let g = guests_or_skip!();
    if !is_root() {
        starling_testkit::skip("the jail needs root to make its namespace and drop to a user");
        return;
    }
    // The probe port (test-only) makes the monitor open the host's /etc/shadow, as a guest that
    // took it over would; with the filter off, so that the jail alone answers.
    for (jail, opened) in [("off", true), ("on", false)] {
        let dir = tempfile::tempdir().unwrap();
        let c = config(g, "seccomp-probe exit=7", dir.path());
        let out = monitor(&c)
            .env("STARLING_SECCOMP_PROBE", "1")
            .env("STARLING_SECCOMP", "off")
            .env("STARLING_JAIL", jail)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(7), "jail {jail}: {err}");
        let line = if opened {
            "seccomp probe: open /etc/shadow opened".to_string()
        } else {
            "seccomp probe: open /etc/shadow failed: No such file or directory".to_string()
        };
        assert!(err.contains(&line), "jail {jail}: {err}");
    }
}

#[test]
fn a_jail_asked_for_wrongly_is_refused_in_one_line_before_anything_runs() {
    let g = guests_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let c = config(g, "counter", dir.path());
    let cgroup2 = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.contains(" /sys/fs/cgroup ") && l.contains(" - cgroup2 "));
    let mut cases = vec![
        (
            "STARLING_JAIL",
            "yes",
            "STARLING_JAIL=\"yes\": say on or off",
        ),
        (
            "STARLING_JAIL_USER",
            "root",
            "STARLING_JAIL_USER=\"root\": say UID or UID:GID",
        ),
        (
            "STARLING_JAIL_USER",
            "0",
            "STARLING_JAIL_USER=\"0\": say UID or UID:GID",
        ),
        (
            "STARLING_JAIL_PIDS_MAX",
            "many",
            "STARLING_JAIL_PIDS_MAX=\"many\" is not a number",
        ),
    ];
    if !cgroup2 {
        cases.push((
            "STARLING_JAIL_MEMORY_MAX",
            "256M",
            "memory and process limits need cgroup v2 mounted at /sys/fs/cgroup",
        ));
    }
    for (k, v, said) in cases {
        let out = jailed(&c).env(k, v).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{k}={v}: {err}");
        assert!(err.contains(said), "{k}={v}: {err}");
        assert_eq!(err.lines().count(), 1, "{k}={v}: one line: {err}");
        assert!(
            read(&dir.path().join("console.log")).is_empty(),
            "{k}={v}: the guest ran"
        );
    }
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_jailed_monitor_is_handed_its_caller_s_disk_and_a_tap_it_could_not_open_itself() {
    let g = guests_or_skip!();
    if !is_root() {
        starling_testkit::skip("the jail needs root to make its namespace and drop to a user");
        return;
    }
    if !Path::new("/dev/net/tun").exists() || Command::new("ping").arg("-V").output().is_err() {
        starling_testkit::skip("no /dev/net/tun or ping: the jailed network is not tried");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Root's disk, 0600: the jail's user could neither read nor write it.
    let disk = dir.path().join("disk.img");
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..17].copy_from_slice(b"the caller's disk");
    std::fs::write(&disk, &bytes).unwrap();
    std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut c = config(g, "blk blkwrite net exit=0", dir.path());
    c.disks.push(starling_vmm::DiskConfig {
        path: disk.clone(),
        read_only: false,
    });
    c.net.push(starling_vmm::NetConfig {
        tap: "stj0".into(),
        mac: Some("02:aa:bb:cc:dd:07".parse().unwrap()),
        rx: None,
        tx: None,
        owned: false,
        ip: None,
    });
    let log = dir.path().join("console.log");
    let cmd = jailed(&c);
    // In a network namespace of the test's own (the TAP and the ping stay out of the host's).
    let (status, ping, err) = std::thread::spawn(move || {
        let mut cmd = cmd;
        // SAFETY: unshare affects only this thread, which nothing else uses.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        sh(&["ip", "link", "set", "lo", "up"]);
        sh(&["ip", "tuntap", "add", "dev", "stj0", "mode", "tap"]);
        sh(&["ip", "addr", "add", "10.77.0.1/24", "dev", "stj0"]);
        sh(&["ip", "link", "set", "stj0", "up"]);
        let mut vm = Killed(cmd.stderr(Stdio::piped()).spawn().unwrap());
        wait_for("the guest's network", 60, || {
            read(&log).contains("net: serving")
        });
        let ping = sh(&["ping", "-c", "3", "-i", "0.2", "-W", "5", "10.77.0.2"]);
        let sock = std::net::UdpSocket::bind("10.77.0.1:0").unwrap();
        sock.send_to(b"quit", "10.77.0.2:7").unwrap();
        let status = vm.0.wait().unwrap();
        let mut err = String::new();
        vm.0.stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status, ping, err)
    })
    .join()
    .unwrap();
    let out = read(&dir.path().join("console.log"));
    assert_eq!(status.code(), Some(0), "{err}\n{out}");
    assert!(
        out.contains("blk: read status 0 data \"the caller's disk\""),
        "{out}"
    );
    assert!(out.contains("blk: write status 0"), "{out}");
    assert!(ping.contains("3 received"), "{ping}");
    let written = std::fs::read(&disk).unwrap();
    assert_eq!(&written[512..546], b"written by the starling test guest");
    let md = std::fs::metadata(&disk).unwrap();
    assert_eq!(
        (md.uid(), md.mode() & 0o777),
        (0, 0o600),
        "the disk stays root's"
    );
}
