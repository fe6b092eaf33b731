//! `starling run` and the VMs starlingd keeps, on this host's /dev/kvm with the project's test
//! guest as the kernel (`--kernel FILE`): the daemon resolves the image, builds the boot
//! artifact, gives the VM its virtio-fs root, scratch disk, vsock and console, and keeps it
//! through `ps`, `logs`, `exec`, `stop`/`kill`, `rm` and its own restart. Linux guests booting
//! real images are tier 2 (vm_linux.rs).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::*;

/// The test guest (PVH build), or None after a loud skip (a failure under CI).
fn guest(env: &Env) -> Option<PathBuf> {
    if let Some(why) = starling_vmm::test_guest::missing() {
        skip(&why);
        return None;
    }
    let g = starling_vmm::test_guest::build(&env.path("guest"))
        .unwrap_or_else(|e| panic!("the test guest does not build: {e}"));
    Some(g.pvh)
}

/// An image with a file to find and (optionally) an /sbin/init.
fn image(env: &Env, name: &str, with_init: bool) {
    let tree = env.path(&format!("tree-{name}"));
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::create_dir_all(tree.join("sbin")).unwrap();
    fs::write(tree.join("etc/greeting"), "hello from the image\n").unwrap();
    if with_init {
        fs::write(tree.join("sbin/init"), "#!/bin/sh\n").unwrap();
    }
    env.ok(&["image", "import", s(&tree), name]);
}

/// Kills the monitors of the VMs under `state` when the test ends (VMs outlive their daemon
/// by design; a failed assert must not leave one spinning).
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let Ok(rd) = fs::read_dir(self.0.join("vms")) else {
            return;
        };
        for e in rd.flatten() {
            let rec = fs::read(e.path().join("vm.json")).unwrap_or_default();
            let pid = serde_json::from_slice::<serde_json::Value>(&rec)
                .ok()
                .and_then(|v| v["pid"].as_i64());
            if let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

fn vm(d: &Daemon, env: &Env, name: &str) -> serde_json::Value {
    let all = json(&d.ok(env, &["ps", "-a", "--json"]));
    all.as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pid_alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn a_command_runs_and_its_status_is_the_runs() {
    let env = Env::new();
    let Some(kernel) = guest(&env) else { return };
    image(&env, "tiny:1", false);
    let _reaper = Reaper(env.path("state"));
    let d = Daemon::start_isolated(&env, &env.path("state"), &[]);
    let o = d.run(
        &env,
        &[
            "run",
            "--name",
            "first",
            "--kernel",
            s(&kernel),
            "--kernel-args",
            "exit=7",
            "tiny:1",
            "--",
            "/bin/true",
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(7),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The console came back on stdout; the guest saw its devices: the scratch disk (2), the
    // vsock (19) and the image's virtio-fs root (26), and the daemon's command line.
    for dev in [2, 19, 26] {
        assert!(
            out.contains(&format!(": device {dev}\n")),
            "device {dev} missing:\n{out}"
        );
    }
    assert!(out.contains("cmdline: console=ttyS0"), "{out}");
    assert!(out.contains(" exit=7"), "{out}");

    let v = vm(&d, &env, "first");
    assert_eq!(v["state"], "exited", "{v}");
    assert_eq!(v["exit_status"], 7, "{v}");
    assert!(v["image"].as_str().unwrap().starts_with("tiny:1@"), "{v}");
    assert_eq!(v["cmd"], serde_json::json!(["/bin/true"]));
    assert!(v["pid"].is_null(), "{v}");
    let logs = d.ok(&env, &["logs", "first"]);
    assert!(logs.contains("guest done"), "{logs}");
    // Its files are private to the daemon's user.
    let dir = PathBuf::from(v["dir"].as_str().unwrap());
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", dir.display());
    assert!(dir.join("scratch.img").exists());

    // The name is taken until the VM is removed.
    let e = d.fails(
        &env,
        &[
            "run",
            "--name",
            "first",
            "--kernel",
            s(&kernel),
            "tiny:1",
            "--",
            "x",
        ],
    );
    assert!(
        e.contains("first") && e.contains("starling rm first"),
        "{e}"
    );
    assert_eq!(d.ok(&env, &["rm", "first"]).trim(), "first");
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(vm(&d, &env, "first").is_null());

    // --rm: nothing stays.
    let o = d.run(
        &env,
        &[
            "run",
            "--rm",
            "--name",
            "gone",
            "--kernel",
            s(&kernel),
            "--kernel-args",
            "exit=0",
            "tiny:1",
            "--",
            "/bin/true",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    wait_for("--rm removes the VM", Duration::from_secs(10), || {
        vm(&d, &env, "gone").is_null()
    });
}

#[test]
fn bad_requests_fail_before_a_guest_runs_and_leave_nothing() {
    let env = Env::new();
    let Some(kernel) = guest(&env) else { return };
    image(&env, "noinit:1", false);
    let _reaper = Reaper(env.path("state"));
    let d = Daemon::start_isolated(&env, &env.path("state"), &[]);
    let vms = d.state.join("vms");
    let run = |extra: &[&str]| -> String {
        let mut args = vec!["run", "--name", "bad"];
        args.extend_from_slice(extra);
        let e = d.fails(&env, &args);
        assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
        let left: Vec<_> = fs::read_dir(&vms)
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{extra:?} left {left:?} behind");
        e
    };
    let k = s(&kernel);
    let e = run(&["--kernel", k, "noinit:1"]);
    assert!(e.contains("no /sbin/init") && e.contains("-- CMD"), "{e}");
    let e = run(&["--kernel", k, "nosuch:1", "--", "/bin/true"]);
    assert!(e.contains("nosuch"), "{e}");
    let e = run(&["--kernel", k, "noinit@00112233", "--", "/bin/true"]);
    assert!(e.contains("00112233"), "{e}");
    let text = env.path("not-a-kernel");
    fs::write(&text, "just text\n").unwrap();
    let e = run(&["--kernel", s(&text), "noinit:1", "--", "/bin/true"]);
    assert!(
        e.contains("not-a-kernel") && e.contains("neither a bzImage nor an ELF"),
        "{e}"
    );
    let e = run(&[
        "--kernel",
        "debian-kernel:9.9-none",
        "noinit:1",
        "--",
        "/bin/true",
    ]);
    assert!(e.contains("debian-kernel"), "{e}");
    let e = run(&[
        "--kernel",
        k,
        "--mem",
        "100T",
        "noinit:1",
        "--",
        "/bin/true",
    ]);
    assert!(e.contains("--mem"), "{e}");
    let long = "x".repeat(2000);
    let e = run(&[
        "--kernel",
        k,
        "--kernel-args",
        &long,
        "noinit:1",
        "--",
        "/bin/true",
    ]);
    assert!(
        e.contains("--kernel-args") && e.contains("1024 bytes"),
        "{e}"
    );
    let e = run(&["--kernel", k, "--vcpus", "0", "noinit:1", "--", "/bin/true"]);
    assert!(e.contains("--vcpus 0"), "{e}");
    let e = run(&[
        "--kernel",
        k,
        "--disk-size",
        "1M",
        "noinit:1",
        "--",
        "/bin/true",
    ]);
    assert!(e.contains("--disk-size"), "{e}");
    // A command the guest's agent would refuse is refused here, by its size.
    let mut many = vec!["--kernel", k, "noinit:1", "--", "/bin/echo"];
    many.extend(std::iter::repeat_n("a", 5000));
    let e = run(&many);
    assert!(
        e.contains("5001 arguments") && e.contains("at most 4096"),
        "{e}"
    );
    // No kernel anywhere: the image has none and the store has no kernel image.
    let e = run(&["noinit:1", "--", "/bin/true"]);
    assert!(e.contains("vm kernel fetch"), "{e}");
    let e = d.fails(
        &env,
        &[
            "run",
            "--name",
            "a/b",
            "--kernel",
            k,
            "noinit:1",
            "--",
            "/bin/true",
        ],
    );
    assert!(e.contains("a/b"), "{e}");
    // exec and stop name a VM that does not exist.
    let e = d.fails(&env, &["exec", "nosuch", "--", "true"]);
    assert!(e.contains("nosuch"), "{e}");
    // A path is a VM outside the daemon, by its vsock socket.
    let o = d.run(&env, &["exec", "/nonexistent/vsock.sock", "--", "true"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("/nonexistent/vsock.sock") && e.contains("agent does not answer"),
        "{e}"
    );
    // exec's own failures are 125 (docker's), never a status the command could have given:
    // an unreachable agent, a missing VM, a bad flag.
    assert_eq!(o.status.code(), Some(125), "{e}");
    for args in [
        &["exec", "nosuch", "--", "true"][..],
        &["exec", "--no-such-flag", "x", "--", "true"],
        &["run", "--no-such-flag", "tiny:1"],
    ] {
        let o = d.run(&env, args);
        assert_eq!(
            o.status.code(),
            Some(125),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let e = d.fails(&env, &["stop", "nosuch"]);
    assert!(e.contains("nosuch"), "{e}");
    // Not found is status 3, as the README's scheme says (the daemon's 404 carried through).
    for args in [
        &["stop", "nosuch"][..],
        &["rm", "nosuch"],
        &["logs", "nosuch"],
    ] {
        let o = d.run(&env, args);
        assert_eq!(
            o.status.code(),
            Some(3),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn vms_outlive_the_cli_and_the_daemon() {
    let env = Env::new();
    let Some(kernel) = guest(&env) else { return };
    image(&env, "tiny:1", true);
    let state = env.path("state");
    let _reaper = Reaper(state.clone());
    let mut d = Daemon::start_isolated(&env, &state, &[]);
    let k = s(&kernel);
    let name = d
        .ok(
            &env,
            &[
                "run",
                "-d",
                "--name",
                "spinner",
                "--kernel",
                k,
                "--kernel-args",
                "spin",
                "tiny:1",
            ],
        )
        .trim()
        .to_string();
    assert_eq!(name, "spinner");
    let v = vm(&d, &env, "spinner");
    assert_eq!(v["state"], "running", "{v}");
    let pid = v["pid"].as_u64().expect("a running VM has a pid");
    assert!(pid_alive(pid));
    wait_for("console output in logs", Duration::from_secs(20), || {
        d.ok(&env, &["logs", "spinner"]).contains("spinning")
    });
    let table = d.ok(&env, &["ps"]);
    let row = table
        .lines()
        .find(|l| l.starts_with("spinner"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("tiny:1@") && row.contains("running") && row.contains(&pid.to_string()),
        "{row}"
    );
    assert!(row.contains("/sbin/init"), "{row}");

    // exec on a guest without an agent: a clear error, in bounded time.
    let t = Instant::now();
    let e = d.fails(&env, &["exec", "spinner", "--", "true"]);
    assert!(e.contains("spinner") && e.contains("agent"), "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "exec hung {:?}",
        t.elapsed()
    );

    // A second VM that will end while no daemon watches.
    d.ok(
        &env,
        &[
            "run",
            "-d",
            "--name",
            "short",
            "--kernel",
            k,
            "--kernel-args",
            "spin",
            "tiny:1",
        ],
    );
    let short_pid = vm(&d, &env, "short")["pid"].as_u64().unwrap();

    // The daemon goes; the VMs stay.
    d.stop();
    assert!(pid_alive(pid), "stopping the daemon killed the VM");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(short_pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    wait_for("the killed monitor to go", Duration::from_secs(10), || {
        !pid_alive(short_pid)
    });

    let d = Daemon::start_isolated(&env, &state, &[]);
    let log = fs::read_to_string(state.join("daemon.log")).unwrap();
    assert!(
        log.contains(&format!("re-adopted VM spinner (pid {pid})")),
        "{log}"
    );
    assert!(
        log.contains("VM short ended while no daemon watched it"),
        "{log}"
    );
    let v = vm(&d, &env, "spinner");
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(v["pid"].as_u64(), Some(pid));
    assert_ne!(vm(&d, &env, "short")["state"], "running");

    // rm refuses a running VM without -f; kill stops it at once.
    let e = d.fails(&env, &["rm", "spinner"]);
    assert!(e.contains("spinner") && e.contains("-f"), "{e}");
    d.ok(&env, &["kill", "spinner"]);
    wait_for("the VM to end", Duration::from_secs(10), || !pid_alive(pid));
    let v = vm(&d, &env, "spinner");
    assert_ne!(v["state"], "running", "{v}");
    assert!(v["pid"].is_null(), "{v}");
    d.ok(&env, &["rm", "spinner", "short"]);
    assert!(json(&d.ok(&env, &["ps", "-a", "--json"]))
        .as_array()
        .unwrap()
        .is_empty());
}

/// `pool create NAME --image IMAGE -- CMD`: starlingd boots the VM `starling run` would (boot
/// artifact, virtio-fs root, scratch disk; here the test guest in its `substrate` mode as the
/// kernel) until its guest says `ready`, and docks it; `pool run` activates a substrate.
#[test]
fn a_pool_of_an_image_is_booted_by_the_daemon_and_activated() {
    let env = Env::new();
    let Some(kernel) = guest(&env) else { return };
    image(&env, "tiny:1", false);
    let pools = env.path("pools");
    let _stop = StopPools(pools.clone());
    let d = Daemon::start(&env, &env.path("state"), &[]);
    let cli = |args: &[&str]| {
        env.cmd()
            .args(args)
            .env("STARLING_SOCKET", &d.socket)
            .env("STARLING_POOLS", &pools)
            .output()
            .unwrap()
    };
    let create = |name: &str, image: &str, cmd: &[&str]| {
        let mut a = vec![
            "pool",
            "create",
            name,
            "--image",
            image,
            "--kernel",
            s(&kernel),
            "--kernel-args",
            "substrate",
            "--mem",
            "64M",
        ];
        if !cmd.is_empty() {
            a.push("--");
            a.extend(cmd);
        }
        cli(&a)
    };
    let o = create("web", "tiny:1", &["/bin/true"]);
    assert!(
        o.status.success(),
        "{}\ndaemon log:\n{}",
        String::from_utf8_lossy(&o.stderr),
        fs::read_to_string(d.state.join("daemon.log")).unwrap_or_default()
    );
    let ls = json(&String::from_utf8_lossy(
        &cli(&["pool", "ls", "--json"]).stdout,
    ));
    assert_eq!(ls[0]["name"], "web", "{ls}");
    assert_eq!(ls[0]["waiting"], 1, "{ls}");
    assert!(
        ls[0]["image"].as_str().unwrap_or("").starts_with("tiny:1@"),
        "{ls}"
    );
    // The boot VM had the run VM's devices: scratch disk (2), vsock (19), virtio-fs root (26).
    let boot = fs::read_to_string(pools.join("web/boot.log")).unwrap();
    for dev in [2, 19, 26] {
        assert!(boot.contains(&format!(": device {dev}\n")), "{boot}");
    }
    assert!(boot.contains("substrate: ready"), "{boot}");
    let v = json(&String::from_utf8_lossy(
        &cli(&[
            "pool", "run", "web", "--env", "code=5", "--args", "job 1", "--json",
        ])
        .stdout,
    ));
    assert_eq!(v["warm"], true, "{v}");
    let slot = PathBuf::from(v["slot"].as_str().unwrap());
    wait_for("the activated VM's end", Duration::from_secs(60), || {
        fs::read_to_string(slot.join("monitor.log"))
            .unwrap_or_default()
            .contains("the guest exited with status 5")
    });
    let console = fs::read_to_string(v["console"].as_str().unwrap()).unwrap();
    assert!(
        console.contains("substrate: activate code=5 -- job 1"),
        "{console}"
    );

    // Errors: each names the problem, before a guest runs, and leaves no pool behind.
    let e = String::from_utf8_lossy(&create("nocmd", "tiny:1", &[]).stderr).into_owned();
    assert!(e.contains("needs a command"), "{e}");
    let e = String::from_utf8_lossy(&create("web", "tiny:1", &["/bin/true"]).stderr).into_owned();
    assert!(e.contains("exists"), "{e}");
    let e =
        String::from_utf8_lossy(&create("ghost", "nosuch:1", &["/bin/true"]).stderr).into_owned();
    assert!(e.contains("nosuch"), "{e}");
    for p in ["nocmd", "ghost"] {
        assert!(!pools.join(p).exists(), "{p} was left behind");
    }
}

/// The repository goes away: an image this host resolved before still boots from what the
/// host cache holds, and says so; one it never resolved, or whose metadata expired since,
/// fails with a clear error before a guest runs, leaving nothing.
#[test]
fn an_unreachable_repository_still_boots_what_the_host_verified_and_cached() {
    let env = Env::new();
    let Some(kernel) = guest(&env) else { return };
    image(&env, "tiny:1", false);
    image(&env, "other:1", false);
    let repo = env.path("repo");
    env.ok(&["repo", "init", s(&repo)]);
    env.ok(&["push", "tiny:1", s(&repo)]);
    env.ok(&["push", "other:1", s(&repo)]);
    let root = repo.join("metadata/1.root.json");
    let mut server = Server::start(&env, &repo);
    let state = env.path("state");
    let _reaper = Reaper(state.clone());
    // On this machine's network (the repository is on its loopback), so without one of the
    // VMs' own.
    let d = Daemon::start(&env, &state, &["--timeout", "2"]);
    let url = server.url.clone();
    let run = |name: &str, image: &str| {
        d.run(
            &env,
            &[
                "run",
                "--net",
                "none",
                "--name",
                name,
                "--kernel",
                s(&kernel),
                "--kernel-args",
                "exit=5",
                "--root",
                s(&root),
                &url,
                image,
                "--",
                "/bin/true",
            ],
        )
    };
    let o = run("online", "tiny:1");
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(5), "{err}");
    assert!(!err.contains("unreachable"), "{err}");
    let version = vm(&d, &env, "online")["version"]
        .as_str()
        .unwrap()
        .to_string();

    server.stop();
    let o = run("offline", "tiny:1");
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(5), "{err}");
    assert_eq!(err.matches("is unreachable").count(), 1, "said once: {err}");
    assert!(
        err.contains(&format!("tiny:1 is tiny@{}", &version[..12]))
            && err.contains("as this host verified it at"),
        "{err}"
    );
    assert_eq!(vm(&d, &env, "offline")["version"], version.as_str());

    // Never resolved here: nothing to stand in.
    let o = run("never", "other:1");
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(125), "run's own failure: {err}");
    assert!(
        err.contains("is unreachable") && err.contains("other:1 was never resolved on this host"),
        "{err}"
    );
    // One line, the URL it tried and the OS's reason, each once.
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("(fetching http://127.0.0.1:"), "{err}");
    assert!(!err.contains("Transport"), "{err}");
    assert!(vm(&d, &env, "never").is_null());
    assert!(!state.join("vms/never").exists());

    // What it was verified under has expired: refused, as TUF refuses expired metadata.
    let mut remembered = Vec::new();
    walk(&state, &mut |p| {
        if p.file_name().is_some_and(|n| n == "resolved.json") {
            remembered.push(p.to_path_buf());
        }
    });
    assert_eq!(remembered.len(), 1, "{remembered:?}");
    let mut v = json(&fs::read_to_string(&remembered[0]).unwrap());
    v["refs"]["tiny:1"]["expires_unix"] = serde_json::json!(1_000_000_000);
    fs::write(&remembered[0], v.to_string()).unwrap();
    let o = run("expired", "tiny:1");
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(125), "run's own failure: {err}");
    assert!(
        err.contains("tiny:1 cannot start from the cache") && err.contains("expired at 2001-"),
        "{err}"
    );
    assert!(vm(&d, &env, "expired").is_null());
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, f);
        } else {
            f(&p);
        }
    }
}

/// `starling run` puts the VM on Starling's network by default: the guest (the test guest,
/// which takes its address from the `ip=` the daemon adds) answers UDP at its address from
/// the daemon's side, `ps` shows the address and the published port, and both go when the
/// VM ends. `--net none` gives no network device.
#[test]
fn run_gives_the_vm_an_address_and_ps_shows_it() {
    let env = Env::new();
    let Some(kernel) = guest(&env) else { return };
    if !rustix::process::geteuid().is_root() {
        return skip("VM networks need root");
    }
    image(&env, "tiny:1", false);
    let _reaper = Reaper(env.path("state"));
    let d = Daemon::start_isolated(&env, &env.path("state"), &[]);
    d.ok(
        &env,
        &[
            "run",
            "-d",
            "--name",
            "web",
            "--kernel",
            s(&kernel),
            "-p",
            "17007:7/udp",
            "--kernel-args",
            "net exit=0",
            "tiny:1",
            "--",
            "/bin/true",
        ],
    );
    wait_for("the guest serving", Duration::from_secs(30), || {
        d.ok(&env, &["logs", "web"]).contains("net: serving")
    });
    let logs = d.ok(&env, &["logs", "web"]);
    assert!(
        logs.contains("net: address 10.213.0.2 gateway 10.213.0.1"),
        "{logs}"
    );
    let v = vm(&d, &env, "web");
    assert_eq!(v["address"], "10.213.0.2", "{v}");
    assert_eq!(v["ports"][0]["host"], 17007, "{v}");
    let table = d.ok(&env, &["ps"]);
    let row = table
        .lines()
        .find(|l| l.starts_with("web"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("10.213.0.2") && row.contains("17007->7/udp"),
        "{row}"
    );
    // From the daemon's side of the bridge, the guest answers at its address; then quits.
    let ns = d.netns().unwrap();
    let echoed = std::thread::spawn(move || {
        let f = fs::File::open(ns).unwrap();
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&f),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap();
        let sock = std::net::UdpSocket::bind("10.213.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        sock.send_to(b"to the guest", "10.213.0.2:7").unwrap();
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).expect("the guest's echo");
        sock.send_to(b"quit", "10.213.0.2:7").unwrap();
        buf[..n].to_vec()
    })
    .join()
    .unwrap();
    assert_eq!(echoed, b"to the guest");
    wait_for("the VM to end", Duration::from_secs(30), || {
        vm(&d, &env, "web")["state"] == "exited"
    });
    let v = vm(&d, &env, "web");
    assert!(v["address"].is_null(), "{v}");
    // --net none: no network device in the guest, no address.
    let o = d.run(
        &env,
        &[
            "run",
            "--net",
            "none",
            "--kernel",
            s(&kernel),
            "--kernel-args",
            "net exit=0",
            "tiny:1",
            "--",
            "/bin/true",
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("net: none"), "{out}");
    assert!(!out.contains(" ip="), "{out}");
    let e = d.fails(
        &env,
        &[
            "run",
            "--net",
            "none",
            "-p",
            "80:80",
            "--kernel",
            s(&kernel),
            "tiny:1",
            "--",
            "x",
        ],
    );
    assert!(e.contains("not with --net none"), "{e}");
}
