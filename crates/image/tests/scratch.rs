//! A VM's scratch disk: written fresh by Starling (e2fsck judges it), changed the way a guest
//! changes it (the host kernel stands in for the guest: files put, a whiteout, an opaque
//! directory), and committed by Starling's own ext4 reader with overlayfs' rules.

use std::process::Command;

use starling_image::browse::Browser;
use starling_image::chunk::Progress;
use starling_image::import::{import, ImportOptions};
use starling_image::manifest::{Commit, Node};
use starling_image::scratch;
use starling_store::Store;

fn sh(cmd: &str) {
    let s = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(s.success(), "{cmd}");
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[test]
fn a_scratch_disk_is_clean_and_its_upper_layer_commits_like_an_overlay() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("src");
    std::fs::create_dir_all(src.join("etc/keep")).unwrap();
    std::fs::create_dir_all(src.join("opaque/old")).unwrap();
    std::fs::write(src.join("etc/hostname"), "base\n").unwrap();
    std::fs::write(src.join("etc/gone"), "bye\n").unwrap();
    std::fs::write(src.join("opaque/old/file"), "x").unwrap();
    let store = Store::open_or_init(d.join("store")).unwrap();
    let base = import(
        &store,
        &ImportOptions {
            source: &src,
            format: None,
            name: "img",
            tag: "v1",
            labels: Default::default(),
            chunking: Default::default(),
            partition: None,
            allow_backing: false,
        },
        &Progress::default(),
    )
    .unwrap()
    .version;
    let commit = Commit::decode(&base, &store.get(&base).unwrap()).unwrap();

    let disk = d.join("scratch.img");
    scratch::create(
        &disk,
        256 << 20,
        &commit.root_meta,
        &[("cmd", b"echo hi\0")],
    )
    .unwrap();
    assert!(std::fs::metadata(&disk).unwrap().len() == 256 << 20);
    let fsck = Command::new("e2fsck").args(["-fn"]).arg(&disk).output();
    match fsck {
        Ok(o) => assert!(
            o.status.success(),
            "e2fsck: {}",
            String::from_utf8_lossy(&o.stdout)
        ),
        Err(_) => starling_testkit::skip("e2fsck (e2fsprogs) is not installed"),
    }
    if !is_root() {
        starling_testkit::skip(
            "changing the scratch disk as a guest would needs root (loop mount)",
        );
        return;
    }
    // The host kernel plays the guest: an overlay change set in /upper.
    let mnt = d.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    sh(&format!(
        "mount -o loop {} {}",
        disk.display(),
        mnt.display()
    ));
    let up = mnt.join("upper");
    let result = std::panic::catch_unwind(|| {
        assert_eq!(
            std::fs::read(mnt.join("starling/cmd")).unwrap(),
            b"echo hi\0"
        );
        sh(&format!(
            "mkdir -p {u}/etc {u}/new/deep {u}/opaque && echo changed > {u}/etc/hostname \
             && echo fresh > {u}/new/deep/file && ln {u}/new/deep/file {u}/new/link \
             && mknod {u}/etc/gone c 0 0 && setfattr -n trusted.overlay.opaque -v y {u}/opaque \
             && echo only > {u}/opaque/only",
            u = up.display()
        ));
    });
    sh(&format!("umount {}", mnt.display()));
    result.unwrap();

    let r = scratch::commit(&store, &base, &disk, "img", "v2", "test").unwrap();
    let c2 = Commit::decode(&r.version, &store.get(&r.version).unwrap()).unwrap();
    assert_eq!(c2.parent, Some(base));
    let mut b = Browser::new(&store);
    let read = |b: &mut Browser, p: &str| b.read_path(&c2.root, p, 1 << 20).unwrap();
    assert_eq!(read(&mut b, "/etc/hostname").unwrap(), b"changed\n");
    assert_eq!(read(&mut b, "/new/deep/file").unwrap(), b"fresh\n");
    assert_eq!(
        read(&mut b, "/new/link").unwrap(),
        b"fresh\n",
        "a hard link in the layer"
    );
    assert!(
        read(&mut b, "/etc/gone").is_none(),
        "the whiteout removed it"
    );
    assert!(b.lookup(&c2.root, b"/etc/keep", false).unwrap().is_some());
    assert!(
        read(&mut b, "/opaque/old/file").is_none(),
        "the opaque directory hid it"
    );
    assert_eq!(read(&mut b, "/opaque/only").unwrap(), b"only\n");
    match b.lookup(&c2.root, b"/opaque", false).unwrap() {
        Some(Node::Dir { meta, .. }) => assert!(
            meta.xattrs
                .iter()
                .all(|x| !x.name.starts_with(b"trusted.overlay.")),
            "overlayfs' own attributes are not kept"
        ),
        other => panic!("/opaque: {other:?}"),
    }
    // A disk that is not a scratch disk is refused by name.
    let other = d.join("plain.img");
    Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&other)
        .arg("8M")
        .status()
        .unwrap();
    let e = scratch::commit(&store, &base, &other, "img", "v3", "t")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a Starling scratch disk"), "{e}");
}
