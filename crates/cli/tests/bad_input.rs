//! Bad input gets a clear error naming the thing and the problem, and leaves the store as it
//! was, byte for byte.

mod common;

use std::fs;
use std::process::Command;

use common::*;

/// A store holding one committed image, and a snapshot of its files.
fn seeded() -> Env {
    let env = Env::new();
    let src = env.path("seed");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), vec![7u8; 200_000]).unwrap();
    env.ok(&["image", "import", src.to_str().unwrap(), "seed"]);
    env
}

fn assert_untouched(env: &Env, before: &std::collections::BTreeMap<std::path::PathBuf, Vec<u8>>) {
    let after = env.snapshot();
    let added: Vec<_> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    let removed: Vec<_> = before.keys().filter(|k| !after.contains_key(*k)).collect();
    assert!(
        added.is_empty() && removed.is_empty(),
        "store changed: +{added:?} -{removed:?}"
    );
    assert!(before == &after, "store file contents changed");
}

/// Writes a tar archive with Python's tarfile, which lets us write what GNU tar would refuse.
fn python_tar(path: &std::path::Path, script: &str) {
    let prog = format!(
        "import tarfile, io\nt = tarfile.open({:?}, 'w', format=tarfile.PAX_FORMAT)\n\
         def add(name, data=b'x', kind=tarfile.REGTYPE, link=''):\n    i = tarfile.TarInfo(name); i.type = kind; i.linkname = link; i.size = len(data) if kind == tarfile.REGTYPE else 0\n    t.addfile(i, io.BytesIO(data) if kind == tarfile.REGTYPE else None)\n{script}\nt.close()\n",
        path.to_str().unwrap()
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&prog)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_sources_are_refused_and_store_untouched() {
    let env = seeded();
    let before = env.snapshot();
    let check = |args: &[&str], needle: &str| {
        let e = env.fails(args);
        assert!(e.contains(needle), "expected {needle:?} in: {e}");
        assert_untouched(&env, &before);
    };
    let missing = env.path("no-such-dir");
    check(
        &["image", "import", missing.to_str().unwrap(), "x"],
        "does not exist",
    );

    let not_tar = env.path("not-a-tar.bin");
    fs::write(&not_tar, vec![0xabu8; 4096]).unwrap();
    check(
        &["image", "import", not_tar.to_str().unwrap(), "x"],
        "not a directory, tar archive or disk image",
    );
    check(
        &[
            "image",
            "import",
            not_tar.to_str().unwrap(),
            "x",
            "--format",
            "tar",
        ],
        "tar",
    );

    // A real archive cut short in the middle of a file, and one with a corrupt header.
    let good = env.path("good.tar");
    python_tar(
        &good,
        "import os\nadd('a', os.urandom(300000))\nadd('b', os.urandom(300000))",
    );
    let bytes = fs::read(&good).unwrap();
    let cut = env.path("truncated.tar");
    fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    check(
        &["image", "import", cut.to_str().unwrap(), "x"],
        "truncated",
    );
    let mut corrupt = bytes.clone();
    // The second member's header starts after the first's 512-byte header and padded data.
    let second = 512 + 300_000usize.div_ceil(512) * 512;
    for b in &mut corrupt[second + 100..second + 200] {
        *b = 0x5a;
    }
    let corrupt_path = env.path("corrupt.tar");
    fs::write(&corrupt_path, &corrupt).unwrap();
    check(
        &[
            "image",
            "import",
            corrupt_path.to_str().unwrap(),
            "x",
            "--format",
            "tar",
        ],
        "corrupt or truncated",
    );
    let gz = env.path("truncated.tar.gz");
    sh(&format!(
        "gzip -c {} | head -c 2000 > {}",
        good.display(),
        gz.display()
    ));
    check(&["image", "import", gz.to_str().unwrap(), "x"], "truncated");

    // Escapes are refused, not followed.
    let dotdot = env.path("dotdot.tar");
    python_tar(&dotdot, "add('ok')\nadd('a/../../etc/evil')");
    check(&["image", "import", dotdot.to_str().unwrap(), "x"], "'..'");
    let abs = env.path("abs.tar");
    python_tar(&abs, "add('/etc/evil')");
    check(
        &["image", "import", abs.to_str().unwrap(), "x"],
        "absolute path",
    );
    assert!(!std::path::Path::new("/etc/evil").exists());

    let dangling = env.path("dangling.tar");
    python_tar(
        &dangling,
        "add('a')\nadd('b', kind=tarfile.LNKTYPE, link='missing')",
    );
    check(
        &["image", "import", dangling.to_str().unwrap(), "x"],
        "points to \"missing\"",
    );

    let file_as_dir = env.path("filedir.tar");
    python_tar(&file_as_dir, "add('a')\nadd('a/b')");
    check(
        &["image", "import", file_as_dir.to_str().unwrap(), "x"],
        "not a directory",
    );

    // References.
    let src = env.path("seed");
    check(
        &["image", "import", src.to_str().unwrap(), "Bad:Name"],
        "invalid image reference",
    );
    check(
        &["image", "import", src.to_str().unwrap(), "ok:-tag"],
        "invalid image reference",
    );
    check(
        &["image", "import", src.to_str().unwrap(), "a b"],
        "invalid image reference",
    );
    check(
        &["image", "export", "nosuch", env.path("o").to_str().unwrap()],
        "no image nosuch",
    );
    check(
        &[
            "image",
            "export",
            "seed@00000000",
            env.path("o").to_str().unwrap(),
        ],
        "no version matching",
    );
    check(&["image", "inspect", "seed:nosuch"], "no image seed:nosuch");
    check(&["image", "tag", "nosuch", "other"], "no image");
    check(&["image", "rm", "nosuch"], "no image");
    check(
        &[
            "image",
            "import",
            src.to_str().unwrap(),
            "x",
            "--label",
            "novalue",
        ],
        "KEY=VALUE",
    );

    // Export destinations that would clobber something.
    let full = env.path("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("keep"), b"mine").unwrap();
    check(
        &["image", "export", "seed", full.to_str().unwrap()],
        "not an empty directory",
    );
    assert_eq!(fs::read(full.join("keep")).unwrap(), b"mine");
}

#[test]
fn unreadable_source_is_named() {
    if !is_root() {
        skip("needs root to switch to an unprivileged user");
        return;
    }
    // The unprivileged user must reach the store and source, so they live in a world-traversable
    // directory under the system temp dir, not below the (possibly private) build directory.
    let top = tempfile::Builder::new()
        .prefix("starling-unreadable-")
        .tempdir_in(std::env::temp_dir())
        .unwrap();
    let src = top.path().join("src");
    let store = top.path().join("store");
    fs::create_dir_all(src.join("locked")).unwrap();
    fs::write(src.join("locked/f"), b"x").unwrap();
    sh(&format!(
        "chmod 700 {0}/locked && chmod 755 {0} && chmod 777 {1}",
        src.display(),
        top.path().display()
    ));
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_starling"))
        .arg("--store")
        .arg(&store)
        .args(["image", "import"])
        .arg(&src)
        .arg("x")
        .output()
        .expect("setpriv");
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        e.contains("locked") && e.contains("ermission denied"),
        "{e}"
    );
    let ls = Command::new(env!("CARGO_BIN_EXE_starling"))
        .arg("--store")
        .arg(&store)
        .args(["image", "ls", "--json"])
        .output()
        .unwrap();
    // Either no store was made at all, or it holds no image.
    let listed = String::from_utf8_lossy(&ls.stdout);
    let lerr = String::from_utf8_lossy(&ls.stderr);
    assert!(
        listed.trim() == "[]" || lerr.contains("no Starling store"),
        "{listed}{lerr}"
    );
}

#[test]
fn store_from_the_future_is_refused() {
    let env = seeded();
    fs::write(env.store.join("starling-store"), "starling-store 9\n").unwrap();
    let e = env.fails(&["image", "ls"]);
    assert!(e.contains("version 9"), "{e}");
}

/// Export destinations say what they get: an extension no format has is refused (not turned
/// into a directory named out.tar.xz), an existing file is replaced only with --force, and an
/// archive is never written to a terminal.
#[test]
fn export_destinations_are_explicit() {
    let env = seeded();
    for name in ["out.tar.xz", "out.zip"] {
        let dest = env.path(name);
        let e = env.fails(&["image", "export", "seed", s(&dest)]);
        assert!(
            e.contains("no format has the extension")
                && e.contains("--format")
                && e.contains(".tar.zst"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "one line: {e}");
        assert!(!dest.exists(), "{} was created", dest.display());
    }
    // Named explicitly, any name will do.
    let odd = env.path("tree.v1");
    env.ok(&["image", "export", "seed", s(&odd), "--format", "dir"]);
    assert!(odd.join("f").is_file());

    // An existing file is kept unless --force.
    let disk = env.path("mine.ext4");
    fs::write(&disk, b"mine").unwrap();
    let e = env.fails(&["image", "export", "seed", s(&disk)]);
    assert!(e.contains("mine.ext4 exists; give --force"), "{e}");
    assert_eq!(fs::read(&disk).unwrap(), b"mine");
    let tar = env.path("out.tar");
    env.ok(&["image", "export", "seed", s(&tar)]);
    let e = env.fails(&["image", "export", "seed", s(&tar)]);
    assert!(e.contains("out.tar exists; give --force"), "{e}");
    fs::write(&tar, b"stale").unwrap();
    env.ok(&["image", "export", "seed", s(&tar), "--force"]);
    assert!(tool("tar", &["-tf", s(&tar)])
        .lines()
        .any(|l| l.trim_start_matches("./") == "f"));
    // A directory where a file format was asked for.
    let dir = env.path("d.qcow2");
    fs::create_dir(&dir).unwrap();
    let e = env.fails(&["image", "export", "seed", s(&dir)]);
    assert!(e.contains("d.qcow2 is a directory"), "{e}");

    // Standard output that is a terminal (script(1) gives the command one).
    if !have("script") {
        skip("script (bsdutils) missing: the terminal case is not tried");
        return;
    }
    let cmd = format!(
        "{} --store {} image export seed -",
        env!("CARGO_BIN_EXE_starling"),
        s(&env.store)
    );
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("not writing an archive to a terminal") && out.len() < 1000,
        "{out}"
    );
}
