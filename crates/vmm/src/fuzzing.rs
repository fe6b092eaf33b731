//! Entry points for fuzzing the request parsers a guest controls: a virtio queue with arbitrary
//! descriptor tables and rings driving the block, rng and vsock devices. Used by `fuzz/` and
//! replayed over the committed corpus by the tests.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::virtio::{blk::Block, rng::Rng, vsock::Vsock, Queues, VirtioDevice};

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
    let Some((&which, rest)) = data.split_first() else {
        return outcome;
    };
    let Some((&size_exp, rest)) = rest.split_first() else {
        return outcome;
    };
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]) else {
        return outcome;
    };
    let n = rest.len().min(MEM_SIZE - 0x1000);
    if mem.write_slice(&rest[..n], GuestAddress(DESC)).is_err() {
        return outcome;
    }
    let size = 1u16 << (size_exp % 9);
    let mut qs = Vec::new();
    for _ in 0..3 {
        let Ok(mut q) = Queue::new(256) else {
            return outcome;
        };
        q.set_size(size);
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_ready(true);
        if !q.is_valid(&mem) {
            return outcome;
        }
        qs.push(q);
    }
    let mut queues = Queues {
        mem: mem.clone(),
        queues: qs,
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
    // All three queues share one ring layout, so the used ring read back is the served one's.
    let idx: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap_or(0);
    for i in 0..idx.min(size) {
        let at = USED + 4 + 8 * u64::from(i);
        let id: u32 = mem.read_obj(GuestAddress(at)).unwrap_or(0);
        let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap_or(0);
        outcome.used.push((id, len));
    }
    outcome.memory = vec![0u8; MEM_SIZE];
    let _ = mem.read_slice(&mut outcome.memory, GuestAddress(0));
    outcome
}

/// What a fuzz input did: used-ring entries (descriptor id, length), whether the device
/// declared the ring broken, and guest memory afterwards (for status bytes).
#[derive(Debug, Default)]
pub struct Outcome {
    pub used: Vec<(u32, u32)>,
    pub broken: bool,
    pub memory: Vec<u8>,
}

/// Fuzz entry for the snapshot state decoder: `data` as a whole state file, and `data` as the
/// payload of a state file whose header and checksum are right (so the fuzzer reaches the
/// zstd and postcard decoding behind them). Returns whether the framed payload decoded.
pub fn snapshot_state(data: &[u8]) -> bool {
    let path = std::path::Path::new("fuzz-state");
    let _ = crate::snapshot::file::decode(path, data);
    crate::snapshot::file::decode(path, &crate::snapshot::file::frame(data)).is_ok()
}
