//! Lazy mounts through starlingd: real FUSE mounts read by real programs, a repository served
//! over loopback HTTP whose access log proves each object crosses the wire once per host,
//! and the failure paths (corrupt objects, origin gone, daemon restarts, bad requests).

mod common;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::daemon::Daemon;
use common::*;

fn fuse_available() -> bool {
    if Path::new("/dev/fuse").exists() {
        return true;
    }
    skip("/dev/fuse is missing: FUSE mount tests need it");
    false
}

fn mountpoint(env: &Env, name: &str) -> PathBuf {
    let p = env.path(name);
    fs::create_dir_all(&p).unwrap();
    p
}

/// A repository holding `name` imported from `src`, served on loopback; returns the server
/// and the trusted root file.
fn serve(env: &Env, src: &Path, name: &str) -> (Server, PathBuf, String) {
    env.ok(&["image", "import", s(src), name]);
    let repo = env.path("repo");
    if !repo.exists() {
        env.ok(&["repo", "init", s(&repo)]);
    }
    env.ok(&["push", name, s(&repo)]);
    let server = Server::start(env, &repo);
    let root = s(&repo.join("metadata/1.root.json")).to_string();
    (server, repo, root)
}

/// Every object path requested more than once in the server's access log.
fn repeated(server: &Server) -> Vec<(String, usize)> {
    server
        .requests()
        .into_iter()
        .filter(|(p, n)| p.starts_with("/objects/") && *n > 1)
        .collect()
}

#[test]
fn local_mount_shows_the_image_exactly() {
    if !fuse_available() {
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    torture_tree(&src, false);
    env.ok(&["image", "import", s(&src), "t:v1"]);
    let d = Daemon::start(&env, &env.path("state"), &[]);
    let mp = mountpoint(&env, "mp");
    d.ok(&env, &["mount", "t:v1", s(&mp)]);
    assert_same_tree(&src, &mp);
    // Read-only: writes are refused.
    let e = fs::write(mp.join("new-file"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc_erofs()), "{e}");
    let m = d.mounts(&env);
    assert_eq!(m[0]["image"], "t:v1");
    assert!(m[0]["counters"]["served"].as_u64().unwrap() > 0, "{m}");
    d.ok(&env, &["umount", s(&mp)]);
    assert_eq!(fs::read_dir(&mp).unwrap().count(), 0, "unmounted");
    assert_eq!(d.mounts(&env).as_array().unwrap().len(), 0);
}

fn libc_erofs() -> i32 {
    30 // EROFS
}

#[test]
fn mount_errors_are_clear() {
    if !fuse_available() {
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    env.ok(&["image", "import", s(&src), "t:v1"]);
    let d = Daemon::start(&env, &env.path("state"), &["--timeout", "2"]);
    let mp = mountpoint(&env, "mp");
    let e = d.fails(&env, &["mount", "t:nope", s(&mp)]);
    assert!(e.contains("t:nope"), "{e}");
    let e = d.fails(&env, &["mount", "t:v1", s(&env.path("missing"))]);
    assert!(e.contains("missing") && e.contains("No such file"), "{e}");
    let e = d.fails(&env, &["mount", "t:v1", s(&src)]);
    assert!(e.contains("not empty"), "{e}");
    // An unreachable repository: a free port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/");
    // A root that is not root metadata is refused first, by name.
    let root = env.path("root.json");
    fs::write(&root, b"{}").unwrap();
    let e = d.fails(&env, &["mount", &url, "t:v1", s(&mp), "--root", s(&root)]);
    assert!(
        e.contains(&format!("{}: is not root metadata", root.display())),
        "{e}"
    );
    // A real root of a repository nothing serves: the error names its URL.
    let unserved = env.path("unserved");
    env.ok(&["repo", "init", s(&unserved)]);
    let real_root = unserved.join("metadata/1.root.json");
    let e = d.fails(
        &env,
        &["mount", &url, "t:v1", s(&mp), "--root", s(&real_root)],
    );
    assert!(e.contains(&url), "{e}");
    // Unknown image in a real repository.
    let (_server, _repo, root) = serve(&env, &src, "t:v1");
    let e = d.fails(
        &env,
        &["mount", &_server.url, "t:other", s(&mp), "--root", &root],
    );
    assert!(e.contains("no image t:other"), "{e}");
    // Nothing was left mounted by the failures.
    assert_eq!(d.mounts(&env).as_array().unwrap().len(), 0);
    assert_eq!(fs::read_dir(&mp).unwrap().count(), 0);
    // A mount list of an unknown format is not acted on, and says so.
    let odd = env.path("odd-state");
    fs::create_dir_all(&odd).unwrap();
    fs::write(
        odd.join("mounts.json"),
        br#"{"format": 9, "detach": ["/"]}"#,
    )
    .unwrap();
    drop(Daemon::start(&env, &odd, &[]));
    let log = fs::read_to_string(odd.join("daemon.log")).unwrap();
    assert!(log.contains("not a mount list of format 2"), "{log}");
    // A daemon whose cache cannot hold one chunk refuses to start.
    let e = Daemon::try_start(&env, &env.path("tiny"), &["--quota", "4K"])
        .err()
        .expect("tiny quota refused");
    assert!(e.contains("smaller than one chunk"), "{e}");
    // No daemon: the client says so.
    let o = env
        .cmd()
        .args(["mounts"])
        .env("STARLING_SOCKET", env.path("no.sock"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("is the daemon running"));
}

#[test]
fn programs_run_from_a_lazy_mount_of_debian() {
    if !fuse_available() {
        return;
    }
    let Some((_, rootfs_b)) = debian_rootfs() else {
        return;
    };
    let env = Env::new();
    let (server, _repo, root) = serve(&env, &rootfs_b, "debian:b");
    let d = Daemon::start(&env, &env.path("state"), &[]);
    let mp = mountpoint(&env, "mp");
    d.ok(
        &env,
        &["mount", &server.url, "debian:b", s(&mp), "--root", &root],
    );
    let out = Command::new("chroot")
        .arg(&mp)
        .args(["/bin/bash", "-c", "dpkg -l | wc -l; python3 -c 'print(1)'"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = Command::new("chroot")
        .arg(&rootfs_b)
        .args(["/bin/bash", "-c", "dpkg -l | wc -l"])
        .output()
        .unwrap();
    let got = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(
        lines[0],
        String::from_utf8_lossy(&want.stdout).trim(),
        "{got}"
    );
    assert_eq!(lines[1], "1");
    // Lazy: only what bash, dpkg and python read came over the wire.
    let m = d.mounts(&env);
    let fetched = m[0]["counters"]["fetched"].as_u64().unwrap();
    let image = json(&env.ok(&["image", "inspect", "--json", "debian:b"]));
    let size = image["stats"]["bytes"].as_u64().unwrap();
    assert!(
        fetched > 0 && fetched < size / 2,
        "fetched {fetched} of {size}"
    );
    assert!(repeated(&server).is_empty(), "{:?}", repeated(&server));
}

/// Reads every regular file under `dir` in `threads` threads, comparing each with the same
/// path under `want`; returns the bytes read.
fn read_all_compare(dir: &Path, want: &Path, threads: usize) -> u64 {
    let mut files = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(want.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(r);
            } else if ft.is_file() {
                files.push(r);
            }
        }
    }
    let files = std::sync::Arc::new(files);
    let total = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|sc| {
        for t in 0..threads {
            let files = files.clone();
            let total = &total;
            sc.spawn(move || {
                for i in 0..files.len() {
                    // Every thread reads every file, in a different order.
                    let f = &files[(i + t * 7919) % files.len()];
                    let mut got = Vec::new();
                    fs::File::open(dir.join(f))
                        .and_then(|mut h| h.read_to_end(&mut got))
                        .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                    let exp = fs::read(want.join(f)).unwrap();
                    assert!(got == exp, "{} differs", f.display());
                    total.fetch_add(got.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    total.into_inner()
}

#[test]
fn one_fetch_per_object_per_host_and_every_byte_right() {
    if !fuse_available() {
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    torture_tree(&src, false);
    for i in 0..40 {
        fs::write(
            src.join(format!("data-{i}")),
            (0..200_000u32)
                .map(|x| (x.wrapping_mul(2_654_435_761).wrapping_add(i) >> 13) as u8)
                .collect::<Vec<u8>>(),
        )
        .unwrap();
    }
    let (server, repo, root) = serve(&env, &src, "t:v1");
    // A second version sharing most content.
    fs::write(src.join("data-0"), b"changed").unwrap();
    fs::write(src.join("added"), vec![5u8; 300_000]).unwrap();
    env.ok(&["image", "import", s(&src), "t:v2"]);
    env.ok(&["push", "t:v2", s(&repo)]);
    let want1 = env.path("want1");
    env.ok(&["image", "export", "t:v1", s(&want1)]);
    let want2 = env.path("want2");
    env.ok(&["image", "export", "t:v2", s(&want2)]);

    let d = Daemon::start(&env, &env.path("state"), &[]);
    let mut mps = Vec::new();
    for i in 0..13 {
        let (img, want) = if i < 10 {
            ("t:v1", &want1)
        } else {
            ("t:v2", &want2)
        };
        let mp = mountpoint(&env, &format!("mp{i}"));
        d.ok(&env, &["mount", &server.url, img, s(&mp), "--root", &root]);
        mps.push((mp, want.clone()));
    }
    // All 13 mounts read in parallel, 5 readers each (65 concurrent readers).
    std::thread::scope(|sc| {
        for (mp, want) in &mps {
            sc.spawn(move || read_all_compare(mp, want, 5));
        }
    });
    assert!(repeated(&server).is_empty(), "{:?}", repeated(&server));
    // Every file and directory of both versions was read: every object of either version
    // crossed the wire, once. The local store holds exactly those two versions.
    let fetched_objects = server.object_requests();
    let store_objects = json(&env.ok(&["store", "stats", "--json"]))["objects"]
        .as_u64()
        .unwrap() as usize;
    assert_eq!(fetched_objects, store_objects);
    // The same tree through one mount with 64 concurrent readers, byte for byte.
    read_all_compare(&mps[0].0, &want1, 64);
    assert_same_tree(&want1, &mps[0].0);
    assert_eq!(
        server.object_requests(),
        fetched_objects,
        "all from the cache now"
    );
    let stats = d.cache(&env);
    assert_eq!(
        stats["misses"].as_u64().unwrap() as usize,
        fetched_objects,
        "{stats}"
    );
}

#[test]
fn corrupt_objects_are_refused_and_the_origin_may_come_and_go() {
    if !fuse_available() {
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..6u8 {
        fs::write(src.join(format!("f{i}")), vec![i; 150_000 + i as usize]).unwrap();
    }
    let (mut server, repo, root) = serve(&env, &src, "t:v1");
    let state = env.path("state");
    let mut d = Daemon::start(&env, &state, &["--timeout", "2"]);
    let mp = mountpoint(&env, "mp");
    d.ok(
        &env,
        &["mount", &server.url, "t:v1", s(&mp), "--root", &root],
    );
    assert_eq!(fs::read(mp.join("f0")).unwrap(), vec![0u8; 150_000]);

    // A damaged object at the origin: the read fails with EIO, nothing bad is cached.
    let f1_chunks = chunk_paths(&env, &repo, "t:v1", "f1");
    let good = fs::read(&f1_chunks[0]).unwrap();
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 2] ^= 1;
    fs::write(&f1_chunks[0], &bad).unwrap();
    let e = fs::read(mp.join("f1")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(5), "EIO: {e}");
    assert!(d.cache(&env)["refused"].as_u64().unwrap() >= 1);
    let log = fs::read_to_string(state.join("daemon.log")).unwrap();
    assert!(log.contains("f1") || log.contains("object"), "{log}");
    fs::write(&f1_chunks[0], &good).unwrap();
    assert_eq!(fs::read(mp.join("f1")).unwrap(), vec![1u8; 150_001]);

    // The origin goes away: what is cached still reads, the rest fails fast with EIO.
    let addr = server.addr.clone();
    server.stop();
    assert_eq!(fs::read(mp.join("f0")).unwrap(), vec![0u8; 150_000]);
    let started = std::time::Instant::now();
    let e = fs::read(mp.join("f2")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(5), "EIO: {e}");
    assert!(started.elapsed().as_secs() < 15, "no hang");
    // The mount's failed reads are counted where a user looks, not only in --json.
    let listed = d.ok(&env, &["mounts"]);
    let errors: u64 = listed
        .split("  errors ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no error count in {listed}"));
    assert!(errors >= 2, "{listed}");
    // ... and comes back on the same address: the mount recovers.
    let server = Server::start_on(&env, &repo, &addr);
    assert_eq!(fs::read(mp.join("f2")).unwrap(), vec![2u8; 150_002]);

    // The daemon restarts (clean stop unmounts) and keeps its cache.
    let before = d.cache(&env);
    d.stop();
    assert_eq!(
        fs::read_dir(&mp).unwrap().count(),
        0,
        "unmounted at shutdown"
    );
    let mut d = Daemon::start(&env, &state, &["--timeout", "2"]);
    let after = d.cache(&env);
    assert_eq!(before["objects"], after["objects"]);
    assert_eq!(before["bytes"], after["bytes"]);
    d.ok(&env, &["mount", &server.url, "t:v1", s(&mp)]);
    let n = server.object_requests();
    assert_eq!(fs::read(mp.join("f2")).unwrap(), vec![2u8; 150_002]);
    assert_eq!(server.object_requests(), n, "served from the kept cache");

    // A daemon that dies leaves a stale mount; the next one detaches it on start.
    d.crash();
    assert!(fs::read_dir(&mp).is_err(), "stale mount answers nothing");
    let d = Daemon::start(&env, &state, &[]);
    assert_eq!(fs::read_dir(&mp).unwrap().count(), 0, "stale mount cleaned");
    let log = fs::read_to_string(state.join("daemon.log")).unwrap();
    assert!(log.contains("stale mount"), "{log}");
    // Cache verify: nothing damaged, nothing removed; then one byte of one cached object is
    // flipped on disk (f1's chunk, found in the cache's files by its bytes as the origin
    // serves them): verify names it, removes it (exit status 1), and the next read fetches it
    // again from the origin and is right.
    let cached = d.cache(&env)["objects"].as_u64().unwrap();
    assert!(cached > 0);
    let v = d.ok(&env, &["cache", "verify"]);
    assert_eq!(v.trim(), format!("{cached} objects checked, 0 removed"));
    let flipped = flip_cached(&state, &good);
    assert_eq!(flipped, 1, "f1's chunk is in the cache's files once");
    let o = d.run(&env, &["cache", "verify"]);
    let v = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{v}");
    let chunk_id = f1_chunks[0]
        .strip_prefix(repo.join("objects"))
        .unwrap()
        .to_str()
        .unwrap()
        .replace('/', "");
    assert_eq!(
        v.lines().collect::<Vec<_>>(),
        [
            format!("{cached} objects checked, 1 removed"),
            format!("removed damaged {chunk_id}")
        ],
    );
    assert_eq!(d.cache(&env)["objects"].as_u64().unwrap(), cached - 1);
    let chunk_url = format!("/objects/{}/{}", &chunk_id[..2], &chunk_id[2..]);
    let before = server.requests().get(&chunk_url).copied().unwrap_or(0);
    d.ok(&env, &["mount", &server.url, "t:v1", s(&mp)]);
    assert_eq!(fs::read(mp.join("f1")).unwrap(), vec![1u8; 150_001]);
    assert_eq!(
        server.requests().get(&chunk_url).copied().unwrap_or(0),
        before + 1,
        "the removed object was fetched again"
    );
    let v = d.ok(&env, &["cache", "verify"]);
    assert_eq!(v.trim(), format!("{cached} objects checked, 0 removed"));
}

/// Flips one byte in the middle of every copy of `bytes` in the files under `dir`; returns
/// how many copies there were.
fn flip_cached(dir: &Path, bytes: &[u8]) -> usize {
    let mut found = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                use std::os::unix::fs::FileExt;
                let data = fs::read(&p).unwrap();
                let file = fs::OpenOptions::new().write(true).open(&p).unwrap();
                let mut at = 0;
                while let Some(i) = data[at..].windows(bytes.len()).position(|w| w == bytes) {
                    let mid = at + i + bytes.len() / 2;
                    file.write_all_at(&[data[mid] ^ 0x20], mid as u64).unwrap();
                    at += i + bytes.len();
                    found += 1;
                }
            }
        }
    }
    found
}

/// `cache gc`: evicts least recently used objects down to its target, never one an open file
/// pins; what it evicted is fetched again when read, what it kept is not.
#[test]
fn cache_gc_evicts_least_recently_used_but_never_what_an_open_file_pins() {
    if !fuse_available() {
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..6u64 {
        fs::write(src.join(format!("f{i}")), pseudo_random(200_000, 40 + i)).unwrap();
    }
    let (server, repo, root) = serve(&env, &src, "t:v1");
    let d = Daemon::start(&env, &env.path("state"), &[]);
    let requests = |file: &str| -> Vec<usize> {
        let r = server.requests();
        chunk_paths(&env, &repo, "t:v1", file)
            .iter()
            .map(|p| {
                let rel = p.strip_prefix(&repo).unwrap().display().to_string();
                r.get(&format!("/{rel}")).copied().unwrap_or(0)
            })
            .collect()
    };
    // A new mount for every round of reads: the kernel keeps a file's pages per mount.
    let mut rounds = 0;
    let mut mount = || {
        rounds += 1;
        let mp = mountpoint(&env, &format!("mp{rounds}"));
        d.ok(
            &env,
            &["mount", &server.url, "t:v1", s(&mp), "--root", &root],
        );
        mp
    };
    let mp = mount();
    for i in 0..6 {
        let f = format!("f{i}");
        assert_eq!(
            fs::read(mp.join(&f)).unwrap(),
            fs::read(src.join(&f)).unwrap()
        );
    }
    // f5, read last, stays open: its chunks are pinned.
    let held = fs::File::open(mp.join("f5")).unwrap();
    let full = d.cache(&env);
    let bytes = full["bytes"].as_u64().unwrap();
    let target = bytes / 2;
    d.ok(&env, &["cache", "gc", "--target", &target.to_string()]);
    let half = d.cache(&env);
    assert!(half["bytes"].as_u64().unwrap() <= target, "{half}");
    assert!(half["objects"].as_u64().unwrap() < full["objects"].as_u64().unwrap());
    assert!(half["evicted"].as_u64().unwrap() > 0, "{half}");
    // The least recently used file went, the most recently used stayed.
    let (f0, f5) = (requests("f0"), requests("f5"));
    assert!(f0.iter().chain(&f5).all(|&n| n == 1), "{f0:?} {f5:?}");
    let mp = mount();
    assert_eq!(
        fs::read(mp.join("f0")).unwrap(),
        fs::read(src.join("f0")).unwrap()
    );
    assert_eq!(
        fs::read(mp.join("f5")).unwrap(),
        fs::read(src.join("f5")).unwrap()
    );
    assert!(
        requests("f0").iter().all(|&n| n == 2),
        "f0 was evicted and fetched again"
    );
    assert!(requests("f5").iter().all(|&n| n == 1), "f5 stayed cached");
    // Everything that can go: only what the open file pins stays.
    d.ok(&env, &["cache", "gc"]);
    let pinned = d.cache(&env);
    let f5_chunks = f5.len() as u64;
    assert_eq!(pinned["objects"].as_u64().unwrap(), f5_chunks, "{pinned}");
    assert_eq!(pinned["pinned"].as_u64().unwrap(), f5_chunks, "{pinned}");
    drop(held);
    // The kernel tells the daemon of the close (FUSE release) on its own time.
    let started = std::time::Instant::now();
    while d.cache(&env)["pinned"] != 0 {
        assert!(
            started.elapsed().as_secs() < 10,
            "f5 still pinned after its close"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    d.ok(&env, &["cache", "gc"]);
    assert_eq!(d.cache(&env)["objects"], 0);
    let mp = mount();
    assert_eq!(
        fs::read(mp.join("f5")).unwrap(),
        fs::read(src.join("f5")).unwrap()
    );
    assert!(
        requests("f5").iter().all(|&n| n == 2),
        "f5 fetched again once unpinned"
    );
}

/// The repository files of the chunks of `path` in image `image`.
fn chunk_paths(env: &Env, repo: &Path, image: &str, path: &str) -> Vec<PathBuf> {
    let st = json(&env.ok(&["image", "stat", "--json", image, path]));
    st["chunks"]
        .as_array()
        .unwrap_or_else(|| panic!("no chunks in {st}"))
        .iter()
        .map(|c| {
            let id = c["id"].as_str().unwrap();
            repo.join("objects").join(&id[..2]).join(&id[2..])
        })
        .collect()
}

#[test]
fn recorded_reads_are_prefetched_on_later_mounts() {
    if !fuse_available() {
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(src.join("lib")).unwrap();
    for i in 0..20u32 {
        let data: Vec<u8> = (0..180_000u32)
            .map(|x| (x.wrapping_mul(2_246_822_519).wrapping_add(i * 977) >> 11) as u8)
            .collect();
        fs::write(src.join(format!("lib/m{i}")), data).unwrap();
    }
    // Read on sequentially, this one's later chunks are loaded ahead of the reader: they
    // belong in the list as much as those the reader waited for.
    let big: Vec<u8> = (0..4_000_000u32)
        .map(|x| (x.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(src.join("lib/big"), big).unwrap();
    let (server, _repo, root) = serve(&env, &src, "app:v1");
    let mp = mountpoint(&env, "mp");
    let rec = env.path("workload.prefetch");
    let workload = ["lib/m3", "lib/m7", "lib/big", "lib/m11"];
    {
        let d = Daemon::start(&env, &env.path("state1"), &[]);
        d.ok(
            &env,
            &[
                "mount",
                &server.url,
                "app:v1",
                s(&mp),
                "--root",
                &root,
                "--record",
                s(&rec),
            ],
        );
        for f in workload {
            fs::read(mp.join(f)).unwrap();
        }
        d.ok(&env, &["umount", s(&mp)]);
    }
    let lines = fs::read_to_string(&rec).unwrap();
    assert!(lines.starts_with("starling-prefetch 1\n"), "{lines}");
    let recorded = lines.lines().count() - 1;
    assert!(
        recorded >= 3 * 2 + 4_000_000 / (256 << 10),
        "commit, trees and the chunks of 4 files: {lines}"
    );

    // A new host (empty cache): the list is fetched in the background before any read.
    let d = Daemon::start(&env, &env.path("state2"), &[]);
    let before = server.object_requests();
    d.ok(
        &env,
        &[
            "mount",
            &server.url,
            "app:v1",
            s(&mp),
            "--root",
            &root,
            "--prefetch",
            s(&rec),
        ],
    );
    let started = std::time::Instant::now();
    while (d.cache(&env)["objects"].as_u64().unwrap() as usize) < recorded {
        assert!(started.elapsed().as_secs() < 20, "prefetch did not finish");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let after_prefetch = server.object_requests();
    assert_eq!(after_prefetch - before, recorded);
    for f in workload {
        assert_eq!(
            fs::read(mp.join(f)).unwrap(),
            fs::read(src.join(f)).unwrap()
        );
    }
    assert_eq!(
        server.object_requests(),
        after_prefetch,
        "workload read nothing new"
    );
    let m = d.mounts(&env);
    assert!(
        m[0]["counters"]["prefetched"].as_u64().unwrap() > 500_000,
        "{m}"
    );
    // A file that is not a prefetch list is refused clearly.
    d.ok(&env, &["umount", s(&mp)]);
    let e = d.fails(
        &env,
        &[
            "mount",
            &server.url,
            "app:v1",
            s(&mp),
            "--prefetch",
            s(&src.join("lib/m0")),
        ],
    );
    assert!(e.contains("not a prefetch list"), "{e}");
}

/// The same changes, made in `root` (a plain directory or a writable mount).
fn change(root: &Path) {
    let sh = |c: &str| {
        let o = Command::new("sh")
            .arg("-c")
            .arg(c)
            .current_dir(root)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{c}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    sh("echo appended >> tiny");
    sh("rm -f empty");
    sh("rm -rf deep");
    sh("mkdir -p new/dir && printf 'new file\\n' > new/dir/file && ln -s file new/dir/link");
    sh("mkdir -p replaced && rm -rf replaced && mkdir replaced && echo only > replaced/only");
    sh("chmod 0600 tiny");
    // Fixed times on what changed, so both sides compare equal under mtree.
    sh("touch -h -d @1600000000 . tiny new new/dir new/dir/file new/dir/link replaced replaced/only");
}

/// A copy of torture tree `from` as a writable mount shows it: overlayfs reserves
/// `trusted.overlay.*` and hides the one the torture tree carries.
fn overlay_view(env: &Env, from: &Path, name: &str) -> PathBuf {
    let view = env.path(name);
    let o = Command::new("cp")
        .args(["-a", s(from), s(&view)])
        .output()
        .unwrap();
    assert!(o.status.success());
    let f = view.join("hl/z-original");
    tool("setfattr", &["-h", "-x", "trusted.overlay.opaque", s(&f)]);
    view
}

#[test]
fn writable_mount_changes_commit_as_a_new_version() {
    if !fuse_available() {
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    torture_tree(&src, false);
    fs::create_dir_all(src.join("replaced/sub")).unwrap();
    fs::write(src.join("replaced/sub/old"), b"old").unwrap();
    env.ok(&["image", "import", s(&src), "t:v1"]);
    let expected = env.path("expected");
    let o = Command::new("cp")
        .args(["-a", s(&src), s(&expected)])
        .output()
        .unwrap();
    assert!(o.status.success());
    change(&expected);
    // The committed image keeps trusted.overlay.*; the mounted view cannot show it.
    let view = overlay_view(&env, &expected, "view");

    let d = Daemon::start(&env, &env.path("state"), &[]);
    let mp = mountpoint(&env, "mp");
    // Read-only mounts cannot commit.
    d.ok(&env, &["mount", "t:v1", s(&mp)]);
    let e = d.fails(&env, &["commit", s(&mp), "t:v2"]);
    assert!(e.contains("--writable"), "{e}");
    d.ok(&env, &["umount", s(&mp)]);

    d.ok(&env, &["mount", "--writable", "t:v1", s(&mp)]);
    // Before any change the writable mount shows the image (root attributes included).
    let src_view = overlay_view(&env, &src, "src-view");
    assert_same_tree(&src_view, &mp);
    change(&mp);
    assert_same_tree(&view, &mp);
    let c = json(&d.ok(&env, &["commit", "--json", s(&mp), "t:v2"]));
    let v1 = json(&env.ok(&["image", "inspect", "--json", "t:v1"]));
    assert_eq!(c["parent"], v1["version"]);
    assert_eq!(c["copied"], 0, "same store: nothing to copy");
    let out = env.path("out");
    env.ok(&["image", "export", "t:v2", s(&out)]);
    assert_same_tree(&expected, &out);
    let v2 = json(&env.ok(&["image", "inspect", "--json", "t:v2"]));
    assert_eq!(v2["parent"], v1["version"]);
    // Unmount discards the upper layer; the committed version stays.
    d.ok(&env, &["umount", s(&mp)]);
    assert_eq!(fs::read_dir(env.path("state/layers")).unwrap().count(), 0);
    env.ok(&["store", "fsck"]);

    // From a repository: the commit goes into another (empty) store, which first receives
    // the mounted version's objects.
    let (server, _repo, root) = serve(&env, &src, "t:v1");
    d.ok(
        &env,
        &[
            "mount",
            "--writable",
            &server.url,
            "t:v1",
            s(&mp),
            "--root",
            &root,
        ],
    );
    change(&mp);
    let other = env.path("other-store");
    let o = Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(["--store", s(&other), "commit", "--json", s(&mp), "u:v2"])
        .env("STARLING_SOCKET", &d.socket)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c = json(&String::from_utf8_lossy(&o.stdout));
    assert!(c["copied"].as_u64().unwrap() > 10, "{c}");
    let out2 = env.path("out2");
    let o = Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(["--store", s(&other), "image", "export", "u:v2", s(&out2)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_tree(&expected, &out2);
    d.ok(&env, &["umount", s(&mp)]);
}

/// The daemon's metrics scraped over HTTP like Prometheus would, by an independent parser
/// (the Prometheus project's Python client, strict OpenMetrics), agree with `cache stats`
/// and `mounts` and move as a mount reads; the log says what happened, one event a line.
#[test]
fn metrics_scraped_over_http_move_as_a_mount_reads_and_the_log_says_what_happened() {
    if !fuse_available() {
        return;
    }
    let parser = Path::new("/usr/lib/python3/dist-packages/prometheus_client/openmetrics");
    if !parser.exists() {
        skip("python3-prometheus-client is missing (Debian package python3-prometheus-client)");
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    torture_tree(&src, false);
    for i in 0..8 {
        // Odd seeds: `pseudo_random` makes a seed odd, so 6 and 7 would be the same file.
        fs::write(
            src.join(format!("data-{i}")),
            pseudo_random(300_000, 1001 + 2 * i),
        )
        .unwrap();
    }
    let (mut server, _repo, root) = serve(&env, &src, "t:v1");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let d = Daemon::start(&env, &env.path("state"), &["--metrics-listen", &addr]);
    // A quote and a backslash in the mountpoint: label values must be escaped for the
    // scrape to parse at all.
    let mp = mountpoint(&env, "mp \"q\" \\b");
    d.ok(
        &env,
        &["mount", &server.url, "t:v1", s(&mp), "--root", &root],
    );
    // name{labels} -> value, for every sample the parser found.
    let scrape = || -> serde_json::Value {
        let script = r#"
import json, sys, urllib.request
from prometheus_client.openmetrics.parser import text_string_to_metric_families
with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
    ctype = r.headers["Content-Type"]
    text = r.read().decode()
assert ctype.startswith("application/openmetrics-text"), ctype
out = {}
for fam in text_string_to_metric_families(text):
    for s in fam.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(out))
"#;
        let o = Command::new("/usr/bin/python3")
            .args(["-c", script, &format!("http://{addr}/metrics")])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "scrape: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        json(&String::from_utf8_lossy(&o.stdout))
    };
    let num = |m: &serde_json::Value, k: &str| -> f64 {
        m[k].as_f64()
            .unwrap_or_else(|| panic!("no sample {k} in {m:#}"))
    };
    let labels = format!("image=t:v1,mountpoint={}", mp.display());
    let before = scrape();
    let want = env.path("want");
    env.ok(&["image", "export", "t:v1", s(&want)]);
    // Everything but data-7, which stays unread (and so uncached) for later.
    fs::remove_file(want.join("data-7")).unwrap();
    read_all_compare(&mp, &want, 4);
    let after = scrape();
    let cache = d.cache(&env);
    let mounts = d.mounts(&env);
    let counters = &mounts[0]["counters"];
    // The same numbers as `cache stats` and `mounts` (nothing reads in between).
    for (metric, stat) in [
        ("starling_cache_hits_total{}", "hits"),
        ("starling_cache_misses_total{}", "misses"),
        ("starling_cache_fetched_bytes_total{}", "fetched_bytes"),
    ] {
        assert_eq!(
            num(&after, metric),
            cache[stat].as_f64().unwrap(),
            "{metric}"
        );
    }
    for (metric, c) in [
        ("starling_mount_served_bytes_total", "served"),
        ("starling_mount_fetched_bytes_total", "fetched"),
        ("starling_mount_errors_total", "errors"),
    ] {
        let k = format!("{metric}{{{labels}}}");
        assert_eq!(num(&after, &k), counters[c].as_f64().unwrap(), "{k}");
    }
    // They moved as the mount read: every byte of the image served, objects fetched, each
    // fetch timed.
    let served = format!("starling_mount_served_bytes_total{{{labels}}}");
    assert!(num(&after, &served) >= 8.0 * 300_000.0, "{after:#}");
    assert!(
        num(&after, "starling_cache_misses_total{}")
            > num(&before, "starling_cache_misses_total{}")
    );
    assert_eq!(
        num(&after, "starling_fetch_seconds_count{}"),
        num(&after, "starling_cache_misses_total{}"),
        "one timed fetch per miss"
    );
    assert_eq!(num(&after, "starling_mounts{}"), 1.0);
    assert_eq!(num(&after, "starling_fetch_failures_total{}"), 0.0);

    // The repository gone and the cache emptied: a read of what was never read fails, and
    // that is counted and logged.
    server.stop();
    d.ok(&env, &["cache", "gc"]);
    let mut buf = Vec::new();
    assert!(fs::File::open(mp.join("data-7"))
        .and_then(|mut f| f.read_to_end(&mut buf))
        .is_err());
    let failed = scrape();
    assert!(
        num(&failed, "starling_fetch_failures_total{}") >= 1.0,
        "{failed:#}"
    );
    assert!(num(&failed, &format!("starling_mount_errors_total{{{labels}}}")) >= 1.0);
    assert!(num(&failed, "starling_cache_evicted_total{}") >= 1.0);
    d.ok(&env, &["umount", s(&mp)]);
    assert_eq!(num(&scrape(), "starling_mounts{}"), 0.0);

    // The log: one event a line, each naming what it is about.
    let log = fs::read_to_string(d.state.join("daemon.log")).unwrap();
    let event = |what: &str| {
        log.lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} event in the log:\n{log}"))
            .to_string()
    };
    let mounted = event(" mounted ");
    assert!(
        mounted.contains(&format!("mountpoint={}", mp.display())) && mounted.contains("image=t:v1"),
        "{mounted}"
    );
    let failed = event("fetch failed");
    assert!(
        failed.contains(&format!("repository={}", server.url.trim_end_matches('/'))),
        "{failed}"
    );
    assert!(event("evicted").contains("objects="));
    let unmounted = event(" unmounted ");
    assert!(unmounted.contains("errors="), "{unmounted}");
    assert!(event("starlingd ready").contains(&format!("metrics=http://{addr}/metrics")));
}

/// An image cannot grant privileges through a mount: a setuid program runs with the
/// caller's ids and a device node does not open, on read-only and writable mounts alike
/// (the overlay of a writable mount is where a setuid file of the image was honoured).
#[test]
fn an_image_cannot_grant_setuid_or_devices_through_a_mount() {
    if !fuse_available() {
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    // Owned by nobody and setuid: run by root, it would print 65534 if honoured.
    fs::copy("/usr/bin/id", src.join("suid-id")).unwrap();
    std::os::unix::fs::chown(src.join("suid-id"), Some(65534), Some(65534)).unwrap();
    fs::set_permissions(
        src.join("suid-id"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4755),
    )
    .unwrap();
    // /dev/null's numbers: it would open if device nodes were honoured.
    let o = Command::new("mknod")
        .args([s(&src.join("null")), "c", "1", "3"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    env.ok(&["image", "import", s(&src), "t:v1"]);
    let d = Daemon::start(&env, &env.path("state"), &[]);
    let mp = mountpoint(&env, "mp");
    for writable in [false, true] {
        let mut args = vec!["mount", "t:v1", s(&mp)];
        if writable {
            args.insert(1, "--writable");
        }
        d.ok(&env, &args);
        let meta = fs::metadata(mp.join("suid-id")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777,
            0o4755,
            "the image's mode is shown as it is"
        );
        let o = Command::new(mp.join("suid-id")).arg("-u").output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            "0",
            "setuid honoured (writable: {writable}): {o:?}"
        );
        let e = fs::OpenOptions::new()
            .write(true)
            .open(mp.join("null"))
            .expect_err("a device node of the image opened");
        assert_eq!(
            e.raw_os_error(),
            Some(13),
            "EACCES; writable: {writable}: {e}"
        );
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = info
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(s(&mp)))
            .unwrap_or_else(|| panic!("{} not in mountinfo", mp.display()));
        let opts = line.split(' ').nth(5).unwrap_or("");
        assert!(
            opts.contains("nosuid") && opts.contains("nodev"),
            "writable: {writable}: {line}"
        );
        d.ok(&env, &["umount", s(&mp)]);
    }
}

/// The API socket is the daemon's user's alone (0600), and a client of another user is
/// refused by its credentials even when the socket's mode was opened up: one 403 answer
/// naming both users, nothing served.
#[test]
fn the_api_socket_serves_the_daemon_s_user_and_root_only() {
    if !is_root() {
        skip("needs root to act as another user (setpriv)");
        return;
    }
    let env = Env::new();
    let d = Daemon::start(&env, &env.path("state"), &[]);
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    // Opened up behind the daemon's back: a stranger still gets nothing but the refusal.
    fs::set_permissions(&d.socket, fs::Permissions::from_mode(0o666)).unwrap();
    // The test's own directories let others through to the socket (nothing above them is
    // changed).
    for p in [env.path("state"), env.dir.path().to_path_buf()] {
        let m = fs::metadata(&p).unwrap().permissions().mode();
        fs::set_permissions(&p, fs::Permissions::from_mode(m | 0o011)).unwrap();
    }
    let client = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"GET /v1/mounts HTTP/1.1\r\nHost: d\r\n\r\n")
out = b""
while True:
    b = s.recv(4096)
    if not b:
        break
    out += b
sys.stdout.write(out.decode())
"#;
    let out = nobody("/usr/bin/python3")
        .args(["-c", client])
        .arg(&d.socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("HTTP/1.1 403") && text.contains("not user 65534"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The daemon's own user is served as before.
    d.ok(&env, &["mounts"]);
}

/// `program` to be run as user 65534 (nobody), in group 65534 alone.
fn nobody(program: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(program);
    c
}

/// `starling` run as user 65534 (nobody), with the daemon's socket.
fn as_nobody(d: &Daemon, env: &Env, store: &Path, args: &[&str]) -> std::process::Output {
    nobody(env!("CARGO_BIN_EXE_starling"))
        .arg("--store")
        .arg(store)
        .args(args)
        .env("STARLING_SOCKET", &d.socket)
        .env("HOME", env.path("home"))
        .output()
        .unwrap()
}

/// Issue 18: with `users = "all"`, another local user mounts read-only onto a directory of
/// their own, from a store they can read; a directory that is not theirs (also reached
/// through a link they planted), a store they cannot read, a writable mount, a repository
/// the host does not pin, another user's mount and the administrator's routes are refused,
/// each in one line naming why.
#[test]
fn other_users_mount_read_only_onto_their_own_directories_and_nothing_else() {
    if !fuse_available() {
        return;
    }
    if !is_root() {
        skip("needs root to act as another user (setpriv) and to serve them");
        return;
    }
    use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
    let env = Env::new();
    let src = env.path("src");
    torture_tree(&src, false);
    env.ok(&["image", "import", s(&src), "t:v1"]);
    // A store the user may read, and one they may not.
    let readable = env.store.clone();
    Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&readable)
        .status()
        .unwrap();
    let secret = env.path("secret");
    let o = Command::new(env!("CARGO_BIN_EXE_starling"))
        .arg("--store")
        .arg(&secret)
        .args(["image", "import", s(&src), "s:v1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o700)).unwrap();
    let config = env.path("starlingd.toml");
    fs::write(&config, "users = \"all\"\n").unwrap();
    let d = Daemon::start(&env, &env.path("state"), &["--config", s(&config)]);
    let mode = fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666, "socket mode {mode:o}");
    for p in [env.path("state"), env.dir.path().to_path_buf()] {
        let m = fs::metadata(&p).unwrap().permissions().mode();
        fs::set_permissions(&p, fs::Permissions::from_mode(m | 0o011)).unwrap();
    }
    let home = env.path("home");
    fs::create_dir(&home).unwrap();
    let mine = |name: &str| {
        let p = home.join(name);
        fs::create_dir(&p).unwrap();
        chown(&p, Some(65534), Some(65534)).unwrap();
        p
    };
    chown(&home, Some(65534), Some(65534)).unwrap();
    let refused = |args: &[&str], want: &str| {
        let o = as_nobody(&d, &env, &readable, args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} should be refused");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    };

    // Theirs: mounted, read by them, shown as theirs.
    let mp = mine("mnt");
    let o = as_nobody(&d, &env, &readable, &["mount", "t:v1", s(&mp)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = nobody("cat").arg(mp.join("random-100k")).output().unwrap();
    assert_eq!(o.stdout, fs::read(src.join("random-100k")).unwrap());
    let o = nobody("find")
        .arg(&mp)
        .args(["-mindepth", "1", "-maxdepth", "1", "-printf", "%f\\0"])
        .output()
        .unwrap();
    let mut listed: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .split('\0')
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect();
    let mut want: Vec<String> = fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    want.sort();
    assert_eq!(listed, want);
    // Theirs alone (as fusermount3 makes users' mounts) unless /etc/fuse.conf says
    // user_allow_other: what they serve, and when, must not hold root's or others' programs.
    let fuse_conf = fs::read_to_string("/etc/fuse.conf").unwrap_or_default();
    if !fuse_conf.lines().any(|l| l.trim() == "user_allow_other") {
        let e = fs::read_dir(&mp).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
    }

    // Not theirs: root's directory, and root's directory reached through their link.
    let roots = env.path("roots");
    fs::create_dir(&roots).unwrap();
    fs::set_permissions(&roots, fs::Permissions::from_mode(0o777)).unwrap();
    refused(
        &["mount", "t:v1", s(&roots)],
        "is user 0's, not user 65534's",
    );
    let link = home.join("link");
    std::os::unix::fs::symlink(&roots, &link).unwrap();
    refused(
        &["mount", "t:v1", s(&link)],
        "is user 0's, not user 65534's",
    );
    assert_eq!(
        fs::read_dir(&roots).unwrap().count(),
        0,
        "nothing mounted there"
    );
    // A store they cannot read, a writable mount, a repository the host does not pin.
    let o = as_nobody(&d, &env, &secret, &["mount", "s:v1", s(&mine("m2"))]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("cannot mount from store") && err.contains("Permission denied"),
        "{err}"
    );
    refused(
        &["mount", "--writable", "t:v1", s(&mine("m3"))],
        "writable mounts are for starlingd's own user and root",
    );
    refused(
        &["mount", "http://127.0.0.1:9/", "t:v1", s(&mine("m4"))],
        "is not one this host pins",
    );
    // Files they name that would hold the daemon: a FIFO as the prefetch list is refused
    // at once; a FIFO where the record's temporary file goes does not hold the unmount.
    let fifo = home.join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    chown(&fifo, Some(65534), Some(65534)).unwrap();
    refused(
        &["mount", "--prefetch", s(&fifo), "t:v1", s(&mine("m5"))],
        "not a regular file",
    );
    let recorded = mine("m6");
    let record = home.join("reads.list");
    let o = as_nobody(
        &d,
        &env,
        &readable,
        &["mount", "--record", s(&record), "t:v1", s(&recorded)],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = nobody("cat").arg(recorded.join("tiny")).output().unwrap();
    assert_eq!(o.stdout, b"hello\n");
    let tmp_fifo = record.with_extension("tmp");
    assert!(Command::new("mkfifo")
        .arg(&tmp_fifo)
        .status()
        .unwrap()
        .success());
    chown(&tmp_fifo, Some(65534), Some(65534)).unwrap();
    let o = as_nobody(&d, &env, &readable, &["umount", s(&recorded)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let list = fs::read_to_string(&record).unwrap();
    assert!(list.lines().count() > 1, "{list}");
    assert_eq!(
        fs::metadata(&record).unwrap().uid(),
        65534,
        "written as them"
    );
    // Root's mount: listed for root only, not theirs to unmount.
    let root_mp = mountpoint(&env, "root-mp");
    d.ok(&env, &["mount", "t:v1", s(&root_mp)]);
    refused(
        &["umount", s(&root_mp)],
        "is user 0's mount, not user 65534's",
    );
    let theirs = json(&String::from_utf8_lossy(
        &as_nobody(&d, &env, &readable, &["mounts", "--json"]).stdout,
    ));
    let theirs = theirs.as_array().unwrap();
    assert_eq!(theirs.len(), 1, "{theirs:?}");
    assert_eq!(theirs[0]["owner"], 65534);
    assert_eq!(d.mounts(&env).as_array().unwrap().len(), 2);
    // The administrator's routes.
    refused(&["cache", "stats"], "is for starlingd's own user");
    refused(&["ps"], "is for starlingd's own user");
    // Their own mount they unmount.
    let o = as_nobody(&d, &env, &readable, &["umount", s(&mp)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(fs::read_dir(&mp).unwrap().count(), 0);
    d.ok(&env, &["umount", s(&root_mp)]);
    assert!(fuse_mounts_under(env.dir.path()).is_empty());
}

/// Open descriptors and threads of process `pid`.
fn fds_and_threads(pid: u32) -> (usize, usize) {
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    (fds, threads)
}

/// FUSE mounts of this host under `dir`.
fn fuse_mounts_under(dir: &Path) -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(" - fuse") && l.contains(s(dir)))
        .map(str::to_string)
        .collect()
}

/// Issue 18's load campaign: clients mount (local, lazy from a repository, writable), read
/// and compare, list, ask for cache stats, make bad requests and unmount, many at once, for
/// STARLING_LOAD_SECS (15 s here, minutes in the campaign). Afterwards the daemon holds no
/// mount, layer, extra descriptor or thread, and the host has no FUSE mount left.
#[test]
fn the_daemon_under_concurrent_load_leaks_no_mount_descriptor_or_thread() {
    if !fuse_available() {
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    torture_tree(&src, false);
    let (server, _repo, root) = serve(&env, &src, "t:v1");
    let state = env.path("state");
    fs::create_dir_all(&state).unwrap();
    fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let d = Daemon::start(&env, &state, &[]);
    let pid = d.pid().unwrap();
    let secs: u64 = std::env::var("STARLING_LOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let mounts = env.path("mounts");
    // One round of each kind first: the daemon's pools and caches are made on first use,
    // not leaked.
    let warm = mountpoint(&env, "mounts/warm");
    for how in [
        vec!["mount", "t:v1", s(&warm)],
        vec!["mount", &server.url, "t:v1", s(&warm), "--root", &root],
        vec!["mount", "--writable", "t:v1", s(&warm)],
    ] {
        d.ok(&env, &how);
        read_all_compare(&warm, &src, 1);
        d.ok(&env, &["umount", s(&warm)]);
    }
    let before = fds_and_threads(pid);

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let rounds = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|sc| {
        for c in 0..6 {
            let (d, env, src, server, root, rounds) = (&d, &env, &src, &server, &root, &rounds);
            let mp = mountpoint(env, &format!("mounts/c{c}"));
            sc.spawn(move || {
                let mut n = 0u64;
                while std::time::Instant::now() < deadline {
                    let args: Vec<&str> = match (c + n) % 3 {
                        0 => vec!["mount", "t:v1", s(&mp)],
                        1 => vec!["mount", &server.url, "t:v1", s(&mp), "--root", root],
                        _ => vec!["mount", "--writable", "t:v1", s(&mp)],
                    };
                    d.ok(env, &args);
                    read_all_compare(&mp, src, 2);
                    if (c + n) % 3 == 2 {
                        fs::write(mp.join(format!("written-{c}-{n}")), b"x").unwrap();
                    }
                    d.ok(env, &["mounts", "--json"]);
                    d.ok(env, &["cache", "stats"]);
                    // Requests that must fail, and fail alone.
                    d.fails(env, &["mount", "t:missing", s(&mp)]);
                    d.fails(env, &["umount", s(&env.path("not-mounted"))]);
                    d.ok(env, &["umount", s(&mp)]);
                    n += 1;
                }
                rounds.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            });
        }
    });
    let rounds = rounds.into_inner();
    assert!(rounds >= 6, "only {rounds} rounds in {secs} s");
    assert_eq!(d.mounts(&env).as_array().map(Vec::len), Some(0));
    assert!(
        fuse_mounts_under(&mounts).is_empty(),
        "{:?}",
        fuse_mounts_under(&mounts)
    );
    assert_eq!(fs::read_dir(state.join("layers")).unwrap().count(), 0);
    // The state and the host cache in it are the daemon's alone (the test made the state
    // directory open to all).
    for dir in [&state, &state.join("cache")] {
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&fs::metadata(dir).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
    }
    // Descriptors and threads settle back: a mount's threads end with it, and the idle
    // threads of tokio's blocking pool after its 10 s keep-alive.
    let mut after = fds_and_threads(pid);
    for _ in 0..200 {
        if after.0 <= before.0 && after.1 <= before.1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        after = fds_and_threads(pid);
    }
    eprintln!("load: {rounds} rounds in {secs} s; fds, threads before {before:?}, after {after:?}");
    assert!(
        after.0 <= before.0 && after.1 <= before.1,
        "the daemon kept descriptors or threads: before {before:?}, after {after:?}"
    );
}
