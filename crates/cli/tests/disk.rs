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

/// What a damaged image came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Read {
    Refused,
    /// The tree from before the damage: nothing read was hit.
    Same,
    /// Another tree, equal to what debugfs extracts, from a file system e2fsck finds clean
    /// (a file's data block damaged: the file system is consistent, the file's bytes differ).
    AsDebugfsReads,
}

/// Paths (top-level lost+found left out) → kind and content, as the tree holds them.
fn contents(root: &std::path::Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if rel == std::path::Path::new("lost+found") {
                continue;
            }
            let ft = fs::symlink_metadata(&p).unwrap().file_type();
            let v = if ft.is_dir() {
                stack.push(p.clone());
                b"dir".to_vec()
            } else if ft.is_symlink() {
                let mut v = b"link:".to_vec();
                v.extend(fs::read_link(&p).unwrap().as_os_str().as_encoded_bytes());
                v
            } else if ft.is_file() {
                let mut v = b"file:".to_vec();
                v.extend(fs::read(&p).unwrap());
                v
            } else {
                b"other".to_vec()
            };
            out.insert(rel, v);
        }
    }
    out
}

/// Issue 18's damaged-disk campaign. A small ext4 as mkfs and e2fsck make it (1 KiB blocks,
/// metadata_csum, an htree directory, extent tree and xattr blocks, slow and fast symlinks,
/// a hard link) is damaged one way at a time: every block that holds anything zeroed; one
/// byte flipped in every block whose zeroing was noticed; the image, and its qcow2, cut short
/// at many offsets. Each must be refused in one line that names the image (and the path
/// inside it when an entry is hit), or read as the format's own tools read it: the tree from
/// before the damage, or — only where `e2fsck -fn` finds the file system clean — the tree
/// `debugfs rdump` extracts. A file system e2fsck finds clean is never refused (but one cut
/// short always is, as the kernel refuses to mount it). The store checks clean at the end.
#[test]
fn damaged_ext4_is_refused_or_read_as_e2fsprogs_reads_it() {
    for (t, p) in [
        ("mkfs.ext4", "e2fsprogs"),
        ("e2fsck", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
        ("qemu-img", "qemu-utils"),
    ] {
        require_tool(t, p);
    }
    let env = Env::new();
    let src = env.path("src");
    for d in ["big", "data", "links", "a/b/c/d"] {
        fs::create_dir_all(src.join(d)).unwrap();
    }
    // 5 blocks of entries: an htree directory once e2fsck -D indexes it. Empty files: no
    // data blocks to zero, one by one, to no further purpose.
    for i in 0..150 {
        fs::write(
            src.join(format!("big/an-entry-with-a-long-name-{i:03}")),
            b"",
        )
        .unwrap();
    }
    fs::write(src.join("data/medium"), pseudo_random(20_000, 7)).unwrap();
    xattr::set(src.join("data/medium"), "user.note", &[b'v'; 600]).unwrap();
    fs::hard_link(src.join("data/medium"), src.join("data/hard")).unwrap();
    // One byte every 8 KiB: 64 extents, more than an inode holds (an extent tree block).
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::File::create(src.join("data/sparse")).unwrap();
        for i in 0..64u64 {
            f.seek(SeekFrom::Start(i * 8192)).unwrap();
            f.write_all(b"x").unwrap();
        }
    }
    std::os::unix::fs::symlink("t".repeat(100), src.join("links/slow")).unwrap();
    std::os::unix::fs::symlink("short", src.join("links/fast")).unwrap();
    fs::write(src.join("a/b/c/d/file"), b"deep\n").unwrap();

    let raw = env.path("fs.ext4");
    // The same bytes every run: a fixed UUID, hash seed and time.
    let args = [
        "-q",
        "-b",
        "1024",
        "-N",
        "512",
        "-O",
        "metadata_csum",
        "-U",
        "6e0a4c1b-5a3d-4f7e-9b2c-0d1e2f3a4b5c",
        "-E",
        "hash_seed=0b9c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3",
        "-d",
    ];
    let mut mkfs = args.to_vec();
    mkfs.extend([s(&src), s(&raw), "4M"]);
    let fake_time = ("E2FSPROGS_FAKE_TIME", "1700000000");
    let o = Command::new("mkfs.ext4")
        .args(&mkfs)
        .env(fake_time.0, fake_time.1)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Index the directories, as on a file system that has lived (exit 1: it changed them).
    let _ = Command::new("e2fsck")
        .args(["-fyD", s(&raw)])
        .env(fake_time.0, fake_time.1)
        .output();
    tool("e2fsck", &["-fn", s(&raw)]);
    env.ok(&["image", "import", s(&raw), "d:orig"]);
    let orig_tree = root_tree(&env, "d:orig");
    let orig = fs::read(&raw).unwrap();
    let qcow = env.path("fs.qcow2");
    tool(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "qcow2", s(&raw), s(&qcow)],
    );
    let qcow_bytes = fs::read(&qcow).unwrap();

    let mut n = 0usize;
    let mut tally = std::collections::BTreeMap::<(&str, bool, Read), usize>::new();
    // Imports `bytes` as damaged image `file`; judges the outcome against e2fsprogs (for the
    // raw image) and returns it.
    let mut judge = |how: &'static str, file: &str, bytes: &[u8]| -> Read {
        n += 1;
        let img = env.path(file);
        fs::write(&img, bytes).unwrap();
        // Cut short, the kernel refuses to mount it (the device is smaller than the file
        // system), while e2fsck -fn passes one whose cut-off part held nothing.
        let clean = how != "raw cut short"
            && file.ends_with(".ext4")
            && Command::new("e2fsck")
                .args(["-fn", s(&img)])
                .output()
                .unwrap()
                .status
                .success();
        let tag = format!("d:c{n}");
        let out = env.run(&["image", "import", s(&img), &tag]);
        let read = if !out.status.success() {
            let e = String::from_utf8_lossy(&out.stderr).trim().to_string();
            assert!(!e.contains('\n') && e.contains(file), "{how}: {e}");
            assert!(
                !e.contains("inode") || e.contains("in the image"),
                "{how}: an entry's damage does not name its path: {e}"
            );
            assert!(
                !clean,
                "{how}: e2fsck finds it clean, Starling refused it: {e}"
            );
            Read::Refused
        } else if root_tree(&env, &tag) == orig_tree {
            Read::Same
        } else {
            assert!(
                clean,
                "{how}: Starling read another tree without a word, from an image {}",
                if file.ends_with(".ext4") {
                    "e2fsck finds damaged"
                } else {
                    "cut short"
                }
            );
            let (ours, theirs) = (env.path("ours"), env.path("theirs"));
            let _ = fs::remove_dir_all(&ours);
            let _ = fs::remove_dir_all(&theirs);
            env.ok(&["image", "export", &tag, s(&ours)]);
            fs::create_dir(&theirs).unwrap();
            tool(
                "debugfs",
                &["-R", &format!("rdump / {}", s(&theirs)), s(&img)],
            );
            assert!(
                contents(&ours) == contents(&theirs),
                "{how}: Starling and debugfs read different trees"
            );
            Read::AsDebugfsReads
        };
        *tally.entry((how, clean, read)).or_default() += 1;
        read
    };

    const BS: usize = 1024;
    let mut noticed = Vec::new();
    for (b, block) in orig.chunks(BS).enumerate() {
        if block.iter().all(|&x| x == 0) {
            continue;
        }
        let mut d = orig.clone();
        d[b * BS..(b + 1) * BS].fill(0);
        if judge("block zeroed", "zeroed.ext4", &d) != Read::AsDebugfsReads {
            noticed.push(b);
        }
    }
    for &b in &noticed {
        let block = &orig[b * BS..(b + 1) * BS];
        let nonzero: Vec<usize> = (0..BS).filter(|&i| block[i] != 0).collect();
        let mut d = orig.clone();
        d[b * BS + nonzero[nonzero.len() / 2]] ^= 1;
        judge("byte flipped", "flipped.ext4", &d);
    }
    for i in 1..24 {
        let cut = orig.len() * i / 24;
        assert_eq!(
            judge("raw cut short", "cut.ext4", &orig[..cut]),
            Read::Refused
        );
    }
    for i in 1..48 {
        let cut = qcow_bytes.len() * i / 48;
        let r = judge("qcow2 cut short", "cut.qcow2", &qcow_bytes[..cut]);
        assert!(r != Read::AsDebugfsReads, "qcow2 cut at {cut}: {r:?}");
    }
    eprintln!("{n} damaged images: {tally:?}");
    let get = |how, clean, read| tally.get(&(how, clean, read)).copied().unwrap_or(0);
    // The campaign reached what it is for: metadata damage refused, data damage read.
    assert!(get("block zeroed", false, Read::Refused) >= 50, "{tally:?}");
    assert!(get("byte flipped", false, Read::Refused) >= 50, "{tally:?}");
    assert!(
        get("block zeroed", true, Read::AsDebugfsReads) >= 20,
        "{tally:?}"
    );
    env.fsck_clean();
}
