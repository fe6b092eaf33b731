//! Disk images in and out: ext4 (raw, qcow2, partitioned, with backing files) read without
//! mounting, and ext4/qcow2/EROFS written so that the format owners' tools (e2fsck, qemu-img
//! check, fsck.erofs) accept them and the host kernel mounts the same tree.

mod common;

use std::fs;
use std::process::Command;

use common::*;

#[test]
fn torture_tree_to_ext4_and_qcow2_and_back() {
    require_tool("e2fsck", "e2fsprogs");
    require_tool("qemu-img", "qemu-utils");
    let env = Env::new();
    let src = env.path("src");
    torture_tree(&src, true);
    env.ok(&["image", "import", s(&src), "t:v1"]);

    let ext4 = env.path("t.ext4");
    env.ok(&["image", "export", "t:v1", s(&ext4)]);
    tool("e2fsck", &["-fn", s(&ext4)]);
    if let Some(m) = Mount::loop_ro(&ext4, "ext4") {
        assert_same_tree_except(&src, m.path(), &["lost+found"]);
    }
    // Reading it back without the kernel gives the very same manifest.
    env.ok(&["image", "import", s(&ext4), "t:from-ext4"]);
    assert_eq!(root_tree(&env, "t:v1"), root_tree(&env, "t:from-ext4"));

    let q = env.path("t.qcow2");
    env.ok(&["image", "export", "t:v1", s(&q), "--size", "256M"]);
    tool("qemu-img", &["check", s(&q)]);
    let info = tool("qemu-img", &["info", "--output=json", s(&q)]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 256u64 << 20);
    env.ok(&["image", "import", s(&q), "t:from-qcow2"]);
    assert_eq!(root_tree(&env, "t:v1"), root_tree(&env, "t:from-qcow2"));
    // The kernel cannot mount qcow2 itself (no nbd module here): qemu-img turns it back into
    // raw, and the kernel mounts that.
    let back = env.path("back.raw");
    tool(
        "qemu-img",
        &["convert", "-f", "qcow2", "-O", "raw", s(&q), s(&back)],
    );
    if let Some(m) = Mount::loop_ro(&back, "ext4") {
        assert_same_tree_except(&src, m.path(), &["lost+found"]);
    }
    let out = env.path("out");
    env.ok(&["image", "export", "t:from-qcow2", s(&out)]);
    assert_same_tree(&src, &out);
    env.fsck_clean();
}

#[test]
fn erofs_export_is_clean_and_mounts() {
    require_tool("mkfs.erofs", "erofs-utils");
    if !is_root() {
        skip("EROFS export stages a tree with owners and devices: needs root");
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    torture_tree(&src, true);
    // erofs-utils 1.5 (Debian 12) truncates 255-byte names and follows symlinks when reading
    // xattrs; Starling refuses such trees with a clear error rather than write a wrong image.
    env.ok(&["image", "import", s(&src), "t:with-long-name"]);
    let e = env.fails(&[
        "image",
        "export",
        "t:with-long-name",
        s(&env.path("no.erofs")),
    ]);
    assert!(
        e.contains("255-byte name") || e.contains("symlink with xattrs"),
        "{e}"
    );
    for e in fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        if e.file_name().len() >= 255 {
            fs::remove_file(e.path()).unwrap();
        }
    }
    env.ok(&["image", "import", s(&src), "t:with-symlink-xattr"]);
    let e = env.fails(&[
        "image",
        "export",
        "t:with-symlink-xattr",
        s(&env.path("no.erofs")),
    ]);
    assert!(
        e.contains("link-abs") && e.contains("symlink with xattrs"),
        "{e}"
    );
    assert!(!env.path("no.erofs").exists());
    xattr::remove(src.join("link-abs"), "trusted.on-symlink").unwrap();
    env.ok(&["image", "import", s(&src), "t:v1"]);
    let img = env.path("t.erofs");
    env.ok(&["image", "export", "t:v1", s(&img)]);
    tool("fsck.erofs", &[s(&img)]);
    if let Some(m) = Mount::loop_ro(&img, "erofs") {
        assert_same_tree(&src, m.path());
    }
}

#[test]
fn debian_disks_raw_qcow2_partitioned_and_backed() {
    require_tool("mkfs.ext4", "e2fsprogs");
    require_tool("qemu-img", "qemu-utils");
    require_tool("sfdisk", "fdisk");
    let Some((rootfs_a, _)) = debian_rootfs() else {
        return;
    };
    let env = Env::new();
    // Real inputs made by the real tools.
    let raw = env.path("a.ext4");
    tool("mkfs.ext4", &["-q", "-d", s(&rootfs_a), s(&raw), "400M"]);
    let qcow = env.path("a.qcow2");
    tool(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "qcow2", s(&raw), s(&qcow)],
    );
    let gpt = env.path("gpt.img");
    let mbr = env.path("mbr.img");
    for (disk, script) in [
        (&gpt, "label: gpt\nsize=8MiB, type=21686148-6449-6E6F-744E-656564454649\ntype=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709\n"),
        (&mbr, "label: dos\nsize=8MiB, type=c\ntype=83\n"),
    ] {
        fs::File::create(disk).unwrap().set_len(420 << 20).unwrap();
        let mut child = Command::new("sfdisk")
            .arg("-q")
            .arg(disk)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success());
        let start = tool("sfdisk", &["-J", s(disk)]);
        let j: serde_json::Value = serde_json::from_str(&start).unwrap();
        let p2 = j["partitiontable"]["partitions"][1]["start"].as_u64().unwrap();
        tool("dd", &[&format!("if={}", s(&raw)), &format!("of={}", s(disk)), "bs=512",
            &format!("seek={p2}"), "conv=notrunc,sparse", "status=none"]);
    }
    let over = env.path("over.qcow2");
    qcow2_over(&qcow, "qcow2", &over);

    env.ok(&["image", "import", s(&raw), "deb:raw"]);
    let root = root_tree(&env, "deb:raw");
    // A backing file is a file of this host the image's maker named: read only when asked.
    let e = env.fails(&["image", "import", s(&over), "deb:backed"]);
    assert!(
        e.contains("backing file") && e.contains(s(&qcow)) && e.contains("--allow-backing"),
        "{e}"
    );
    for (img, tag) in [
        (&qcow, "qcow2"),
        (&gpt, "gpt"),
        (&mbr, "mbr"),
        (&over, "backed"),
    ] {
        let j: serde_json::Value = serde_json::from_str(&env.ok(&[
            "image",
            "import",
            "--json",
            "--allow-backing",
            s(img),
            &format!("deb:{tag}"),
        ]))
        .unwrap();
        assert_eq!(root_tree(&env, &format!("deb:{tag}")), root, "{tag}");
        // The same file system in another container adds only the commit.
        assert_eq!(j["new_objects"], 1, "{tag}: {j}");
    }
    let src: serde_json::Value =
        serde_json::from_str(&env.ok(&["image", "inspect", "--json", "deb:gpt"])).unwrap();
    assert!(
        src["source"].as_str().unwrap().contains("partition2"),
        "{src}"
    );

    // The kernel's view of the mkfs image is the judge of what was read.
    let out = env.path("out");
    env.ok(&["image", "export", "deb:raw", s(&out)]);
    if let Some(m) = Mount::loop_ro(&raw, "ext4") {
        assert_same_tree_except(m.path(), &out, &["lost+found"]);
    }

    // ext4 → store → ext4: the kernel sees the same tree in the original and in the export.
    let again = env.path("again.ext4");
    env.ok(&["image", "export", "deb:gpt", s(&again)]);
    tool("e2fsck", &["-fn", s(&again)]);
    if let (Some(m1), Some(m2)) = (Mount::loop_ro(&raw, "ext4"), Mount::loop_ro(&again, "ext4")) {
        assert_same_tree_except(m1.path(), m2.path(), &["lost+found"]);
    }

    // Wrong partition, and a backing file that went missing: clear errors, nothing stored.
    let before = env.ok(&["image", "ls", "--json"]);
    let e = env.fails(&["image", "import", "--partition", "1", s(&gpt), "deb:p1"]);
    assert!(e.contains("ext2/3/4"), "{e}");
    let e = env.fails(&["image", "import", "--partition", "9", s(&gpt), "deb:p9"]);
    assert!(e.contains("no partition 9") && e.contains("2 ("), "{e}");
    fs::rename(&qcow, env.path("moved.qcow2")).unwrap();
    let e = env.fails(&["image", "import", "--allow-backing", s(&over), "deb:orphan"]);
    assert!(e.contains("a.qcow2"), "names the missing backing file: {e}");
    assert_eq!(env.ok(&["image", "ls", "--json"]), before);
    env.fsck_clean();
}

#[test]
fn bad_disk_images_are_refused_and_store_untouched() {
    let env = Env::new();
    let src = env.path("src");
    torture_tree(&src, false);
    env.ok(&["image", "import", s(&src), "t:v1"]);
    let good = env.path("good.ext4");
    env.ok(&["image", "export", "t:v1", s(&good)]);
    let bytes = fs::read(&good).unwrap();
    let before = env.ok(&["image", "ls", "--json"]);

    let cut = env.path("cut.ext4");
    fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let e = env.fails(&["image", "import", s(&cut), "bad:cut"]);
    assert!(e.contains("truncated") || e.contains("past the end"), "{e}");

    let junk = env.path("junk.img");
    fs::write(&junk, vec![0x5au8; 1 << 20]).unwrap();
    let e = env.fails(&["image", "import", "--format", "disk", s(&junk), "bad:junk"]);
    assert!(e.contains("no partition table and no ext2/3/4"), "{e}");

    let mut sb = bytes.clone();
    sb[1024 + 24] = 40; // block size 2^40 KiB
    let badsb = env.path("badsb.ext4");
    fs::write(&badsb, &sb).unwrap();
    let e = env.fails(&["image", "import", s(&badsb), "bad:sb"]);
    assert!(e.contains("superblock is corrupt"), "{e}");

    // A qcow2 cut short anywhere in what it maps is refused by name, never imported with
    // zeros where the missing clusters were.
    let goodq = env.path("good.qcow2");
    env.ok(&["image", "export", "t:v1", s(&goodq)]);
    let qbytes = fs::read(&goodq).unwrap();
    for share in [40, 70, 95] {
        let cutq = env.path(&format!("cut{share}.qcow2"));
        fs::write(&cutq, &qbytes[..qbytes.len() * share / 100]).unwrap();
        let e = env.fails(&["image", "import", s(&cutq), "bad:cutq"]);
        assert!(
            e.contains("qcow2") && e.contains("truncated") && e.contains(&format!("cut{share}")),
            "cut to {share}%: {e}"
        );
    }

    let mut q = b"QFI\xfb".to_vec();
    q.resize(4096, 0xff);
    let badq = env.path("bad.qcow2");
    fs::write(&badq, &q).unwrap();
    let e = env.fails(&["image", "import", s(&badq), "bad:q"]);
    assert!(e.contains("qcow2"), "{e}");

    // A qcow2 whose header names a file of this host (a backing file, an external data
    // file) as its content: refused unless asked, the name said.
    require_tool("qemu-img", "qemu-utils");
    let secret = env.path("secret.raw");
    fs::copy(&good, &secret).unwrap();
    let steal = env.path("steal.qcow2");
    qcow2_over(&secret, "raw", &steal);
    let e = env.fails(&["image", "import", s(&steal), "bad:steal"]);
    assert!(
        e.contains("the backing file") && e.contains("secret.raw") && e.contains("--allow-backing"),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
    let data = env.path("data.qcow2");
    let data_file = format!("data_file={}", s(&env.path("data.raw")));
    qcow2_create(&["-o", &data_file, s(&data), "64M"]);
    let e = env.fails(&["image", "import", s(&data), "bad:data"]);
    assert!(
        e.contains("an external data file") && e.contains("--allow-backing"),
        "{e}"
    );

    assert_eq!(env.ok(&["image", "ls", "--json"]), before);
    env.fsck_clean();

    let e = env.fails(&[
        "image",
        "export",
        "t:v1",
        s(&env.path("x.ext4")),
        "--size",
        "1M",
    ]);
    assert!(e.contains("too small"), "{e}");
    assert!(
        !env.path("x.ext4").exists(),
        "a failed export leaves no file"
    );
}

/// A qcow2 image at `out` over the backing file `backing` (of format `format`), by qemu-img.
fn qcow2_over(backing: &std::path::Path, format: &str, out: &std::path::Path) {
    qcow2_create(&["-b", s(backing), "-F", format, s(out)]);
}

/// `qemu-img create -f qcow2 ARGS…`.
fn qcow2_create(args: &[&str]) {
    let mut all = vec!["create", "-q", "-f", "qcow2"];
    all.extend_from_slice(args);
    tool("qemu-img", &all);
}
