//! `starling pool`: substrate pools with the tier-1 test guest's `substrate` mode (it boots,
//! sets some state, says `ready` to the monitor's service and prints the configuration it gets
//! back, then exits with its code=N).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::StopPools;
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

fn starling(pools: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_starling"));
    c.env("STARLING_HOME", "/nonexistent-store-not-needed")
        .env("STARLING_POOLS", pools);
    c
}

fn ok(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Pool `name` as `pool ls --json` lists it.
fn listed(pools: &Path, name: &str) -> serde_json::Value {
    let ls: serde_json::Value =
        serde_json::from_str(&ok(starling(pools).args(["pool", "ls", "--json"]))).unwrap();
    ls.as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("pool {name} not listed: {ls}"))
        .clone()
}

fn fails(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(!out.status.success());
    String::from_utf8(out.stderr).unwrap()
}

fn wait_for_file(p: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = std::fs::read_to_string(p).unwrap_or_default();
        if s.contains(needle) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in {}:\n{s}",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn pools_dock_activate_refill_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let Some(kernel) = guest(dir.path()) else {
        return;
    };
    let pools = dir.path().join("pools");
    let _stop = StopPools(pools.clone());
    let create = |name: &str, cmdline: &str, size: &str| {
        let mut c = starling(&pools);
        c.args([
            "pool",
            "create",
            name,
            "--mem",
            "32M",
            "--cmdline",
            cmdline,
            "--size",
            size,
        ])
        .arg("--kernel")
        .arg(&kernel);
        c
    };
    ok(&mut create("web", "substrate", "2"));
    let ls: serde_json::Value =
        serde_json::from_str(&ok(starling(&pools).args(["pool", "ls", "--json"]))).unwrap();
    assert_eq!(ls[0]["name"], "web");
    assert_eq!(ls[0]["waiting"], 2, "{ls}");
    let boot_log = std::fs::read_to_string(pools.join("web/boot.log")).unwrap();
    assert!(boot_log.contains("substrate: ready"), "{boot_log}");
    assert!(
        !boot_log.contains("substrate: activate"),
        "the docked VM was never activated"
    );

    // Replacements dock in the background: `pool ls` shows them starting, then waiting.
    let waiting = |want: u64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ls: serde_json::Value =
                serde_json::from_str(&ok(starling(&pools).args(["pool", "ls", "--json"]))).unwrap();
            if ls[0]["waiting"] == want {
                assert_eq!(ls[0]["failed"], 0, "{ls}");
                return ls;
            }
            assert!(Instant::now() < deadline, "never {want} waiting: {ls}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut seeds = Vec::new();
    for i in 0..3 {
        waiting(2);
        let started = Instant::now();
        let out = ok(starling(&pools).args([
            "pool",
            "run",
            "web",
            "--env",
            "code=7",
            "--env",
            &format!("N={i}"),
            "--args",
            "serve --port 80",
            "--json",
        ]));
        let took = started.elapsed();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["warm"], true, "{v}");
        eprintln!(
            "activation {i}: {} us, `pool run` {took:?}",
            v["activated_us"]
        );
        let console = PathBuf::from(v["console"].as_str().unwrap());
        // The guest prints a byte at a time: read its console once it has ended.
        let slot = PathBuf::from(v["slot"].as_str().unwrap());
        wait_for_file(&slot.join("monitor.log"), "the guest exited with status 7");
        let log = wait_for_file(&console, "substrate: whoami");
        assert!(
            log.contains(&format!(
                "substrate: activate N={i} code=7 -- serve --port 80"
            )),
            "{log}"
        );
        // The state from before the snapshot is there: the counter goes on from 500.
        assert!(log.contains("substrate: counter 501 pattern ok"), "{log}");
        assert!(
            !log.contains("substrate: ready"),
            "activated without booting: {log}"
        );
        let seed = log
            .split_whitespace()
            .find_map(|w| w.strip_prefix("seed="))
            .unwrap()
            .to_owned();
        seeds.push(seed);
    }
    let all = seeds.clone();
    seeds.sort();
    seeds.dedup();
    assert_eq!(
        seeds.len(),
        3,
        "every activated VM has its own identity: {all:?}"
    );
    let ls = waiting(2);
    assert_eq!(ls[0]["starting"], 0, "refilled to its size: {ls}");

    // Waiting substrates whose monitors died are passed over (and cleared away): the run
    // restores a new VM instead of failing on them.
    let mut dead = Vec::new();
    for e in std::fs::read_dir(pools.join("web/slots")).unwrap() {
        let slot = e.unwrap().path();
        if !slot.join("free").exists() {
            continue;
        }
        let status: serde_json::Value = serde_json::from_str(&ok(starling(&pools)
            .args(["vm", "status"])
            .arg(slot.join("api.sock"))))
        .unwrap();
        let pid = status["pid"].as_i64().unwrap();
        assert!(Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(Instant::now() < deadline, "monitor {pid} outlived SIGKILL");
            std::thread::sleep(Duration::from_millis(10));
        }
        dead.push(slot);
    }
    assert_eq!(dead.len(), 2, "{dead:?}");
    let v: serde_json::Value = serde_json::from_str(&ok(
        starling(&pools).args(["pool", "run", "web", "--env", "code=0", "--json"])
    ))
    .unwrap();
    assert_eq!(v["warm"], false, "{v}");
    let new_slot = PathBuf::from(v["slot"].as_str().unwrap());
    for slot in &dead {
        // A cleared slot's number may be taken again by the VM restored in its place.
        assert!(
            !slot.exists() || *slot == new_slot,
            "{} left behind",
            slot.display()
        );
    }
    wait_for_file(
        &new_slot.join("monitor.log"),
        "the guest exited with status 0",
    );

    // A pool with nothing waiting restores a fresh VM per run.
    ok(&mut create("cold", "substrate", "0"));
    let v: serde_json::Value = serde_json::from_str(&ok(
        starling(&pools).args(["pool", "run", "cold", "--env", "code=3", "--json"])
    ))
    .unwrap();
    assert_eq!(v["warm"], false);
    wait_for_file(
        Path::new(v["console"].as_str().unwrap()),
        "substrate: activate code=3",
    );

    // Errors name the problem and leave nothing behind.
    assert!(fails(&mut create("web", "substrate", "1")).contains("exists"));
    let e = fails(&mut create("never", "exit=4", "1"));
    assert!(e.contains("before its guest said ready"), "{e}");
    assert!(!pools.join("never").exists());
    assert!(
        fails(starling(&pools).args(["pool", "run", "nosuch"])).contains("no pool named nosuch")
    );
    let e = fails(starling(&pools).args(["pool", "run", "web", "--env", "A=two words"]));
    assert!(e.contains("single words"), "{e}");
    assert!(fails(&mut create("bad/name", "substrate", "1")).contains("pool name"));

    // A replacement that cannot dock does not fail the activation that started it: the
    // listing counts it failed, and its slot's monitor.log says why.
    ok(&mut create("brittle", "substrate", "1"));
    std::fs::remove_file(pools.join("brittle/snap/state")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(
        starling(&pools).args(["pool", "run", "brittle", "--env", "code=0", "--json"])
    ))
    .unwrap();
    assert_eq!(v["warm"], true, "{v}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let ls = loop {
        let p = listed(&pools, "brittle");
        if p["failed"] == 1 {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "the failed dock never showed: {p}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        (&ls["waiting"], &ls["starting"]),
        (&0.into(), &0.into()),
        "{ls}"
    );
    let failed_log = std::fs::read_dir(pools.join("brittle/slots"))
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path().join("monitor.log")).unwrap_or_default())
        .find(|l| l.contains("state"))
        .unwrap_or_default();
    assert!(failed_log.contains("No such file"), "{failed_log:?}");
    ok(starling(&pools).args(["pool", "rm", "brittle", "--force"]));

    // An interrupted create (its command killed while the guest boots) takes its boot VM
    // along, and what it left is refused as a pool but cleared by rm --force.
    let mut stuck = create("stuck", "idle", "1").spawn().unwrap();
    let boot = pools.join("stuck/boot.sock");
    let answers = |sock: &Path| {
        starling_vmm::api::call(sock, "GET", "/v1/vm", &serde_json::Value::Null).is_ok()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !answers(&boot) {
        assert!(Instant::now() < deadline, "the boot VM never answered");
        std::thread::sleep(Duration::from_millis(20));
    }
    stuck.kill().unwrap();
    stuck.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while answers(&boot) {
        assert!(
            Instant::now() < deadline,
            "the boot VM outlived its pool create"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let e = fails(starling(&pools).args(["pool", "rm", "stuck"]));
    assert!(e.contains("never finished"), "{e}");
    assert!(fails(starling(&pools).args(["pool", "run", "stuck"])).contains("no pool named"));
    ok(starling(&pools).args(["pool", "rm", "stuck", "--force"]));
    assert!(!pools.join("stuck").exists());

    // A pool over a stored image: the VM gets it as an ext4 disk (it reads the superblock:
    // this image's UUID), and every activated VM writes to an overlay of its own (each finds
    // the image's sector 0, not what the VM before it wrote there); the base stays as it was.
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/motd"), "hello from the pool's image\n").unwrap();
    let store = dir.path().join("store");
    ok(starling(&pools)
        .env("STARLING_HOME", &store)
        .args(["image", "import"])
        .arg(&tree)
        .arg("tiny:v1"));
    ok(create("disk", "substrate disk", "1")
        .env("STARLING_HOME", &store)
        .args(["--disk-image", "tiny:v1"]));
    let base = pools.join("disk/rootfs.ext4");
    let base_before = std::fs::read(&base).unwrap();
    // The base disk holds the image (read by e2fsprogs' own ext4 reader).
    let motd = Command::new("debugfs")
        .args(["-R", "cat /etc/motd"])
        .arg(&base)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&motd.stdout),
        "hello from the pool's image\n"
    );
    let dumpe2fs = Command::new("dumpe2fs")
        .arg("-h")
        .arg(&base)
        .output()
        .unwrap();
    assert!(dumpe2fs.status.success(), "dumpe2fs -h {}", base.display());
    let uuid = String::from_utf8_lossy(&dumpe2fs.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Filesystem UUID:"))
        .map(|u| u.trim().replace('-', ""))
        .expect("dumpe2fs names the UUID");
    for n in 1..=2 {
        let v: serde_json::Value = serde_json::from_str(&ok(starling(&pools).args([
            "pool",
            "run",
            "disk",
            "--env",
            &format!("N={n}"),
            "--env",
            "code=5",
            "--json",
        ])))
        .unwrap();
        let slot = PathBuf::from(v["slot"].as_str().unwrap());
        wait_for_file(&slot.join("monitor.log"), "the guest exited with status 5");
        let log = wait_for_file(
            Path::new(v["console"].as_str().unwrap()),
            "substrate: whoami",
        );
        assert!(
            log.contains(&format!(
                "substrate: disk: superblock status 0 magic ef53 uuid {uuid}\n"
            )),
            "activation {n} did not read the pool's image:\n{log}"
        );
        assert!(
            log.contains("substrate: disk: sector 0 before \"\"\n"),
            "activation {n} found another VM's write:\n{log}"
        );
        assert!(
            log.contains(&format!(
                "substrate: disk: write status 0\nsubstrate: disk: sector 0 after \"written by activation N={n}\"\n"
            )),
            "{log}"
        );
        assert!(
            slot.join("run/disk0.overlay").is_file(),
            "the VM's own disk overlay"
        );
    }
    assert!(
        std::fs::read(&base).unwrap() == base_before,
        "an activated VM wrote to the pool's base disk"
    );
    let e2fsck = Command::new("e2fsck")
        .args(["-fn"])
        .arg(&base)
        .output()
        .unwrap();
    assert!(
        e2fsck.status.success(),
        "the pool's base disk is clean: {}",
        String::from_utf8_lossy(&e2fsck.stdout)
    );
    ok(starling(&pools).args(["pool", "rm", "disk"]));

    // Removing a pool stops (and counts) the monitors still running: its waiting substrates,
    // not the activated VMs that ended and left their slots (their consoles) behind.
    let deadline = Instant::now() + Duration::from_secs(30);
    let live = loop {
        let web = listed(&pools, "web");
        if web["starting"] == 0 && web["active"] == 0 {
            break web["waiting"].as_u64().unwrap();
        }
        assert!(Instant::now() < deadline, "web never settled: {web}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let slots = std::fs::read_dir(pools.join("web/slots")).unwrap().count() as u64;
    assert!(
        slots > live,
        "ended VMs' slots are kept until the pool goes ({slots}, {live})"
    );
    let out = starling(&pools)
        .args(["pool", "rm", "web"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&format!("pool web removed ({live} VMs stopped)")),
        "{said}"
    );
    ok(starling(&pools).args(["pool", "rm", "cold", "--force"]));
    assert!(!pools.join("web").exists());
    let ls: serde_json::Value =
        serde_json::from_str(&ok(starling(&pools).args(["pool", "ls", "--json"]))).unwrap();
    assert_eq!(ls, serde_json::json!([]));
}
