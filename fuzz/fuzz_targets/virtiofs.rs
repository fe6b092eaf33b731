#![no_main]
//! Arbitrary descriptor chains and FUSE messages into the virtio-fs device (see
//! `starling_vmm::fuzzing::virtio_fs`), serving a small image imported once per process.
//! Every chain the device takes must come back to the used ring (or the ring be declared
//! broken): a lost chain is a guest waiting forever.

use std::path::PathBuf;
use std::sync::OnceLock;

use starling_image::chunk::Progress;
use starling_image::import::{import, ImportOptions};

fn image() -> (PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("starling-fuzz-fs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let src = dir.join("src");
    starling_vmm::fuzzing::fs_tree(&src).expect("writing the fuzz tree");
    let store = dir.join("store");
    let s = starling_store::Store::open_or_init(&store).expect("a fresh store");
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
    .expect("importing the fuzz tree");
    (store, r.version.to_string())
}

static IMAGE: OnceLock<(PathBuf, String)> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (store, version) = IMAGE.get_or_init(image);
    let o = starling_vmm::fuzzing::virtio_fs(store, version, data);
    assert!(
        o.broken || o.used.len() == usize::from(o.popped),
        "{} chains taken, {} returned",
        o.popped,
        o.used.len()
    );
});
