//! Entry points for fuzzing the request parsers a guest controls: a virtio queue with arbitrary
//! descriptor tables and rings driving the block, rng, vsock and fs devices. Used by `fuzz/`
//! and replayed over the committed corpus by the tests.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::config::FsConfig;
use crate::virtio::{blk::Block, fs::Fs, rng::Rng, vsock::Vsock, Queues, VirtioDevice};

const MEM_SIZE: usize = 64 * 1024;

/// A scratch path no other call (thread or process) uses at the same time.
fn scratch(what: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("starling-fuzz-{what}-{}-{n}", std::process::id()))
}
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x3000;
const USED: u64 = 0x4000;

/// Input layout: byte 0 picks the device (0 block, 1 rng, 2 vsock tx, 3 vsock rx), byte 1 the
/// queue size exponent, then the bytes are copied over guest memory from 0x1000 (descriptor
/// table, then available ring at 0x3000, data anywhere).
pub fn virtio_queue(data: &[u8]) -> Outcome {
    let mut outcome = Outcome::default();
    let Some((which, size, mem, mut queues)) = laid_out(data, 3) else {
        return outcome;
    };
    let result = match which % 4 {
        0 => {
            let path = scratch("disk");
            let made = std::fs::File::create(&path).and_then(|f| f.set_len(64 * 1024));
            let r = match made.and_then(|_| Block::open(&path, which & 4 != 0)) {
                Ok(mut b) => b.notify(0, &mut queues),
                Err(_) => Ok(false),
            };
            let _ = std::fs::remove_file(&path);
            r
        }
        1 => Rng.notify(0, &mut queues),
        q => {
            let dir = scratch("vsock");
            let _ = std::fs::create_dir_all(&dir);
            let r = match Vsock::new(3, &dir.join("v.sock")) {
                Ok(mut v) => v.notify(if q == 2 { 1 } else { 0 }, &mut queues),
                Err(_) => Ok(false),
            };
            let _ = std::fs::remove_dir_all(&dir);
            r
        }
    };
    outcome.broken = result.is_err();
    read_back(&mem, size, &mut outcome);
    outcome
}

/// The frame the virtio-net fuzz entry's backend offers the guest: a virtio-net header and a
/// 1514-byte Ethernet frame whose byte K is K % 251.
pub fn net_rx_frame() -> Vec<u8> {
    let mut f = vec![0u8; crate::virtio::net::HDR_LEN];
    f.extend((0..1514u32).map(|k| (k % 251) as u8));
    f
}

/// Input layout as [`virtio_queue`]'s; byte 0 picks the queue and features: bit 0 set = the
/// receive queue (the backend has [`net_rx_frame`] waiting), clear = transmit; bit 1 =
/// mergeable receive buffers; bit 2 = checksum and TSO offloads accepted.
pub fn virtio_net(data: &[u8]) -> Outcome {
    use crate::virtio::net::{self, Net};
    let mut outcome = Outcome::default();
    let Some((which, size, mem, mut queues)) = laid_out(data, 2) else {
        return outcome;
    };
    let Ok((ours, peer)) = std::os::unix::net::UnixDatagram::pair() else {
        return outcome;
    };
    if ours.set_nonblocking(true).is_err() || peer.set_nonblocking(true).is_err() {
        return outcome;
    }
    let backend = std::fs::File::from(std::os::fd::OwnedFd::from(ours));
    let Ok(mut dev) = Net::with_backend(
        Some(backend),
        crate::config::Mac([2, 0, 0, 0, 0, 1]),
        (None, None),
    ) else {
        return outcome;
    };
    let mut features = crate::virtio::VIRTIO_F_VERSION_1;
    if which & 2 != 0 {
        features |= net::F_MRG_RXBUF;
    }
    if which & 4 != 0 {
        features |= net::F_CSUM | net::F_HOST_TSO4 | net::F_HOST_TSO6 | net::F_GUEST_CSUM;
    }
    let irq = crate::virtio::IrqLine::new(
        match vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK) {
            Ok(e) => e,
            Err(_) => return outcome,
        },
    );
    dev.activate(irq, features);
    let result = if which & 1 != 0 {
        let _ = peer.send(&net_rx_frame());
        dev.notify(0, &mut queues)
    } else {
        dev.notify(1, &mut queues)
    };
    outcome.broken = result.is_err();
    let mut buf = vec![0u8; net::MAX_FRAME];
    while let Ok(n) = peer.recv(&mut buf) {
        outcome.sent.push(buf[..n].to_vec());
    }
    read_back(&mem, size, &mut outcome);
    outcome
}

/// The input layout the queue entries share: byte 0 for the caller, byte 1 the queue size
/// exponent, the rest copied over guest memory from 0x1000; with `n` queues over it. None if
/// the input is too short or the layout does not fit.
fn laid_out(data: &[u8], n: usize) -> Option<(u8, u16, GuestMemoryMmap, Queues)> {
    let (&which, rest) = data.split_first()?;
    let (&size_exp, rest) = rest.split_first()?;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).ok()?;
    let len = rest.len().min(MEM_SIZE - 0x1000);
    mem.write_slice(&rest[..len], GuestAddress(DESC)).ok()?;
    let size = 1u16 << (size_exp % 9);
    let queues = queues(&mem, size, n)?;
    Some((which, size, mem, queues))
}

/// `n` queues of `size` over the one ring layout (descriptors at 0x1000, available ring at
/// 0x3000, used ring at 0x4000); None if that layout does not fit.
fn queues(mem: &GuestMemoryMmap, size: u16, n: usize) -> Option<Queues> {
    // The used ring's header starts at zero, as a driver sets it up: the device writes it
    // from there, and `read_back` must not count entries the input wrote itself (the
    // input's bytes cover the ring; the campaign's virtiofs run found a used index of 32 read
    // back from an input the device took nothing from).
    mem.write_obj(0u32, GuestAddress(USED)).ok()?;
    let mut qs = Vec::new();
    for _ in 0..n {
        let mut q = Queue::new(256).ok()?;
        q.set_size(size);
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_ready(true);
        if !q.is_valid(mem) {
            return None;
        }
        qs.push(q);
    }
    Some(Queues {
        mem: mem.clone(),
        queues: qs,
    })
}

/// The used ring and guest memory into `outcome`. All queues share one ring layout, so the
/// used ring read back is the served one's.
fn read_back(mem: &GuestMemoryMmap, size: u16, outcome: &mut Outcome) {
    let idx: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap_or(0);
    for i in 0..idx.min(size) {
        let at = USED + 4 + 8 * u64::from(i);
        let id: u32 = mem.read_obj(GuestAddress(at)).unwrap_or(0);
        let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap_or(0);
        outcome.used.push((id, len));
    }
    outcome.memory = vec![0u8; MEM_SIZE];
    let _ = mem.read_slice(&mut outcome.memory, GuestAddress(0));
}

/// The small tree the virtio-fs fuzz target serves, written with plain file operations (the
/// callers import it into a store with starling-image, which the monitor does not depend
/// on). Imported into a fresh store, its inode numbers are fixed: 1 the root, then the root's
/// entries in name order (`big` 2, `d` 3, `hello` 4), then `d/link` 5 once `d` is loaded.
pub fn fs_tree(root: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(root.join("d"))?;
    std::fs::write(root.join("big"), fs_tree_big())?;
    std::fs::write(root.join("hello"), b"hello\n")?;
    std::os::unix::fs::symlink("../hello", root.join("d/link"))?;
    let path = std::ffi::CString::new(root.join("hello").as_os_str().as_encoded_bytes())
        .map_err(std::io::Error::other)?;
    let (name, value) = (c"user.x", b"fuzz");
    // SAFETY: both strings are NUL-terminated and the value is a live slice of its length.
    let r = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `big`'s content in [`fs_tree`]: 100,000 bytes a chunker splits in more than one chunk.
pub fn fs_tree_big() -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..100_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Input layout as for [`virtio_queue`]: byte 0 picks the queue (even: hiprio, odd:
/// requests), byte 1 the queue size exponent, the rest is copied over guest memory from
/// 0x1000. A virtio-fs device serving `version` from the store at `store` (see [`fs_tree`])
/// is notified, waited for until no request is in flight, and returns its completions.
/// `popped` counts the chains it took: each must be back in the used ring.
pub fn virtio_fs(store: &std::path::Path, version: &str, data: &[u8]) -> Outcome {
    let mut outcome = Outcome::default();
    let (Some((&which, rest)), true) = (data.split_first(), data.len() >= 2) else {
        return outcome;
    };
    let size = 1u16 << (rest[0] % 9);
    let rest = &rest[1..];
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]) else {
        return outcome;
    };
    let n = rest.len().min(MEM_SIZE - 0x1000);
    if mem.write_slice(&rest[..n], GuestAddress(DESC)).is_err() {
        return outcome;
    }
    let Some(mut queues) = queues(&mem, size, 2) else {
        return outcome;
    };
    let Ok(mut fs) = Fs::new(FsConfig {
        tag: "fuzz".into(),
        source: format!("store:{}", store.display()),
        version: version.into(),
        objects_socket: None,
    }) else {
        return outcome;
    };
    let index = usize::from(which & 1);
    // The driver's chains are made available one at a time, each served before the next, so
    // that an input always does the same (the device serves a batch on parallel workers).
    let avail: u16 = mem.read_obj(GuestAddress(AVAIL + 2)).unwrap_or(0);
    let steps: Vec<u16> = if avail <= size {
        (1..=avail).collect()
    } else {
        vec![avail]
    };
    let mut result = Ok(false);
    for idx in steps {
        if mem.write_obj(idx, GuestAddress(AVAIL + 2)).is_err() {
            break;
        }
        result = fs.notify(index, &mut queues);
        fs.quiesce();
        if result.is_err() {
            break;
        }
    }
    let result = result.and_then(|_| fs.backend(&mut queues));
    outcome.broken = result.is_err();
    outcome.popped = queues.queues[index].next_avail();
    read_back(&mem, size, &mut outcome);
    outcome
}

/// What a fuzz input did: used-ring entries (descriptor id, length), whether the device
/// declared the ring broken, guest memory afterwards (for status bytes), and (virtio-fs)
/// how many chains the device took from the available ring.
#[derive(Debug, Default)]
pub struct Outcome {
    pub used: Vec<(u32, u32)>,
    pub broken: bool,
    pub memory: Vec<u8>,
    pub popped: u16,
    /// virtio-net: the frames (header first) the device passed to its backend.
    pub sent: Vec<Vec<u8>>,
}

/// Fuzz entry for the snapshot state decoder: `data` as a whole state file, and `data` as the
/// payload of a state file whose header and checksum are right (so the fuzzer reaches the
/// zstd and postcard decoding behind them). Returns whether the framed payload decoded.
pub fn snapshot_state(data: &[u8]) -> bool {
    let path = std::path::Path::new("fuzz-state");
    let _ = crate::snapshot::file::decode(path, data, None);
    crate::snapshot::file::decode(path, &crate::snapshot::file::frame(data, None), None).is_ok()
}
