//! Crash safety: SIGKILL at random points of import, tag, rm and gc never leaves a visible
//! half-written version; fsck stays clean; what was committed before stays exportable
//! byte-exact. gc never deletes what a concurrent import is writing.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

fn spawn(env: &Env, args: &[&str]) -> Child {
    env.cmd()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn starling")
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

    let iterations: u64 = std::env::var("STARLING_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test: {iterations} kills, seed {seed}, import takes {import_time:?}");
    let mut rng = Rng(seed);
    let mut killed_mid_way = 0;
    // How long each kind of operation runs here, learnt as we go: a kill that came too late
    // shrinks the estimate, one that landed grows it, so most kills land part-way whatever
    // the machine's load (re-imports dedup and run much faster than the calibration import).
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
        let mut child = spawn(&env, &args);
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            killed_mid_way += 1;
            est_us[k] = est_us[k] * 11 / 10;
        } else {
            est_us[k] = (est_us[k] * 3 / 4).max(1_000);
        }
        let _ = child.kill();
        let _ = child.wait();

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
        let mut child = spawn(&env, &["image", "import", t1.to_str().unwrap(), "fresh"]);
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
