//! `starling vm run --net nat -p …`: a VM on Starling's bridge with an address of its own,
//! outbound NAT and a published port, in network namespaces the test makes (a "host" and an
//! "outside" joined by a veth pair; nothing touches this machine's interfaces). The tier-1
//! test guest takes its address from the `ip=` parameter Starling adds, answers UDP echo and
//! sends a datagram out through the gateway.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("st{tag}{}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns(name);
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn run(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.0];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs `f` on a thread inside this namespace (sockets it opens live there).
    fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = PathBuf::from("/run/netns").join(&self.0);
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).unwrap();
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&fd),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap();
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
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

fn missing() -> Option<String> {
    if let Some(why) = starling_vmm::test_guest::missing() {
        return Some(why);
    }
    if !rustix::process::geteuid().is_root() {
        return Some("VM networks need root".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("no `ip` (iproute2)".into());
    }
    None
}

fn wait_for(log: &Path, text: &str) -> String {
    let t = Instant::now();
    loop {
        let s = std::fs::read_to_string(log).unwrap_or_default();
        // The whole line: the console writes a byte at a time, and a loaded machine once
        // showed "net: udp from" with the rest of its line still to come.
        if s.find(text).is_some_and(|i| s[i..].contains('\n')) {
            return s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no {text:?} on the console after 30 s:\n{s}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `starling vm run` of the test guest on the NAT network, in namespace `ns`.
fn vm_run(ns: &Netns, state: &Path, kernel: &Path, log: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args([
        "netns",
        "exec",
        &ns.0,
        env!("CARGO_BIN_EXE_starling"),
        "vm",
        "run",
    ])
    .arg("--kernel")
    .arg(kernel)
    .args(["--mem", "64M", "--console"])
    .arg(log)
    .args(extra)
    .env("STARLING_NET_STATE", state)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    c
}

#[test]
fn nat_network_gives_an_address_outbound_nat_and_published_ports() {
    if let Some(why) = missing() {
        return starling_testkit::skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = starling_vmm::test_guest::build(dir.path()).unwrap().pvh;
    let state = dir.path().join("net-state");
    let host = Netns::new("h");
    let outside = Netns::new("o");
    host.run(&[
        "ip", "link", "add", "vh", "type", "veth", "peer", "name", "vo", "netns", &outside.0,
    ]);
    host.run(&["ip", "addr", "add", "192.168.77.1/24", "dev", "vh"]);
    host.run(&["ip", "link", "set", "vh", "up"]);
    outside.run(&["ip", "addr", "add", "192.168.77.2/24", "dev", "vo"]);
    outside.run(&["ip", "link", "set", "vo", "up"]);
    // The outside server: answers the first datagram and says where it came from.
    let server = outside.enter(|| UdpSocket::bind("192.168.77.2:9999").unwrap());
    server
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let served = std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        let (n, from) = server.recv_from(&mut buf).expect("the guest's datagram");
        server.send_to(b"hi guest", from).unwrap();
        (String::from_utf8_lossy(&buf[..n]).into_owned(), from)
    });

    // A service on the host's localhost, which the guest tries to reach (and must not; the
    // guest sends there first: an answer arriving while it sends another would be missed).
    let local = host.enter(|| UdpSocket::bind("127.0.0.1:9998").unwrap());
    local
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();

    let log = dir.path().join("console.log");
    let mut vm = vm_run(
        &host,
        &state,
        &kernel,
        &log,
        &[
            "--net",
            "nat",
            "-p",
            "17007:7/udp",
            "--cmdline",
            "net netsend=127.0.0.1:9998 netsend=192.168.77.2:9999 exit=0",
        ],
    )
    .spawn()
    .unwrap();
    // A failing assertion must not leave the VM running.
    let _reaper = Reaper(vec![vm.id()]);
    let out = wait_for(&log, "net: serving");
    assert!(
        out.contains("net: address 10.213.0.2 gateway 10.213.0.1\n"),
        "{out}"
    );
    // Outbound: the guest's datagram left masqueraded as the host, and the answer came back.
    let (said, from) = served.join().unwrap();
    assert_eq!(said, "hello from the guest");
    assert_eq!(from.ip().to_string(), "192.168.77.1", "masqueraded source");
    let out = wait_for(&log, "net: udp from");
    assert!(
        out.contains("net: udp from 192.168.77.2:9999 says \"hi guest\""),
        "{out}"
    );
    // Published: the outside reaches the guest's UDP echo at the host's port 17007.
    let echoed = outside.enter(|| {
        let s = UdpSocket::bind("192.168.77.2:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.send_to(b"through the published port", "192.168.77.1:17007")
            .unwrap();
        let mut buf = [0u8; 256];
        let (n, from) = s.recv_from(&mut buf).expect("the echo through the port");
        (buf[..n].to_vec(), from.to_string())
    });
    assert_eq!(echoed.0, b"through the published port");
    assert_eq!(echoed.1, "192.168.77.1:17007");
    // And from the host itself, at localhost and at its own address (docker's users expect
    // `localhost:PORT`); a datagram to another machine's port 17007 is not caught.
    let other = outside.enter(|| UdpSocket::bind("192.168.77.2:17007").unwrap());
    other
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for to in ["127.0.0.1:17007", "192.168.77.1:17007"] {
        let echoed = host.enter(move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.send_to(b"from the host", to).unwrap();
            let mut buf = [0u8; 256];
            let (n, from) = s.recv_from(&mut buf).expect("the echo through the port");
            (buf[..n].to_vec(), from.to_string())
        });
        assert_eq!(echoed, (b"from the host".to_vec(), to.to_string()));
    }
    host.enter(|| {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.send_to(b"not for the VM", "192.168.77.2:17007").unwrap();
    });
    let mut buf = [0u8; 64];
    let (n, _) = other.recv_from(&mut buf).expect("the other machine's port");
    assert_eq!(&buf[..n], b"not for the VM");
    // route_localnet's other side: what the guest sent to the host's 127.0.0.1 was dropped.
    let mut buf = [0u8; 64];
    let leaked = local.recv_from(&mut buf);
    assert!(
        leaked.is_err(),
        "the guest reached the host's localhost: {leaked:?}"
    );
    let ports = host.run(&["ip", "-o", "link", "show", "master", "starling0"]);
    assert!(ports.contains("stap1"), "{ports}");

    // The port is taken while the VM runs: a second VM asking for it is refused, by name.
    let second = vm_run(
        &host,
        &state,
        &kernel,
        &dir.path().join("second.log"),
        &["--net", "nat", "-p", "17007:7/udp"],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{err}");
    assert!(
        err.contains("port 17007:7/udp is already published by VM 10.213.0.2"),
        "{err}"
    );

    // Told to quit through the published port, the VM ends; its TAP goes with the monitor.
    outside.enter(|| {
        let s = UdpSocket::bind("192.168.77.2:0").unwrap();
        s.send_to(b"quit", "192.168.77.1:17007").unwrap();
    });
    let status = vm.wait().unwrap();
    assert!(status.success(), "{status}");
    let gone = Command::new("ip")
        .args(["netns", "exec", &host.0, "ip", "link", "show", "stap1"])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "the TAP outlived its VM");
    // The next VM gets the address back (the ended VM's lease reaped) and the port too.
    let third = vm_run(
        &host,
        &state,
        &kernel,
        &dir.path().join("third.log"),
        &["--net", "nat", "-p", "17007:7/udp", "--cmdline", "exit=0"],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&third.stderr);
    assert!(third.status.success(), "{err}");
    assert!(
        err.contains("VM address 10.213.0.2 on starling0 (stap1)"),
        "{err}"
    );
}

#[test]
fn network_flags_are_checked_before_anything_is_made() {
    let out = Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(["vm", "run", "--kernel", "/nonexistent", "-p", "80:80"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("add --net nat"), "{err}");
    for (bad, says) in [
        ("--net=bogus", "expected none, nat or tap=NAME"),
        ("--net=tap=a/b", "TAP name \"a/b\""),
        ("--net=tap=t0,mac=zz", "MAC \"zz\""),
        ("--net=tap=t0,speed=1", "unknown option \"speed=1\""),
        ("-p=80", "expected HOSTPORT:GUESTPORT"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_starling"))
            .args(["vm", "run", "--kernel", "/nonexistent", bad])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains(says), "{bad}: {err}");
    }
}

/// Without CAP_NET_ADMIN, `--net nat` fails with one line that says what it needs and what
/// to use instead, before a VM is started.
#[test]
fn nat_without_cap_net_admin_says_what_it_needs() {
    if let Some(why) = missing() {
        return starling_testkit::skip(&why);
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        return starling_testkit::skip("no setpriv (util-linux)");
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("net-state");
    std::fs::create_dir_all(&state).unwrap();
    rustix::fs::chown(
        &state,
        Some(rustix::fs::Uid::from_raw(65534)),
        Some(rustix::fs::Gid::from_raw(65534)),
    )
    .unwrap();
    let host = Netns::new("p");
    let out = Command::new("ip")
        .args(["netns", "exec", &host.0])
        .args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        .arg(env!("CARGO_BIN_EXE_starling"))
        .args(["vm", "run", "--kernel", "/bin/true", "--net", "nat"])
        .env("STARLING_NET_STATE", &state)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("needs CAP_NET_ADMIN (run as root)") && err.contains("--net tap=NAME"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// Sends `msg` to the guest's UDP echo at `addr` from inside `ns`; the echo, if it came.
fn echo(ns: &Netns, addr: &str, msg: &'static [u8]) -> Option<Vec<u8>> {
    let addr = format!("{addr}:7");
    ns.enter(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        for _ in 0..3 {
            s.send_to(msg, &addr).unwrap();
            let mut buf = [0u8; 256];
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                return Some(buf[..n].to_vec());
            }
        }
        None
    })
}

/// Asserts that the test guest at `addr` echoes `msg` (UDP port 7), from inside `ns`.
fn assert_echoes(ns: &Netns, addr: &str, msg: &'static [u8]) {
    assert_eq!(
        echo(ns, addr, msg).as_deref(),
        Some(msg),
        "no echo of {:?} from {addr}",
        String::from_utf8_lossy(msg)
    );
}

/// Tells the test guests at `addrs` to quit (a UDP "quit" to their port 7), from inside `ns`.
fn quit(ns: &Netns, addrs: &[&str]) {
    for a in addrs {
        let to = format!("{a}:7");
        ns.enter(move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.send_to(b"quit", to).unwrap();
        });
    }
}

/// `vm fork` of a VM on the NAT network: each clone gets a lease, a TAP on the bridge and an
/// address of its own, which the (test) guest hears through its pending `watch` and takes on
/// with its device's own MAC; every VM answers at its own address; the leases follow the
/// clones' monitors, and each clone's TAP goes when it ends.
#[test]
fn clones_of_a_nat_vm_get_addresses_of_their_own() {
    if let Some(why) = missing() {
        return starling_testkit::skip(&why);
    }
    let Watching {
        dir: _dir,
        kernel: _,
        state,
        host,
        log,
        api,
        mut vm,
        mut vms,
    } = Watching::start("f");
    let out = wait_for(&log, "net: serving");
    assert!(out.contains("net: watching"), "{out}");
    assert_echoes(&host, "10.213.0.2", b"parent");

    // The gateway's MAC is the bridge's own, set when it was made: ports joining must not
    // change it (a bridge takes its lowest port's otherwise) under the VMs on it.
    let bridge_mac = || host.run(&["cat", "/sys/class/net/starling0/address"]);
    let gateway_mac = bridge_mac();
    let fork = Command::new("ip")
        .args(["netns", "exec", &host.0, env!("CARGO_BIN_EXE_starling")])
        .args(["vm", "fork"])
        .arg(&api)
        .args(["-n", "2"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&fork.stdout);
    let err = String::from_utf8_lossy(&fork.stderr);
    assert!(fork.status.success(), "{said}{err}");
    assert!(!err.contains("detached"), "{err}");
    let mut clones = Vec::new();
    for (k, addr) in [(1, "10.213.0.3"), (2, "10.213.0.4")] {
        let line = said
            .lines()
            .find(|l| l.starts_with(&format!("clone {k} ")))
            .unwrap_or_else(|| panic!("no clone {k} in {said}"));
        assert!(line.ends_with(&format!(" address {addr}")), "{line}");
        let cdir = PathBuf::from(
            line.split(" dir ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap(),
        );
        let pid: u32 = line
            .split(" pid ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        vms.0.push(pid);
        let clog = cdir.join("console.log");
        wait_for(&clog, &format!("net: readdressed {addr}"));
        clones.push((addr, clog, pid));
    }
    // Every VM answers at its own address, and it is that VM that answers.
    for (addr, clog, _) in &clones {
        assert_echoes(&host, addr, b"clone");
        wait_for(clog, "net: udp echo 5 bytes");
    }
    assert_echoes(&host, "10.213.0.2", b"parent again");
    // The host knows each clone by the clone's own MAC (its announcement), not the parent's.
    let neigh = host.run(&["ip", "neigh", "show", "dev", "starling0"]);
    let mac_of = |addr: &str| {
        neigh
            .lines()
            .find(|l| l.starts_with(&format!("{addr} ")))
            .and_then(|l| l.split("lladdr ").nth(1))
            .map(|r| r.split(' ').next().unwrap().to_owned())
            .unwrap_or_else(|| panic!("{addr} not in the host's neighbours: {neigh}"))
    };
    let macs = [
        mac_of("10.213.0.2"),
        mac_of("10.213.0.3"),
        mac_of("10.213.0.4"),
    ];
    assert_eq!(
        bridge_mac(),
        gateway_mac,
        "the bridge's MAC changed as clones joined"
    );
    assert!(
        macs[0] != macs[1] && macs[1] != macs[2] && macs[0] != macs[2],
        "{neigh}"
    );
    let ports = host.run(&["ip", "-o", "link", "show", "master", "starling0"]);
    for tap in ["stap1", "stap2", "stap3"] {
        assert!(ports.contains(tap), "{ports}");
    }
    // The leases are the clones' monitors'.
    let leases = std::fs::read_to_string(state.join("leases.json")).unwrap();
    for (_, _, pid) in &clones {
        assert!(leases.contains(&format!("\"pid\": {pid},")), "{leases}");
    }
    // A clone told to quit ends, and its TAP goes with it; the others still answer.
    quit(&host, &["10.213.0.3"]);
    let t = Instant::now();
    while host
        .run(&["ip", "-o", "link", "show", "master", "starling0"])
        .contains("stap2")
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the clone's TAP outlived it"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_echoes(&host, "10.213.0.4", b"still");
    quit(&host, &["10.213.0.4", "10.213.0.2"]);
    assert!(vm.wait().unwrap().success());
}

/// Kills the VMs a failing test leaves (clones are not the test's children).
struct Reaper(Vec<u32>);

impl Drop for Reaper {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for pid in &self.0 {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).output();
            }
        }
    }
}

/// A pool on the NAT network: the first boot has an address (its lease given back once it is
/// docked); each activation gets an address, TAP and MAC of its own when it is activated (the
/// substrate's device was detached while docked), which the test guest reads from `whoami`
/// and serves at; the lease is the activated VM's monitor's, and its TAP goes with it.
#[test]
fn pool_activations_get_addresses_at_activation() {
    if let Some(why) = missing() {
        return starling_testkit::skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = starling_vmm::test_guest::build(dir.path()).unwrap().pvh;
    let state = dir.path().join("net-state");
    let pools = dir.path().join("pools");
    let host = Netns::new("q");
    let starling = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", &host.0, env!("CARGO_BIN_EXE_starling")])
            .args(args)
            .env("STARLING_NET_STATE", &state)
            .env("STARLING_POOLS", &pools)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?}: {err}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let _stop = Stop(&host, &pools, &state);
    starling(&[
        "pool",
        "create",
        "web",
        "--kernel",
        kernel.to_str().unwrap(),
        "--mem",
        "64M",
        "--cmdline",
        "substrate net",
        "--net",
        "nat",
        "--size",
        "1",
    ]);
    let leases = std::fs::read_to_string(state.join("leases.json")).unwrap();
    assert!(
        !leases.contains("\"index\""),
        "the first boot's lease stays: {leases}"
    );
    let mut seen = Vec::new();
    for n in 0..2 {
        let out = starling(&["pool", "run", "web", "--env", &format!("N={n}")]);
        let addr = out
            .split(" address ")
            .nth(1)
            .unwrap_or_else(|| panic!("no address in {out:?}"))
            .trim()
            .to_owned();
        let console = PathBuf::from(
            out.split(" console ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap(),
        );
        let log = wait_for(&console, "net: serving");
        assert!(
            log.contains(&format!("net: address {addr} gateway 10.213.0.1")),
            "{log}"
        );
        assert!(log.contains(" link up"), "{log}");
        assert_echoes(&host, &addr, b"pooled");
        assert!(!seen.contains(&addr), "{addr} given twice");
        seen.push(addr);
    }
    // Each activation is on its own TAP, with its own MAC in the host's neighbours.
    let neigh = host.run(&["ip", "neigh", "show", "dev", "starling0"]);
    let macs: Vec<&str> = seen
        .iter()
        .map(|a| {
            neigh
                .lines()
                .find(|l| l.starts_with(&format!("{a} ")))
                .and_then(|l| l.split("lladdr ").nth(1))
                .and_then(|r| r.split(' ').next())
                .unwrap_or_else(|| panic!("{a} not in {neigh}"))
        })
        .collect();
    assert_ne!(macs[0], macs[1], "{neigh}");
    quit(&host, &seen.iter().map(String::as_str).collect::<Vec<_>>());
}

/// Removes a test's pools (stopping their VMs).
struct Stop<'a>(&'a Netns, &'a Path, &'a Path);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.0 .0, env!("CARGO_BIN_EXE_starling")])
            .args(["pool", "rm", "web", "--force"])
            .env("STARLING_NET_STATE", self.2)
            .env("STARLING_POOLS", self.1)
            .output();
    }
}

/// `vm restore --net nat` of a VM that was on Starling's network: the restore has a new lease
/// and TAP (the old ones went with the VM), the guest hears its address through its pending
/// `watch` and answers there.
#[test]
fn restore_on_the_nat_network_gets_a_new_address() {
    if let Some(why) = missing() {
        return starling_testkit::skip(&why);
    }
    let Watching {
        dir,
        kernel,
        state,
        host,
        log,
        api,
        mut vm,
        mut vms,
    } = Watching::start("r");
    wait_for(&log, "net: serving");
    // A second VM holds the next address, so the restore's cannot be the first VM's again
    // by chance of reuse alone.
    let snap = dir.path().join("snap");
    let ip = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", &host.0, env!("CARGO_BIN_EXE_starling")])
            .args(args)
            .env("STARLING_NET_STATE", &state)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ip(&[
        "vm",
        "snapshot",
        api.to_str().unwrap(),
        snap.to_str().unwrap(),
        "--stop",
    ]);
    assert!(vm.wait().unwrap().success());
    // The ended VM's lease is reaped by the next attach: the restore may get .2 again, so a
    // VM holding .2 first makes the restore's address a new one.
    let holder_log = dir.path().join("holder.log");
    let holder = vm_run(
        &host,
        &state,
        &kernel,
        &holder_log,
        &["--net", "nat", "--cmdline", "net exit=0"],
    )
    .spawn()
    .unwrap();
    vms.0.push(holder.id());
    wait_for(&holder_log, "net: address 10.213.0.2 ");
    let rlog = dir.path().join("restored.log");
    let restored = Command::new("ip")
        .args(["netns", "exec", &host.0, env!("CARGO_BIN_EXE_starling")])
        .args([
            "vm",
            "restore",
            snap.to_str().unwrap(),
            "--net",
            "nat",
            "--console",
        ])
        .arg(&rlog)
        .args(["--vsock-path", dir.path().join("r.sock").to_str().unwrap()])
        .env("STARLING_NET_STATE", &state)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    vms.0.push(restored.id());
    wait_for(&rlog, "net: readdressed 10.213.0.3");
    assert_echoes(&host, "10.213.0.3", b"restored");
    assert_echoes(&host, "10.213.0.2", b"holder");
    quit(&host, &["10.213.0.3", "10.213.0.2"]);
    let out = restored.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("VM address 10.213.0.3 on starling0 (stap2)"),
        "{err}"
    );
    let _ = holder;
}

/// The test guest on the NAT network with an API socket and a vsock, serving UDP echo and
/// watching for a new identity (`net netwatch`), in a "host" namespace of its own.
struct Watching {
    dir: tempfile::TempDir,
    kernel: PathBuf,
    state: PathBuf,
    host: Netns,
    log: PathBuf,
    api: PathBuf,
    vm: std::process::Child,
    vms: Reaper,
}

impl Watching {
    fn start(tag: &str) -> Watching {
        let dir = tempfile::tempdir().unwrap();
        let kernel = starling_vmm::test_guest::build(dir.path()).unwrap().pvh;
        let state = dir.path().join("net-state");
        let host = Netns::new(tag);
        let log = dir.path().join("console.log");
        let api = dir.path().join("api.sock");
        let vsock = format!("3,{}", dir.path().join("vsock.sock").display());
        let vm = vm_run(
            &host,
            &state,
            &kernel,
            &log,
            &[
                "--net",
                "nat",
                "--api-socket",
                api.to_str().unwrap(),
                "--vsock",
                &vsock,
                "--cmdline",
                "net netwatch exit=0",
            ],
        )
        .spawn()
        .unwrap();
        let vms = Reaper(vec![vm.id()]);
        Watching {
            dir,
            kernel,
            state,
            host,
            log,
            api,
            vm,
            vms,
        }
    }
}
