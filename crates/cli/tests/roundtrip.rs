//! Fidelity: export(import(tree)) reproduces the tree exactly, judged by bsdtar's mtree listing
//! (ns mtimes, sha256 of content, modes, owners, link targets, devices, link counts) and
//! getfattr dumps, on a torture tree and on a real Debian rootfs.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;

use common::*;

#[test]
fn torture_tree_dir_round_trip() {
    let env = Env::new();
    let src = env.path("src");
    torture_tree(&src, true);
    let id = env.ok(&["image", "import", src.to_str().unwrap(), "torture:v1"]);
    assert_eq!(id.trim().len(), 64, "import prints the version id: {id:?}");
    let out = env.path("out");
    env.ok(&["image", "export", "torture:v1", out.to_str().unwrap()]);
    assert_same_tree(&src, &out);
    // Sparse files come back sparse, not just equal.
    let md = fs::metadata(out.join("sparse")).unwrap();
    assert!(
        md.blocks() * 512 < md.len() / 2,
        "sparse file exported dense: {} blocks",
        md.blocks()
    );
    // Export by version prefix gives the same tree.
    let out2 = env.path("out2");
    env.ok(&[
        "image",
        "export",
        &format!("torture@{}", &id.trim()[..10]),
        out2.to_str().unwrap(),
    ]);
    assert_same_tree(&src, &out2);
    env.fsck_clean();
}

#[test]
fn torture_tree_tar_export_read_by_gnu_tar() {
    let env = Env::new();
    let src = env.path("src");
    torture_tree(&src, false);
    env.ok(&["image", "import", src.to_str().unwrap(), "torture"]);
    for ext in ["tar", "tar.gz", "tar.zst"] {
        let archive = env.path(&format!("out.{ext}"));
        env.ok(&["image", "export", "torture", archive.to_str().unwrap()]);
        let x = env.path(&format!("x-{ext}"));
        fs::create_dir(&x).unwrap();
        let z = match ext {
            "tar.gz" => "-z",
            "tar.zst" => "--zstd",
            _ => "",
        };
        sh(&format!(
            "tar {z} --xattrs --xattrs-include='*' --numeric-owner -xpf {} -C {}",
            archive.display(),
            x.display()
        ));
        assert_same_tree(&src, &x);
    }
}

#[test]
fn tar_import_from_gnu_tar_plain_gzip_zstd_and_sparse() {
    let env = Env::new();
    let src = env.path("src");
    torture_tree(&src, false);
    // GNU tar's POSIX format carries ns mtimes and xattrs; its old GNU format carries sparse maps.
    sh(&format!(
        "cd {0} && tar --xattrs --xattrs-include='*' --format=posix -cf ../posix.tar . \
         && gzip -k ../posix.tar && zstd -q -k ../posix.tar -o ../posix.tar.zst \
         && tar --sparse --format=gnu -cf ../gnu-sparse.tar sparse random-100k",
        src.display()
    ));
    for (archive, tag) in [
        ("posix.tar", "plain"),
        ("posix.tar.gz", "gz"),
        ("posix.tar.zst", "zst"),
    ] {
        env.ok(&[
            "image",
            "import",
            env.path(archive).to_str().unwrap(),
            &format!("fromtar:{tag}"),
        ]);
        let out = env.path(&format!("out-{tag}"));
        env.ok(&[
            "image",
            "export",
            &format!("fromtar:{tag}"),
            out.to_str().unwrap(),
        ]);
        assert_same_tree(&src, &out);
    }
    // The three archives hold one tree: one root tree object.
    let inspect = |t: &str| -> serde_json::Value {
        serde_json::from_str(&env.ok(&["image", "inspect", &format!("fromtar:{t}"), "--json"]))
            .unwrap()
    };
    assert_eq!(inspect("plain")["root_tree"], inspect("zst")["root_tree"]);

    env.ok(&[
        "image",
        "import",
        env.path("gnu-sparse.tar").to_str().unwrap(),
        "sparse",
    ]);
    let out = env.path("out-sparse");
    env.ok(&["image", "export", "sparse", out.to_str().unwrap()]);
    assert_eq!(
        fs::read(src.join("sparse")).unwrap(),
        fs::read(out.join("sparse")).unwrap()
    );
    assert_eq!(
        fs::read(src.join("random-100k")).unwrap(),
        fs::read(out.join("random-100k")).unwrap()
    );
}

#[test]
fn dir_and_tar_import_of_one_tree_agree() {
    let env = Env::new();
    let src = env.path("src");
    torture_tree(&src, false);
    env.ok(&["image", "import", src.to_str().unwrap(), "t:dir"]);
    let archive = env.path("t.tar");
    env.ok(&["image", "export", "t:dir", archive.to_str().unwrap()]);
    env.ok(&["image", "import", archive.to_str().unwrap(), "t:tar"]);
    let root = |t: &str| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(&env.ok(&["image", "inspect", t, "--json"]))
            .unwrap()["root_tree"]
            .clone()
    };
    assert_eq!(
        root("t:dir"),
        root("t:tar"),
        "a tar round trip changed the manifest"
    );
}

#[test]
fn debian_rootfs_round_trip() {
    let Some((rootfs, _)) = debian_rootfs() else {
        return;
    };
    let env = Env::new();
    env.ok(&[
        "image",
        "import",
        rootfs.to_str().unwrap(),
        "debian:minbase",
    ]);
    let out = env.path("out");
    env.ok(&["image", "export", "debian:minbase", out.to_str().unwrap()]);
    assert_same_tree(&rootfs, &out);
    let archive = env.path("debian.tar.zst");
    env.ok(&[
        "image",
        "export",
        "debian:minbase",
        archive.to_str().unwrap(),
    ]);
    let x = env.path("x");
    fs::create_dir(&x).unwrap();
    sh(&format!(
        "tar --zstd --xattrs --xattrs-include='*' --numeric-owner -xpf {} -C {}",
        archive.display(),
        x.display()
    ));
    assert_same_tree(&rootfs, &x);
    env.fsck_clean();
}

#[test]
fn comparator_catches_one_nanosecond_and_one_xattr() {
    let env = Env::new();
    let a = env.path("a");
    fs::create_dir(&a).unwrap();
    fs::write(a.join("f"), b"x").unwrap();
    sh(&format!(
        "touch -d '2020-01-01 00:00:00.123456789' {}/f",
        a.display()
    ));
    let b = env.path("b");
    sh(&format!("cp -a {} {}", a.display(), b.display()));
    assert_same_tree(&a, &b);
    sh(&format!(
        "touch -d '2020-01-01 00:00:00.123456788' {}/f",
        b.display()
    ));
    assert!(std::panic::catch_unwind(|| assert_same_tree(&a, &b)).is_err());
    sh(&format!(
        "touch -d '2020-01-01 00:00:00.123456789' {}/f",
        b.display()
    ));
    xattr::set(b.join("f"), "user.x", b"1").unwrap();
    assert!(std::panic::catch_unwind(|| assert_same_tree(&a, &b)).is_err());
}
