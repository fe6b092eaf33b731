//! Tier 1 network: the virtio-net device driven by the test guest, over a TAP in a network
//! namespace each test makes for itself (nothing touches the host's interfaces). The host
//! side is the kernel's own stack and programs users know: `ping` reaches the guest's ICMP
//! echo, a UDP socket its echo service; the guest answers ARP itself. Malformed chains from
//! the guest are counted and refused, and the device goes on working.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use starling_vmm::test_guest::TestGuest;
use starling_vmm::{Console, ExitReason, Mac, NetConfig, Vm, VmConfig};

/// The test guest, compiled once per test run; None after a loud skip (a failure under CI)
/// when this host has no /dev/kvm or C compiler.
fn guests() -> Option<&'static TestGuest> {
    starling_vmm::test_guest::once(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-guest-net"))
        .map_err(starling_testkit::skip)
        .ok()
}

/// What network tests need beyond KVM: root (for a network namespace and a TAP), the tun
/// device, `ip` and `ping`.
fn net_missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network tests need root (a network namespace and a TAP)".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    for tool in ["ip", "ping"] {
        if Command::new(tool).arg("-V").output().is_err() {
            return Some(format!("no `{tool}` (iproute2, iputils-ping)"));
        }
    }
    None
}

/// Runs `f` on a thread of its own in a new network namespace (threads and processes it
/// starts are in it too), with loopback up and TAP `tap` at 10.77.0.1/24 unless `tap` is
/// empty.
fn in_netns<T: Send + 'static>(tap: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let tap = tap.to_owned();
    std::thread::spawn(move || {
        // SAFETY: unshare affects only this thread, which nothing else uses.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            panic!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
        }
        sh(&["ip", "link", "set", "lo", "up"]);
        if !tap.is_empty() {
            sh(&["ip", "tuntap", "add", "dev", &tap, "mode", "tap"]);
            sh(&["ip", "addr", "add", "10.77.0.1/24", "dev", &tap]);
            sh(&["ip", "link", "set", &tap, "up"]);
        }
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
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

fn config(kernel: &Path, cmdline: &str, dir: &Path, tap: &str, mac: &str) -> VmConfig {
    let mut c = VmConfig::new(kernel.to_owned());
    c.cmdline = cmdline.into();
    c.mem_mib = 64;
    c.console = Console::File(dir.join("console.log"));
    c.net.push(NetConfig {
        tap: tap.into(),
        mac: Some(mac.parse().unwrap()),
        rx: None,
        tx: None,
        owned: false,
        ip: None,
    });
    c
}

fn wait_for(log: &Path, text: &str) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        if std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains(text)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "no {text:?} on the console after 30 s:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// What the host side saw.
struct HostSide {
    ping: String,
    ping_big: Option<String>,
    echoed: Vec<u8>,
    neighbour: String,
}

/// Pings the guest, echoes a datagram through it, tells it to quit.
fn host_side(log: PathBuf, big: bool) -> HostSide {
    wait_for(&log, "net: serving");
    let ping = sh(&["ping", "-c", "3", "-i", "0.2", "-W", "5", "10.77.0.2"]);
    let ping_big = big.then(|| {
        sh(&[
            "ping",
            "-c",
            "2",
            "-i",
            "0.2",
            "-W",
            "5",
            "-s",
            "1400",
            "10.77.0.2",
        ])
    });
    let neighbour = sh(&["ip", "neigh", "show", "10.77.0.2"]);
    let sock = UdpSocket::bind("10.77.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let payload: Vec<u8> = (0..1200u32).map(|i| (i * 7 % 251) as u8).collect();
    sock.send_to(&payload, "10.77.0.2:7").unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = sock.recv_from(&mut buf).expect("the guest's UDP echo");
    assert_eq!(from.to_string(), "10.77.0.2:7");
    sock.send_to(b"quit", "10.77.0.2:7").unwrap();
    HostSide {
        ping,
        ping_big,
        echoed: buf[..n].to_vec(),
        neighbour,
    }
}

fn payload_sum() -> u64 {
    (0..1200u32).map(|i| u64::from(i * 7 % 251)).sum()
}

#[test]
fn ping_and_udp_echo_over_a_tap_with_hostile_chains_refused() {
    let Some(g) = guests() else { return };
    if let Some(why) = net_missing() {
        return starling_testkit::skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("console.log");
    let c = config(
        &g.pvh,
        "net nethostile exit=0",
        dir.path(),
        "stn0",
        "02:aa:bb:cc:dd:01",
    );
    let (reason, host, status) = in_netns("stn0", move || {
        let vm = Vm::build(c).expect("build");
        let handle = vm.handle();
        // The service's whoami tells the guest the MAC its network device has.
        assert_eq!(
            handle.0.services.identity.lock().unwrap().mac,
            [2, 0xaa, 0xbb, 0xcc, 0xdd, 1]
        );
        let driver = std::thread::spawn(move || host_side(log, false));
        let reason = vm.run().expect("run");
        (reason, driver.join().unwrap(), handle.status())
    });
    let out = std::fs::read_to_string(dir.path().join("console.log")).unwrap();
    assert_eq!(reason, ExitReason::GuestExit(0), "{out}");
    assert!(
        out.contains("net: mac 02:aa:bb:cc:dd:01 link up\n"),
        "{out}"
    );
    // Each malformed chain came back used, and the device served on.
    assert!(out.contains("net: hostile tx used 1111\n"), "{out}");
    assert!(host.ping.contains("3 received"), "{}", host.ping);
    assert!(
        host.neighbour.contains("lladdr 02:aa:bb:cc:dd:01"),
        "{}",
        host.neighbour
    );
    assert!(out.contains("net: arp reply"), "{out}");
    assert_eq!(out.matches("net: ping seq").count(), 3, "{out}");
    let sent: Vec<u8> = (0..1200u32).map(|i| (i * 7 % 251) as u8).collect();
    assert_eq!(host.echoed, sent);
    assert!(
        out.contains(&format!("net: udp echo 1200 bytes sum {}", payload_sum())),
        "{out}"
    );
    assert!(out.contains("net: quit"), "{out}");
    let net = &status.net[0];
    assert_eq!(net.device, "net0");
    assert_eq!(net.tap.as_deref(), Some("stn0"));
    assert_eq!(net.bad_chains, 4, "{net:?}");
    assert!(net.rx_frames >= 5 && net.tx_frames >= 5, "{net:?}");
}

#[test]
fn mergeable_buffers_carry_frames_larger_than_one_buffer() {
    let Some(g) = guests() else { return };
    if let Some(why) = net_missing() {
        return starling_testkit::skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("console.log");
    let c = config(
        &g.elf64,
        "net netmrg exit=0",
        dir.path(),
        "stn1",
        "02:aa:bb:cc:dd:02",
    );
    let (reason, host) = in_netns("stn1", move || {
        let vm = Vm::build(c).expect("build");
        let driver = std::thread::spawn(move || host_side(log, true));
        let reason = vm.run().expect("run");
        (reason, driver.join().unwrap())
    });
    let out = std::fs::read_to_string(dir.path().join("console.log")).unwrap();
    assert_eq!(reason, ExitReason::GuestExit(0), "{out}");
    assert!(out.contains("link up mergeable"), "{out}");
    let big = host.ping_big.unwrap();
    assert!(big.contains("2 received"), "{big}");
    // 1400 bytes of ICMP payload: a 1442-byte frame over 1024-byte buffers.
    assert_eq!(out.matches(" 1400 bytes\n").count(), 2, "{out}");
    assert_eq!(host.echoed.len(), 1200);
}

#[test]
fn a_busy_tap_a_tun_and_bad_names_are_refused_by_name() {
    let Some(g) = guests() else { return };
    if let Some(why) = net_missing() {
        return starling_testkit::skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = g.pvh.clone();
    let d = dir.path().to_owned();
    in_netns("stn2", move || {
        let first = Vm::build(config(&kernel, "idle", &d, "stn2", "02:00:00:00:00:01"))
            .expect("the first VM on the TAP");
        let e = Vm::build(config(&kernel, "idle", &d, "stn2", "02:00:00:00:00:02"))
            .err()
            .expect("a second VM on a busy TAP")
            .to_string();
        assert!(e.contains("TAP stn2 is in use by another process"), "{e}");
        drop(first);
        sh(&["ip", "tuntap", "add", "dev", "stun0", "mode", "tun"]);
        let e = Vm::build(config(&kernel, "idle", &d, "stun0", "02:00:00:00:00:03"))
            .err()
            .expect("a TUN device")
            .to_string();
        assert!(e.contains("stun0 is not a TAP device"), "{e}");
    });
    let mut c = config(&g.pvh, "idle", dir.path(), "a/b", "02:00:00:00:00:04");
    let e = Vm::build(c.clone()).err().unwrap().to_string();
    assert!(e.contains("TAP name \"a/b\""), "{e}");
    c.net[0].tap = "ok0".into();
    c.net[0].mac = Some(Mac([1, 0, 0, 0, 0, 1]));
    let e = Vm::build(c).err().unwrap().to_string();
    assert!(
        e.contains("01:00:00:00:00:01 is a multicast address"),
        "{e}"
    );
}

/// Sends `n` datagrams of 200 bytes to the guest's UDP echo one after another, each waiting
/// for its echo; returns how long that took. Then tells the guest to quit.
fn echo_rounds(log: PathBuf, n: usize) -> Duration {
    wait_for(&log, "net: serving");
    let sock = UdpSocket::bind("10.77.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let payload = vec![0x5au8; 200];
    let mut buf = [0u8; 2048];
    let t = Instant::now();
    for k in 0..n {
        sock.send_to(&payload, "10.77.0.2:7").unwrap();
        let got = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("echo {k}: {e}"));
        assert_eq!(got, 200);
    }
    let took = t.elapsed();
    sock.send_to(b"quit", "10.77.0.2:7").unwrap();
    took
}

/// The rate limits hold traffic back, each direction by its own bucket. 40 echoes of 200
/// bytes (about 9.7 KB each way, 41 frames from the guest with its ARP answer) cannot take
/// less than 3.8 s with the guest receiving 2 KB a second (a 2 KB burst, then the rest at
/// that rate), nor less than 3.1 s with it sending 10 frames a second (10 at once, then 31
/// more); without limits they take what the test guest's own byte-by-byte copying costs.
#[test]
fn rate_limits_hold_each_direction_to_its_bucket() {
    use starling_vmm::config::{Bucket, Limit};
    let Some(g) = guests() else { return };
    if let Some(why) = net_missing() {
        return starling_testkit::skip(&why);
    }
    let run = |tap: &'static str, rx: Option<Limit>, tx: Option<Limit>| -> Duration {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let mut c = config(&g.pvh, "net exit=0", dir.path(), tap, "02:aa:bb:cc:dd:05");
        c.net[0].rx = rx;
        c.net[0].tx = tx;
        in_netns(tap, move || {
            let vm = Vm::build(c).expect("build");
            let driver = std::thread::spawn(move || echo_rounds(log, 40));
            assert_eq!(vm.run().expect("run"), ExitReason::GuestExit(0));
            driver.join().unwrap()
        })
    };
    let free = run("stn5", None, None);
    let rx = run("stn6", Some(Limit::bytes_per_sec(2_000)), None);
    let tx = run(
        "stn7",
        None,
        Some(Limit {
            bandwidth: None,
            ops: Some(Bucket {
                size: 10,
                refill_ms: 1000,
            }),
        }),
    );
    eprintln!("40 echoes: {free:?} free, {rx:?} with rx 2 KB/s, {tx:?} with tx 10 frames/s");
    // Token arithmetic gives the floors (a little under, for timer granularity).
    assert!(rx >= Duration::from_millis(3500), "{rx:?}");
    assert!(tx >= Duration::from_millis(2900), "{tx:?}");
    assert!(free < rx && free < tx, "{free:?} {rx:?} {tx:?}");
}
