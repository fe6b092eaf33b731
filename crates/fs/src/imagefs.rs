//! The read-only file system over one image version (fuse-backend-rs `FileSystem`, so the
//! same code can serve /dev/fuse and, later, virtio-fs). Content is immutable: the kernel
//! may cache attributes, names and pages for as long as it likes.

use std::collections::HashMap;
use std::ffi::CStr;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, FsOptions, GetxattrReply, ListxattrReply, OpenOptions,
    SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};
use starling_image::manifest::{Commit, FileData};
use starling_store::ObjectId;

use crate::chunks::ChunkCache;
use crate::inodes::{Inode, Inodes, Kind};
use crate::objects::{Counters, FsError, ObjResult, Objects};
use crate::persist::{FsState, FS_STATE_FORMAT};
use crate::record::Recorder;
use starling_store::MAX_MANIFEST;

/// Immutable content: cache everything "forever".
const TTL: Duration = Duration::from_secs(86_400 * 365);

pub struct ImageFs {
    inodes: Inodes,
    chunks: Arc<ChunkCache>,
    readahead: ReadAhead,
    counters: Arc<Counters>,
    stats: starling_image::manifest::TreeStats,
    /// Open files: handle -> the chunks pinned for it, and where a sequential read goes next.
    open: Mutex<HashMap<u64, OpenFile>>,
    next_handle: AtomicU64,
    recorder: Option<Arc<Recorder>>,
    label: String,
    commit: ObjectId,
    /// The client does without OPENDIR (told at INIT).
    no_opendir: AtomicBool,
}

struct OpenFile {
    ino: u64,
    pinned: Vec<ObjectId>,
    next: u64,
    sequential: u32,
}

/// How far ahead of a sequential reader chunks are loaded, in bytes (measured: 2, 4 and 8 MiB
/// windows, 4 or 8 threads, read alike on a 2-core machine).
const READ_AHEAD: u64 = 4 << 20;
const READ_AHEAD_THREADS: usize = 4;
/// The most chunks one read-ahead thread asks for at once (1 MiB at the average chunk
/// size): a source with a round trip per request (the daemon's object socket) answers them
/// in one.
const READ_AHEAD_BATCH: usize = 16;

/// Background loading of the chunks after a sequential reader's position, so the reader
/// finds them decoded in memory instead of waiting on one disk or network round trip each.
struct ReadAhead {
    tx: Mutex<Option<std::sync::mpsc::Sender<(ObjectId, u32)>>>,
    pending: Arc<Pending>,
}

/// The chunks a read-ahead thread was asked for and has not finished: a reader that needs
/// one waits for it instead of fetching, decoding and hashing it a second time.
#[derive(Default)]
struct Pending {
    ids: Mutex<std::collections::HashSet<ObjectId>>,
    done: std::sync::Condvar,
}

/// Finishes every chunk of a read-ahead batch when dropped.
struct FinishAll<'a>(&'a Pending, Vec<ObjectId>);

impl Drop for FinishAll<'_> {
    fn drop(&mut self) {
        for id in &self.1 {
            self.0.finish(id);
        }
    }
}

/// The longest a reader waits on a read-ahead load before loading the chunk itself (the
/// load is bounded by the source's own timeout; this only guards against a lost wake-up).
const PENDING_WAIT: Duration = Duration::from_secs(60);

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<ObjectId>> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn finish(&self, id: &ObjectId) {
        self.lock().remove(id);
        self.done.notify_all();
    }

    /// Waits until `id` is not being loaded; whether it was.
    fn wait(&self, id: &ObjectId) -> bool {
        let g = self.lock();
        if !g.contains(id) {
            return false;
        }
        let _ = self
            .done
            .wait_timeout_while(g, PENDING_WAIT, |ids| ids.contains(id))
            .unwrap_or_else(|p| p.into_inner());
        true
    }
}

impl ReadAhead {
    fn start(objects: Arc<Objects>, chunks: Arc<ChunkCache>) -> ReadAhead {
        let (tx, rx) = std::sync::mpsc::channel::<(ObjectId, u32)>();
        let rx = Arc::new(Mutex::new(rx));
        let pending: Arc<Pending> = Arc::default();
        for i in 0..READ_AHEAD_THREADS {
            let (rx, objects, chunks, pending) =
                (rx.clone(), objects.clone(), chunks.clone(), pending.clone());
            let _ = std::thread::Builder::new()
                .name(format!("starling-ra-{i}"))
                .spawn(move || loop {
                    // The first chunk and what else is queued, under one hold of the
                    // queue: a thread that let go in between could find it taken by one
                    // waiting for the next chunk, and what it holds would wait with it
                    // (the reader that needs it asks for nothing more meanwhile).
                    let batch = {
                        let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
                        let Ok(first) = rx.recv() else { break };
                        let mut batch = vec![first];
                        while batch.len() < READ_AHEAD_BATCH {
                            let Ok(more) = rx.try_recv() else { break };
                            batch.push(more);
                        }
                        batch
                    };
                    // Whatever happens to this batch (a panic included), none of its
                    // chunks stays pending for readers to wait on.
                    let _finish = FinishAll(&pending, batch.iter().map(|(id, _)| *id).collect());
                    let (held, load): (Vec<_>, Vec<_>) =
                        batch.into_iter().partition(|(id, _)| chunks.contains(id));
                    for (id, _) in held {
                        pending.finish(&id);
                    }
                    // Failures are left to the reader, which reports them.
                    objects.chunks_each(&load, &mut |i, r| {
                        if let Ok(b) = r {
                            chunks.insert(load[i].0, b);
                        }
                        pending.finish(&load[i].0);
                    });
                });
        }
        ReadAhead {
            tx: Mutex::new(Some(tx)),
            pending,
        }
    }

    fn want(&self, id: ObjectId, len: u32) {
        if !self.pending.lock().insert(id) {
            return;
        }
        let sent = self
            .tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|tx| tx.send((id, len)).is_ok());
        // No thread will load it: nobody may wait for it.
        if !sent {
            self.pending.finish(&id);
        }
    }
}

impl Drop for ImageFs {
    fn drop(&mut self) {
        // Ends the read-ahead threads.
        self.readahead
            .tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }
}

/// Reads a chunk from the source, checks its length against the file's chunk list, and keeps
/// it in the decoded-chunk cache.
fn load_chunk(
    objects: &Objects,
    chunks: &ChunkCache,
    id: &ObjectId,
    len: u32,
) -> ObjResult<Arc<Vec<u8>>> {
    let b = objects.chunk(id, len)?;
    chunks.insert(*id, b.clone());
    Ok(b)
}

/// The chunk holding `offset`, given the chunks' start offsets: the last start <= offset.
fn chunk_at(offs: &[u64], offset: u64) -> usize {
    offs.partition_point(|&o| o <= offset).saturating_sub(1)
}

/// What every write is answered: the image is read-only (not ENOSYS, which tells a kernel
/// the operation is missing and makes it try others or give up on it for good).
fn erofs<T>() -> io::Result<T> {
    Err(io::Error::from_raw_os_error(libc::EROFS))
}

fn eio(label: &str, what: FsError) -> io::Error {
    eprintln!("starling-fs {label}: {what}");
    io::Error::from_raw_os_error(libc::EIO)
}

impl ImageFs {
    /// Opens the version `commit` from `objects` (its commit object is fetched now; trees
    /// and chunks when first used).
    pub fn new(
        objects: Arc<Objects>,
        commit: &ObjectId,
        counters: Arc<Counters>,
        recorder: Option<Arc<Recorder>>,
        label: String,
    ) -> ObjResult<ImageFs> {
        let fs = Self::open(objects, commit, counters, recorder, label, Vec::new())?;
        if fs.stats.hardlinks > 0 {
            fs.inodes.count_links()?;
        }
        Ok(fs)
    }

    fn open(
        objects: Arc<Objects>,
        commit: &ObjectId,
        counters: Arc<Counters>,
        recorder: Option<Arc<Recorder>>,
        label: String,
        loads: Vec<u64>,
    ) -> ObjResult<ImageFs> {
        let bytes = objects.manifest(commit)?;
        let c = Commit::decode(commit, &bytes)?;
        if let Some(r) = &recorder {
            r.touch(commit, MAX_MANIFEST);
            r.touch(&c.root, MAX_MANIFEST);
        }
        let chunks = Arc::new(ChunkCache::new(32 << 20));
        Ok(ImageFs {
            readahead: ReadAhead::start(objects.clone(), chunks.clone()),
            inodes: Inodes::restored(objects, c.root_meta.clone(), c.root, loads),
            chunks,
            counters,
            stats: c.stats,
            open: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            no_opendir: AtomicBool::new(false),
            recorder,
            label,
            commit: *commit,
        })
    }

    /// What a restored file system needs to answer the node ids and file handles its client
    /// already holds (see [`crate::persist`]).
    pub fn save(&self) -> FsState {
        let mut handles: Vec<(u64, u64)> = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(h, f)| (*h, f.ino))
            .collect();
        handles.sort_unstable();
        FsState {
            format: FS_STATE_FORMAT,
            commit: self.commit,
            loads: self.inodes.loads(),
            handles,
            next_handle: self.next_handle.load(Ordering::Relaxed),
        }
    }

    /// The file system `state` was saved from, numbering inodes and handles as it did. The
    /// directory loads are replayed when a request first needs them; hard-link counts are
    /// recounted now (that walk loads every directory anyway).
    pub fn restore(
        objects: Arc<Objects>,
        state: &FsState,
        counters: Arc<Counters>,
        label: String,
    ) -> ObjResult<ImageFs> {
        state.check()?;
        let fs = Self::open(
            objects,
            &state.commit,
            counters,
            None,
            label,
            state.loads.clone(),
        )?;
        if fs.stats.hardlinks > 0 {
            fs.inodes.replay()?;
            fs.inodes.count_links()?;
        }
        {
            let mut open = fs.open.lock().unwrap_or_else(|p| p.into_inner());
            for (h, ino) in &state.handles {
                // Chunks of files open across a restore are not pinned again: pins only keep
                // a size-limited cache from evicting what a reader is about to read.
                open.insert(
                    *h,
                    OpenFile {
                        ino: *ino,
                        pinned: Vec::new(),
                        next: 0,
                        sequential: 0,
                    },
                );
            }
        }
        fs.next_handle.store(state.next_handle, Ordering::Relaxed);
        Ok(fs)
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    fn node(&self, ino: u64) -> io::Result<Arc<Inode>> {
        self.inodes
            .node(ino)
            .map_err(|e| eio(&self.label, e))?
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
    }

    fn children(&self, dir: &Inode) -> io::Result<Arc<Vec<crate::inodes::Child>>> {
        if let (Some(r), Kind::Dir { tree }) = (&self.recorder, &dir.kind) {
            r.touch(tree, MAX_MANIFEST);
        }
        self.inodes.children(dir).map_err(|e| {
            Counters::add(&self.counters.errors, 1);
            eio(&self.label, e)
        })
    }

    fn attr(&self, n: &Inode) -> stat64 {
        // SAFETY: stat64 is a plain C struct of integers; all-zero is a valid value.
        let mut st: stat64 = unsafe { std::mem::zeroed() };
        let (ty, size, rdev) = match &n.kind {
            Kind::File { size, .. } => (libc::S_IFREG, *size, 0),
            Kind::Dir { .. } => (libc::S_IFDIR, 4096, 0),
            Kind::Symlink { target } => (libc::S_IFLNK, target.len() as u64, 0),
            Kind::CharDevice { rdev } => (libc::S_IFCHR, 0, *rdev),
            Kind::BlockDevice { rdev } => (libc::S_IFBLK, 0, *rdev),
            Kind::Fifo => (libc::S_IFIFO, 0, 0),
            Kind::Socket => (libc::S_IFSOCK, 0, 0),
        };
        st.st_ino = n.ino;
        st.st_mode = ty | (n.meta.mode & 0o7777);
        st.st_nlink = u64::from(n.nlink.load(Ordering::Relaxed));
        st.st_uid = n.meta.uid;
        st.st_gid = n.meta.gid;
        st.st_rdev = rdev;
        st.st_size = size as i64;
        st.st_blksize = 4096;
        st.st_blocks = size.div_ceil(512) as i64;
        st.st_mtime = n.meta.mtime_sec;
        st.st_mtime_nsec = i64::from(n.meta.mtime_nsec);
        st.st_ctime = n.meta.mtime_sec;
        st.st_ctime_nsec = i64::from(n.meta.mtime_nsec);
        st.st_atime = n.meta.mtime_sec;
        st.st_atime_nsec = i64::from(n.meta.mtime_nsec);
        st
    }

    fn entry(&self, n: &Inode) -> Entry {
        Entry {
            inode: n.ino,
            generation: 0,
            attr: self.attr(n),
            attr_flags: 0,
            attr_timeout: TTL,
            entry_timeout: TTL,
        }
    }

    fn chunk(&self, id: &ObjectId, len: u32) -> io::Result<Arc<Vec<u8>>> {
        // Every chunk a reader takes is recorded, those read ahead for it included.
        if let Some(r) = &self.recorder {
            r.touch(id, u64::from(len));
        }
        if let Some(b) = self.chunks.get(id) {
            return Ok(b);
        }
        // Being loaded ahead of this reader: take that load's result (on its failure, or
        // an eviction since, load it here and report the error).
        if self.readahead.pending.wait(id) {
            if let Some(b) = self.chunks.get(id) {
                return Ok(b);
            }
        }
        load_chunk(self.inodes.objects().as_ref(), &self.chunks, id, len).map_err(|e| {
            Counters::add(&self.counters.errors, 1);
            eio(&self.label, e)
        })
    }

    /// Records a read of [offset, end) on `handle`; true once the reader has read on from
    /// where it stopped at least twice in a row.
    fn sequential(&self, handle: u64, offset: u64, end: u64) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let Some(f) = open.get_mut(&handle) else {
            return false;
        };
        f.sequential = if offset == f.next {
            f.sequential + 1
        } else {
            0
        };
        f.next = end;
        f.sequential >= 2
    }

    fn list(
        &self,
        ino: u64,
        offset: u64,
        mut add: impl FnMut(DirEntry, &Inode) -> io::Result<usize>,
    ) -> io::Result<()> {
        let dir = self.node(ino)?;
        if !dir.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        let kids = self.children(&dir)?;
        // "." and ".." first (offsets 1 and 2), then the entries.
        for (i, name, ino) in [(0u64, &b"."[..], dir.ino), (1, &b".."[..], dir.parent)] {
            if offset <= i {
                let n = self.node(ino)?;
                let de = DirEntry {
                    ino,
                    offset: i + 1,
                    type_: u32::from(libc::DT_DIR),
                    name,
                };
                if add(de, &n)? == 0 {
                    return Ok(());
                }
            }
        }
        for (i, c) in kids
            .iter()
            .enumerate()
            .skip(offset.saturating_sub(2) as usize)
        {
            let i = i + 2;
            let target = self
                .inodes
                .resolve(c)
                .map_err(|e| eio(&self.label, e))
                .and_then(|t| self.node(t))?;
            let type_ = match target.kind {
                Kind::File { .. } => libc::DT_REG,
                Kind::Dir { .. } => libc::DT_DIR,
                Kind::Symlink { .. } => libc::DT_LNK,
                Kind::CharDevice { .. } => libc::DT_CHR,
                Kind::BlockDevice { .. } => libc::DT_BLK,
                Kind::Fifo => libc::DT_FIFO,
                Kind::Socket => libc::DT_SOCK,
            };
            let de = DirEntry {
                ino: target.ino,
                offset: i as u64 + 1,
                type_: u32::from(type_),
                name: &c.name,
            };
            if add(de, &target)? == 0 {
                break;
            }
        }
        Ok(())
    }
}

impl ImageFs {
    /// Whether a READ of `size` bytes at `offset` of `ino` is answered from memory, waiting
    /// on no object: a transport may answer it on the thread that saw it, sparing the hand-off
    /// to a worker and back (for virtio-fs, two thread wake-ups per request).
    pub fn read_is_ready(&self, ino: u64, offset: u64, size: u32) -> bool {
        let Some(n) = self.inodes.get(ino) else {
            return false;
        };
        let Kind::File { size: fsize, data } = &n.kind else {
            // Answered with an error at once.
            return true;
        };
        let FileData::Chunks(c) = data else {
            return true;
        };
        let end = (*fsize).min(offset.saturating_add(u64::from(size)));
        let offs = n.offsets();
        let from = chunk_at(offs, offset);
        // At or past the end, nothing to load: an empty span.
        let to = offs.partition_point(|&o| o < end).max(from);
        c.get(from..to)
            .is_some_and(|span| span.iter().all(|r| self.chunks.contains(&r.id)))
    }

    /// Whether a READDIR(PLUS) of `ino` from `offset` is answered from memory: the
    /// directory's tree is loaded and every entry from there on is numbered. A transport may
    /// answer it on the thread that saw it, as [`Self::read_is_ready`]'s READs: a walk's
    /// every listing but a directory's first page is (its later pages and its end).
    pub fn listing_is_ready(&self, ino: u64, offset: u64) -> bool {
        match self.loaded_entries(ino) {
            Err(ready) => ready,
            Ok((dir, kids)) => {
                self.inodes.get(dir.parent).is_some()
                    && kids
                        .iter()
                        .skip(offset.saturating_sub(2) as usize)
                        .all(|c| self.inodes.is_resolved(c))
            }
        }
    }

    /// A directory and its entries when it is numbered and its tree loaded; else whether a
    /// request about it is ready all the same (not numbered: no, a worker's; not a
    /// directory: yes, answered with an error at once).
    fn loaded_entries(
        &self,
        ino: u64,
    ) -> Result<(Arc<Inode>, Arc<Vec<crate::inodes::Child>>), bool> {
        let dir = self.inodes.get(ino).ok_or(false)?;
        if !dir.is_dir() {
            return Err(true);
        }
        let kids = self.inodes.loaded_children(&dir).ok_or(false)?;
        Ok((dir, kids))
    }

    /// Whether `ino` is numbered: a request about it alone (GETATTR, OPEN, READLINK, …)
    /// is answered from memory. A restored file system numbers by replaying loads.
    pub fn is_numbered(&self, ino: u64) -> bool {
        self.inodes.get(ino).is_some()
    }

    /// Whether a LOOKUP of `name` in `parent` is answered from memory: the parent's tree is
    /// loaded and the name, if there, resolved.
    pub fn lookup_is_ready(&self, parent: u64, name: &[u8]) -> bool {
        match self.loaded_entries(parent) {
            Err(ready) => ready,
            Ok((_, kids)) => match kids.iter().find(|c| c.name == name) {
                Some(c) => self.inodes.is_resolved(c),
                // ENOENT at once.
                None => true,
            },
        }
    }

    /// ENOSYS when the image has no extended attributes at all: a FUSE client then answers
    /// every later xattr call itself, as a file system without xattr support. Overlayfs asks
    /// each file it looks up for `trusted.overlay.metacopy`, and each ask is a round trip.
    fn xattrs_exist(&self) -> io::Result<()> {
        if self.stats.xattrs == Some(0) {
            return Err(io::Error::from_raw_os_error(libc::ENOSYS));
        }
        Ok(())
    }
}

impl FileSystem for ImageFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        // Every READDIR is a READDIRPLUS (not only a directory's first, as READDIRPLUS_AUTO
        // would have it): entries come with their attributes, so a walk needs no LOOKUP per
        // name. Each request is a round trip (for virtio-fs, a guest exit).
        let want = FsOptions::ASYNC_READ
            | FsOptions::PARALLEL_DIROPS
            | FsOptions::DO_READDIRPLUS
            | FsOptions::CACHE_SYMLINKS
            | FsOptions::MAX_PAGES
            | FsOptions::EXPORT_SUPPORT;
        // A client that can do without OPENDIR (and so RELEASEDIR) is told so at its first
        // one: directories need no handle here.
        self.no_opendir.store(
            capable.contains(FsOptions::ZERO_MESSAGE_OPENDIR),
            Ordering::Relaxed,
        );
        Ok(capable & want)
    }

    fn lookup(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        let dir = self.node(parent)?;
        if !dir.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        let name = name.to_bytes();
        let found = match name {
            b"." => Some(dir.ino),
            b".." => Some(dir.parent),
            _ => {
                self.children(&dir)?;
                self.inodes
                    .lookup(&dir, name)
                    .map_err(|e| eio(&self.label, e))?
            }
        };
        match found {
            Some(ino) => Ok(self.entry(&*self.node(ino)?)),
            None => Err(io::Error::from_raw_os_error(libc::ENOENT)),
        }
    }

    fn getattr(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        Ok((self.attr(&*self.node(inode)?), TTL))
    }

    fn readlink(&self, _ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        match &self.node(inode)?.kind {
            Kind::Symlink { target } => Ok(target.clone()),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    fn open(
        &self,
        _ctx: &Context,
        inode: u64,
        flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let n = self.node(inode)?;
        if (flags as i32 & libc::O_ACCMODE) != libc::O_RDONLY || flags as i32 & libc::O_TRUNC != 0 {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        let ids: Vec<ObjectId> = match &n.kind {
            Kind::File {
                data: FileData::Chunks(c),
                ..
            } => c.iter().map(|c| c.id).collect(),
            Kind::File { .. } => Vec::new(),
            Kind::Dir { .. } => return Err(io::Error::from_raw_os_error(libc::EISDIR)),
            _ => return Err(io::Error::from_raw_os_error(libc::ENXIO)),
        };
        self.inodes.objects().pin(&ids);
        let h = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.open.lock().unwrap_or_else(|p| p.into_inner()).insert(
            h,
            OpenFile {
                ino: inode,
                pinned: ids,
                next: 0,
                sequential: 0,
            },
        );
        Ok((Some(h), OpenOptions::KEEP_CACHE, None))
    }

    fn release(
        &self,
        _ctx: &Context,
        _inode: u64,
        _flags: u32,
        handle: u64,
        _flush: bool,
        _flock_release: bool,
        _lock_owner: Option<u64>,
    ) -> io::Result<()> {
        let ids = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&handle);
        if let Some(f) = ids {
            self.inodes.objects().unpin(&f.pinned);
        }
        Ok(())
    }

    fn read(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        // No client asks for more than its reply can hold (a kernel's buffer is the size it
        // asks for); a request that does would only make chunks load for nothing.
        if size as usize > w.available_bytes() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let n = self.node(inode)?;
        let Kind::File { size: fsize, data } = &n.kind else {
            return Err(io::Error::from_raw_os_error(libc::EISDIR));
        };
        // Reads come through a handle OPEN gave for this inode (and a restored file system
        // keeps the handles its client holds).
        let open = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&handle)
            .is_some_and(|f| f.ino == inode);
        if !open {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        Counters::add(&self.counters.reads, 1);
        if offset >= *fsize {
            return Ok(0);
        }
        let end = (*fsize).min(offset + u64::from(size));
        let mut done = 0usize;
        match data {
            FileData::Inline(b) => {
                let s = &b[offset as usize..end as usize];
                w.write_all(s)?;
                done = s.len();
            }
            FileData::Chunks(c) => {
                let offs = n.offsets();
                let mut i = chunk_at(offs, offset);
                // A reader going forward gets the next chunks loaded in the background.
                if self.sequential(handle, offset, end) {
                    let mut j = i;
                    while j < c.len() && offs[j] < end + READ_AHEAD {
                        if offs[j] >= offset && self.chunks.get(&c[j].id).is_none() {
                            self.readahead.want(c[j].id, c[j].len);
                        }
                        j += 1;
                    }
                }
                let mut at = offset;
                while at < end && i < c.len() {
                    let bytes = self.chunk(&c[i].id, c[i].len)?;
                    let from = (at - offs[i]) as usize;
                    let to = ((end - offs[i]) as usize).min(bytes.len());
                    w.write_all(&bytes[from..to])?;
                    done += to - from;
                    at += (to - from) as u64;
                    i += 1;
                }
            }
        }
        Counters::add(&self.counters.served, done as u64);
        Ok(done)
    }

    fn opendir(
        &self,
        _ctx: &Context,
        inode: u64,
        _flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let n = self.node(inode)?;
        if !n.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        if self.no_opendir.load(Ordering::Relaxed) {
            // The kernel stops sending OPENDIR and RELEASEDIR, and caches directories as
            // KEEP_CACHE | CACHE_DIR below would have asked.
            return Err(io::Error::from_raw_os_error(libc::ENOSYS));
        }
        Ok((None, OpenOptions::KEEP_CACHE | OpenOptions::CACHE_DIR))
    }

    fn readdir(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.list(inode, offset, |de, _| add_entry(de))
    }

    fn readdirplus(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.list(inode, offset, |de, n| add_entry(de, self.entry(n)))
    }

    fn getxattr(
        &self,
        _ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.xattrs_exist()?;
        let n = self.node(inode)?;
        let x = n
            .meta
            .xattrs
            .iter()
            .find(|x| x.name.as_slice() == name.to_bytes())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENODATA))?;
        if size == 0 {
            Ok(GetxattrReply::Count(x.value.len() as u32))
        } else if (size as usize) < x.value.len() {
            Err(io::Error::from_raw_os_error(libc::ERANGE))
        } else {
            Ok(GetxattrReply::Value(x.value.to_vec()))
        }
    }

    fn listxattr(&self, _ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        self.xattrs_exist()?;
        let n = self.node(inode)?;
        let mut names = Vec::new();
        for x in &n.meta.xattrs {
            names.extend_from_slice(&x.name);
            names.push(0);
        }
        if size == 0 {
            Ok(ListxattrReply::Count(names.len() as u32))
        } else if (size as usize) < names.len() {
            Err(io::Error::from_raw_os_error(libc::ERANGE))
        } else {
            Ok(ListxattrReply::Names(names))
        }
    }

    fn statfs(&self, _ctx: &Context, _inode: u64) -> io::Result<statvfs64> {
        // SAFETY: statvfs64 is a plain C struct of integers; all-zero is a valid value.
        let mut st: statvfs64 = unsafe { std::mem::zeroed() };
        st.f_bsize = 4096;
        st.f_frsize = 4096;
        st.f_blocks = self.stats.bytes.div_ceil(4096);
        st.f_files = self.stats.files + self.stats.dirs + self.stats.symlinks + self.stats.special;
        st.f_namemax = 255;
        st.f_flag = libc::ST_RDONLY;
        Ok(st)
    }

    // Writes of every kind are refused.
    fn setattr(
        &self,
        _ctx: &Context,
        _inode: u64,
        _attr: stat64,
        _handle: Option<u64>,
        _valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        erofs()
    }

    fn symlink(&self, _: &Context, _: &CStr, _: u64, _: &CStr) -> io::Result<Entry> {
        erofs()
    }

    fn mknod(&self, _: &Context, _: u64, _: &CStr, _: u32, _: u32, _: u32) -> io::Result<Entry> {
        erofs()
    }

    fn mkdir(&self, _: &Context, _: u64, _: &CStr, _: u32, _: u32) -> io::Result<Entry> {
        erofs()
    }

    fn unlink(&self, _: &Context, _: u64, _: &CStr) -> io::Result<()> {
        erofs()
    }

    fn rmdir(&self, _: &Context, _: u64, _: &CStr) -> io::Result<()> {
        erofs()
    }

    fn rename(&self, _: &Context, _: u64, _: &CStr, _: u64, _: &CStr, _: u32) -> io::Result<()> {
        erofs()
    }

    fn link(&self, _: &Context, _: u64, _: u64, _: &CStr) -> io::Result<Entry> {
        erofs()
    }

    fn create(
        &self,
        _: &Context,
        _: u64,
        _: &CStr,
        _: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        erofs()
    }

    fn write(
        &self,
        _ctx: &Context,
        _inode: u64,
        _handle: u64,
        _r: &mut dyn ZeroCopyReader,
        _size: u32,
        _offset: u64,
        _lock_owner: Option<u64>,
        _delayed_write: bool,
        _flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<usize> {
        erofs()
    }

    fn fallocate(&self, _: &Context, _: u64, _: u64, _: u32, _: u64, _: u64) -> io::Result<()> {
        erofs()
    }

    fn setxattr(&self, _: &Context, _: u64, _: &CStr, _: &[u8], _: u32) -> io::Result<()> {
        erofs()
    }

    fn removexattr(&self, _: &Context, _: u64, _: &CStr) -> io::Result<()> {
        erofs()
    }

    fn access(&self, _ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        // Permission bits are checked by the kernel (default_permissions); only writes are
        // refused here.
        self.node(inode)?;
        if mask as i32 & libc::W_OK != 0 {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        Ok(())
    }
}
