//! The `starlingd` binary as its systemd unit (dist/systemd/starlingd.service) runs it.
//!
//! PID 1 on this project's machines (and CI's) is not systemd, so `systemd-run` cannot start
//! the unit. This harness does what systemd would with it instead: `systemd-analyze verify`
//! judges the unit file (every directive known, the command executable); the directories
//! systemd creates for RuntimeDirectory= and StateDirectory= are made (under a scratch root
//! standing in for /run and /var/lib, StateDirectoryMode applied), ExecStart runs with
//! LimitNOFILE (prlimit), CapabilityBoundingSet and NoNewPrivileges (setpriv) and UMask
//! applied, and the unit's KillSignal stops it within TimeoutStopSec, with the exit status
//! that keeps Restart=on-failure from restarting it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use starling_daemon::api::CacheStats;
use starling_daemon::client::Client;

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/systemd/starlingd.service")
}

/// The unit's `[Service]` section as KEY → values (a key may repeat).
fn service_section(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut section = String::new();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        } else if section == "Service" {
            let (k, v) = line.split_once('=').expect("KEY=VALUE");
            out.entry(k.trim().to_owned())
                .or_default()
                .push(v.trim().to_owned());
        }
    }
    out
}

fn one<'a>(service: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    match service.get(key).map(Vec::as_slice) {
        Some([v]) => v,
        other => panic!("{key}= should be given once in the unit, is {other:?}"),
    }
}

/// The value following `flag` in an argument list.
fn flag<'a>(args: &'a [String], flag: &str) -> &'a str {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .unwrap_or_else(|| panic!("ExecStart has no {flag}: {args:?}"))
}

/// A line of /proc/WHO/status (`self` or a pid), without its name.
fn status_field(who: &str, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{who}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("{name} in /proc/{who}/status:\n{status}"))
}

#[test]
fn the_unit_verifies_and_runs_starlingd_as_systemd_would() {
    let unit = std::fs::read_to_string(unit_path()).unwrap();
    let service = service_section(&unit);
    let exec: Vec<String> = one(&service, "ExecStart")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(exec[0], "/usr/local/bin/starlingd", "{exec:?}");
    let binary = env!("CARGO_BIN_EXE_starlingd");
    let scratch = tempfile::tempdir().unwrap();

    // systemd's own judgement of the unit, the command pointed at the built binary (verify
    // checks that it is executable). It exits 0 on unknown keys and only warns: any output is
    // a finding.
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        starling_testkit::skip("systemd-analyze is missing (Debian package systemd)");
        return;
    }
    let checked = scratch.path().join("starlingd.service");
    std::fs::write(&checked, unit.replace("/usr/local/bin/starlingd", binary)).unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&checked)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stderr).to_string()
        + &String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );

    // Where systemd puts what the unit asks for, and what the command uses: the socket in
    // RuntimeDirectory, the state in StateDirectory, both the daemon's own defaults (so that
    // `starling` finds a daemon systemd started without being told where).
    let runtime = Path::new("/run").join(one(&service, "RuntimeDirectory"));
    let state_dir = Path::new("/var/lib").join(one(&service, "StateDirectory"));
    let (socket, state) = (flag(&exec, "--socket"), flag(&exec, "--state"));
    assert!(Path::new(socket).starts_with(&runtime), "{socket}");
    assert!(Path::new(state).starts_with(&state_dir), "{state}");
    assert_eq!(socket, starling_daemon::DEFAULT_SOCKET);
    assert_eq!(state, starling_daemon::DEFAULT_STATE);
    let quota = starling_daemon::args::parse_size(flag(&exec, "--quota")).unwrap();

    // The same paths under the scratch root; systemd makes the two directories (the state
    // one with StateDirectoryMode) before ExecStart runs and nothing else.
    let rooted = |p: &str| scratch.path().join(p.trim_start_matches('/'));
    std::fs::create_dir_all(rooted(runtime.to_str().unwrap())).unwrap();
    let state_root = rooted(state_dir.to_str().unwrap());
    std::fs::create_dir_all(&state_root).unwrap();
    let state_mode = u32::from_str_radix(one(&service, "StateDirectoryMode"), 8).unwrap();
    assert_eq!(
        state_mode, 0o700,
        "the cache and VM files are the daemon's alone"
    );
    std::fs::set_permissions(
        &state_root,
        std::os::unix::fs::PermissionsExt::from_mode(state_mode),
    )
    .unwrap();
    // The capability bounding set and no_new_privs as setpriv applies them, the umask as a
    // shell sets it before exec.
    let caps: Vec<String> = one(&service, "CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    assert!(caps.contains(&"+sys_admin".to_string()), "{caps:?}");
    assert_eq!(one(&service, "NoNewPrivileges"), "yes");
    let umask = one(&service, "UMask");
    let args: Vec<String> = exec[1..]
        .iter()
        .map(|a| {
            if a.starts_with('/') {
                rooted(a).display().to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    // LimitNOFILE, as far as this process may raise it (systemd has CAP_SYS_RESOURCE; a
    // container's hard limit may be lower).
    let unit_nofile: u64 = one(&service, "LimitNOFILE").parse().unwrap();
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .unwrap_or(u64::MAX);
    if hard < unit_nofile {
        starling_testkit::skip_part(&format!(
            "LimitNOFILE={unit_nofile} applied as {hard}: this process's hard limit, which only \
             CAP_SYS_RESOURCE (systemd has it) may raise"
        ));
    }
    let nofile = unit_nofile.min(hard).to_string();
    let nofile = nofile.as_str();
    // Configured to serve other users, which it does with their rights (setuid, setgid).
    let config = scratch.path().join("starlingd.toml");
    std::fs::write(&config, "users = \"all\"\n").unwrap();
    let mut daemon = Command::new("prlimit")
        .arg(format!("--nofile={nofile}:{nofile}"))
        .args(["--", "setpriv", "--no-new-privs"])
        .arg(format!("--bounding-set=-all,{}", caps.join(",")))
        .args(["--", "sh", "-c"])
        .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
        .arg(binary)
        .args(&args)
        .env("STARLING_CONFIG", &config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("prlimit (util-linux)");
    let guard = KillOnDrop(daemon.id());
    let mut ready = String::new();
    BufReader::new(daemon.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let socket = rooted(socket);
    if !ready.starts_with("ready") {
        let out = daemon.wait_with_output().unwrap();
        panic!(
            "starlingd did not start ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(ready.trim(), format!("ready {}", socket.display()));

    // Confined as the unit says: no new privileges, no capability outside the set (module
    // loading, raw I/O among those gone), its cache its own (0700 under the umask).
    let pid = daemon.id().to_string();
    assert_eq!(status_field(&pid, "NoNewPrivs:"), "1");
    let bounding = u64::from_str_radix(&status_field(&pid, "CapBnd:"), 16).unwrap();
    // The unit's set as bits (linux/capability.h), within what this process may hand on (a
    // container's own bounding set may lack some).
    let bit = |cap: &str| match cap {
        "+chown" => 0,
        "+dac_override" => 1,
        "+dac_read_search" => 2,
        "+fowner" => 3,
        "+fsetid" => 4,
        "+kill" => 5,
        "+net_bind_service" => 10,
        "+net_admin" => 12,
        "+sys_ptrace" => 19,
        "+sys_admin" => 21,
        "+sys_resource" => 24,
        "+setgid" => 6,
        "+setuid" => 7,
        "+mknod" => 27,
        other => panic!("capability {other} of the unit: add its number here"),
    };
    let ours = u64::from_str_radix(&status_field("self", "CapBnd:"), 16).unwrap();
    let unit_bits = caps.iter().fold(0u64, |m, c| m | 1 << bit(c));
    assert_eq!(bounding, unit_bits & ours, "CapBnd {bounding:x}");
    assert_eq!(bounding >> 21 & 1, 1, "CAP_SYS_ADMIN kept: {bounding:x}");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", daemon.id())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert!(
        open_files
            .split_whitespace()
            .filter(|w| *w == nofile)
            .count()
            == 2,
        "{open_files}"
    );
    let client = Client::new(&socket).unwrap();
    let stats: CacheStats = client.get("/v1/cache").unwrap();
    assert_eq!(stats.quota, quota);
    assert_eq!(stats.objects, 0);
    let mounts: serde_json::Value = client.get("/v1/mounts").unwrap();
    assert_eq!(mounts, serde_json::json!([]));
    let cache = rooted(state).join("cache");
    assert!(cache.is_dir(), "the host cache is in the state directory");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&cache).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700, "the host cache is the daemon's alone");

    // Another user's request is handled with their rights within the bounding set: their
    // mount onto root's directory is refused as not theirs (not as an identity the daemon
    // could not take).
    if rustix::process::geteuid().is_root() {
        for dir in [
            scratch.path().to_path_buf(),
            rooted(runtime.to_str().unwrap()),
        ] {
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o711))
                .unwrap();
        }
        let roots = scratch.path().join("roots");
        std::fs::create_dir(&roots).unwrap();
        let said = as_nobody_post(
            &socket,
            "/v1/mounts",
            &serde_json::json!({
                "mountpoint": roots,
                "source": {"kind": "store", "store": "/nonexistent", "image": "t:v1"},
            }),
        );
        assert!(
            said.starts_with("HTTP/1.1 403") && said.contains("is user 0's, not user 65534's"),
            "{said}"
        );
    }

    // systemctl stop: KillSignal, then SIGKILL after TimeoutStopSec.
    assert_eq!(one(&service, "KillSignal"), "SIGTERM");
    let timeout: u64 = one(&service, "TimeoutStopSec").parse().unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&daemon),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let stopping = Instant::now();
    let status = loop {
        if let Some(s) = daemon.try_wait().unwrap() {
            break s;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(timeout),
            "starlingd outlived TimeoutStopSec={timeout}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(one(&service, "Restart"), "on-failure");
    assert!(
        status.success(),
        "a stop that Restart=on-failure would take for a failure: {status}"
    );
    assert!(!socket.exists(), "the socket is removed on the way out");
    std::mem::forget(guard);
}

/// Kills the daemon if the test ends before it stops it (an assertion failed).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0 as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// POSTs `body` to `path` on the daemon's socket as user 65534; the whole answer.
fn as_nobody_post(socket: &Path, path: &str, body: &serde_json::Value) -> String {
    let client = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
body = sys.argv[3].encode()
s.sendall(b"POST %s HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (sys.argv[2].encode(), len(body)) + body)
out = b""
while True:
    b = s.recv(4096)
    if not b:
        break
    out += b
sys.stdout.write(out.decode())
"#;
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .args(["/usr/bin/python3", "-c", client])
        .arg(socket)
        .arg(path)
        .arg(body.to_string())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}
