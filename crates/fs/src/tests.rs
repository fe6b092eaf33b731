//! The file system driven through its FUSE interface over a real store: answers match the
//! imported tree, writes are refused, damage is EIO, and a restored file system answers the
//! node ids and handles its client already holds.

use std::ffi::CString;
use std::io;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;

use fuse_backend_rs::api::filesystem::{Context, FileSystem, ZeroCopyWriter};
use fuse_backend_rs::common::file_traits::FileReadWriteVolatile;
use starling_image::chunk::Progress;
use starling_image::import::{import, ImportOptions};
use starling_store::{ObjectId, Store};

use crate::{Counters, FsState, ImageFs, Objects};

/// Collects what a read hands out.
struct Sink(Vec<u8>);

impl io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ZeroCopyWriter for Sink {
    fn write_from(
        &mut self,
        _f: &mut dyn FileReadWriteVolatile,
        _count: usize,
        _off: u64,
    ) -> io::Result<usize> {
        Err(io::Error::other("not used by ImageFs"))
    }
    fn available_bytes(&self) -> usize {
        usize::MAX
    }
}

fn tree(root: &Path, hardlink: bool) {
    std::fs::create_dir_all(root.join("a/deep")).unwrap();
    std::fs::create_dir_all(root.join("b")).unwrap();
    std::fs::write(root.join("a/deep/big"), pattern(300_000)).unwrap();
    std::fs::write(root.join("a/small"), b"hello").unwrap();
    std::fs::write(root.join("b/one"), b"1").unwrap();
    if hardlink {
        std::fs::hard_link(root.join("b/one"), root.join("b/two")).unwrap();
    }
    symlink("../a/small", root.join("b/link")).unwrap();
    xattr::set(root.join("a/small"), "user.note", b"kept").unwrap();
}

fn pattern(n: usize) -> Vec<u8> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    version: ObjectId,
}

/// An image of [`tree`]; with a hard link, every directory is loaded at mount (to count
/// links), without one only what requests reach.
fn fixture(hardlink: bool) -> Fixture {
    fixture_of(|src| tree(src, hardlink))
}

fn fixture_of(make: impl FnOnce(&Path)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make(&src);
    let store = Store::open_or_init(dir.path().join("store")).unwrap();
    let r = import(
        &store,
        &ImportOptions {
            source: &src,
            format: None,
            name: "t",
            tag: "v1",
            labels: Default::default(),
            chunking: Default::default(),
            partition: None,
            allow_backing: false,
        },
        &Progress::default(),
    )
    .unwrap();
    Fixture {
        _dir: dir,
        store: Arc::new(store),
        version: r.version,
    }
}

fn open(f: &Fixture) -> ImageFs {
    let objects = Arc::new(Objects::new(f.store.clone(), Arc::new(Counters::default())));
    ImageFs::new(objects, &f.version, Arc::default(), None, "test".into()).unwrap()
}

fn lookup(fs: &ImageFs, parent: u64, name: &str) -> io::Result<u64> {
    let c = CString::new(name).unwrap();
    fs.lookup(&Context::new(), parent, &c).map(|e| e.inode)
}

fn path(fs: &ImageFs, p: &str) -> u64 {
    p.split('/')
        .filter(|c| !c.is_empty())
        .fold(1, |ino, c| lookup(fs, ino, c).unwrap())
}

fn read_all(fs: &ImageFs, ino: u64, handle: u64) -> io::Result<Vec<u8>> {
    let mut out = Sink(Vec::new());
    let mut off = 0;
    loop {
        let n = fs.read(
            &Context::new(),
            ino,
            handle,
            &mut out,
            128 << 10,
            off,
            None,
            0,
        )?;
        if n == 0 {
            return Ok(out.0);
        }
        off += n as u64;
    }
}

fn errno(r: io::Result<impl Sized>) -> i32 {
    r.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
}

#[test]
fn answers_match_the_tree_and_writes_are_refused() {
    let f = fixture(true);
    let fs = open(&f);
    let ctx = Context::new();
    let big = path(&fs, "a/deep/big");
    let (h, _, _) = fs.open(&ctx, big, libc::O_RDONLY as u32, 0).unwrap();
    assert_eq!(read_all(&fs, big, h.unwrap()).unwrap(), pattern(300_000));
    // Only through a handle OPEN gave for this inode.
    assert_eq!(errno(read_all(&fs, big, h.unwrap() + 1)), libc::EBADF);
    assert_eq!(
        errno(read_all(&fs, path(&fs, "a/small"), h.unwrap())),
        libc::EBADF
    );
    let (st, _) = fs.getattr(&ctx, big, None).unwrap();
    assert_eq!(st.st_size, 300_000);
    assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFREG);
    let link = path(&fs, "b/link");
    assert_eq!(fs.readlink(&ctx, link).unwrap(), b"../a/small");
    // Hard links: one inode, link count 2.
    let (one, two) = (path(&fs, "b/one"), path(&fs, "b/two"));
    assert_eq!(one, two);
    assert_eq!(fs.getattr(&ctx, one, None).unwrap().0.st_nlink, 2);
    let small = path(&fs, "a/small");
    let name = CString::new("user.note").unwrap();
    match fs.getxattr(&ctx, small, &name, 64).unwrap() {
        fuse_backend_rs::api::filesystem::GetxattrReply::Value(v) => assert_eq!(v, b"kept"),
        _ => panic!("xattr value expected"),
    }
    assert_eq!(errno(lookup(&fs, 1, "absent")), libc::ENOENT);
    assert_eq!(errno(lookup(&fs, small, "x")), libc::ENOTDIR);
    assert_eq!(
        errno(fs.open(&ctx, small, libc::O_WRONLY as u32, 0)),
        libc::EROFS
    );
    assert_eq!(
        errno(fs.open(&ctx, small, (libc::O_RDONLY | libc::O_TRUNC) as u32, 0)),
        libc::EROFS
    );
    assert_eq!(
        errno(fs.access(&ctx, small, libc::W_OK as u32)),
        libc::EROFS
    );
    // Every write opcode is refused as a read-only file system refuses it (ENOSYS would tell
    // a kernel the operation is missing, not that the file system is read-only).
    let n = CString::new("new").unwrap();
    assert_eq!(errno(fs.mkdir(&ctx, 1, &n, 0o755, 0)), libc::EROFS);
    assert_eq!(errno(fs.unlink(&ctx, 1, &n)), libc::EROFS);
    assert_eq!(errno(fs.rmdir(&ctx, 1, &n)), libc::EROFS);
    assert_eq!(errno(fs.symlink(&ctx, &n, 1, &n)), libc::EROFS);
    assert_eq!(errno(fs.rename(&ctx, 1, &n, 1, &n, 0)), libc::EROFS);
    assert_eq!(errno(fs.setxattr(&ctx, small, &name, b"v", 0)), libc::EROFS);
    assert_eq!(errno(fs.removexattr(&ctx, small, &name)), libc::EROFS);
    let mut names = Vec::new();
    fs.readdir(&ctx, 1, 0, 4096, 0, &mut |d| {
        names.push(String::from_utf8_lossy(d.name).into_owned());
        Ok(1)
    })
    .unwrap();
    assert_eq!(names, [".", "..", "a", "b"]);
}

#[test]
fn missing_content_is_eio_and_counted() {
    let f = fixture(false);
    let fs = open(&f);
    let big = path(&fs, "a/deep/big");
    // Remove the file's chunks from the store behind the file system's back.
    let (objs, _) = f.store.list_objects().unwrap();
    let chunks: Vec<ObjectId> = objs
        .iter()
        .map(|o| o.id)
        .filter(|id| {
            f.store
                .get(id)
                .map(|b| b.len() > 16 << 10 && !b.starts_with(b"SLTR"))
                .unwrap_or(false)
        })
        .collect();
    assert!(!chunks.is_empty());
    f.store.remove_objects(&chunks).unwrap();
    let (h, _, _) = fs.open(&Context::new(), big, 0, 0).unwrap();
    assert_eq!(errno(read_all(&fs, big, h.unwrap())), libc::EIO);
    assert!(fs.counters().values().errors >= 1);
}

#[test]
fn a_restored_file_system_answers_old_node_ids_and_handles() {
    for hardlink in [false, true] {
        restore_round_trip(&fixture(hardlink), hardlink);
    }
}

fn restore_round_trip(f: &Fixture, hardlink: bool) {
    let fs = open(f);
    let ctx = Context::new();
    // Walk in an order that numbers b's entries before a's.
    let one = path(&fs, "b/one");
    let big = path(&fs, "a/deep/big");
    let small = path(&fs, "a/small");
    let (h, _, _) = fs.open(&ctx, big, 0, 0).unwrap();
    let h = h.unwrap();
    let state = fs.save();
    assert!(state.loads.len() >= 3, "{state:?}");
    // Through its encoding, as a snapshot carries it.
    let bytes = postcard::to_allocvec(&state).unwrap();
    let state: FsState = postcard::from_bytes(&bytes).unwrap();

    let objects = Arc::new(Objects::new(f.store.clone(), Arc::new(Counters::default())));
    let back = ImageFs::restore(objects, &state, Arc::default(), "restored".into()).unwrap();
    // The old ids, before any lookup: the loads are replayed on demand.
    assert_eq!(back.getattr(&ctx, big, None).unwrap().0.st_size, 300_000);
    assert_eq!(back.getattr(&ctx, small, None).unwrap().0.st_size, 5);
    assert_eq!(back.getattr(&ctx, one, None).unwrap().0.st_size, 1);
    assert_eq!(read_all(&back, big, h).unwrap(), pattern(300_000));
    back.release(&ctx, big, 0, h, false, false, None).unwrap();
    // New lookups agree with the old numbering, and new handles do not collide.
    assert_eq!(path(&back, "a/deep/big"), big);
    let (h2, _, _) = back.open(&ctx, small, 0, 0).unwrap();
    assert!(h2.unwrap() > h);
    if !hardlink {
        // A fresh file system walked in another order numbers differently: the replay is
        // what makes the ids agree.
        let fresh = open(f);
        assert_ne!(path(&fresh, "a/small"), small);
    }

    let mut bad = state.clone();
    bad.format = 9;
    let objects = Arc::new(Objects::new(f.store.clone(), Arc::new(Counters::default())));
    assert!(ImageFs::restore(objects, &bad, Arc::default(), "x".into()).is_err());
}

/// Requests a client can be spared: READDIRPLUS always (no LOOKUP per name after a listing),
/// no OPENDIR/RELEASEDIR for a client that can do without, and no xattr round trips for an
/// image without any (overlayfs asks every file it looks up for one).
#[test]
fn a_client_is_spared_requests_the_image_cannot_need() {
    use fuse_backend_rs::api::filesystem::FsOptions;
    let ctx = Context::new();
    let name = CString::new("user.note").unwrap();

    // With xattrs: counted in the commit, answered, directories opened as before.
    let with = fixture(false);
    let commit = starling_image::versions::load_commit(&*with.store, &with.version).unwrap();
    assert_eq!(commit.stats.xattrs, Some(1));
    let fs = open(&with);
    let offered = FsOptions::DO_READDIRPLUS | FsOptions::READDIRPLUS_AUTO | FsOptions::ASYNC_READ;
    let got = fs.init(offered).unwrap();
    assert!(got.contains(FsOptions::DO_READDIRPLUS), "{got:?}");
    assert!(!got.contains(FsOptions::READDIRPLUS_AUTO), "{got:?}");
    assert!(fs.opendir(&ctx, 1, 0).is_ok());
    let small = path(&fs, "a/small");
    assert!(fs.getxattr(&ctx, small, &name, 64).is_ok());
    assert!(fs.listxattr(&ctx, small, 64).is_ok());

    // A client that does without OPENDIR is told so.
    let fs = open(&with);
    fs.init(offered | FsOptions::ZERO_MESSAGE_OPENDIR).unwrap();
    assert_eq!(errno(fs.opendir(&ctx, 1, 0)), libc::ENOSYS);
    let mut n = 0;
    fs.readdirplus(&ctx, 1, 0, 4096, 0, &mut |_, _| {
        n += 1;
        Ok(1)
    })
    .unwrap();
    assert_eq!(n, 4, ". .. a b, listed without a handle");

    // Without xattrs: none to ask for.
    let without = fixture_of(|src| {
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("d/f"), b"x").unwrap();
    });
    let commit = starling_image::versions::load_commit(&*without.store, &without.version).unwrap();
    assert_eq!(commit.stats.xattrs, Some(0));
    let fs = open(&without);
    let f = path(&fs, "d/f");
    assert_eq!(errno(fs.getxattr(&ctx, f, &name, 64)), libc::ENOSYS);
    assert_eq!(errno(fs.listxattr(&ctx, f, 64)), libc::ENOSYS);
}

/// A READ is ready when every chunk it spans is in memory (a transport may then answer it on
/// the thread that saw it); at or past the end there is nothing to wait for.
#[test]
fn a_read_is_ready_once_its_chunks_are_in_memory() {
    let f = fixture(false);
    let fs = open(&f);
    let big = path(&fs, "a/deep/big");
    assert!(!fs.read_is_ready(big, 0, 4096), "nothing loaded yet");
    assert!(fs.read_is_ready(big, 300_000, 4096), "at the end");
    assert!(fs.read_is_ready(big, 1 << 40, 4096), "past the end");
    let (h, _, _) = fs
        .open(&Context::new(), big, libc::O_RDONLY as u32, 0)
        .unwrap();
    read_all(&fs, big, h.unwrap()).unwrap();
    assert!(fs.read_is_ready(big, 0, 4096));
    assert!(
        fs.read_is_ready(big, 250_000, 1 << 20),
        "the last chunks, size past the end"
    );
    assert!(
        !fs.read_is_ready(999, 0, 1),
        "an inode not numbered yet goes to a worker"
    );
}

/// A listing (and a lookup) is ready once its directory's tree is loaded and the entries it
/// answers are numbered: then it waits on no object (a transport answers it on the thread
/// that saw it). A restored file system's nodes are not, until its loads are replayed.
#[test]
fn a_listing_is_ready_once_its_directory_is_loaded() {
    let ctx = Context::new();
    let restore = |f: &Fixture, fs: &ImageFs| {
        let objects = Arc::new(Objects::new(f.store.clone(), Arc::new(Counters::default())));
        ImageFs::restore(objects, &fs.save(), Arc::default(), "restored".into()).unwrap()
    };

    // With a hard link every tree is loaded at mount (and again at a restore), the link
    // resolved.
    let f = fixture(true);
    let fs = open(&f);
    let (a, b, one) = (path(&fs, "a"), path(&fs, "b"), path(&fs, "b/one"));
    for fs in [&fs, &restore(&f, &fs)] {
        for (ino, what) in [(1, "root"), (a, "a"), (b, "b, with the hard link")] {
            assert!(fs.listing_is_ready(ino, 0), "{what}");
            assert!(fs.listing_is_ready(ino, 1000), "{what}: past its end");
        }
        assert!(fs.lookup_is_ready(b, b"two"), "the hard link");
        assert!(fs.listing_is_ready(one, 0), "ENOTDIR at once");
        assert!(!fs.listing_is_ready(9999, 0) && !fs.is_numbered(9999));
    }

    // Without one a tree is loaded when a request first needs it.
    let f = fixture(false);
    let fs = open(&f);
    assert!(
        fs.is_numbered(1) && !fs.lookup_is_ready(1, b"a"),
        "root not loaded"
    );
    let a = path(&fs, "a");
    assert!(fs.listing_is_ready(1, 0), "root, loaded by the lookup");
    assert!(
        fs.lookup_is_ready(1, b"b") && fs.lookup_is_ready(1, b"none"),
        "ENOENT at once"
    );
    assert!(!fs.listing_is_ready(a, 0), "a: not loaded yet");
    assert!(!fs.lookup_is_ready(a, b"small"), "a: not loaded yet");
    fs.readdirplus(&ctx, a, 0, 4096, 0, &mut |_, _| Ok(1))
        .unwrap();
    assert!(
        fs.listing_is_ready(a, 0) && fs.listing_is_ready(a, 4),
        "a: loaded"
    );
    assert!(fs.lookup_is_ready(a, b"small") && fs.lookup_is_ready(a, b"deep"));
    let small = path(&fs, "a/small");

    // Restored: nothing past the root is numbered until a request replays the loads.
    let back = restore(&f, &fs);
    assert!(!back.is_numbered(small) && !back.listing_is_ready(a, 0));
    back.getattr(&ctx, small, None).unwrap();
    assert!(back.is_numbered(small) && back.listing_is_ready(a, 0));
    assert!(back.lookup_is_ready(a, b"small"));
}

/// A source that takes its time over every object and counts how often each was asked.
struct Slow {
    store: Arc<Store>,
    asked: std::sync::Mutex<std::collections::HashMap<ObjectId, u32>>,
    /// How many objects each request asked for.
    batches: std::sync::Mutex<Vec<usize>>,
}

impl starling_store::ObjectSource for Slow {
    fn envelope(
        &self,
        id: &ObjectId,
        max_len: u64,
    ) -> starling_store::Result<(Vec<u8>, starling_store::Origin)> {
        *self.asked.lock().unwrap().entry(*id).or_default() += 1;
        std::thread::sleep(std::time::Duration::from_millis(5));
        self.store.envelope(id, max_len)
    }
    fn read_each(
        &self,
        wanted: &[(ObjectId, u64)],
        each: &mut dyn FnMut(usize, starling_store::Result<(Vec<u8>, starling_store::Origin)>),
    ) {
        self.batches.lock().unwrap().push(wanted.len());
        for (i, (id, max_len)) in wanted.iter().enumerate() {
            each(i, self.read(id, *max_len));
        }
    }
    fn describe(&self) -> String {
        "slow".into()
    }
}

/// A sequential reader that catches up with the read-ahead waits for the chunk being loaded
/// instead of fetching, decoding and hashing it a second time; the read-ahead asks for
/// several chunks per request.
#[test]
fn a_reader_takes_what_is_being_read_ahead_instead_of_fetching_it_again() {
    let f = fixture_of(|src| {
        std::fs::create_dir_all(src).unwrap();
        std::fs::write(src.join("big"), pattern(8 << 20)).unwrap();
    });
    let slow = Arc::new(Slow {
        store: f.store.clone(),
        asked: Default::default(),
        batches: Default::default(),
    });
    let objects = Arc::new(Objects::new(slow.clone(), Arc::new(Counters::default())));
    let fs = ImageFs::new(objects, &f.version, Arc::default(), None, "test".into()).unwrap();
    let big = path(&fs, "big");
    let (h, _, _) = fs
        .open(&Context::new(), big, libc::O_RDONLY as u32, 0)
        .unwrap();
    assert_eq!(read_all(&fs, big, h.unwrap()).unwrap(), pattern(8 << 20));
    let asked = slow.asked.lock().unwrap();
    let twice: Vec<_> = asked.iter().filter(|(_, n)| **n > 1).collect();
    assert!(asked.len() > 32, "{} objects", asked.len());
    assert!(twice.is_empty(), "asked more than once: {twice:?}");
    let batches = slow.batches.lock().unwrap();
    let most = batches.iter().max().copied().unwrap_or(0);
    assert!((2..=16).contains(&most), "{batches:?}");
}

/// An image with hard links loads every tree at mount (its link counts need them), and a
/// restored one replays its loads: trees are fetched many per request, not one round trip
/// each (hundreds, to the host's daemon, before a VM could start).
#[test]
fn an_image_with_hard_links_loads_its_trees_in_batches() {
    let f = fixture_of(|src| {
        for a in 0..10 {
            for b in 0..14 {
                let d = src.join(format!("d{a}/e{b}"));
                std::fs::create_dir_all(&d).unwrap();
                // Each tree its own (alike directories share one).
                std::fs::write(d.join(format!("f{a}-{b}")), b"x").unwrap();
            }
        }
        std::fs::write(src.join("d0/file"), b"x").unwrap();
        std::fs::hard_link(src.join("d0/file"), src.join("d9/e13/link")).unwrap();
    });
    let slow = Arc::new(Slow {
        store: f.store.clone(),
        asked: Default::default(),
        batches: Default::default(),
    });
    // Requests and objects asked since the last look; one-by-one reads are the objects not
    // asked in a batch.
    let seen = |from: &mut (usize, u32)| {
        let batches = slow.batches.lock().unwrap();
        let asked: u32 = slow.asked.lock().unwrap().values().sum();
        let new = &batches[from.0..];
        let batched: usize = new.iter().sum();
        let single = (asked - from.1) as usize - batched;
        let r = (new.len(), batched, single);
        *from = (batches.len(), asked);
        r
    };
    let mut at = (0, 0);
    let objects = Arc::new(Objects::new(slow.clone(), Arc::new(Counters::default())));
    let fs = ImageFs::new(objects, &f.version, Arc::default(), None, "test".into()).unwrap();
    let (requests, batched, single) = seen(&mut at);
    // 151 trees: the root, 10, then 140 in three requests of at most 64.
    assert_eq!(batched, 151);
    assert!(requests <= 5, "{requests} requests");
    assert_eq!(single, 1, "only the commit is read alone");
    let ctx = Context::new();
    let link = path(&fs, "d9/e13/link");
    assert_eq!(fs.getattr(&ctx, link, None).unwrap().0.st_nlink, 2);

    let objects = Arc::new(Objects::new(slow.clone(), Arc::new(Counters::default())));
    let back = ImageFs::restore(objects, &fs.save(), Arc::default(), "restored".into()).unwrap();
    let (requests, batched, single) = seen(&mut at);
    assert_eq!(batched, 151);
    assert!(
        requests <= 5,
        "restored: {requests} requests: {:?}",
        slow.batches.lock().unwrap()
    );
    assert_eq!(single, 1, "restored: only the commit is read alone");
    assert_eq!(back.getattr(&ctx, link, None).unwrap().0.st_nlink, 2);
    assert_eq!(path(&back, "d9/e13/link"), link);
}
