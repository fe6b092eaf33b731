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
    let whole = file::frame(&real);
    assert!(file::decode(path, &whole).is_ok());
    // Bytes 12..16 are a word written 0 and never read (docs/ARCHITECTURE.md, "State file");
    // every other byte is checked.
    let reserved = 12..16;
    let mut refused = 0;
    for i in (0..whole.len()).filter(|i| !reserved.contains(i)) {
        let mut d = whole.clone();
        d[i] ^= 0x5a;
        assert!(
            file::decode(path, &d).is_err(),
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
