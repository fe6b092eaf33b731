//! Tier 1 for snapshots and forks, on this host's /dev/kvm with the project's test guest: its
//! `counter` mode counts, asks the monitor who it is and keeps a memory pattern holding its id;
//! its `fork=N` mode forks itself through the vsock service and joins its clones.
//!
//! The console lines are the evidence: a restored or cloned VM's `tick` numbers continue the
//! original's without a gap or a repeat, and no VM ever finds its pattern written by another.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use starling_testkit::wait_for;
use starling_vmm::test_guest::TestGuest;
use starling_vmm::{Console, ExitReason, RestoreSpec, Vm, VmConfig, VsockConfig};

/// The test guest, compiled once per test run; None after a loud skip (a failure under CI)
/// when this host has no /dev/kvm or C compiler.
fn guests() -> Option<&'static TestGuest> {
    // Clones are started from this binary's monitor: set once, before any fork.
    static ENV: std::sync::Once = std::sync::Once::new();
    ENV.call_once(|| std::env::set_var("STARLING_VMM", env!("CARGO_BIN_EXE_starling-vmm")));
    starling_vmm::test_guest::once(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("snapshot-guest"))
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
    c.api_socket = Some(dir.join("api.sock"));
    c.vsock = Some(VsockConfig {
        cid: 3,
        path: dir.join("vsock.sock"),
    });
    c.run_dir = Some(dir.join("run"));
    c
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// (tick number, id, pattern ok) of every complete tick line.
fn ticks(console: &str) -> Vec<(u64, u64, bool)> {
    console
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w.as_slice() {
                ["tick", n, "id", id, "pattern", ok] => {
                    Some((n.parse().ok()?, id.parse().ok()?, *ok == "ok"))
                }
                _ => None,
            }
        })
        .collect()
}

fn api(sock: &Path, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let mut s = UnixStream::connect(sock).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: vmm\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp[9..12].parse().unwrap();
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    (code, serde_json::from_str(body).unwrap())
}

/// Ticks of `before` and `after` joined must count up by one, with every pattern intact.
fn assert_continues(before: &str, after: &str) {
    let joined = format!("{before}{after}");
    let t = ticks(&joined);
    assert!(t.len() > 5, "too few ticks:\n{joined}");
    for w in t.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1, "ticks jump:\n{joined}");
    }
    assert!(t.iter().all(|x| x.2), "a pattern was clobbered:\n{joined}");
}

#[test]
fn snapshot_then_restore_in_a_new_process_continues_exactly() {
    let g = guests_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let c = config(g, "counter", dir.path());
    let sock = c.api_socket.clone().unwrap();
    let log = dir.path().join("console.log");
    let vm = Vm::build(c).unwrap();
    let runner = std::thread::spawn(move || vm.run().unwrap());
    wait_for("10 ticks", 60, || {
        ticks(&read(&log)).len() >= 10 && sock.exists()
    });

    let snap = dir.path().join("snap");
    let info = snapshot_and_stop(&sock, &snap);
    assert_eq!(runner.join().unwrap(), ExitReason::Stopped(None));
    let state_bytes = info["state_bytes"].as_u64().unwrap();
    let mem_bytes = info["memory_bytes"].as_u64().unwrap();
    eprintln!(
        "snapshot: state {state_bytes} B, memory {mem_bytes} B written of 64 MiB, paused {} us",
        info["paused_us"]
    );
    assert!(state_bytes < 64 * 1024, "the state file is small");
    // Guest memory and state are the owner's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&snap), 0o700);
    for f in ["memory", "memory.map", "state"] {
        assert_eq!(mode(&snap.join(f)), 0o600, "{f}");
    }
    assert!(mem_bytes < 8 << 20, "only pages with data are written");
    let before = read(&log);

    // Restore in a new monitor process.
    let log2 = dir.path().join("restored.log");
    let sock2 = dir.path().join("restored.sock");
    let spec = RestoreSpec {
        dir: snap.clone(),
        run_dir: Some(dir.path().join("restored")),
        api_socket: Some(sock2.clone()),
        console: Some(Console::File(log2.clone())),
        ..Default::default()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_starling-vmm"))
        .arg("--restore-json")
        .arg(serde_json::to_string(&spec).unwrap())
        .spawn()
        .unwrap();
    wait_for("restored ticks", 60, || ticks(&read(&log2)).len() >= 10);
    let (_, st) = api(&sock2, "GET", "/v1/vm", "");
    eprintln!("restored in {} us", st["restored_in_us"]);
    assert!(st["restored_in_us"].as_u64().is_some());
    api(&sock2, "POST", "/v1/vm/stop", "");
    assert!(child.wait().unwrap().success());
    assert_continues(&before, &read(&log2));
    assert_ne!(
        ticks(&read(&log2))[0].0,
        1,
        "the restored VM did not start over"
    );
}

#[test]
fn damaged_or_foreign_state_files_are_refused_by_name() {
    let g = guests_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let c = config(g, "counter", dir.path());
    let log = dir.path().join("console.log");
    let vm = Vm::build(c).unwrap();
    let h = vm.handle();
    let runner = std::thread::spawn(move || vm.run().unwrap());
    wait_for("ticks", 60, || ticks(&read(&log)).len() >= 2);
    let snap = dir.path().join("snap");
    h.snapshot(&snap, true).unwrap();
    runner.join().unwrap();
    let err = h.snapshot(&dir.path().join("again"), false).unwrap_err();
    assert!(err.contains("not running"), "{err}");

    let state = snap.join("state");
    let good = std::fs::read(&state).unwrap();
    let restore = |name: &str| {
        Vm::restore(&RestoreSpec {
            dir: snap.clone(),
            run_dir: Some(dir.path().join(name)),
            console: Some(Console::Off),
            vsock_path: Some(dir.path().join(format!("{name}.vsock"))),
            ..Default::default()
        })
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
    };
    let mut v = good.clone();
    v[8] = 99;
    std::fs::write(&state, &v).unwrap();
    let e = restore("a");
    assert!(
        e.contains(&snap.display().to_string()) && e.contains("state format version 99"),
        "{e}"
    );
    let mut v = good.clone();
    let mid = v.len() / 2;
    v[mid] ^= 0xff;
    std::fs::write(&state, &v).unwrap();
    assert!(restore("b").contains("checksum mismatch"));
    std::fs::write(&state, &good[..good.len() / 2]).unwrap();
    assert!(restore("c").contains("truncated"));
    std::fs::write(&state, b"junk").unwrap();
    assert!(restore("d").contains("not a Starling VM state file"));
    std::fs::write(&state, &good).unwrap();
    std::fs::remove_file(snap.join("memory")).unwrap();
    assert!(restore("e").contains("memory"));
    // A snapshot is never written over.
    let vm = Vm::build(config(g, "counter", dir.path())).unwrap();
    let h = vm.handle();
    let runner = std::thread::spawn(move || vm.run().unwrap());
    wait_for("ticks", 60, || ticks(&read(&log)).len() >= 2);
    let e = h.snapshot(&snap, false).unwrap_err();
    assert!(e.contains("not empty"), "{e}");
    assert_eq!(std::fs::read(&state).unwrap(), good);
    h.stop(None);
    runner.join().unwrap();
}

/// A VM with a disk (its state names a host file) snapshotted by a monitor whose key is
/// `a.key`: restored under that key; refused under another key, with its MAC stripped, and
/// with a MAC remade under another key, each naming why — and the disk is not opened then.
#[test]
fn a_state_naming_host_files_is_restored_only_under_its_writer_s_key() {
    use starling_vmm::snapshot::{file, key::load_or_create};
    let g = guests_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let key_a = dir.path().join("keys/a.key");
    let key_b = dir.path().join("keys/b.key");
    let mut c = config(g, "counter", dir.path());
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    c.disks.push(starling_vmm::DiskConfig {
        path: disk.clone(),
        read_only: false,
    });
    let sock = c.api_socket.clone().unwrap();
    let log = dir.path().join("console.log");
    let mut vm = Command::new(env!("CARGO_BIN_EXE_starling-vmm"))
        .arg("--config-json")
        .arg(serde_json::to_string(&c).unwrap())
        .env("STARLING_SNAPSHOT_KEY", &key_a)
        .spawn()
        .unwrap();
    wait_for("ticks", 60, || {
        ticks(&read(&log)).len() >= 3 && sock.exists()
    });
    let snap = dir.path().join("snap");
    snapshot_and_stop(&sock, &snap);
    assert!(vm.wait().unwrap().success());
    // The monitor made the key, privately.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_a).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let restore = |name: &str, key: &Path| {
        let spec = RestoreSpec {
            dir: snap.clone(),
            run_dir: Some(dir.path().join(name)),
            api_socket: Some(dir.path().join(format!("{name}.sock"))),
            console: Some(Console::File(dir.path().join(format!("{name}.log")))),
            vsock_path: Some(dir.path().join(format!("{name}.vsock"))),
            ..Default::default()
        };
        Command::new(env!("CARGO_BIN_EXE_starling-vmm"))
            .arg("--restore-json")
            .arg(serde_json::to_string(&spec).unwrap())
            .env("STARLING_SNAPSHOT_KEY", key)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let refused = |name: &str, key: &Path| {
        let out = restore(name, key).wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            err.contains(&snap.display().to_string())
                && err.contains("names host resources (disk "),
            "{err}"
        );
        // Nothing was built: no run directory holds an overlay of the disk.
        assert!(!dir.path().join(name).exists(), "{name}");
        err
    };
    // Another user's (or host's) key.
    let e = refused("other", &key_b);
    assert!(
        e.contains("not made with this user's snapshot key") && e.contains("b.key"),
        "{e}"
    );
    // Re-signed with that other key after a change (the disk pointed elsewhere, say).
    let state_path = snap.join("state");
    let good = std::fs::read(&state_path).unwrap();
    let a = load_or_create(&key_a).unwrap();
    let (state, mac) = file::decode(&state_path, &good, Some(&a)).unwrap();
    assert_eq!(mac, file::Mac::Valid);
    let b = load_or_create(&key_b).unwrap();
    std::fs::write(&state_path, file::encode(&state, Some(&b)).unwrap()).unwrap();
    let e = refused("forged", &key_a);
    assert!(e.contains("not made with this user's snapshot key"), "{e}");
    // Without any MAC.
    std::fs::write(&state_path, file::encode(&state, None).unwrap()).unwrap();
    let e = refused("unsigned", &key_a);
    assert!(e.contains("carries no MAC"), "{e}");
    // The writer's key: it runs on.
    std::fs::write(&state_path, &good).unwrap();
    let mut child = restore("same", &key_a);
    let log2 = dir.path().join("same.log");
    wait_for("restored ticks", 60, || ticks(&read(&log2)).len() >= 2);
    api(&dir.path().join("same.sock"), "POST", "/v1/vm/stop", "");
    assert!(child.wait().unwrap().success());
}

#[test]
fn fork_from_the_host_gives_clones_that_continue_apart() {
    let g = guests_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let c = config(g, "counter", dir.path());
    let sock = c.api_socket.clone().unwrap();
    let log = dir.path().join("console.log");
    let vm = Vm::build(c).unwrap();
    let runner = std::thread::spawn(move || vm.run().unwrap());
    wait_for("ticks", 60, || {
        ticks(&read(&log)).len() >= 5 && sock.exists()
    });

    let (code, info) = api(&sock, "POST", "/v1/vm/fork", r#"{"count": 3}"#);
    assert_eq!(code, 200, "{info}");
    let clones = info["clones"].as_array().unwrap().clone();
    assert_eq!(clones.len(), 3);
    eprintln!(
        "fork of 3: parent paused {} us, all running after {} us",
        info["paused_us"], info["total_us"]
    );
    let logs: Vec<PathBuf> = clones
        .iter()
        .map(|c| PathBuf::from(c["dir"].as_str().unwrap()).join("console.log"))
        .collect();
    for l in &logs {
        wait_for("clone ticks", 60, || {
            ticks(&read(l)).iter().filter(|t| t.1 != 0).count() >= 3
        });
    }
    let parent_now = read(&log);
    for (k, (l, c)) in logs.iter().zip(&clones).enumerate() {
        let id = k as u64 + 1;
        assert_eq!(c["id"], id);
        let t = ticks(&read(l));
        // The clone's first tick follows one the parent printed: the same instant.
        let first = t[0].0;
        assert!(
            ticks(&parent_now).iter().any(|p| p.0 == first - 1),
            "clone {id} starts at tick {first}, which does not follow the parent's"
        );
        for w in t.windows(2) {
            assert_eq!(w[1].0, w[0].0 + 1);
        }
        assert!(t.iter().all(|x| x.2), "clone {id}: pattern clobbered");
        assert!(
            t.iter().all(|x| x.1 == 0 || x.1 == id),
            "clone {id}: ids {t:?}"
        );
        let (_, st) = api(
            Path::new(c["api_socket"].as_str().unwrap()),
            "GET",
            "/v1/vm",
            "",
        );
        assert_eq!(st["clone_id"], id);
        // Forks through the API are the operator's: the family's budget is untouched.
        assert_eq!(st["fork_budget_left"], 1024);
        eprintln!("clone {id} restored in {} us", st["restored_in_us"]);
    }
    // The parent goes on as itself, its pattern untouched by the clones.
    wait_for("parent ticks", 60, || {
        ticks(&read(&log)).len() > ticks(&parent_now).len() + 3
    });
    let pt = ticks(&read(&log));
    assert!(pt.iter().all(|x| x.1 == 0 && x.2), "parent: {pt:?}");
    for c in &clones {
        api(
            Path::new(c["api_socket"].as_str().unwrap()),
            "POST",
            "/v1/vm/stop",
            "",
        );
    }
    // A fork directory is never shared.
    let used = PathBuf::from(clones[0]["dir"].as_str().unwrap())
        .parent()
        .unwrap()
        .to_owned();
    let (code, e) = api(
        &sock,
        "POST",
        "/v1/vm/fork",
        &format!(r#"{{"count": 1, "dir": "{}"}}"#, used.display()),
    );
    assert_eq!(code, 409);
    assert!(e["error"].as_str().unwrap().contains("not empty"), "{e}");
    api(&sock, "POST", "/v1/vm/stop", "");
    runner.join().unwrap();
    // Bad requests are refused.
    let e = Vm::build(config(g, "counter", dir.path()))
        .unwrap()
        .handle()
        .fork(0, None)
        .unwrap_err();
    assert!(e.contains("between 1"), "{e}");
}

#[test]
fn a_guest_forks_itself_and_joins_its_clones() {
    let g = guests_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let c = config(g, "fork=3 poweroff", dir.path());
    let log = dir.path().join("console.log");
    let reason = Vm::build(c).unwrap().run().unwrap();
    let parent = read(&log);
    assert_eq!(reason, ExitReason::PowerOff, "{parent}");
    assert!(
        parent.contains("fork: I am 0 counter 1001 inherited ok pattern ok"),
        "{parent}"
    );
    assert!(parent.contains("join: exit 11 12 13"), "{parent}");
    let mut seeds = vec![whoami_seed(&parent, 0)];
    for k in 1..=3 {
        let l = read(&dir.path().join(format!("run/fork-1/clone-{k}/console.log")));
        assert!(
            l.contains(&format!(
                "fork: I am {k} counter 1001 inherited ok pattern ok"
            )),
            "clone {k}:\n{l}"
        );
        assert!(l.contains(&format!("hostname=starling-{k} ")), "{l}");
        seeds.push(whoami_seed(&l, k));
    }
    seeds.sort();
    seeds.dedup();
    assert_eq!(seeds.len(), 4, "every VM has its own RNG seed");
}

/// One fork budget for a VM and every generation of its clones: a guest whose clone forks the
/// next clone, and so on, is refused once the family's budget (3 here) is spent, not after
/// each clone has spent a fresh budget of its own.
#[test]
fn a_chain_of_guest_forks_spends_one_budget_across_generations() {
    let g = guests_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(g, "forkchain", dir.path());
    c.fork_budget = 3;
    let reason = Vm::build(c).unwrap().run().unwrap();
    // The first VM ends after the whole chain (each generation joins its clone).
    assert_eq!(
        reason,
        ExitReason::GuestExit(20),
        "{}",
        read(&dir.path().join("console.log"))
    );
    let mut logs = Vec::new();
    let mut clone_dir = dir.path().join("run");
    for generation in 1..=3 {
        clone_dir = clone_dir.join("fork-1/clone-1");
        let log = read(&clone_dir.join("console.log"));
        assert!(
            log.contains(&format!("chain: generation {generation} started")),
            "generation {generation}:\n{log}"
        );
        logs.push(log);
    }
    // Each generation's join reports its clone's exit: 20 + generation when it forked, 40 + 3
    // for the one refused.
    let root = read(&dir.path().join("console.log"));
    assert!(
        root.contains("chain: generation 0 joined: exit 21"),
        "{root}"
    );
    assert!(
        logs[0].contains("chain: generation 1 joined: exit 22"),
        "{}",
        logs[0]
    );
    assert!(
        logs[1].contains("chain: generation 2 joined: exit 43"),
        "{}",
        logs[1]
    );
    assert!(
        logs[2].contains(
            "chain: generation 3 refused: error fork: this VM and its clones may fork 0 more \
             clones (their fork budget)"
        ),
        "{}",
        logs[2]
    );
    assert!(
        !clone_dir.join("fork-1").exists(),
        "a fourth generation was forked"
    );
}

fn whoami_seed(console: &str, k: u32) -> String {
    let l = console
        .lines()
        .find(|l| l.starts_with(&format!("fork: {k} whoami id={k} ")))
        .unwrap_or_else(|| panic!("no whoami line for {k}:\n{console}"));
    l.split_whitespace()
        .find_map(|w| w.strip_prefix("seed="))
        .unwrap()
        .to_owned()
}

/// Boots the counter guest with 512 KiB of ballast it never reads again, snapshots it (stop)
/// and returns the snapshot directory and the console so far.
fn counter_snapshot(g: &TestGuest, dir: &Path) -> (PathBuf, String) {
    let c = config(g, "counter ballast", dir);
    let log = dir.join("console.log");
    let vm = Vm::build(c).unwrap();
    let h = vm.handle();
    let runner = std::thread::spawn(move || vm.run().unwrap());
    wait_for("ticks", 60, || ticks(&read(&log)).len() >= 5);
    let snap = dir.join("snap");
    h.snapshot(&snap, true).unwrap();
    runner.join().unwrap();
    (snap, read(&log))
}

/// The monitor binary, run by `prefix` (e.g. `ip netns exec NS`) if any.
fn monitor(prefix: &[&str]) -> Command {
    match prefix.split_first() {
        Some((p, rest)) => {
            let mut c = Command::new(p);
            c.args(rest).arg(env!("CARGO_BIN_EXE_starling-vmm"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_starling-vmm")),
    }
}

/// Snapshots the VM behind `sock` into `dir` over its API and stops it; the API's answer.
fn snapshot_and_stop(sock: &Path, dir: &Path) -> serde_json::Value {
    let (code, info) = api(
        sock,
        "POST",
        "/v1/vm/snapshot",
        &format!(r#"{{"dir": "{}", "stop": true}}"#, dir.display()),
    );
    assert_eq!(code, 200, "{info}");
    info
}

/// A memory server (the monitor binary, `prefix` running it) and the pinned address it
/// prints first (`ADDR#HASH`).
fn memory_server(prefix: &[&str], args: &[&str]) -> (std::process::Child, String) {
    let mut child = monitor(prefix)
        .arg("--memory-server")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    (child, line.trim().to_owned())
}

/// Restores lazily from `addr` in a new process (the monitor binary; `prefix` runs it, e.g. in
/// a network namespace), lets it tick, and returns its console, its lazy statistics.
fn lazy_clone(prefix: &[&str], addr: &str, dir: &Path, name: &str) -> (String, serde_json::Value) {
    let log = dir.join(format!("{name}.log"));
    let sock = dir.join(format!("{name}.sock"));
    let spec = RestoreSpec {
        lazy: Some(addr.into()),
        run_dir: Some(dir.join(name)),
        api_socket: Some(sock.clone()),
        console: Some(Console::File(log.clone())),
        ..Default::default()
    };
    let spec = serde_json::to_string(&spec).unwrap();
    let mut child = monitor(prefix)
        .arg("--restore-json")
        .arg(spec)
        .spawn()
        .unwrap();
    wait_for("lazy ticks", 60, || {
        ticks(&read(&log)).len() >= 5 && sock.exists()
    });
    let (_, st) = api(&sock, "GET", "/v1/vm", "");
    api(&sock, "POST", "/v1/vm/stop", "");
    assert!(child.wait().unwrap().success());
    (read(&log), st["lazy"].clone())
}

fn server_stats(addr: &str) -> starling_vmm::lazy::ServerStats {
    let a: starling_vmm::lazy::Addr = addr.parse().unwrap();
    let mut c = None;
    wait_for("the memory server", 30, || {
        c = starling_vmm::lazy::LazyClient::connect(&a).ok();
        c.is_some()
    });
    c.unwrap().stats().unwrap()
}

fn map_pages(snap: &Path) -> u64 {
    std::fs::metadata(snap.join("memory.map")).unwrap().len() / 40
}

#[test]
fn lazy_restore_fetches_exactly_the_pages_it_touches_and_a_host_fetches_each_once() {
    let g = guests_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let (snap, before) = counter_snapshot(g, dir.path());
    let with_data = map_pages(&snap);
    let origin = format!("unix:{}", dir.path().join("origin.sock").display());
    let host = format!("unix:{}", dir.path().join("host.sock").display());
    let (mut origin_server, pinned_origin) =
        memory_server(&[], &[snap.to_str().unwrap(), "--listen", &origin]);
    let state_hash = blake3::hash(&std::fs::read(snap.join("state")).unwrap());
    assert_eq!(pinned_origin, format!("{origin}#{}", state_hash.to_hex()));
    server_stats(&origin);
    // This host's memory server, fetching from the origin once per page.
    let (mut host_server, pinned_host) = memory_server(&[], &[&pinned_origin, "--listen", &host]);
    assert_eq!(pinned_host, format!("{host}#{}", state_hash.to_hex()));
    server_stats(&host);

    // The state is pinned: an address without its hash, or with another snapshot's, is
    // refused before anything runs.
    for (lazy, want) in [
        (host.clone(), "no state hash"),
        (
            format!("{host}#{}", blake3::hash(b"other").to_hex()),
            "not the pinned",
        ),
        (format!("{host}#abc"), "not a BLAKE3 hash"),
    ] {
        let spec = RestoreSpec {
            lazy: Some(lazy),
            run_dir: Some(dir.path().join("refused")),
            console: Some(Console::Off),
            ..Default::default()
        };
        match Vm::restore(&spec) {
            Ok(_) => panic!("{:?} was restored", spec.lazy),
            Err(e) => assert!(e.to_string().contains(want), "{e}"),
        }
    }

    let (c1, l1) = lazy_clone(&[], &pinned_host, dir.path(), "lazy1");
    assert_continues(&before, &c1);
    let fetched1 = l1["pages_fetched"].as_u64().unwrap();
    let zero1 = l1["zero_pages"].as_u64().unwrap();
    eprintln!(
        "lazy clone 1: {fetched1} pages fetched, {zero1} zero pages filled, {} bytes received; {with_data} pages hold data",
        l1["bytes_received"]
    );
    // The 512 KiB of ballast (128 pages) is never touched again, so never fetched.
    assert!(
        fetched1 + 100 < with_data,
        "{fetched1} of {with_data} pages fetched"
    );
    assert!(fetched1 > 3);
    let s = server_stats(&host);
    assert_eq!(
        s.pages_served, fetched1,
        "exactly the touched pages, each once"
    );
    assert_eq!(s.upstream_pages, fetched1);
    assert_eq!(l1["bytes_received"].as_u64().unwrap(), fetched1 * 4096);

    let (c2, l2) = lazy_clone(&[], &pinned_host, dir.path(), "lazy2");
    assert_continues(&before, &c2);
    let fetched2 = l2["pages_fetched"].as_u64().unwrap();
    let s = server_stats(&host);
    let o = server_stats(&origin);
    eprintln!(
        "lazy clone 2: {fetched2} pages; host server served {}, fetched {} from the origin",
        s.pages_served, s.upstream_pages
    );
    assert_eq!(s.pages_served, fetched1 + fetched2);
    assert!(
        s.upstream_pages < fetched1 + fetched2 && s.upstream_pages >= fetched1.max(fetched2),
        "the second clone's pages come from the host's copy: {} fetched upstream",
        s.upstream_pages
    );
    assert_eq!(o.pages_served, s.upstream_pages);

    // A lazily restored VM can itself be snapshotted: the pages it never fetched are fetched
    // first, so the new snapshot is whole and restores without the server.
    let log3 = dir.path().join("lazy3.log");
    let sock3 = dir.path().join("lazy3.sock");
    let spec = RestoreSpec {
        lazy: Some(pinned_host.clone()),
        run_dir: Some(dir.path().join("lazy3")),
        api_socket: Some(sock3.clone()),
        console: Some(Console::File(log3.clone())),
        ..Default::default()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_starling-vmm"))
        .arg("--restore-json")
        .arg(serde_json::to_string(&spec).unwrap())
        .spawn()
        .unwrap();
    wait_for("lazy ticks", 60, || {
        ticks(&read(&log3)).len() >= 3 && sock3.exists()
    });
    let snap2 = dir.path().join("snap2");
    snapshot_and_stop(&sock3, &snap2);
    assert!(child.wait().unwrap().success());
    assert!(
        map_pages(&snap2) >= with_data - 2,
        "the ballast came along: {} of {with_data} pages",
        map_pages(&snap2)
    );
    origin_server.kill().unwrap();
    host_server.kill().unwrap();
    let _ = origin_server.wait();
    let _ = host_server.wait();
    let log4 = dir.path().join("from-lazy.log");
    let vm = Vm::restore(&RestoreSpec {
        dir: snap2,
        run_dir: Some(dir.path().join("from-lazy")),
        console: Some(Console::File(log4.clone())),
        ..Default::default()
    })
    .unwrap();
    let h = vm.handle();
    let runner = std::thread::spawn(move || vm.run().unwrap());
    wait_for("ticks after the servers are gone", 60, || {
        ticks(&read(&log4)).len() >= 3
    });
    h.stop(None);
    runner.join().unwrap();
    assert_continues(&format!("{before}{}", read(&log3)), &read(&log4));
}

/// Runs `ip ARGS`, false when it fails.
fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn lazy_clone_on_another_host_over_tcp() {
    let g = guests_or_skip!();
    let id = std::process::id() % 10000;
    let (a, b) = (format!("stla{id}"), format!("stlb{id}"));
    if !ip(&["netns", "add", &a]) {
        starling_testkit::skip("cannot create network namespaces here (needs root and iproute2)");
        return;
    }
    assert!(ip(&["netns", "add", &b]));
    let (va, vb) = (format!("va{id}"), format!("vb{id}"));
    let setup = ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])
        && ip(&["link", "set", &va, "netns", &a])
        && ip(&["link", "set", &vb, "netns", &b])
        && ip(&["-n", &a, "addr", "add", "10.201.0.1/24", "dev", &va])
        && ip(&["-n", &b, "addr", "add", "10.201.0.2/24", "dev", &vb])
        && ip(&["-n", &a, "link", "set", &va, "up"])
        && ip(&["-n", &b, "link", "set", &vb, "up"])
        && ip(&["-n", &a, "link", "set", "lo", "up"]);
    let cleanup = || {
        ip(&["netns", "del", &a]);
        ip(&["netns", "del", &b]);
    };
    if !setup {
        cleanup();
        panic!("could not wire two network namespaces with a veth pair");
    }
    let dir = tempfile::tempdir().unwrap();
    let (snap, before) = counter_snapshot(g, dir.path());
    let (mut server, pinned) = memory_server(
        &["ip", "netns", "exec", &a],
        &[snap.to_str().unwrap(), "--listen", "tcp://10.201.0.1:7070"],
    );
    // The origin is reachable only from the other namespace.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !Command::new("ip")
        .args([
            "netns",
            "exec",
            &b,
            "bash",
            "-c",
            "exec 3<>/dev/tcp/10.201.0.1/7070",
        ])
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(Instant::now() < deadline, "memory server never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (console, lazy) = lazy_clone(&["ip", "netns", "exec", &b], &pinned, dir.path(), "remote");
    assert_continues(&before, &console);
    let fetched = lazy["pages_fetched"].as_u64().unwrap();
    let bytes = lazy["bytes_received"].as_u64().unwrap();
    eprintln!(
        "cross-namespace lazy clone: {fetched} pages fetched over TCP, {bytes} bytes of pages; {} pages hold data",
        map_pages(&snap)
    );
    assert!(fetched + 100 < map_pages(&snap));
    assert_eq!(bytes, fetched * 4096);
    server.kill().unwrap();
    let _ = server.wait();
    cleanup();
}

/// Three hosts on a bridge (network namespaces): the parent's memory server on A, a memory
/// server on B and on C fetching from A, and four lazy clones on each of B and C restoring
/// from their host's server at once. Each page the clones touch crosses A's link at most once
/// per host.
#[test]
fn clones_on_two_other_hosts_fetch_each_page_over_the_parent_s_link_once_per_host() {
    let g = guests_or_skip!();
    let id = std::process::id() % 10000;
    let net = format!("10.202.{}", id % 250);
    let bridge = format!("stlx{id}");
    let hosts: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|h| format!("stlx{id}{h}"))
        .collect();
    if !ip(&["link", "add", &bridge, "type", "bridge"]) {
        starling_testkit::skip("cannot create a bridge here (needs root and iproute2)");
        return;
    }
    let cleanup = || {
        for h in &hosts {
            ip(&["netns", "del", h]);
        }
        ip(&["link", "del", &bridge]);
    };
    // This side of the bridge too, to read A's statistics from here.
    let mut wired = ip(&["link", "set", &bridge, "up"])
        && ip(&["addr", "add", &format!("{net}.254/24"), "dev", &bridge]);
    for (i, h) in hosts.iter().enumerate() {
        let veth = format!("stlx{id}v{i}");
        wired = wired
            && ip(&["netns", "add", h])
            && ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", h,
            ])
            && ip(&["link", "set", &veth, "master", &bridge, "up"])
            && ip(&[
                "-n",
                h,
                "addr",
                "add",
                &format!("{net}.{}/24", i + 1),
                "dev",
                "eth0",
            ])
            && ip(&["-n", h, "link", "set", "eth0", "up"])
            && ip(&["-n", h, "link", "set", "lo", "up"]);
    }
    if !wired {
        cleanup();
        panic!("could not wire three network namespaces on a bridge");
    }
    let dir = tempfile::tempdir().unwrap();
    let (snap, before) = counter_snapshot(g, dir.path());
    let ns = |h: &str| {
        [
            "ip".to_string(),
            "netns".into(),
            "exec".into(),
            h.to_string(),
        ]
    };
    let a = ns(&hosts[0]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let origin_addr = format!("tcp://{net}.1:7070");
    let (mut origin, pinned) =
        memory_server(&a, &[snap.to_str().unwrap(), "--listen", &origin_addr]);
    let mut servers = Vec::new();
    let mut locals = Vec::new();
    for h in &hosts[1..] {
        let p = ns(h);
        let p: Vec<&str> = p.iter().map(String::as_str).collect();
        let local = format!("unix:{}", dir.path().join(format!("{h}.sock")).display());
        // The host's server reaches A over TCP (retried until A listens).
        let deadline = Instant::now() + Duration::from_secs(30);
        let (server, pinned_local) = loop {
            let (mut s, line) = memory_server(&p, &[&pinned, "--listen", &local]);
            if line.starts_with("unix:") {
                break (s, line);
            }
            let _ = s.kill();
            let _ = s.wait();
            assert!(
                Instant::now() < deadline,
                "host {h} never reached the origin"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        servers.push(server);
        locals.push((h.clone(), local, pinned_local));
    }
    // Four clones on each host at once.
    let results: Vec<(String, Vec<(String, serde_json::Value)>)> = std::thread::scope(|sc| {
        let handles: Vec<_> = locals
            .iter()
            .map(|(h, _, pinned_local)| {
                let dir = dir.path();
                sc.spawn(move || {
                    let clones: Vec<_> = (0..4)
                        .map(|k| {
                            let name = format!("{h}-clone{k}");
                            sc.spawn(move || lazy_clone(&[], pinned_local, dir, &name))
                        })
                        .collect();
                    (
                        h.clone(),
                        clones.into_iter().map(|c| c.join().unwrap()).collect(),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let o = server_stats(&origin_addr_from(&pinned));
    let mut upstream_total = 0;
    let mut touched_max = 0;
    for ((h, local, _), (_, clones)) in locals.iter().zip(&results) {
        let fetched: Vec<u64> = clones
            .iter()
            .map(|(console, lazy)| {
                assert_continues(&before, console);
                lazy["pages_fetched"].as_u64().unwrap()
            })
            .collect();
        let s = server_stats(local);
        let most = *fetched.iter().max().unwrap();
        touched_max = touched_max.max(most);
        eprintln!(
            "host {h}: clones fetched {fetched:?} pages from the host's server, which fetched {} from A",
            s.upstream_pages
        );
        assert_eq!(s.pages_served, fetched.iter().sum::<u64>());
        // Once per host: never more than the pages its clones touched, counted once.
        assert!(
            s.upstream_pages >= most && s.upstream_pages < fetched.iter().sum::<u64>(),
            "host {h}: {} pages over A's link for clones touching {fetched:?}",
            s.upstream_pages
        );
        upstream_total += s.upstream_pages;
    }
    assert_eq!(
        o.pages_served, upstream_total,
        "A served exactly what the hosts fetched"
    );
    eprintln!(
        "A's link: {} pages for 2 hosts whose clones touched at most {touched_max} each: {:.3} per page per host",
        o.pages_served,
        o.pages_served as f64 / (2 * touched_max) as f64
    );
    for mut s in servers {
        let _ = s.kill();
        let _ = s.wait();
    }
    let _ = origin.kill();
    let _ = origin.wait();
    cleanup();
}

/// The address part of a pinned `ADDR#HASH`.
fn origin_addr_from(pinned: &str) -> String {
    pinned.split('#').next().unwrap_or(pinned).to_string()
}
