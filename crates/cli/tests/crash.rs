//! Crash safety: SIGKILL at random points of import, tag, rm and gc never leaves a visible
//! half-written version; fsck stays clean; what was committed before stays exportable
//! byte-exact. gc never deletes what a concurrent import is writing.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::*;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A tree big enough that an import takes a while: the torture tree plus many random files.
fn big_tree(root: &Path) {
    torture_tree(root, false);
    let mut x = 0x9e3779b97f4a7c15u64;
    for d in 0..12 {
        let dir = root.join(format!("bulk{d}"));
        fs::create_dir(&dir).unwrap();
        for f in 0..25 {
            let data: Vec<u8> = (0..120_000)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            fs::write(dir.join(format!("f{f}")), data).unwrap();
        }
    }
}

fn export_matches(env: &Env, image: &str, expected: &[&Path]) {
    let out = env.path("check-export");
    let _ = fs::remove_dir_all(&out);
    env.ok(&["image", "export", image, out.to_str().unwrap()]);
    let got = mtree(&out);
    assert!(
        expected.iter().any(|e| mtree(e) == got),
        "{image} matches none of the trees it may hold"
    );
    fs::remove_dir_all(&out).unwrap();
}

#[test]
fn sigkill_at_random_points() {
    let env = Env::new();
    let t0 = env.path("t0");
    torture_tree(&t0, false);
    let t1 = env.path("t1");
    big_tree(&t1);
    let v0 = env
        .ok(&["image", "import", t0.to_str().unwrap(), "img:base"])
        .trim()
        .to_string();
    let base = format!("img@{}", &v0[..16]);

    // Calibrate: how long an uninterrupted import of t1 takes here.
    let started = Instant::now();
    env.ok(&["image", "import", t1.to_str().unwrap(), "junk:calibrate"]);
    let import_time = started.elapsed();
    env.ok(&["image", "rm", "junk:calibrate"]);

    eprintln!("crash test: an import takes {import_time:?}");
    let (iterations, mut rng) = kills("crash test", 40);
    let mut killed_mid_way = 0;
    // How long each kind of operation runs here, learnt as we go (`learn`): re-imports dedup
    // and run much faster than the calibration import.
    let mut est_us: [u64; 4] = [
        import_time.as_micros() as u64,
        20_000,
        20_000,
        import_time.as_micros() as u64,
    ];
    for i in 0..iterations {
        let args: Vec<String> = match i % 4 {
            0 => vec![
                "image".into(),
                "import".into(),
                t1.to_str().unwrap().into(),
                "img:base".into(),
            ],
            1 => vec![
                "image".into(),
                "tag".into(),
                base.clone(),
                "img:other".into(),
            ],
            2 => vec!["image".into(), "rm".into(), "img:other".into()],
            _ => {
                // Make garbage for gc to chew on, then kill gc part-way.
                let junk = env.path("junk");
                let _ = fs::remove_dir_all(&junk);
                fs::create_dir(&junk).unwrap();
                for f in 0..200 {
                    let data: Vec<u8> = (0..2000).map(|_| rng.next() as u8).collect();
                    fs::write(junk.join(format!("{f}")), data).unwrap();
                }
                env.ok(&["image", "import", junk.to_str().unwrap(), "junk:x"]);
                env.ok(&["image", "rm", "junk:x"]);
                vec!["store".into(), "gc".into()]
            }
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let k = (i % 4) as usize;
        let delay = Duration::from_micros(rng.next() % est_us[k].max(1));
        let (mid_way, _) = end_or_kill(spawn_on(&env.store, &args, None), Some(delay));
        killed_mid_way += u64::from(mid_way);
        learn(&mut est_us[k], mid_way);

        env.fsck_clean();
        // The committed base version is intact whatever was killed.
        if i % 4 == 0 || i + 1 == iterations {
            export_matches(&env, &base, &[&t0]);
        }
        // The tag shows either the old version or a complete new one, never a partial one.
        export_matches(&env, "img:base", &[&t0, &t1]);
    }
    eprintln!(
        "crash test: {killed_mid_way} of {iterations} processes were killed before finishing"
    );
    assert!(
        killed_mid_way >= iterations / 5,
        "too few kills landed mid-operation to mean anything"
    );
    // The store stays usable: gc completes and everything still checks out.
    env.ok(&["store", "gc"]);
    env.fsck_clean();
    export_matches(&env, &base, &[&t0]);
}

#[test]
fn gc_waits_for_a_concurrent_import() {
    let env = Env::new();
    let t1 = env.path("t1");
    big_tree(&t1);
    // Seed the store, then leave garbage behind so gc has work.
    env.ok(&["image", "import", t1.to_str().unwrap(), "junk"]);
    env.ok(&["image", "rm", "junk"]);
    // Wait until an import holds the writer lock (its transaction directory exists), then
    // race gc --no-wait against it. An import can finish before the race starts on a fast
    // machine: try again with new content, a few times.
    let txn_exists = || {
        fs::read_dir(env.store.join("tmp"))
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".txn"))
            })
            .unwrap_or(false)
    };
    let mut raced = false;
    let mut import = None;
    for attempt in 0..5 {
        fs::write(t1.join("bulk1/f1"), format!("changed {attempt}")).unwrap();
        let args = ["image", "import", t1.to_str().unwrap(), "fresh"];
        let mut child = spawn_on(&env.store, &args, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !txn_exists() && child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "import never started");
            std::thread::sleep(Duration::from_millis(1));
        }
        if child.try_wait().unwrap().is_none() {
            let e = env.fails(&["store", "gc", "--no-wait"]);
            assert!(e.contains("locked"), "{e}");
            raced = true;
            import = Some(child);
            break;
        }
        assert!(child.wait().unwrap().success());
    }
    if !raced {
        skip("every import finished before gc --no-wait could race it (5 tries)");
    }
    let gc = Command::new(env!("CARGO_BIN_EXE_starling"))
        .arg("--store")
        .arg(&env.store)
        .args(["store", "gc", "--json"])
        .output()
        .unwrap();
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    if let Some(mut import) = import {
        assert!(import.wait().unwrap().success());
    }
    env.fsck_clean();
    export_matches(&env, "fresh", &[&t1]);
}

/// `starling --store STORE`.
fn with_store(store: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_starling"));
    c.arg("--store").arg(store);
    c
}

/// Runs `child` to its end, or kills it after `kill` if it still runs then: whether it was
/// killed part-way, and how long it ran.
fn end_or_kill(mut child: Child, kill: Option<Duration>) -> (bool, Duration) {
    let started = Instant::now();
    let Some(delay) = kill else {
        let status = child.wait().unwrap();
        assert!(status.success(), "an uninterrupted run failed: {status}");
        return (false, started.elapsed());
    };
    std::thread::sleep(delay);
    let mid_way = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    (mid_way, started.elapsed())
}

/// `starling ARGS` on `store` (talking to the daemon at `socket`), output discarded.
fn spawn_on(store: &Path, args: &[&str], socket: Option<&Path>) -> Child {
    let mut c = with_store(store);
    if let Some(socket) = socket {
        c.env("STARLING_SOCKET", socket);
    }
    c.args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn starling")
}

/// How many kills (STARLING_CRASH_ITERATIONS, else `default`) and a random source seeded
/// from the clock, said on stderr so that a failing run can be told apart.
fn kills(what: &str, default: u64) -> (u64, Rng) {
    let iterations: u64 = std::env::var("STARLING_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("{what}: {iterations} kills, seed {seed}");
    (iterations, Rng(seed))
}

/// Adjusts how long an operation is thought to run (µs): a kill that came too late shrinks
/// the estimate, one that landed part-way grows it, so most kills land part-way whatever the
/// machine's load.
fn learn(est_us: &mut u64, mid_way: bool) {
    *est_us = if mid_way {
        *est_us * 11 / 10
    } else {
        (*est_us * 3 / 4).max(1_000)
    };
}

/// Kills the daemon `delay` into `child` (a client of it), starts it again on the same
/// state, and checks it detached the mount the dead one left at `mountpoint`: whether the
/// kill landed while `child` ran, and how long it had.
fn crash_daemon_after(
    mut child: Child,
    delay: Duration,
    daemon: &mut Daemon,
    env: &Env,
    mountpoint: &Path,
) -> (bool, Duration) {
    let started = Instant::now();
    std::thread::sleep(delay);
    let mid_way = child.try_wait().unwrap().is_none();
    daemon.crash();
    let _ = child.wait();
    *daemon = Daemon::start(env, &daemon.state.clone(), &[]);
    assert_eq!(
        fs::read_dir(mountpoint).unwrap().count(),
        0,
        "stale mount left at {}",
        mountpoint.display()
    );
    (mid_way, started.elapsed())
}

/// `store fsck` of another store is clean.
fn fsck_clean_at(store: &Path) {
    let o = with_store(store).args(["store", "fsck"]).output().unwrap();
    assert!(
        o.status.success(),
        "fsck of {}: {}{}",
        store.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// New random content in one of the big tree's directories: a new version to push.
fn refresh(root: &Path, d: u64, rng: &mut Rng) {
    for f in 0..25 {
        let data: Vec<u8> = (0..120_000).map(|_| rng.next() as u8).collect();
        fs::write(root.join(format!("bulk{d}/f{f}")), data).unwrap();
    }
}

/// Issue 18's crash campaign beyond the local store: SIGKILL part-way through `push` (to a
/// directory repository), `pull` (over HTTP, into another store), the daemon while it
/// commits a writable mount into the store, and the daemon while a program reads a lazy
/// mount. After each: the stores
/// fsck clean, the repository still pulls clean into an empty store (what it lists is whole,
/// every object checked), a commit's tag is absent or a whole version, and a daemon started
/// again detaches the dead mount, serves the image right and finds its cache undamaged.
/// STARLING_CRASH_ITERATIONS sets the number of kills (the campaign runs 200).
#[test]
fn sigkill_across_push_pull_commit_and_the_daemon() {
    if !Path::new("/dev/fuse").exists() {
        skip("/dev/fuse is missing: the commit and daemon kills need FUSE mounts");
        return;
    }
    let env = Env::new();
    let t0 = env.path("t0");
    torture_tree(&t0, false);
    let t1 = env.path("t1");
    big_tree(&t1);
    env.ok(&["image", "import", s(&t0), "img:base"]);
    env.ok(&["image", "import", s(&t1), "img:big"]);
    let repo = env.path("repo");
    env.ok(&["repo", "init", s(&repo)]);
    env.ok(&["push", "img:base", s(&repo)]);
    env.ok(&["push", "img:big", s(&repo)]);
    let server = Server::start(&env, &repo);
    let root = repo.join("metadata/1.root.json");
    let state = env.path("state");
    let mut daemon = Daemon::start(&env, &state, &[]);
    let (mp, lazy) = (env.path("mp"), env.path("lazy"));
    fs::create_dir_all(&mp).unwrap();
    fs::create_dir_all(&lazy).unwrap();
    // What a commit of the writable mount holds: the base tree plus a copy of bulk0 (the
    // root's time fixed, so that both sides compare equal under mtree).
    let committed = env.path("committed");
    let c = s(&committed);
    sh(&format!(
        "cp -a {} {c} && cp -a {}/bulk0 {c}/added && touch -h -d @1600000000 {c}",
        s(&t0),
        s(&t1),
    ));

    let (iterations, mut rng) = kills("crash campaign", 16);
    let other = env.path("other");
    // One operation of kind `k` (0 push, 1 pull, 2 the daemon mid-commit, 3 the daemon
    // mid-read), killed after `kill` (run whole with None, to learn how long it takes); whether
    // the kill landed part-way, and how long the killed process ran.
    let pull_resumes = std::cell::Cell::new(false);
    let op = |k: usize, kill: Option<Duration>, daemon: &mut Daemon, rng: &mut Rng| {
        match k {
            0 => {
                // A new version of img:big, its push killed part-way.
                refresh(&t1, rng.next() % 12, rng);
                env.ok(&["image", "import", s(&t1), "img:big"]);
                let push = spawn_on(
                    &env.store,
                    &["push", "img:big", s(&repo)],
                    Some(&daemon.socket),
                );
                end_or_kill(push, kill)
            }
            1 => {
                // Resumed after a kill that landed part-way; into an empty store otherwise
                // (a complete one would make the pull a no-op the kill always misses).
                if kill.is_none() || !pull_resumes.get() {
                    let _ = fs::remove_dir_all(&other);
                }
                let args = ["pull", &server.url, "img:big", "--root", s(&root)];
                let r = end_or_kill(spawn_on(&other, &args, Some(&daemon.socket)), kill);
                pull_resumes.set(r.0);
                fsck_clean_at(&other);
                r
            }
            2 => {
                // The daemon (which writes a commit into the store) killed part-way.
                daemon.ok(&env, &["mount", "--writable", "img:base", s(&mp)]);
                let m = s(&mp);
                sh(&format!(
                    "cp -a {c}/added {m}/added && touch -h -d @1600000000 {m}"
                ));
                let args = ["commit", m, "img:committed"];
                let commit = spawn_on(&env.store, &args, Some(&daemon.socket));
                let Some(delay) = kill else {
                    let r = end_or_kill(commit, None);
                    daemon.ok(&env, &["umount", m]);
                    return r;
                };
                let r = crash_daemon_after(commit, delay, daemon, &env, &mp);
                if env
                    .run(&["image", "inspect", "img:committed"])
                    .status
                    .success()
                {
                    export_matches(&env, "img:committed", &[&committed]);
                }
                r
            }
            _ => {
                // The daemon killed while a program reads a lazy mount through it, fetching
                // into an emptied cache.
                daemon.ok(&env, &["cache", "gc"]);
                let mount = [
                    "mount",
                    &server.url,
                    "img:base",
                    s(&lazy),
                    "--root",
                    s(&root),
                ];
                daemon.ok(&env, &mount);
                // Every file's bytes read (tar into /dev/null would skip them).
                let reader = Command::new("sh")
                    .arg("-c")
                    .arg(format!(
                        "find {} -type f -exec cat {{}} + > /dev/null",
                        s(&lazy)
                    ))
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                let Some(delay) = kill else {
                    let r = end_or_kill(reader, None);
                    daemon.ok(&env, &["umount", s(&lazy)]);
                    return r;
                };
                let r = crash_daemon_after(reader, delay, daemon, &env, &lazy);
                let v = daemon.ok(&env, &["cache", "verify"]);
                assert!(v.trim().ends_with(" 0 removed"), "after a kill: {v}");
                daemon.ok(&env, &mount);
                assert_same_tree(&t0, &lazy);
                daemon.ok(&env, &["umount", s(&lazy)]);
                r
            }
        }
    };
    // How long each operation takes here, whole; then kills spread over that time, the
    // estimate adjusted as they land (a kill too late shrinks it, one part-way grows it).
    let mut est_us = [0u64; 4];
    for (k, est) in est_us.iter_mut().enumerate() {
        *est = op(k, None, &mut daemon, &mut rng).1.as_micros() as u64;
    }
    eprintln!("crash campaign: whole operations take {est_us:?} µs");
    let mut landed = [0u64; 4];
    for i in 0..iterations {
        let k = (i % 4) as usize;
        let delay = Duration::from_micros(rng.next() % est_us[k].max(1));
        let (mid_way, _) = op(k, Some(delay), &mut daemon, &mut rng);
        landed[k] += u64::from(mid_way);
        learn(&mut est_us[k], mid_way);
        env.fsck_clean();
        // The repository pulls clean into an empty store, whatever push was killed.
        let fresh = env.path("fresh");
        let _ = fs::remove_dir_all(&fresh);
        for img in ["img:base", "img:big"] {
            let o = with_store(&fresh)
                .args(["pull", &server.url, img, "--root", s(&root)])
                .output()
                .unwrap();
            let e = String::from_utf8_lossy(&o.stderr);
            assert!(o.status.success(), "after kill {i}, {img}: {e}");
        }
        fsck_clean_at(&fresh);
    }
    eprintln!("crash campaign: killed part-way (push, pull, commit, daemon): {landed:?}");
    for (k, n) in landed.iter().enumerate() {
        assert!(
            *n >= (iterations / 4) / 4,
            "kind {k}: too few kills landed part-way ({landed:?}) to mean anything"
        );
    }
    // Everything completes after the kills: the last version pushed, pulled and exported.
    env.ok(&["push", "img:big", s(&repo)]);
    let args = ["pull", &server.url, "img:big", "--root", s(&root)];
    let o = with_store(&other).args(args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    fsck_clean_at(&other);
    env.ok(&["image", "export", "img:big", s(&env.path("last"))]);
    assert_same_tree(&t1, &env.path("last"));
}
