//! Helpers shared by the CLI's integration tests: a scratch store, the `starling` binary, a
//! torture tree, and the independent comparator (bsdtar's mtree output and getfattr dumps).
#![allow(dead_code)]

pub mod daemon;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, CWD};

pub struct Env {
    pub dir: tempfile::TempDir,
    pub store: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("starling-test-")
            .tempdir_in(scratch_root())
            .expect("tempdir");
        let store = dir.path().join("store");
        Env { dir, store }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_starling"));
        c.arg("--store").arg(&self.store);
        c
    }

    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        self.cmd().args(args).output().expect("run starling")
    }

    /// Runs and requires success; returns stdout.
    pub fn ok<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "starling {:?} failed: {}\n{}",
            args.iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs and requires failure; returns stderr.
    pub fn fails<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "starling {:?} should have failed",
            args.iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Every file in the store (but lock files) with its bytes: "untouched" means equal.
    pub fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        if self.store.exists() {
            walk_files(&self.store, &mut |p| {
                let name = p.file_name().unwrap_or_default();
                if name != "lock" && name != "refs.lock" {
                    out.insert(p.to_path_buf(), fs::read(p).unwrap_or_default());
                }
            });
        }
        out
    }

    pub fn fsck_clean(&self) {
        let out = self.run(&["store", "fsck"]);
        assert!(
            out.status.success(),
            "fsck not clean:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Where scratch trees go: a real disk file system (xattrs, devices), not tmpfs.
pub fn scratch_root() -> PathBuf {
    let p = std::env::var_os("STARLING_TEST_TMP")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    fs::create_dir_all(&p).expect("scratch root");
    p
}

fn walk_files(dir: &Path, f: &mut dyn FnMut(&Path)) {
    for e in fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        let ft = e.file_type().expect("file type");
        if ft.is_dir() {
            walk_files(&p, f);
        } else {
            f(&p);
        }
    }
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The test cannot run here: a failure under CI (CI=true), else one loud line that test.sh
/// lists at the end of the run (see starling-testkit).
#[track_caller]
pub fn skip(why: &str) {
    starling_testkit::skip(why);
}

pub fn require_tool(tool: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is required (Debian package {package}); .ci/run installs it"
    );
}

/// bsdtar's mtree listing of a tree (type, mode, owner, ns mtime, size, link target, sha256,
/// device, link count), one line per entry, sorted so readdir order does not matter.
pub fn mtree(dir: &Path) -> String {
    require_tool("bsdtar", "libarchive-tools");
    let out = Command::new("bsdtar")
        .args(["-cf", "-", "--format=mtree"])
        .arg("--options=!all,type,mode,uid,gid,time,size,link,sha256,device,nlink")
        .arg("-C")
        .arg(dir)
        .arg(".")
        .output()
        .expect("bsdtar");
    assert!(
        out.status.success(),
        "bsdtar mtree of {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines: Vec<_> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    lines.sort();
    lines.join("\n")
}

/// All xattrs of a tree (getfattr, hex values), grouped per file and sorted.
pub fn xattrs(dir: &Path) -> String {
    require_tool("getfattr", "attr");
    let out = Command::new("getfattr")
        .args(["-R", "-P", "-d", "-m", "-", "-e", "hex", "."])
        .current_dir(dir)
        .output()
        .expect("getfattr");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut blocks: Vec<String> = text
        .split("\n\n")
        .map(|b| b.trim().to_string())
        .filter(|b| !b.is_empty())
        .collect();
    blocks.sort();
    blocks.join("\n\n")
}

/// Asserts that two trees are equal in bytes and metadata, as independent tools see them.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    assert_same_tree_except(expected, actual, &[]);
}

/// As [`assert_same_tree`], leaving out top-level entries named in `except` (e.g. the
/// lost+found every ext4 file system has).
pub fn assert_same_tree_except(expected: &Path, actual: &Path, except: &[&str]) {
    let keep = |l: &&str| {
        !except
            .iter()
            .any(|e| l.starts_with(&format!("./{e} ")) || l.starts_with(&format!("./{e}/")))
    };
    let filter = |t: String| t.lines().filter(keep).collect::<Vec<_>>().join("\n");
    let (a, b) = (filter(mtree(expected)), filter(mtree(actual)));
    if a != b {
        let da: Vec<_> = a.lines().filter(|l| !b.contains(*l)).take(10).collect();
        let db: Vec<_> = b.lines().filter(|l| !a.contains(*l)).take(10).collect();
        panic!(
            "trees differ ({} vs {}):\nonly in expected:\n{}\nonly in actual:\n{}",
            expected.display(),
            actual.display(),
            da.join("\n"),
            db.join("\n")
        );
    }
    assert!(a.lines().count() > 1, "comparator saw an empty tree");
    assert_eq!(xattrs(expected), xattrs(actual), "xattrs differ");
}

fn set_time(p: &Path, sec: i64, nsec: i64) {
    let t = Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    rustix::fs::utimensat(
        CWD,
        p,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .expect("utimensat");
}

/// Incompressible bytes, the same for the same seed.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn write(p: &Path, data: &[u8]) {
    fs::write(p, data).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
}

/// A tree with every kind of entry and metadata the format must keep. Root-only parts
/// (devices, foreign owners, trusted/security xattrs) are left out, loudly, when not root.
pub fn torture_tree(root: &Path, with_socket: bool) {
    fs::create_dir_all(root).expect("mkdir");
    let d = |p: &str| {
        let p = root.join(p);
        fs::create_dir_all(&p).expect("mkdir");
        p
    };
    let f = |p: &str, data: &[u8]| {
        let p = root.join(p);
        write(&p, data);
        p
    };
    f("empty", b"");
    f("tiny", b"hello\n");
    f("exactly-64", &[b'x'; 64]);
    f("just-over-64", &[b'y'; 65]);
    f("random-100k", &pseudo_random(100_000, 1));
    f("random-3m", &pseudo_random(3 << 20, 2));
    // Same content as another file under another name: stored once.
    f("random-3m-copy", &pseudo_random(3 << 20, 2));
    {
        let p = root.join("sparse");
        let file = fs::File::create(&p).expect("sparse");
        file.set_len(20 << 20).expect("set_len");
        use std::os::unix::fs::FileExt;
        file.write_at(b"head", 0).expect("write");
        file.write_at(&pseudo_random(5000, 3), 10 << 20)
            .expect("write");
    }
    let suid = f("setuid", b"#!/bin/sh\n");
    fs::set_permissions(&suid, fs::Permissions::from_mode(0o4755)).expect("chmod");
    let sgid = f("setgid", b"#!/bin/sh\necho\n");
    fs::set_permissions(&sgid, fs::Permissions::from_mode(0o2711)).expect("chmod");
    let none = f("mode-000", b"secret");
    fs::set_permissions(&none, fs::Permissions::from_mode(0o000)).expect("chmod");
    let sticky = d("sticky");
    f("sticky/inside", b"in sticky");
    fs::set_permissions(&sticky, fs::Permissions::from_mode(0o1777)).expect("chmod");
    d("empty-dir");
    d("a/b/c/d/e/f/g/h/i/j/deep/and/deeper/still/more/levels/to/pass/one/hundred/bytes/of/path");
    f("a/b/c/d/e/f/g/h/i/j/deep/and/deeper/still/more/levels/to/pass/one/hundred/bytes/of/path/file-with-a-long-path", b"long path");
    let long_name = "n".repeat(255);
    f(&long_name, b"255-byte name");

    // Names that are not plain text.
    write(
        &root.join(OsStr::from_bytes(b"new\nline")),
        b"newline in name",
    );
    write(
        &root.join(OsStr::from_bytes(b"bad-utf8-\xff\xfe")),
        b"invalid utf-8 name",
    );
    f("spaces and \u{1F426} unicode", b"unicode");
    f("back\\slash", b"backslash");

    // Symlinks: relative, absolute, dangling, long.
    symlink("tiny", root.join("link-rel")).expect("symlink");
    symlink("/etc/passwd", root.join("link-abs")).expect("symlink");
    symlink("does/not/exist", root.join("link-dangling")).expect("symlink");
    symlink("t".repeat(300), root.join("link-long")).expect("symlink");

    // Hard-link groups, one spanning directories, one whose first-created member sorts last.
    d("hl");
    f("hl/z-original", b"hard linked content");
    fs::hard_link(root.join("hl/z-original"), root.join("hl/a-link")).expect("link");
    fs::hard_link(root.join("hl/z-original"), root.join("a/hl-elsewhere")).expect("link");
    f("zz-first-made", &pseudo_random(70_000, 4));
    fs::hard_link(root.join("zz-first-made"), root.join("aa-second")).expect("link");

    // Named pipe and socket.
    rustix::fs::mknodat(
        CWD,
        root.join("fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o640),
        0,
    )
    .expect("mkfifo");
    if with_socket {
        let _l = std::os::unix::net::UnixListener::bind(root.join("socket")).expect("bind");
    }

    // xattrs: user.* everywhere it is allowed; security/trusted need root.
    xattr::set(root.join("tiny"), "user.comment", b"a comment").expect("xattr");
    xattr::set(root.join("tiny"), "user.binary", &[0u8, 1, 2, 255]).expect("xattr");
    xattr::set(root.join("empty-dir"), "user.dir", b"on a dir").expect("xattr");

    if is_root() {
        rustix::fs::mknodat(
            CWD,
            root.join("null"),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rustix::fs::makedev(1, 3),
        )
        .expect("mknod");
        rustix::fs::mknodat(
            CWD,
            root.join("loop0"),
            FileType::BlockDevice,
            Mode::from_raw_mode(0o660),
            rustix::fs::makedev(7, 0),
        )
        .expect("mknod");
        let own = |p: &str, u: u32, g: u32| {
            rustix::fs::chownat(
                CWD,
                root.join(p),
                Some(rustix::process::Uid::from_raw(u)),
                Some(rustix::process::Gid::from_raw(g)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .expect("chown")
        };
        own("tiny", 1234, 5678);
        own("link-rel", 4321, 8765);
        own("empty-dir", 65534, 65534);
        own("random-100k", 3_000_000, 3_000_001);
        // chown cleared the setuid bit; put it back.
        own("setuid", 0, 0);
        fs::set_permissions(&suid, fs::Permissions::from_mode(0o4755)).expect("chmod");
        // File capabilities (cap_net_raw+ep), as setcap writes them: VFS_CAP_REVISION_2.
        let cap: [u8; 20] = [
            0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let capbin = f("capbin", b"\x7fELF pretend");
        xattr::set(&capbin, "security.capability", &cap).expect("setcap");
        xattr::set(root.join("link-abs"), "trusted.on-symlink", b"t").expect("xattr");
        xattr::set(root.join("hl/z-original"), "trusted.overlay.opaque", b"y").expect("xattr");
    } else {
        skip(
            "not root: torture tree has no device nodes, foreign owners or security/trusted xattrs",
        );
    }

    // Times last, children before parents, with nanoseconds, one before 1970.
    let mut paths = Vec::new();
    collect(root, &mut paths);
    paths.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in paths.iter().enumerate() {
        let sec = 1_600_000_000 + i as i64 * 7919;
        set_time(p, sec, (i as i64 * 123_456_789) % 1_000_000_000);
    }
    set_time(&root.join("tiny"), -86_400 * 365, 250_000_000);
    set_time(root, 1_700_000_000, 999_999_999);
    // Make a read-only directory last: export must still fill it.
    fs::set_permissions(root.join("a/b"), fs::Permissions::from_mode(0o555)).expect("chmod");
    std::io::stderr().flush().ok();
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            collect(&p, out);
        }
        out.push(p);
    }
}

/// Runs a shell command, panicking with its output on failure.
pub fn sh(script: &str) {
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "`{script}` failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The cached Debian minbase rootfs variants (built by tests/fixtures/debian-rootfs.sh), or
/// `None` (after a loud skip) when they cannot be built here.
pub fn debian_rootfs() -> Option<(PathBuf, PathBuf)> {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/debian-rootfs.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .expect("run fixture script");
    if !out.status.success() {
        skip(&format!(
            "Debian rootfs could not be built: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ));
        return None;
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Some((dir.join("rootfs-a"), dir.join("rootfs-b")))
}

/// A read-only loop mount by the host kernel, unmounted on drop.
pub struct Mount {
    pub dir: tempfile::TempDir,
}

impl Mount {
    /// Mounts `image` (a file system image of `fstype`), or skips loudly when this machine
    /// cannot (not root, no loop devices).
    pub fn loop_ro(image: &Path, fstype: &str) -> Option<Mount> {
        if !is_root() {
            skip("loop mounts need root");
            return None;
        }
        let dir = tempfile::tempdir_in(scratch_root()).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", fstype, "-o", "loop,ro"])
            .arg(image)
            .arg(dir.path())
            .output()
            .expect("mount");
        if !out.status.success() {
            skip(&format!(
                "the kernel could not loop-mount {fstype}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            return None;
        }
        Some(Mount { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// A path as the &str command arguments want (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 test path")
}

/// Runs a tool that must succeed; returns its stdout.
pub fn tool(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The root tree id of a version (equal ids mean equal trees, down to every byte).
pub fn root_tree(env: &Env, image: &str) -> String {
    let j: serde_json::Value =
        serde_json::from_str(&env.ok(&["image", "inspect", "--json", image])).unwrap();
    j["root_tree"].as_str().unwrap().to_string()
}

/// Whether a command is on PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Why the tier-2 test host (tests/vm/tier2.sh) cannot be built here, if it cannot: the first
/// tool it needs that is not on PATH.
pub fn tier2_missing() -> Option<String> {
    [
        "qemu-system-x86_64",
        "mkfs.ext4",
        "cc",
        "apt-get",
        "objcopy",
    ]
    .into_iter()
    .find(|t| !have(t))
    .map(|t| format!("tier 2 needs {t} (test.sh installs it)"))
}

/// Parses JSON output, showing it on failure.
pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// `starling repo serve DIR` on loopback (a free port, or a given address to come back on),
/// its access log in a file; killed on drop.
pub struct Server {
    child: std::process::Child,
    pub url: String,
    pub addr: String,
    pub log: PathBuf,
}

impl Server {
    pub fn start(env: &Env, dir: &Path) -> Server {
        Server::start_on(env, dir, "127.0.0.1:0")
    }

    pub fn start_on(env: &Env, dir: &Path, listen: &str) -> Server {
        use std::io::{BufRead, BufReader};
        let log = env.dir.path().join(format!(
            "serve-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut child = env
            .cmd()
            .args(["repo", "serve", s(dir), "--listen", listen])
            .stdout(std::process::Stdio::piped())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("repo serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .split_whitespace()
            .last()
            .expect("address line")
            .to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "{line}");
        let addr = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        Server {
            child,
            url,
            addr,
            log,
        }
    }

    /// How many times each path was requested (from the access log).
    pub fn requests(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for l in fs::read_to_string(&self.log).unwrap_or_default().lines() {
            let mut w = l.split_whitespace();
            if let (Some("GET"), Some(path)) = (w.next(), w.next()) {
                *m.entry(path.to_string()).or_insert(0) += 1;
            }
        }
        m
    }

    /// How many object requests the server answered (from the access log).
    pub fn object_requests(&self) -> usize {
        self.requests()
            .iter()
            .filter(|(p, _)| p.starts_with("/objects/"))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Stops every monitor a pool started, even when the test fails half-way (substrates live in
/// their own sessions and would outlive it).
pub struct StopPools(pub PathBuf);

impl Drop for StopPools {
    fn drop(&mut self) {
        for sock in std::fs::read_dir(&self.0)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|p| {
                std::fs::read_dir(p.path().join("slots"))
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .map(|s| s.path().join("api.sock"))
        {
            let _ = starling_vmm::api::call(&sock, "POST", "/v1/vm/stop", &serde_json::Value::Null);
        }
    }
}
