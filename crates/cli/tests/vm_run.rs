//! `starling vm run` as a program: exit statuses that follow the guest, the JSON config file,
//! Ctrl-C (SIGINT) stopping the VM cleanly, and input errors before the guest starts. Uses the
//! tier-1 test guest on this host's /dev/kvm.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The tier-1 test guest (PVH build), or None after a loud skip (a failure under CI) when this
/// host has no /dev/kvm or C compiler.
fn guest(dir: &Path) -> Option<std::path::PathBuf> {
    if let Some(why) = starling_vmm::test_guest::missing() {
        starling_testkit::skip(&why);
        return None;
    }
    let g = starling_vmm::test_guest::build(dir)
        .unwrap_or_else(|e| panic!("the test guest does not build: {e}"));
    Some(g.pvh)
}

/// A monitor (or server) the test started, killed when the test ends early: a failed assert
/// must not leave a VM running (it would hold on to whatever its test runner held).
struct Reaped(std::process::Child);

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn starling() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_starling"));
    c.env("STARLING_HOME", "/nonexistent-store-not-needed");
    c
}

#[test]
fn exit_status_follows_the_guest_and_config_files_work() {
    let dir = tempfile::tempdir().unwrap();
    let Some(kernel) = guest(dir.path()) else {
        return;
    };
    let out = starling()
        .args([
            "vm",
            "run",
            "--console",
            "off",
            "--mem",
            "32M",
            "--cmdline",
            "exit=9",
            "--kernel",
        ])
        .arg(&kernel)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(9),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("VM ended: the guest exited with status 9")
    );

    // The same VM as a config file; relative paths are taken from the file's directory.
    std::fs::copy(&kernel, dir.path().join("k.elf")).unwrap();
    let log = dir.path().join("console.txt");
    std::fs::write(
        dir.path().join("vm.json"),
        format!(
            r#"{{"kernel": "k.elf", "cmdline": "rng poweroff", "mem_mib": 32, "vcpus": 2, "console": {{"file": "{}"}}}}"#,
            log.display()
        ),
    )
    .unwrap();
    let out = starling()
        .args(["vm", "run", "--config"])
        .arg(dir.path().join("vm.json"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let console = std::fs::read_to_string(&log).unwrap();
    assert!(console.contains("rng: 16 bytes"), "{console}");
}

#[test]
fn ctrl_c_stops_the_vm_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let Some(kernel) = guest(dir.path()) else {
        return;
    };
    let log = dir.path().join("console.txt");
    let child = starling()
        .args([
            "vm",
            "run",
            "--mem",
            "32M",
            "--cmdline",
            "spin",
            "--console",
        ])
        .arg(&log)
        .arg("--kernel")
        .arg(&kernel)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("tick")
    {
        assert!(Instant::now() < deadline, "the guest never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("VM ended: stopped by signal 2"));
}

#[test]
fn input_errors_come_before_the_guest_with_status_2() {
    let dir = tempfile::tempdir().unwrap();
    let Some(kernel) = guest(dir.path()) else {
        return;
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--kernel".into(), "/nonexistent/vmlinuz".into()],
            "/nonexistent/vmlinuz",
        ),
        (
            vec![
                "--kernel".into(),
                kernel.display().to_string(),
                "--disk".into(),
                "/nonexistent/root.img".into(),
            ],
            "/nonexistent/root.img",
        ),
        (
            vec![
                "--kernel".into(),
                kernel.display().to_string(),
                "--mem".into(),
                "8M".into(),
            ],
            "too little",
        ),
        (
            vec![
                "--kernel".into(),
                kernel.display().to_string(),
                "--disk".into(),
                "x.img,bogus".into(),
            ],
            "unknown disk option",
        ),
    ];
    for (args, needle) in cases {
        let out = starling().args(["vm", "run"]).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// `vm snapshot`, `vm restore` and `vm fork` as programs, on the test guest's counter.
#[test]
fn snapshot_restore_and_fork_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let Some(kernel) = guest(dir.path()) else {
        return;
    };
    let d = dir.path();
    let sock = d.join("api.sock");
    let log = d.join("console.log");
    let mut vm = starling()
        .args([
            "vm",
            "run",
            "--mem",
            "32M",
            "--cmdline",
            "counter",
            "--vsock",
        ])
        .arg(format!("3,{}", d.join("v.sock").display()))
        .arg("--api-socket")
        .arg(&sock)
        .arg("--console")
        .arg(&log)
        .arg("--kernel")
        .arg(&kernel)
        .spawn()
        .map(Reaped)
        .unwrap();
    let ticks = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("tick ") && l.ends_with("pattern ok"))
            .count()
    };
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait("ticks", &|| ticks(&log) >= 3 && sock.exists());

    let out = starling()
        .args(["vm", "fork"])
        .arg(&sock)
        .args(["-n", "2", "--dir"])
        .arg(d.join("forks"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(listing.lines().count(), 2, "{listing}");
    assert!(listing.starts_with("clone 1 pid "), "{listing}");
    for k in 1..=2 {
        let clog = d.join(format!("forks/clone-{k}/console.log"));
        wait("clone ticks", &|| ticks(&clog) >= 3);
        let st = starling_vmm::api::call(
            &d.join(format!("forks/clone-{k}/api.sock")),
            "POST",
            "/v1/vm/stop",
            &serde_json::Value::Null,
        )
        .unwrap();
        assert_eq!(st.0, 200);
    }

    // A snapshot the VM goes on after; a second one into the same directory, taken while the
    // VM still runs, is refused naming the directory, and leaves the first as it was.
    let snap = d.join("snap");
    let out = starling()
        .args(["vm", "snapshot"])
        .arg(&sock)
        .arg(&snap)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = std::fs::read(snap.join("state")).unwrap();
    let ticks_then = ticks(&log);
    wait("ticks after the snapshot", &|| ticks(&log) > ticks_then + 2);
    let out = starling()
        .args(["vm", "snapshot"])
        .arg(&sock)
        .arg(&snap)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a second snapshot wrote over the first"
    );
    assert!(
        err.contains(&snap.display().to_string()) && err.contains("not empty"),
        "{err}"
    );
    assert_eq!(std::fs::read(snap.join("state")).unwrap(), state);
    let out = starling().args(["vm", "stop"]).arg(&sock).output().unwrap();
    assert!(out.status.success());
    assert!(vm.wait().unwrap().success());

    let log2 = d.join("restored.log");
    let sock2 = d.join("restored.sock");
    let mut restored = starling()
        .args(["vm", "restore"])
        .arg(&snap)
        .arg("--console")
        .arg(&log2)
        .arg("--api-socket")
        .arg(&sock2)
        .spawn()
        .map(Reaped)
        .unwrap();
    wait("restored ticks", &|| ticks(&log2) >= 3);
    // Without --run-dir the monitor makes one of its own, private, in the user's runtime
    // directory, and takes it away when it ends.
    let run_dir = starling_vmm::builder::default_run_dir_of(restored.0.id());
    assert!(run_dir.is_dir(), "{} while the VM runs", run_dir.display());
    {
        use std::os::unix::fs::MetadataExt;
        let mode = std::fs::metadata(&run_dir).unwrap().mode() & 0o777;
        let root = std::fs::metadata(run_dir.parent().unwrap()).unwrap().mode() & 0o777;
        assert_eq!((mode, root), (0o700, 0o700), "{}", run_dir.display());
    }
    starling_vmm::api::call(&sock2, "POST", "/v1/vm/stop", &serde_json::Value::Null).unwrap();
    assert!(restored.wait().unwrap().success());
    assert!(!run_dir.exists(), "{} outlived its VM", run_dir.display());
    let first: u64 = std::fs::read_to_string(&log2)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("tick ")?.split(' ').next()?.parse().ok())
        .unwrap();
    assert!(first > 3, "the restored VM continued (tick {first})");

    let out = starling()
        .args(["vm", "restore"])
        .arg(d.join("nothing"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing"));
}

/// The tick numbers of a console, in order.
fn tick_numbers(console: &str) -> Vec<u64> {
    console
        .lines()
        .filter(|l| l.ends_with("pattern ok"))
        .filter_map(|l| l.strip_prefix("tick ")?.split(' ').next()?.parse().ok())
        .collect()
}

/// Waits up to a minute for `f`, failing the test naming `what`.
fn wait_until(what: &str, f: &dyn Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_text(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Boots the test guest in `d` with `cmdline` (and `extra` flags of `vm run`) until it has
/// ticked five times, snapshots it into `d/snap` with `--stop`; the snapshot and the console
/// text before it.
fn ticking_snapshot(
    d: &Path,
    kernel: &Path,
    cmdline: &str,
    extra: &[&str],
) -> (std::path::PathBuf, String) {
    let sock = d.join("api.sock");
    let log = d.join("console.log");
    let mut vm = starling()
        .args(["vm", "run", "--mem", "32M", "--cmdline", cmdline])
        .args(extra)
        .arg("--api-socket")
        .arg(&sock)
        .arg("--console")
        .arg(&log)
        .arg("--kernel")
        .arg(kernel)
        .spawn()
        .map(Reaped)
        .unwrap();
    wait_until("ticks", &|| {
        tick_numbers(&read_text(&log)).len() >= 5 && sock.exists()
    });
    let snap = d.join("snap");
    let out = starling()
        .args(["vm", "snapshot", "--stop"])
        .arg(&sock)
        .arg(&snap)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(vm.wait().unwrap().success());
    (snap, read_text(&log))
}

/// The ticks of a console that went on in another log after a snapshot: the texts are joined
/// first, since the snapshot may have caught the guest in the middle of a line. Fails unless
/// they count on by one across the two.
fn assert_continued(before: &str, after: &str) {
    let (b, joined) = (
        tick_numbers(before),
        tick_numbers(&format!("{before}{after}")),
    );
    assert!(
        joined.len() >= b.len() + 5 && joined.windows(2).all(|w| w[1] == w[0] + 1),
        "the restored VM did not continue where the snapshot was: {b:?}, then {joined:?} \
         with the restored VM's console"
    );
}

/// `vm memory-server` and `vm restore --lazy` as programs: the server prints the address
/// pinned to the snapshot's state; a restore given it continues the guest from a directory
/// that holds nothing of the snapshot, fetching only the pages the guest touches; an address
/// without the state's hash is refused before anything runs.
#[test]
fn lazy_restore_from_a_memory_server_on_the_command_line() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let Some(kernel) = guest(dir.path()) else {
        return;
    };
    let d = dir.path();
    // 512 KiB of ballast written once and never read again: never fetched.
    let vsock = format!("3,{}", d.join("v.sock").display());
    let (snap, before) = ticking_snapshot(d, &kernel, "counter ballast", &["--vsock", &vsock]);
    let (wait, read) = (wait_until, read_text);
    let pages_with_data = std::fs::metadata(snap.join("memory.map")).unwrap().len() / 40;

    let listen = format!("unix:{}", d.join("mem.sock").display());
    let mut server = starling()
        .args(["vm", "memory-server"])
        .arg(&snap)
        .args(["--listen", &listen])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map(Reaped)
        .unwrap();
    let mut pinned = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut pinned)
        .unwrap();
    let pinned = pinned.trim().to_owned();
    let (addr, hash) = pinned.split_once('#').expect("ADDR#HASH");
    assert_eq!(addr, listen);
    assert_eq!(hash.len(), 64, "{pinned}");

    let elsewhere = d.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let out = starling()
        .args(["vm", "restore"])
        .arg(&elsewhere)
        .args(["--lazy", &listen, "--console", "off"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no state hash"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let log2 = d.join("lazy.log");
    let sock2 = d.join("lazy.sock");
    let mut restored = starling()
        .args(["vm", "restore"])
        .arg(&elsewhere)
        .args(["--lazy", &pinned])
        .arg("--console")
        .arg(&log2)
        .arg("--api-socket")
        .arg(&sock2)
        .spawn()
        .map(Reaped)
        .unwrap();
    wait("lazy ticks", &|| {
        tick_numbers(&read(&log2)).len() >= 5 && sock2.exists()
    });
    let out = starling()
        .args(["vm", "status"])
        .arg(&sock2)
        .output()
        .unwrap();
    assert!(out.status.success());
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let out = starling()
        .args(["vm", "stop"])
        .arg(&sock2)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(restored.wait().unwrap().success());
    server.kill().unwrap();
    server.wait().unwrap();

    assert_continued(&before, &read(&log2));
    let fetched = status["lazy"]["pages_fetched"].as_u64().unwrap();
    assert!(
        fetched > 0 && fetched + 100 < pages_with_data,
        "{fetched} of {pages_with_data} pages with data fetched (the 128 pages of ballast are \
         never touched): {status}"
    );
}

/// A memory server between hosts on `tls://`: mutual TLS with the fleet's certificates. A
/// restore with a certificate of the fleet's CA continues the guest; one without certificates,
/// with another CA's, or a client that speaks no TLS gets nothing of the guest's memory; a
/// host's own memory server fetches through TLS and serves its clones on a unix socket.
#[test]
fn lazy_restore_across_hosts_over_mutual_tls() {
    use std::io::{BufRead, Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let Some(kernel) = guest(dir.path()) else {
        return;
    };
    if Command::new("openssl").arg("version").output().is_err() {
        starling_testkit::skip("openssl is missing (it makes the test's certificates)");
        return;
    }
    let d = dir.path();
    let tls = d.join("tls");
    std::fs::create_dir(&tls).unwrap();
    starling_testkit::tls_certs(&tls);
    let (snap, before) = ticking_snapshot(d, &kernel, "counter", &[]);
    let (wait, read) = (wait_until, read_text);

    let with = |c: &mut Command, who: &str| {
        c.env("STARLING_TLS_CERT", tls.join(format!("{who}.pem")))
            .env("STARLING_TLS_KEY", tls.join(format!("{who}.key")))
            .env("STARLING_TLS_CA", tls.join("ca.pem"));
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("tls://127.0.0.1:{port}");
    // Without certificates a tls:// server does not start, and says what it needs.
    let out = starling()
        .args(["vm", "memory-server"])
        .arg(&snap)
        .args(["--listen", &listen])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--tls-cert"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut c = starling();
    c.args(["vm", "memory-server"])
        .arg(&snap)
        .args(["--listen", &listen])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    with(&mut c, "host");
    let mut server = c.spawn().map(Reaped).unwrap();
    let mut pinned = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut pinned)
        .unwrap();
    let pinned = pinned.trim().to_owned();
    assert!(pinned.starts_with(&format!("{listen}#")), "{pinned}");

    // A client that speaks no TLS: the memory protocol's first request gets nothing back.
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = raw.write_all(b"STRLMEM1\x01");
    let mut got = Vec::new();
    let _ = raw.read_to_end(&mut got);
    assert!(
        !got.windows(4).any(|w| w == b"tick"),
        "a plain client read state: {} bytes",
        got.len()
    );
    assert!(got.len() < 64, "{} bytes to a plain client", got.len());

    let elsewhere = d.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let restore = |who: Option<&str>, name: &str| {
        let mut c = starling();
        c.args(["vm", "restore"])
            .arg(&elsewhere)
            .args(["--lazy", &pinned])
            .arg("--console")
            .arg(d.join(format!("{name}.log")))
            .arg("--api-socket")
            .arg(d.join(format!("{name}.sock")))
            .arg("--run-dir")
            .arg(d.join(name));
        if let Some(w) = who {
            with(&mut c, w);
        }
        c
    };
    // No certificates, another CA's: refused before the guest runs.
    for (who, want) in [(None, "STARLING_TLS_CERT"), (Some("stranger"), "")] {
        let out = restore(who, "refused").output().unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{who:?} restored");
        assert!(e.contains(want), "{who:?}: {e}");
    }
    // The fleet's client certificate: the guest continues.
    let name = "lazy";
    let mut restored = restore(Some("client"), name).spawn().map(Reaped).unwrap();
    let log2 = d.join(format!("{name}.log"));
    let sock2 = d.join(format!("{name}.sock"));
    wait("lazy ticks", &|| {
        tick_numbers(&read(&log2)).len() >= 5 && sock2.exists()
    });
    let out = starling()
        .args(["vm", "stop"])
        .arg(&sock2)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(restored.wait().unwrap().success());
    assert_continued(&before, &read(&log2));

    // A host's own memory server, fetching through TLS, serving its clones on a unix socket.
    let local = format!("unix:{}", d.join("host-mem.sock").display());
    let mut c = starling();
    c.args(["vm", "memory-server", &pinned, "--listen", &local])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    with(&mut c, "host");
    let mut host_server = c.spawn().map(Reaped).unwrap();
    let mut local_pinned = String::new();
    std::io::BufReader::new(host_server.stdout.take().unwrap())
        .read_line(&mut local_pinned)
        .unwrap();
    let local_pinned = local_pinned.trim().to_owned();
    assert!(local_pinned.starts_with("unix:"), "{local_pinned}");
    let log3 = d.join("via-host.log");
    let sock3 = d.join("via-host.sock");
    let mut via_host = starling()
        .args(["vm", "restore"])
        .arg(&elsewhere)
        .args(["--lazy", &local_pinned])
        .arg("--console")
        .arg(&log3)
        .arg("--api-socket")
        .arg(&sock3)
        .arg("--run-dir")
        .arg(d.join("via-host"))
        .spawn()
        .map(Reaped)
        .unwrap();
    wait("ticks through the host's server", &|| {
        tick_numbers(&read(&log3)).len() >= 5 && sock3.exists()
    });
    let out = starling()
        .args(["vm", "stop"])
        .arg(&sock3)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(via_host.wait().unwrap().success());
    drop(server);
    drop(host_server);
}
