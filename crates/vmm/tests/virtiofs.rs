//! Tier 1 for the virtio-fs device: the project's test guest (tests/guest, `fs` and `fsheld`
//! modes) speaks FUSE to it through real virtqueues on this host's /dev/kvm, over an image
//! imported here into a fresh store. Every line the guest prints is checked against the tree
//! it was imported from; the node ids and file handles the guest holds survive a snapshot
//! restored in a new monitor process and a fork into two clones.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use starling_image::chunk::Progress;
use starling_image::import::{import, ImportOptions};
use starling_store::Store;
use starling_vmm::config::FsConfig;
use starling_vmm::test_guest::TestGuest;
use starling_vmm::{Console, ExitReason, RestoreSpec, Vm, VmConfig, VsockConfig};

/// The test guest, compiled once per test run; None after a loud skip (a failure under CI)
/// when this host has no /dev/kvm or C compiler.
fn guests() -> Option<&'static TestGuest> {
    // Clones are started from this binary's monitor: set once, before any fork.
    static ENV: std::sync::Once = std::sync::Once::new();
    ENV.call_once(|| std::env::set_var("STARLING_VMM", env!("CARGO_BIN_EXE_starling-vmm")));
    starling_vmm::test_guest::once(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("virtiofs-guest"))
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

/// Content no compressor or chunker finds a shortcut through.
fn pattern(n: usize, seed: u64) -> Vec<u8> {
    let mut x = 0x2545_F491_4F6C_DD1Du64 ^ seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// The tree the guest's `fs` and `fsheld` modes walk (their paths are fixed in guest.c).
fn tree(root: &Path) {
    std::fs::create_dir_all(root.join("dir/sub")).unwrap();
    std::fs::create_dir_all(root.join("other/deep")).unwrap();
    std::fs::write(root.join("hello.txt"), b"hello from the image\n").unwrap();
    // Larger than 256 KiB and not a multiple of 8: several chunks, a partial last word.
    std::fs::write(root.join("dir/big.bin"), pattern(333_333, 1)).unwrap();
    std::fs::write(root.join("dir/small.txt"), b"small file with an xattr\n").unwrap();
    std::fs::set_permissions(
        root.join("dir/small.txt"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    xattr::set(root.join("dir/small.txt"), "user.x", b"xattr-value").unwrap();
    std::os::unix::fs::symlink("big.bin", root.join("dir/link")).unwrap();
    std::fs::write(root.join("dir/sub/deep.txt"), b"deep\n").unwrap();
    std::fs::write(root.join("other/deep/file.txt"), pattern(5000, 2)).unwrap();
}

/// The checksum guest.c prints: FNV-1a (64-bit) over little-endian 64-bit words, the last
/// one zero-padded.
fn sum(data: &[u8]) -> String {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for w in data.chunks(8) {
        let mut b = [0u8; 8];
        b[..w.len()].copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(b)).wrapping_mul(0x100_0000_01b3);
    }
    format!("{h:016x}")
}

struct Image {
    dir: tempfile::TempDir,
    store: PathBuf,
    version: String,
}

impl Image {
    fn src(&self) -> PathBuf {
        self.dir.path().join("src")
    }
    fn content(&self, path: &str) -> Vec<u8> {
        std::fs::read(self.src().join(path.trim_start_matches('/'))).unwrap()
    }
    fn config(&self) -> FsConfig {
        FsConfig {
            tag: "image".into(),
            source: format!("store:{}", self.store.display()),
            version: self.version.clone(),
            objects_socket: None,
        }
    }
}

/// [`tree`] imported into a fresh store.
fn image() -> Image {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    tree(&src);
    let store_path = dir.path().join("store");
    let store = Store::open_or_init(&store_path).unwrap();
    let r = import(
        &store,
        &ImportOptions {
            source: &src,
            format: None,
            name: "fs-test",
            tag: "v1",
            labels: Default::default(),
            chunking: Default::default(),
            partition: None,
            allow_backing: false,
        },
        &Progress::default(),
    )
    .unwrap();
    Image {
        dir,
        store: store_path,
        version: r.version.to_string(),
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The one line starting with `prefix ` (the guest prints each result once).
fn line<'a>(console: &'a str, prefix: &str) -> &'a str {
    let found: Vec<&str> = console
        .lines()
        .filter(|l| l.starts_with(&format!("{prefix} ")) || *l == prefix)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{} lines starting {prefix:?} in console:\n{console}",
        found.len()
    );
    found[0]
}

/// `key=value` words of a line.
fn fields(line: &str) -> BTreeMap<&str, &str> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect()
}

fn field(line: &str, key: &str) -> u64 {
    let v = fields(line)
        .get(key)
        .copied()
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"));
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).unwrap(),
        None if key == "mode" => u64::from_str_radix(v, 8).unwrap(),
        None => v
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v} in {line:?}")),
    }
}

/// Checks a printed attribute set (`ino= mode= size= nlink=`) against the source tree.
fn check_attrs(img: &Image, path: &str, l: &str) {
    let m = std::fs::symlink_metadata(img.src().join(path.trim_start_matches('/'))).unwrap();
    assert_eq!(field(l, "mode"), u64::from(m.mode()), "mode of {path}: {l}");
    if !m.is_dir() {
        assert_eq!(field(l, "size"), m.len(), "size of {path}: {l}");
        assert_eq!(field(l, "nlink"), 1, "{l}");
    }
    assert!(field(l, "ino") > 1, "{l}");
}

fn guest_config(g: &TestGuest, cmdline: &str, dir: &Path, img: &Image) -> VmConfig {
    let mut c = VmConfig::new(g.pvh.clone());
    c.cmdline = cmdline.into();
    c.mem_mib = 64;
    c.console = Console::File(dir.join("console.log"));
    c.run_dir = Some(dir.join("run"));
    c.fs.push(img.config());
    c
}

/// No reply the guest did not expect, no stale handle or I/O error.
fn assert_clean(console: &str) {
    assert!(
        !console.contains("unexpected")
            && !console.contains("timeout")
            && !console.contains("errno=116")
            && !console.contains("errno=5\n"),
        "{console}"
    );
}

#[test]
fn the_guest_speaks_fuse_to_the_device_through_real_virtqueues() {
    let g = guests_or_skip!();
    let img = image();
    let dir = tempfile::tempdir().unwrap();
    let c = guest_config(g, "fs exit=0", dir.path(), &img);
    let log = dir.path().join("console.log");
    let reason = Vm::build(c).unwrap().run().unwrap();
    let out = read(&log);
    eprintln!("{out}");
    assert_eq!(reason, ExitReason::GuestExit(0), "{out}");
    assert_clean(&out);
    assert!(out.contains("fs done"), "{out}");
    assert_eq!(line(&out, "fs: tag"), "fs: tag image queues 1");

    // INIT: protocol 7.x, 7.31 or newer; what the guest offered and the file system wants.
    let init = line(&out, "fs init");
    assert_eq!(field(init, "major"), 7, "{init}");
    assert!(field(init, "minor") >= 31, "{init}");
    assert_eq!(
        field(init, "used"),
        16 + 64,
        "a whole fuse_init_out: {init}"
    );
    const ASYNC_READ: u64 = 0x1;
    const EXPORT_SUPPORT: u64 = 0x10;
    const DO_READDIRPLUS: u64 = 0x2000;
    const PARALLEL_DIROPS: u64 = 0x4_0000;
    const MAX_PAGES: u64 = 0x40_0000;
    const CACHE_SYMLINKS: u64 = 0x80_0000;
    assert_eq!(
        field(init, "flags"),
        ASYNC_READ | EXPORT_SUPPORT | DO_READDIRPLUS | PARALLEL_DIROPS | MAX_PAGES | CACHE_SYMLINKS,
        "{init}"
    );
    assert_eq!(field(init, "max_pages"), 256, "{init}");
    assert_eq!(field(init, "max_write"), 1 << 20, "{init}");

    // LOOKUP, one component at a time.
    let mut inos = BTreeMap::new();
    for p in [
        "/hello.txt",
        "/dir",
        "/dir/big.bin",
        "/dir/link",
        "/dir/small.txt",
        "/dir/sub",
        "/dir/sub/deep.txt",
    ] {
        let l = line(&out, &format!("fs lookup {p}"));
        check_attrs(&img, p, l);
        inos.insert(p, field(l, "ino"));
    }
    let mut distinct: Vec<u64> = inos.values().copied().collect();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), inos.len(), "node ids collide: {inos:?}");
    assert_eq!(
        line(&out, "fs lookup /dir/absent"),
        "fs lookup /dir/absent errno=2"
    );
    assert_eq!(
        line(&out, "fs lookup /hello.txt/x"),
        "fs lookup /hello.txt/x errno=20",
        "ENOTDIR"
    );

    let big = img.content("dir/big.bin");
    let l = line(&out, "fs getattr /dir/big.bin");
    check_attrs(&img, "/dir/big.bin", l);
    assert_eq!(field(l, "ino"), inos["/dir/big.bin"]);

    // OPEN read-only gives a handle; anything that could write is EROFS, a directory EISDIR.
    assert!(field(line(&out, "fs open /dir/big.bin"), "fh") >= 1);
    for (what, errno) in [("open-wronly", 30), ("open-rdwr", 30), ("open-trunc", 30)] {
        assert_eq!(
            line(&out, &format!("fs {what}")),
            format!("fs {what} /dir/small.txt errno={errno}")
        );
    }
    assert_eq!(line(&out, "fs open-dir"), "fs open-dir /dir errno=21");

    // READ: the whole file in 128 KiB requests (each spanning chunk boundaries), a range in
    // the middle, at the end; an inline file.
    assert_eq!(
        line(&out, "fs read /dir/big.bin"),
        format!(
            "fs read /dir/big.bin len={} sum={} requests=3",
            big.len(),
            sum(&big)
        )
    );
    assert_eq!(
        line(&out, "fs read /dir/big.bin@100000+70000"),
        format!(
            "fs read /dir/big.bin@100000+70000 len=70000 sum={} requests=1",
            sum(&big[100_000..170_000])
        )
    );
    assert_eq!(
        line(&out, "fs read /dir/big.bin@eof"),
        format!("fs read /dir/big.bin@eof len=0 sum={} requests=1", sum(&[]))
    );
    // Only through a handle OPEN gave, for that file.
    assert_eq!(
        line(&out, "fs read-badfh"),
        "fs read-badfh /dir/big.bin errno=9"
    );
    assert_eq!(
        line(&out, "fs read-otherfh"),
        "fs read-otherfh /dir/small.txt errno=9"
    );
    let hello = img.content("hello.txt");
    assert_eq!(
        line(&out, "fs read /hello.txt"),
        format!(
            "fs read /hello.txt len={} sum={} requests=1",
            hello.len(),
            sum(&hello)
        )
    );
    assert_eq!(
        line(&out, "fs release /hello.txt"),
        "fs release /hello.txt errno=0"
    );

    // READDIRPLUS: ".", "..", then the entries in name order, each with its attributes.
    let dirents: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("fs dirent /dir "))
        .collect();
    let names: Vec<&str> = dirents.iter().map(|l| fields(l)["name"]).collect();
    assert_eq!(
        names,
        [".", "..", "big.bin", "link", "small.txt", "sub"],
        "{out}"
    );
    assert_eq!(field(dirents[0], "ino"), inos["/dir"]);
    assert_eq!(field(dirents[1], "ino"), 1, "/dir's parent is the root");
    assert_eq!(
        field(dirents[0], "nlink"),
        3,
        "a loaded directory counts its subdirectory"
    );
    for (l, (name, dtype)) in
        dirents[2..]
            .iter()
            .zip([("big.bin", 8), ("link", 10), ("small.txt", 8), ("sub", 4)])
    {
        let p = format!("/dir/{name}");
        check_attrs(&img, &p, l);
        assert_eq!(field(l, "ino"), inos[p.as_str()], "{l}");
        assert_eq!(field(l, "type"), dtype, "{l}");
    }
    assert_eq!(
        line(&out, "fs readdirplus /dir"),
        "fs readdirplus /dir entries=6 requests=2"
    );

    assert_eq!(
        line(&out, "fs readlink /dir/link"),
        "fs readlink /dir/link target=big.bin"
    );
    assert_eq!(
        line(&out, "fs readlink-file"),
        "fs readlink-file /dir/small.txt errno=22"
    );

    // Extended attributes: the size probe, the value, a missing name, a short buffer.
    let x = xattr::get(img.src().join("dir/small.txt"), "user.x")
        .unwrap()
        .unwrap();
    assert_eq!(
        line(&out, "fs getxattr-size"),
        format!("fs getxattr-size /dir/small.txt user.x size={}", x.len())
    );
    assert_eq!(
        line(&out, "fs getxattr"),
        format!(
            "fs getxattr /dir/small.txt user.x value={}",
            String::from_utf8(x).unwrap()
        )
    );
    assert_eq!(
        line(&out, "fs getxattr-missing"),
        "fs getxattr-missing /dir/small.txt errno=61",
        "ENODATA"
    );
    assert_eq!(
        line(&out, "fs getxattr-small"),
        "fs getxattr-small /dir/small.txt errno=34",
        "ERANGE"
    );
    assert_eq!(
        line(&out, "fs listxattr-size"),
        "fs listxattr-size /dir/small.txt size=7"
    );
    assert_eq!(
        line(&out, "fs listxattr"),
        "fs listxattr /dir/small.txt names=user.x,"
    );

    // STATFS: the image's own counts (directories below the root, files, symlinks).
    let (mut files, mut dirs, mut links, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    let mut stack = vec![img.src()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                dirs += 1;
                stack.push(e.path());
            } else if m.is_symlink() {
                links += 1;
            } else {
                files += 1;
                bytes += m.len();
            }
        }
    }
    assert_eq!(
        line(&out, "fs statfs"),
        format!(
            "fs statfs blocks={} files={} bsize=4096 namelen=255 frsize=4096",
            bytes.div_ceil(4096),
            files + dirs + links
        )
    );

    // FORGET on the hiprio queue: no reply, the chain comes back empty.
    assert_eq!(
        line(&out, "fs forget"),
        format!("fs forget ino={} used=0", inos["/dir/sub/deep.txt"])
    );

    // Every write is refused: EROFS.
    for op in [
        "mkdir",
        "create",
        "write",
        "setattr",
        "unlink",
        "rmdir",
        "symlink",
        "rename",
        "removexattr",
    ] {
        assert_eq!(line(&out, &format!("fs {op}")), format!("fs {op} errno=30"));
    }

    // Hostile requests come back, answered with an error or not at all, and the device goes
    // on serving.
    assert_eq!(
        line(&out, "fs hostile request-outside-memory"),
        "fs hostile request-outside-memory used=0"
    );
    assert_eq!(
        line(&out, "fs hostile reply-outside-memory"),
        "fs hostile reply-outside-memory used=0"
    );
    for what in ["len-beyond-chain", "len-short", "read-1g"] {
        assert_eq!(
            line(&out, &format!("fs hostile {what}")),
            format!("fs hostile {what} used=16 errno=22"),
            "EINVAL"
        );
    }
    let l = line(&out, "fs hostile descriptor-loop");
    assert!(!l.contains("lost"), "{l}");
    let l = line(&out, "fs after-hostile getattr");
    assert_eq!(field(l, "ino"), inos["/dir/big.bin"]);
    assert_eq!(field(l, "size"), big.len() as u64);
    assert_eq!(
        line(&out, "fs release /dir/big.bin"),
        "fs release /dir/big.bin errno=0"
    );
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

/// Boots the `fsheld` guest and waits until it holds its node id and handle and waits to be
/// activated; returns its API socket, console and the VM's thread.
fn held_guest(
    g: &TestGuest,
    img: &Image,
    dir: &Path,
) -> (PathBuf, PathBuf, std::thread::JoinHandle<ExitReason>) {
    let mut c = guest_config(g, "fsheld", dir, img);
    c.api_socket = Some(dir.join("api.sock"));
    c.vsock = Some(VsockConfig {
        cid: 3,
        path: dir.join("vsock.sock"),
    });
    let sock = c.api_socket.clone().unwrap();
    let log = dir.join("console.log");
    let vm = Vm::build(c).unwrap();
    let runner = std::thread::spawn(move || vm.run().unwrap());
    wait_for("the guest to hold a file open", 120, || {
        read(&log).contains("fs ready") && sock.exists()
    });
    (sock, log, runner)
}

/// What the guest held before the snapshot: (node id, handle), checked against the file.
fn held(img: &Image, before: &str) -> (u64, u64) {
    assert_clean(before);
    let big = img.content("dir/big.bin");
    let l = line(before, "fs held");
    assert_eq!(field(l, "len"), big.len() as u64, "{l}");
    assert_eq!(fields(l)["sum"], sum(&big), "{l}");
    (field(l, "ino"), field(l, "fh"))
}

/// The guest's lines after activation: the old node id and handle still name the file, new
/// lookups and handles go on from there. Returns the new lookup's node id.
fn check_after(img: &Image, console: &str, (ino, fh): (u64, u64)) -> u64 {
    assert_clean(console);
    assert!(console.contains("fs done"), "{console}");
    let big = img.content("dir/big.bin");
    assert_eq!(
        line(console, "fs posted read"),
        format!(
            "fs posted read len=4096 sum={}",
            sum(&big[200_000..204_096])
        )
    );
    let l = line(console, "fs after getattr");
    assert_eq!(field(l, "ino"), ino, "{l}");
    check_attrs(img, "/dir/big.bin", l);
    assert_eq!(
        line(console, "fs after read"),
        format!(
            "fs after read len={} sum={} requests=3",
            big.len(),
            sum(&big)
        )
    );
    let l = line(console, "fs after lookup /other/deep/file.txt");
    check_attrs(img, "/other/deep/file.txt", l);
    let other = field(l, "ino");
    assert_ne!(other, ino);
    let new_fh = field(line(console, "fs after open"), "fh");
    assert!(
        new_fh > fh,
        "a new handle ({new_fh}) reuses one held ({fh})"
    );
    let content = img.content("other/deep/file.txt");
    assert_eq!(
        line(console, "fs after read-other"),
        format!(
            "fs after read-other /other/deep/file.txt len={} sum={} requests=1",
            content.len(),
            sum(&content)
        )
    );
    assert_eq!(
        field(line(console, "fs after relookup /dir/big.bin"), "ino"),
        ino,
        "the same name, the same node id"
    );
    assert_eq!(
        line(console, "fs after release"),
        "fs after release errno=0"
    );
    other
}

#[test]
fn node_ids_and_handles_survive_a_snapshot_restored_in_a_new_process() {
    let g = guests_or_skip!();
    let img = image();
    let dir = tempfile::tempdir().unwrap();
    let (sock, log, runner) = held_guest(g, &img, dir.path());
    let snap = dir.path().join("snap");
    let (code, info) = api(
        &sock,
        "POST",
        "/v1/vm/snapshot",
        &format!(r#"{{"dir": "{}", "stop": true}}"#, snap.display()),
    );
    assert_eq!(code, 200, "{info}");
    assert_eq!(runner.join().unwrap(), ExitReason::Stopped(None));
    let before = read(&log);
    let held = held(&img, &before);

    let log2 = dir.path().join("restored.log");
    let spec = RestoreSpec {
        dir: snap,
        run_dir: Some(dir.path().join("restored")),
        console: Some(Console::File(log2.clone())),
        activate: Some("activate code=5".into()),
        ..Default::default()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_starling-vmm"))
        .arg("--restore-json")
        .arg(serde_json::to_string(&spec).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the restored VM never ended:\n{}", read(&log2));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let after = read(&log2);
    assert_eq!(status.code(), Some(5), "{after}");
    assert!(
        !after.contains("fs held"),
        "the restored VM started over:\n{after}"
    );
    assert_eq!(
        line(&after, "fs activated:"),
        "fs activated: activate code=5"
    );
    check_after(&img, &after, held);
}

#[test]
fn node_ids_and_handles_survive_a_fork_into_two_clones() {
    let g = guests_or_skip!();
    let img = image();
    let dir = tempfile::tempdir().unwrap();
    let (sock, log, runner) = held_guest(g, &img, dir.path());
    let (code, info) = api(&sock, "POST", "/v1/vm/fork", r#"{"count": 2}"#);
    assert_eq!(code, 200, "{info}");
    let clones = info["clones"].as_array().unwrap().clone();
    assert_eq!(clones.len(), 2);
    let held = held(&img, &read(&log));

    // Each clone and the parent are activated with their own exit code and run on from the
    // same instant, with the same node ids and handles.
    let mut consoles = Vec::new();
    for (k, c) in clones.iter().enumerate() {
        let csock = PathBuf::from(c["api_socket"].as_str().unwrap());
        let (code, v) = api(
            &csock,
            "POST",
            "/v1/vm/activate",
            &format!(r#"{{"env": {{"code": "{}"}}}}"#, 11 + k),
        );
        assert_eq!(code, 200, "{v}");
        consoles.push(PathBuf::from(c["dir"].as_str().unwrap()).join("console.log"));
    }
    let (code, v) = api(
        &sock,
        "POST",
        "/v1/vm/activate",
        r#"{"env": {"code": "10"}}"#,
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(runner.join().unwrap(), ExitReason::GuestExit(10));
    for l in &consoles {
        wait_for("a clone to finish", 120, || read(l).contains("fs done"));
    }
    let parent = read(&log);
    let mut others = vec![check_after(&img, &parent, held)];
    assert!(parent.contains("fs whoami id=0 "), "{parent}");
    for (k, l) in consoles.iter().enumerate() {
        let c = read(l);
        assert!(!c.contains("fs held"), "clone {k} started over:\n{c}");
        others.push(check_after(&img, &c, held));
        assert!(
            c.contains(&format!("fs whoami id={} ", k + 1)),
            "clone {}:\n{c}",
            k + 1
        );
        assert_eq!(
            line(&c, "fs activated:"),
            format!("fs activated: activate code={}", 11 + k)
        );
    }
    // Every VM numbers the directory it loads after the fork alike.
    others.dedup();
    assert_eq!(others.len(), 1, "{others:?}");
}
