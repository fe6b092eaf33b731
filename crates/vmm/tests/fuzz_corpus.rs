//! Replays the committed virtio fuzz corpus (fuzz/corpus/virtio, see fuzz/README.md): the
//! well-formed seeds must be served as the spec says, and every seed cut short or with bytes
//! flipped must leave the device serving or broken, never the process down.

use starling_vmm::fuzzing::{virtio_queue, Outcome};

fn seed(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus/virtio")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Guest memory byte at a guest address.
fn at(o: &Outcome, addr: usize) -> u8 {
    o.memory[addr]
}

#[test]
fn well_formed_requests_are_served() {
    let o = virtio_queue(&seed("blk-read"));
    assert_eq!(o.used, vec![(0, 513)]);
    assert_eq!(at(&o, 0x5300), 0, "status OK");
    let o = virtio_queue(&seed("blk-write"));
    assert_eq!((o.used.len(), at(&o, 0x5300)), (1, 0));
    let o = virtio_queue(&seed("blk-ro-write"));
    assert_eq!(
        at(&o, 0x5300),
        1,
        "a read-only disk fails writes with IOERR"
    );
    let o = virtio_queue(&seed("blk-flush-getid"));
    assert_eq!(o.used.len(), 2);
    assert_eq!((at(&o, 0x5300), at(&o, 0x5301)), (0, 0));
    assert_eq!(
        &o.memory[0x5100..0x5106],
        b"starli",
        "get-id names the disk file"
    );
    let o = virtio_queue(&seed("blk-loop"));
    assert!(
        !o.broken && o.used.len() == 1,
        "a looping chain is cut and failed: {o:?}"
    );
    let o = virtio_queue(&seed("rng"));
    assert_eq!(o.used, vec![(0, 64), (1, 16)]);
    assert!(o.memory[0x5000..0x5040].iter().any(|&b| b != 0));
    // The guest asks to connect to a host port nobody listens on: the request is consumed
    // and the answer (RST) waits for a receive buffer.
    let o = virtio_queue(&seed("vsock-request"));
    assert_eq!(o.used, vec![(0, 0)]);
    let o = virtio_queue(&seed("vsock-bad"));
    assert!(!o.broken && o.used.len() == 1, "{o:?}");
}

#[test]
fn truncated_and_flipped_seeds_never_take_the_process_down() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/virtio");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        for cut in [0, 1, 2, 40, data.len() / 2] {
            virtio_queue(&data[..cut.min(data.len())]);
        }
        // Flip bytes in the descriptor table and the available ring.
        for (i, off) in [2usize, 10, 11, 13, 14, 0x2004, 0x2005, 0x2006]
            .iter()
            .enumerate()
        {
            let mut d = data.clone();
            if let Some(b) = d.get_mut(*off) {
                *b ^= 0xa5u8.rotate_left(i as u32);
            }
            virtio_queue(&d);
        }
        n += 1;
    }
    assert!(n >= 10, "corpus has {n} seeds");
}

/// The snapshot state decoder on its corpus (fuzz/corpus/snapshot_state): a real state's
/// payload decodes and the same cut short is refused; as a state file, every byte flipped in
/// its magic, version, length, checksum or payload is refused (the checksum covers the
/// payload); and the payload with a byte flipped behind a checksum made right again (what the
/// fuzzer reaches) decodes or is refused, never a panic.
#[test]
fn state_decoder_refuses_damage_without_panicking() {
    use starling_vmm::fuzzing::snapshot_state;
    use starling_vmm::snapshot::file;
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/snapshot_state");
    let real = std::fs::read(dir.join("two-vcpus-vsock")).unwrap();
    assert!(snapshot_state(&real), "a real state decodes");
    let path = std::path::Path::new("corpus-state");
    let whole = file::frame(&real, None);
    assert!(file::decode(path, &whole, None).is_ok());
    // Every byte is checked (the flags word included: an unknown flag, or a MAC announced
    // that is not there, is refused).
    let mut refused = 0;
    for i in 0..whole.len() {
        let mut d = whole.clone();
        d[i] ^= 0x5a;
        assert!(
            file::decode(path, &d, None).is_err(),
            "a state file with byte {i} of {} flipped was accepted",
            whole.len()
        );
        refused += 1;
    }
    assert!(refused > real.len(), "{refused}");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        for cut in (0..data.len()).step_by(7) {
            assert!(!snapshot_state(&data[..cut]) || cut == data.len());
        }
        let mut decoded = 0;
        for i in (0..data.len()).step_by(3) {
            let mut d = data.clone();
            d[i] ^= 0x5a;
            decoded += usize::from(snapshot_state(&d));
        }
        eprintln!(
            "{}: {decoded} of {} payload flips behind a good checksum still decode",
            data.len(),
            data.len().div_ceil(3)
        );
    }
}

/// The virtio-fs fuzz target's image (fuzzing::fs_tree) in a fresh store, once per run.
fn fs_image() -> &'static (tempfile::TempDir, std::path::PathBuf, String) {
    use starling_image::chunk::Progress;
    use starling_image::import::{import, ImportOptions};
    static IMAGE: std::sync::OnceLock<(tempfile::TempDir, std::path::PathBuf, String)> =
        std::sync::OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        starling_vmm::fuzzing::fs_tree(&src).unwrap();
        let store = dir.path().join("store");
        let s = starling_store::Store::open_or_init(&store).unwrap();
        let r = import(
            &s,
            &ImportOptions {
                source: &src,
                format: None,
                name: "fuzz",
                tag: "v1",
                labels: Default::default(),
                chunking: Default::default(),
                partition: None,
                allow_backing: false,
            },
            &Progress::default(),
        )
        .unwrap();
        (dir, store, r.version.to_string())
    })
}

fn fs_seed(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus/virtiofs")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn fs_run(data: &[u8]) -> Outcome {
    let (_, store, version) = fs_image();
    let o = starling_vmm::fuzzing::virtio_fs(store, version, data);
    assert!(
        o.broken || o.used.len() == usize::from(o.popped),
        "{} chains taken, {} returned: {:?}",
        o.popped,
        o.used.len(),
        o.used
    );
    o
}

fn le32(o: &Outcome, at: usize) -> u32 {
    u32::from_le_bytes(o.memory[at..at + 4].try_into().unwrap())
}

fn le64(o: &Outcome, at: usize) -> u64 {
    u64::from_le_bytes(o.memory[at..at + 8].try_into().unwrap())
}

/// The reply to the seed's request `k` (fuse_out_header at 0x6000 + 0x100 k): its used
/// length, its header's length and errno, checked against the request's unique (k + 1).
fn fs_reply(o: &Outcome, k: usize, head: u32) -> (u32, u32, i32) {
    let used = o
        .used
        .iter()
        .find(|u| u.0 == head)
        .unwrap_or_else(|| panic!("request {k} (head {head}) not returned: {:?}", o.used))
        .1;
    let at = 0x6000 + 0x100 * k;
    if used >= 16 {
        assert_eq!(le64(o, at + 8), k as u64 + 1, "unique of reply {k}");
    }
    (used, le32(o, at), -(le32(o, at + 4) as i32))
}

/// The seeds of fuzz/corpus/virtiofs (made by fuzz/virtiofs_seeds.py) are real FUSE
/// messages; the device answers them as the image says.
#[test]
fn virtiofs_seeds_are_answered_from_the_image() {
    let big = starling_vmm::fuzzing::fs_tree_big();
    let o = fs_run(&fs_seed("init"));
    assert_eq!(o.used, vec![(0, 80)]);
    assert_eq!(fs_reply(&o, 0, 0), (80, 80, 0));
    assert_eq!(le32(&o, 0x6010), 7, "major");

    let o = fs_run(&fs_seed("lookup-read"));
    assert_eq!(o.used.len(), 8, "{:?}", o.used);
    // LOOKUP big: node 2, 100000 bytes.
    assert_eq!(fs_reply(&o, 0, 0), (144, 144, 0));
    assert_eq!(le64(&o, 0x6010), 2);
    assert_eq!(le64(&o, 0x6010 + 40 + 8), big.len() as u64);
    assert_eq!(fs_reply(&o, 1, 2), (120, 120, 0), "GETATTR");
    assert_eq!(fs_reply(&o, 2, 4), (32, 32, 0), "OPEN");
    assert_eq!(le64(&o, 0x6210), 1, "the first handle");
    assert_eq!(fs_reply(&o, 3, 6), (16 + 8192, 16 + 8192, 0), "READ");
    assert_eq!(&o.memory[0xa000..0xc000], &big[..8192]);
    let (used, len, err) = fs_reply(&o, 4, 9);
    assert_eq!((used, err), (len, 0), "READDIRPLUS");
    assert!(used > 16 + 4 * 152, "., .., big, d, hello: {used}");
    assert_eq!(fs_reply(&o, 5, 12), (144, 144, 0), "LOOKUP d/link");
    assert_eq!(le64(&o, 0x6510), 5);
    assert_eq!(fs_reply(&o, 6, 14), (24, 24, 0), "READLINK");
    assert_eq!(&o.memory[0x6610..0x6618], b"../hello");
    assert_eq!(fs_reply(&o, 7, 16), (16, 16, 0), "RELEASE");

    let o = fs_run(&fs_seed("xattr-statfs"));
    assert_eq!(fs_reply(&o, 1, 2), (24, 24, 0), "GETXATTR size");
    assert_eq!(le32(&o, 0x6110), 4);
    assert_eq!(fs_reply(&o, 2, 4), (20, 20, 0), "GETXATTR value");
    assert_eq!(&o.memory[0x6210..0x6214], b"fuzz");
    assert_eq!(fs_reply(&o, 3, 6), (23, 23, 0), "LISTXATTR");
    assert_eq!(&o.memory[0x6310..0x6317], b"user.x\0");
    assert_eq!(fs_reply(&o, 4, 8), (96, 96, 0), "STATFS");

    let o = fs_run(&fs_seed("writes"));
    assert_eq!(o.used.len(), 6);
    for (k, head) in [0u32, 2, 4, 6, 8, 10].into_iter().enumerate() {
        assert_eq!(fs_reply(&o, k, head), (16, 16, libc::EROFS), "write {k}");
    }

    let o = fs_run(&fs_seed("forget-hiprio"));
    assert_eq!(o.used, vec![(0, 0), (1, 0)], "FORGETs get no reply");

    let o = fs_run(&fs_seed("hostile"));
    assert_eq!(o.used.len(), 5, "{:?}", o.used);
    assert_eq!(fs_reply(&o, 0, 0), (16, 16, libc::EINVAL), "len past chain");
    assert_eq!(fs_reply(&o, 1, 2), (16, 16, libc::EINVAL), "len short");
    assert_eq!(fs_reply(&o, 2, 4), (16, 16, libc::EINVAL), "READ 1 GiB");
    assert_eq!(
        o.used.iter().find(|u| u.0 == 7).map(|u| u.1),
        Some(0),
        "outside guest memory: returned unanswered"
    );
    assert!(o.used.iter().any(|u| u.0 == 9), "the loop came back");

    // Opcodes without an operation (7, 19, 0, past the last): ENOSYS, never a transmute into
    // fuse-backend-rs's enum.
    let o = fs_run(&fs_seed("unnumbered"));
    assert_eq!(fs_reply(&o, 0, 0), (16, 16, libc::ENOSYS), "opcode 7");
    assert_eq!(fs_reply(&o, 1, 2), (16, 16, libc::ENOSYS), "opcode 19");
    assert_eq!(
        fs_reply(&o, 2, 4),
        (16, 16, libc::ENOSYS),
        "opcode past all"
    );
    assert_eq!(fs_reply(&o, 3, 6), (16, 16, libc::ENOSYS), "opcode 0");
}

#[test]
fn virtiofs_seeds_cut_short_or_flipped_always_come_back() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/virtiofs");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        for cut in [
            0,
            1,
            2,
            40,
            0x2004,
            0x4000 + 2,
            data.len() / 2,
            data.len() - 1,
        ] {
            fs_run(&data[..cut.min(data.len())]);
        }
        // Descriptor fields (address, length, flags, next), the available ring, and the
        // headers and bodies of the first requests.
        let offsets = [
            1usize,
            2,
            6,
            10,
            12,
            14,
            16 + 8,
            16 + 12,
            0x2004,
            0x2005,
            0x2006,
            0x4002,
            0x4006,
            0x400a,
            0x4012,
            0x4028,
            0x4030,
            0x4102,
            0x412a,
        ];
        for (i, off) in offsets.iter().enumerate() {
            for x in [0xa5u8.rotate_left(i as u32), 0xff] {
                let mut d = data.clone();
                if let Some(b) = d.get_mut(*off) {
                    *b ^= x;
                }
                fs_run(&d);
            }
        }
        n += 1;
    }
    assert!(n >= 6, "corpus has {n} seeds");
}

fn net_seed(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus/virtio_net")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The seeds of fuzz/corpus/virtio_net (made by fuzz/net_seeds.py): frames out and in as the
/// virtio-net spec says, and the chains that break the rules returned unused.
#[test]
fn virtio_net_seeds_are_served_and_bad_chains_refused() {
    use starling_vmm::fuzzing::{net_rx_frame, virtio_net};
    let o = virtio_net(&net_seed("tx-two"));
    assert_eq!(o.used, vec![(0, 0), (1, 0)]);
    assert_eq!(o.sent.len(), 2);
    assert_eq!(o.sent[0].len(), 12 + 14 + 46);
    assert_eq!(o.sent[1].len(), 12 + 14 + 100);
    assert_eq!(
        o.sent[1][12..18],
        [0xff; 6],
        "the split frame arrives whole"
    );
    let o = virtio_net(&net_seed("tx-bad"));
    assert_eq!(o.used, vec![(0, 0), (2, 0), (3, 0), (4, 0)]);
    assert!(o.sent.is_empty() && !o.broken, "{:?}", o.sent.len());

    let frame = net_rx_frame();
    let o = virtio_net(&net_seed("rx-one"));
    assert_eq!(o.used, vec![(0, frame.len() as u32)]);
    let got = &o.memory[0x5000..0x5000 + frame.len()];
    assert_eq!(got[10..12], [1, 0], "num_buffers 1");
    assert_eq!(got[12..], frame[12..]);
    assert!(
        o.memory[0x5000 + frame.len()..0x5800]
            .iter()
            .all(|&b| b == 0),
        "nothing written past the frame"
    );
    let o = virtio_net(&net_seed("rx-mergeable"));
    assert_eq!(o.used, vec![(0, 512), (1, 512), (2, 502)]);
    assert_eq!(o.memory[0x500a..0x500c], [3, 0], "num_buffers 3");
    assert_eq!(o.memory[0x5000 + 12..0x5000 + 1526], frame[12..]);
    let o = virtio_net(&net_seed("rx-bad"));
    // The read-only buffer comes back empty and the frame is dropped (no mergeable
    // buffers); the small buffer waits for the next frame.
    assert_eq!(o.used, vec![(0, 0)]);
    assert!(o.memory[0x5000..0x5800].iter().all(|&b| b == 0));
}

#[test]
fn virtio_net_seeds_cut_short_or_flipped_always_come_back() {
    use starling_vmm::fuzzing::virtio_net;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/virtio_net");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        for cut in [0, 1, 2, 40, data.len() / 2] {
            virtio_net(&data[..cut.min(data.len())]);
        }
        for (i, off) in [2usize, 10, 11, 13, 14, 0x2004, 0x2005, 0x2006]
            .iter()
            .enumerate()
        {
            for flags in [0u8, 1, 2, 3, 5, 7] {
                let mut d = data.clone();
                d[0] = flags;
                if let Some(b) = d.get_mut(*off) {
                    *b ^= 0xa5u8.rotate_left(i as u32);
                }
                virtio_net(&d);
            }
        }
        n += 1;
    }
    assert!(n >= 5, "corpus has {n} seeds");
}
