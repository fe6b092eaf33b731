//! Replays the committed fuzz corpora (fuzz/corpus) through the fuzz entry points, so every
//! seed and every input that once crashed stays a regression test on stable Rust.

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        let data = std::fs::read(&p).unwrap();
        f(&data);
        // Truncations and single-byte flips of each seed: cheap coverage of error paths.
        for cut in [0, 1, 512, 1024, 1100, 2048, data.len() / 2] {
            f(&data[..cut.min(data.len())]);
        }
        for i in (0..data.len()).step_by(97) {
            let mut d = data.clone();
            d[i] ^= 0xff;
            f(&d);
        }
        n += 1;
    }
    assert!(n > 0, "no corpus in {}", dir.display());
}

#[test]
fn ext4_corpus() {
    replay("ext4", starling_disk::fuzzing::ext4);
}

#[test]
fn partitions_corpus() {
    replay("partitions", starling_disk::fuzzing::partitions);
}

#[test]
fn qcow2_corpus() {
    replay("qcow2", starling_disk::fuzzing::qcow2);
}
