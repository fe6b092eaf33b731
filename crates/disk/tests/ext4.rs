//! The ext4 writer judged by e2fsck, and read back by the reader.

use std::io::Read;
use std::process::Command;
use std::sync::Arc;

use starling_disk::device::RawDev;
use starling_disk::ext4::{makedev, Ext4, Ext4Builder, NewInode, NewKind, WriteOptions};

fn node(kind: NewKind, perm: u32) -> NewInode {
    NewInode {
        kind,
        perm,
        uid: 1000,
        gid: 70000,
        mtime_sec: 1_600_000_000,
        mtime_nsec: 123_456_789,
        xattrs: Vec::new(),
    }
}

fn content(ino: u32, size: u64) -> Vec<u8> {
    (0..size)
        .map(|i| ((i * 31 + ino as u64) % 251) as u8)
        .collect()
}

fn e2fsck(path: &std::path::Path) {
    match Command::new("e2fsck").arg("-fn").arg(path).output() {
        Ok(o) => assert!(
            o.status.success(),
            "e2fsck -fn failed:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => starling_testkit::skip(&format!(
            "the e2fsck check: e2fsck not runnable ({e}); install e2fsprogs"
        )),
    }
}

#[test]
fn written_fs_is_clean_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fs.img");
    let mut b = Ext4Builder::new(node(NewKind::Dir, 0o755)).unwrap();
    let etc = b.add(2, b"etc", node(NewKind::Dir, 0o755)).unwrap();
    let mut f = node(NewKind::File { size: 10_000 }, 0o4755);
    f.xattrs = vec![(
        b"security.capability".to_vec(),
        vec![
            1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    )];
    let f1 = b.add(etc, b"passwd", f).unwrap();
    b.link(2, b"hard", f1).unwrap();
    let mut big = node(NewKind::File { size: 300 << 20 }, 0o644);
    big.xattrs = (0..20)
        .map(|i| (format!("user.attr{i}").into_bytes(), vec![i as u8; 100]))
        .collect();
    let fbig = b.add(2, b"big", big).unwrap();
    b.add(2, b"empty", node(NewKind::File { size: 0 }, 0o600))
        .unwrap();
    b.add(
        2,
        b"short",
        node(NewKind::Symlink(b"etc/passwd".to_vec()), 0o777),
    )
    .unwrap();
    b.add(2, b"long", node(NewKind::Symlink(vec![b'x'; 300]), 0o777))
        .unwrap();
    b.add(2, b"null", node(NewKind::CharDevice(makedev(1, 3)), 0o666))
        .unwrap();
    b.add(
        2,
        b"nvme",
        node(NewKind::BlockDevice(makedev(259, 300)), 0o660),
    )
    .unwrap();
    b.add(2, b"fifo", node(NewKind::Fifo, 0o644)).unwrap();
    b.add(2, b"sock", node(NewKind::Socket, 0o755)).unwrap();
    let many = b.add(2, b"many", node(NewKind::Dir, 0o1777)).unwrap();
    for i in 0..2000 {
        b.add(
            many,
            format!("file-with-a-longish-name-{i:05}").as_bytes(),
            node(NewKind::File { size: 3 }, 0o644),
        )
        .unwrap();
    }
    let opts = WriteOptions {
        size: None,
        uuid: [7; 16],
        label: "test".into(),
        time: 1_700_000_000,
    };
    let mut sizes = std::collections::HashMap::new();
    let report = b
        .write(&img, &opts, &mut |ino, sink| {
            let size = if ino == fbig {
                300 << 20
            } else if ino == f1 {
                10_000
            } else {
                3
            };
            sizes.insert(ino, size);
            // Zeros in the middle of the big file become holes.
            let data = if ino == fbig {
                vec![0u8; size as usize]
            } else {
                content(ino, size)
            };
            for piece in data.chunks(65536) {
                sink(piece)?;
            }
            Ok(())
        })
        .unwrap();
    assert!(report.size >= 300 << 20);
    e2fsck(&img);
    if let Ok(keep) = std::env::var("STARLING_KEEP_EXT4") {
        std::fs::copy(&img, keep).unwrap();
    }

    let fs = Ext4::open(Arc::new(
        RawDev::new(std::fs::File::open(&img).unwrap()).unwrap(),
    ))
    .unwrap();
    let root = fs.root().unwrap();
    let names: Vec<Vec<u8>> = fs
        .read_dir(&root)
        .unwrap()
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(names.len(), 12, "{names:?}");
    let ents: std::collections::BTreeMap<_, _> = fs.read_dir(&root).unwrap().into_iter().collect();
    let p = fs.inode(ents[&b"hard".to_vec()]).unwrap();
    assert_eq!(p.ino, f1);
    assert_eq!((p.perm(), p.uid, p.gid, p.links), (0o4755, 1000, 70000, 2));
    assert_eq!((p.mtime_sec, p.mtime_nsec), (1_600_000_000, 123_456_789));
    let mut data = Vec::new();
    fs.file_reader(&p).unwrap().read_to_end(&mut data).unwrap();
    assert_eq!(data, content(f1, 10_000));
    assert_eq!(fs.xattrs(&p).unwrap()[0].0, b"security.capability");
    let bigi = fs.inode(fbig).unwrap();
    assert_eq!(fs.xattrs(&bigi).unwrap().len(), 20);
    let mut n = 0u64;
    let mut r = fs.file_reader(&bigi).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = r.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        assert!(buf[..k].iter().all(|&x| x == 0));
        n += k as u64;
    }
    assert_eq!(n, 300 << 20);
    assert_eq!(
        fs.read_link(&fs.inode(ents[&b"short".to_vec()]).unwrap())
            .unwrap(),
        b"etc/passwd"
    );
    assert_eq!(
        fs.read_link(&fs.inode(ents[&b"long".to_vec()]).unwrap())
            .unwrap(),
        vec![b'x'; 300]
    );
    assert_eq!(
        fs.inode(ents[&b"nvme".to_vec()]).unwrap().rdev(),
        makedev(259, 300)
    );
    assert_eq!(
        fs.inode(ents[&b"null".to_vec()]).unwrap().rdev(),
        makedev(1, 3)
    );
    assert_eq!(fs.read_dir(&fs.inode(many).unwrap()).unwrap().len(), 2000);
    // The output is sparse: the 300 MiB of zeros take no space.
    let used = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&img).unwrap()) * 512;
    assert!(used < 20 << 20, "image uses {used} bytes on disk");
}

#[test]
fn too_small_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fs.img");
    let mut b = Ext4Builder::new(node(NewKind::Dir, 0o755)).unwrap();
    b.add(2, b"f", node(NewKind::File { size: 64 << 20 }, 0o644))
        .unwrap();
    let opts = WriteOptions {
        size: Some(16 << 20),
        uuid: [0; 16],
        label: String::new(),
        time: 0,
    };
    let e = b
        .write(&img, &opts, &mut |_, _| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("too small"), "{e}");
}
