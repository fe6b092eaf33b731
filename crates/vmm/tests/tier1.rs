//! Tier 1: the monitor on this host's /dev/kvm (whatever its flavour) with the project's own
//! test guest (tests/guest, compiled here with the system C compiler): both boot paths, every
//! device, malformed requests from the guest, the ways a guest ends the VM, the API socket,
//! and bad input refused before the guest starts.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use starling_vmm::test_guest::TestGuest;
use starling_vmm::{Console, DiskConfig, ExitReason, Vm, VmConfig, VsockConfig};

/// The test guest, compiled once per test run; None after a loud skip (a failure under CI)
/// when this host has no /dev/kvm or C compiler.
fn guests() -> Option<&'static TestGuest> {
    starling_vmm::test_guest::once(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-guest"))
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

struct Run {
    reason: ExitReason,
    console: String,
    elapsed: Duration,
}

fn config(kernel: &Path, cmdline: &str, dir: &Path) -> VmConfig {
    let mut c = VmConfig::new(kernel.to_owned());
    c.cmdline = cmdline.into();
    c.mem_mib = 64;
    c.console = Console::File(dir.join("console.log"));
    c
}

fn run(c: VmConfig) -> Run {
    let Console::File(log) = c.console.clone() else {
        panic!("tests log the console to a file")
    };
    let t = Instant::now();
    let reason = Vm::build(c).expect("build").run().expect("run");
    Run {
        reason,
        console: std::fs::read_to_string(log).unwrap_or_default(),
        elapsed: t.elapsed(),
    }
}

fn line<'a>(console: &'a str, prefix: &str) -> &'a str {
    console
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in console:\n{console}"))
}

fn disk(dir: &Path, content: &[u8]) -> PathBuf {
    let p = dir.join("disk.img");
    let mut data = vec![0u8; 1 << 20];
    data[..content.len()].copy_from_slice(content);
    std::fs::write(&p, data).unwrap();
    p
}

#[test]
fn both_boot_paths_serial_block_rng_and_guest_exit_status() {
    let g = guests_or_skip!();
    for (kernel, entry) in [(&g.pvh, "PVH"), (&g.elf64, "64-bit boot")] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(kernel, "blk rng exit=7", dir.path());
        c.disks.push(DiskConfig {
            path: disk(dir.path(), b"sector zero from the host"),
            read_only: false,
        });
        let r = run(c);
        let out = &r.console;
        assert_eq!(r.reason, ExitReason::GuestExit(7), "{out}");
        assert_eq!(r.reason.status(), 7);
        assert!(out.contains(&format!("entered through {entry}")), "{out}");
        assert_eq!(line(out, "cmdline:"), "cmdline: blk rng exit=7");
        assert_eq!(
            line(out, "blk: capacity"),
            "blk: capacity 2048 sectors, read-only 0"
        );
        assert_eq!(
            line(out, "blk: read status"),
            "blk: read status 0 data \"sector zero from the host\""
        );
        let rng: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("rng: 16 bytes"))
            .collect();
        assert_eq!(rng.len(), 2, "{out}");
        assert_ne!(rng[0], rng[1], "two rng reads gave the same bytes");
        assert_ne!(rng[0], "rng: 16 bytes 00000000000000000000000000000000");
        eprintln!("{entry}: boot to exit in {:?}", r.elapsed);
    }
}

#[test]
fn malformed_virtio_requests_fail_or_break_the_device_never_the_monitor() {
    let g = guests_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&g.pvh, "blk exit=0", dir.path());
    c.disks.push(DiskConfig {
        path: disk(dir.path(), b"x"),
        read_only: false,
    });
    let r = run(c);
    let out = &r.console;
    assert_eq!(r.reason, ExitReason::GuestExit(0), "{out}");
    // Out-of-range buffer address, request past the disk's end, 2 GiB buffer: VIRTIO_BLK_S_IOERR.
    assert_eq!(
        line(out, "blk: out-of-range"),
        "blk: out-of-range buffer status 1"
    );
    assert_eq!(line(out, "blk: past-the-end"), "blk: past-the-end status 1");
    assert_eq!(line(out, "blk: oversize"), "blk: oversize status 1");
    // A descriptor loop ends (the chain is cut) and the request is returned.
    assert_eq!(
        line(out, "blk: descriptor loop"),
        "blk: descriptor loop returned"
    );
    // A corrupted available ring: DEVICE_NEEDS_RESET (0x40) on top of the driver's bits.
    assert_eq!(
        line(out, "blk: after ring corruption"),
        "blk: after ring corruption status 0x4f"
    );
    // And a reset brings the device back.
    assert_eq!(
        line(out, "blk: after reset"),
        "blk: after reset read status 0"
    );
}

#[test]
fn block_writes_reach_the_file_and_read_only_disks_refuse_them() {
    let g = guests_or_skip!();
    for ro in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = disk(dir.path(), b"base");
        let before = std::fs::read(&path).unwrap();
        let mut c = config(&g.pvh, "blk blkwrite poweroff", dir.path());
        c.disks.push(DiskConfig {
            path: path.clone(),
            read_only: ro,
        });
        let r = run(c);
        let out = &r.console;
        assert_eq!(r.reason, ExitReason::PowerOff, "{out}");
        assert_eq!(r.reason.status(), 0);
        let after = std::fs::read(&path).unwrap();
        if ro {
            assert!(out.contains("read-only 1"), "{out}");
            assert_eq!(line(out, "blk: write status"), "blk: write status 1");
            assert_eq!(before, after, "a read-only disk changed");
        } else {
            assert_eq!(line(out, "blk: write status"), "blk: write status 0");
            assert_eq!(line(out, "blk: flush status"), "blk: flush status 0");
            assert_eq!(&after[512..546], b"written by the starling test guest");
        }
    }
}

#[test]
fn vsock_both_directions_over_unix_sockets() {
    let g = guests_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("v.sock");
    // Guest → host port 5000: a listener at PATH_5000 answers the guest's ping.
    let listener = UnixListener::bind(format!("{}_5000", sock.display())).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 15];
        s.read_exact(&mut buf).unwrap();
        s.write_all(b"pong from host").unwrap();
        String::from_utf8_lossy(&buf).into_owned()
    });
    // Host → guest port 6000 through PATH with the CONNECT handshake, once the guest listens.
    let log = dir.path().join("console.log");
    let (sock2, log2) = (sock.clone(), log.clone());
    let client = std::thread::spawn(move || {
        starling_testkit::wait_for("the guest to listen on 6000", 30, || {
            std::fs::read_to_string(&log2)
                .unwrap_or_default()
                .contains("listening on 6000")
        });
        let mut s = UnixStream::connect(&sock2).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(b"CONNECT 6000\n").unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut ok = String::new();
        r.read_line(&mut ok).unwrap();
        s.write_all(b"hello from host").unwrap();
        let mut echo = [0u8; 15];
        r.read_exact(&mut echo).unwrap();
        (ok, String::from_utf8_lossy(&echo).into_owned())
    });
    let mut c = config(&g.pvh, "vsock vsocklisten exit=0", dir.path());
    c.vsock = Some(VsockConfig {
        cid: 42,
        path: sock.clone(),
    });
    let r = run(c);
    let out = &r.console;
    assert_eq!(r.reason, ExitReason::GuestExit(0), "{out}");
    assert_eq!(line(out, "vsock: guest cid"), "vsock: guest cid 42");
    assert_eq!(server.join().unwrap(), "ping from guest");
    assert_eq!(
        line(out, "vsock: host said"),
        "vsock: host said \"pong from host\""
    );
    let (ok, echo) = client.join().unwrap();
    assert!(ok.starts_with("OK ") && ok.ends_with('\n'), "{ok:?}");
    assert!(ok.trim()[3..].parse::<u32>().is_ok(), "{ok:?}");
    assert_eq!(
        line(out, "vsock: host sent"),
        "vsock: host sent \"hello from host\""
    );
    assert_eq!(echo, "echo from guest");
}

#[test]
fn reset_and_poweroff_end_the_vm_with_their_statuses() {
    let g = guests_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let r = run(config(&g.elf64, "reset", dir.path()));
    assert_eq!(r.reason, ExitReason::Reset, "{}", r.console);
    assert_eq!(r.reason.status(), 3);
    let r = run(config(&g.elf64, "poweroff", dir.path()));
    assert_eq!(r.reason, ExitReason::PowerOff, "{}", r.console);
}

fn api(sock: &Path, method: &str, path: &str) -> (u16, serde_json::Value) {
    let mut s = UnixStream::connect(sock).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: vmm\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp[9..12].parse().unwrap();
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    (code, serde_json::from_str(body).unwrap())
}

#[test]
fn api_socket_reports_pauses_resumes_and_stops() {
    let g = guests_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let mut c = config(&g.pvh, "spin", dir.path());
    c.vcpus = 2;
    c.api_socket = Some(sock.clone());
    let log = dir.path().join("console.log");
    let vm = Vm::build(c).unwrap();
    let runner = std::thread::spawn(move || vm.run().unwrap());
    let ticks = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("tick")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while ticks() < 2 || !sock.exists() {
        assert!(Instant::now() < deadline, "guest never ticked");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, st) = api(&sock, "GET", "/v1/vm");
    assert_eq!(code, 200);
    assert_eq!(st["state"], "running");
    assert_eq!(st["vcpus"], 2);
    assert_eq!(st["mem_mib"], 64);
    assert!(st["kvm"].as_str().unwrap().starts_with("kvm"), "{st}");
    let (code, st) = api(&sock, "POST", "/v1/vm/pause");
    assert_eq!((code, st["state"].as_str()), (200, Some("paused")));
    let paused_at = ticks();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(ticks(), paused_at, "the guest ran while paused");
    let (_, st) = api(&sock, "POST", "/v1/vm/resume");
    assert_eq!(st["state"], "running");
    while ticks() <= paused_at {
        assert!(Instant::now() < deadline, "guest never resumed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(api(&sock, "GET", "/v1/nothing").0, 404);
    assert_eq!(api(&sock, "DELETE", "/v1/vm").0, 405);
    let (code, _) = api(&sock, "POST", "/v1/vm/stop");
    assert_eq!(code, 200);
    assert_eq!(runner.join().unwrap(), ExitReason::Stopped(None));
    assert!(!sock.exists(), "the API socket outlived the VM");
}

#[test]
fn bad_input_is_refused_before_the_guest_starts() {
    let g = guests_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let err = |c: VmConfig| match Vm::build(c) {
        Ok(_) => panic!("built"),
        Err(e) => e.to_string(),
    };
    let e = err(config(&dir.path().join("nope"), "", dir.path()));
    assert!(
        e.contains("kernel") && e.contains("nope") && e.contains("No such file"),
        "{e}"
    );
    let junk = dir.path().join("junk");
    std::fs::write(&junk, vec![0x5au8; 4096]).unwrap();
    let e = err(config(&junk, "", dir.path()));
    assert!(e.contains("neither an ELF kernel nor a bzImage"), "{e}");
    let mut truncated = std::fs::read(&g.pvh).unwrap();
    truncated.truncate(200);
    std::fs::write(&junk, truncated).unwrap();
    let e = err(config(&junk, "", dir.path()));
    assert!(e.contains("ELF kernel does not load"), "{e}");
    let big = dir.path().join("big.initrd");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(100 << 20)
        .unwrap();
    let mut c = config(&g.pvh, "", dir.path());
    c.initrd = Some(big);
    let e = err(c);
    assert!(e.contains("big.initrd") && e.contains("do not fit"), "{e}");
    let mut c = config(&g.pvh, "", dir.path());
    c.mem_mib = 4;
    assert!(err(c).contains("too little"));
    let mut c = config(&g.pvh, "", dir.path());
    c.disks.push(DiskConfig {
        path: dir.path().join("missing.img"),
        read_only: true,
    });
    let e = err(c);
    assert!(
        e.contains("missing.img") && e.contains("no such file"),
        "{e}"
    );
    let mut c = config(&g.pvh, "", dir.path());
    c.cmdline = "x".repeat(5000);
    assert!(err(c).contains("command line"));
    let mut c = config(&g.pvh, "", dir.path());
    c.vsock = Some(VsockConfig {
        cid: 2,
        path: dir.path().join("v.sock"),
    });
    assert!(err(c).contains("reserved"));
}

/// The API serves at most its bound of connections at once (the next is closed unanswered,
/// and it answers again once they go), and an endless request line is cut rather than read on.
#[test]
fn api_connections_and_request_sizes_are_bounded() {
    let g = guests_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sock = d.join("api.sock");
    let mut c = config(&g.pvh, "idle", d);
    c.api_socket = Some(sock.clone());
    c.run_dir = Some(d.join("run"));
    let mut vm = std::process::Command::new(env!("CARGO_BIN_EXE_starling-vmm"))
        .arg("--config-json")
        .arg(serde_json::to_string(&c).unwrap())
        .env("STARLING_VM_QUIET", "1")
        .spawn()
        .unwrap();
    starling_testkit::wait_for("the API socket", 30, || sock.exists());
    let (code, st) = api(&sock, "GET", "/v1/vm");
    assert_eq!((code, st["state"].as_str()), (200, Some("running")), "{st}");

    // Connections held open up to the bound: the next one is closed unanswered.
    let held: Vec<UnixStream> = (0..starling_vmm::api::server::MAX_CONNECTIONS)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut extra = UnixStream::connect(&sock).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = extra.write_all(b"GET /v1/vm HTTP/1.1\r\n\r\n");
    let mut got = String::new();
    let _ = extra.read_to_string(&mut got);
    assert_eq!(got, "", "a connection past the bound was answered");
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(b"GET /v1/vm HTTP/1.1\r\n\r\n");
        let mut r = String::new();
        let _ = s.read_to_string(&mut r);
        if r.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "never answered again");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A request line without end: answered after the bound, not read on.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let junk = vec![b'A'; 1 << 16];
        let mut sent = 0usize;
        while sent < 64 << 20 {
            match w.write(&junk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        sent
    });
    let mut r = String::new();
    let _ = s.read_to_string(&mut r);
    assert!(r.starts_with("HTTP/1.1 404"), "{r:.200}");
    drop(s);
    assert!(
        writer.join().unwrap() < 64 << 20,
        "the monitor read 64 MiB of one request"
    );
    assert_eq!(api(&sock, "POST", "/v1/vm/stop").0, 200);
    assert!(vm.wait().unwrap().success());
}

/// The console's transmit register is coalesced: a guest printing by polling (the line status,
/// then the character) exits once per character instead of twice, and its console is the same
/// byte for byte as with every write exiting (`STARLING_SERIAL_COALESCE=off`), its last line
/// included (written just before the guest powers off), and a line printed just before the
/// guest halts for good (no exit after it) still reaches the console.
#[test]
fn console_writes_wait_in_kvm_s_ring_and_come_out_whole() {
    let g = guests_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, cmdline: &str, coalesce: bool| {
        let mut c = config(&g.pvh, cmdline, dir.path());
        let log = dir.path().join(format!("{name}.log"));
        c.console = Console::File(log.clone());
        c.run_dir = Some(dir.path().join(name));
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_starling-vmm"));
        cmd.arg("--config-json")
            .arg(serde_json::to_string(&c).unwrap())
            .env("STARLING_VM_TRACE", "1")
            .env("STARLING_VM_QUIET", "1")
            .stderr(std::process::Stdio::piped());
        if !coalesce {
            cmd.env("STARLING_SERIAL_COALESCE", "off");
        }
        (cmd, log)
    };
    let outs = |trace: &str| -> u64 {
        trace
            .lines()
            .find_map(|l| {
                l.split_once("out 0x3f8: ")
                    .map(|(_, n)| n.trim().parse().unwrap())
            })
            .unwrap_or(0)
    };
    let (mut on, log_on) = run("on", "poweroff", true);
    let (mut off, log_off) = run("off", "poweroff", false);
    let on = on.output().unwrap();
    let off = off.output().unwrap();
    let (trace_on, trace_off) = (
        String::from_utf8_lossy(&on.stderr),
        String::from_utf8_lossy(&off.stderr),
    );
    let (text_on, text_off) = (
        std::fs::read_to_string(&log_on).unwrap(),
        std::fs::read_to_string(&log_off).unwrap(),
    );
    assert!(text_off.contains("guest done"), "{text_off}");
    assert_eq!(text_on, text_off, "the console differs with coalescing");
    let chars = text_off.len() as u64;
    assert!(
        outs(&trace_off) >= chars,
        "every character should exit without coalescing: {chars} characters, trace:\n{trace_off}"
    );
    assert!(
        outs(&trace_on) * 4 < chars,
        "{chars} characters but this many exited:\n{trace_on}"
    );

    // Printed, then halted with interrupts off: no exit after the line.
    let (mut idle, log) = run("idle", "idle", true);
    let mut vm = idle.stderr(std::process::Stdio::null()).spawn().unwrap();
    starling_testkit::wait_for("the idle line", 30, || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("idle\n")
    });
    let _ = vm.kill();
    let _ = vm.wait();
}
