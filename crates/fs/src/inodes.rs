//! The inode table of a mounted image, filled lazily: a directory's entries become inodes
//! when its tree is first needed (lookup, readdir), so a mount reads only the trees a
//! workload walks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use starling_image::manifest::{FileData, Meta, Node, Tree};
use starling_store::ObjectId;

use crate::objects::{FsError, ObjResult, Objects};

/// Manifests (trees, commits) are never larger than this.
pub const ROOT: u64 = 1;

/// The most trees fetched in one request when many are loaded at once (the object socket's
/// own bound per request).
const LOAD_BATCH: usize = 64;

pub enum Kind {
    File { size: u64, data: FileData },
    Dir { tree: ObjectId },
    Symlink { target: Vec<u8> },
    CharDevice { rdev: u64 },
    BlockDevice { rdev: u64 },
    Fifo,
    Socket,
}

pub struct Inode {
    pub ino: u64,
    pub parent: u64,
    pub meta: Meta,
    pub kind: Kind,
    /// Link count: 1, more for hard-link groups (counted at mount); for a directory 2 +
    /// subdirectories once its entries are loaded, 1 ("unknown", as btrfs and many network
    /// file systems say) before, so a metadata walk loads only the trees it enters.
    pub nlink: AtomicU32,
    children: Mutex<Option<Arc<Vec<Child>>>>,
    /// Start offset of each chunk, for files.
    offsets: OnceLock<Vec<u64>>,
}

pub struct Child {
    pub name: Vec<u8>,
    pub target: ChildTarget,
}

pub enum ChildTarget {
    Ino(u64),
    /// A hard link: the `/`-joined path of the group's first name.
    Link(Vec<u8>),
}

impl Inode {
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir { .. })
    }

    /// Chunk start offsets (file size at the end).
    pub fn offsets(&self) -> &[u64] {
        self.offsets.get_or_init(|| match &self.kind {
            Kind::File {
                data: FileData::Chunks(c),
                ..
            } => {
                let mut v = Vec::with_capacity(c.len() + 1);
                let mut at = 0u64;
                for ch in c {
                    v.push(at);
                    at += u64::from(ch.len);
                }
                v.push(at);
                v
            }
            _ => Vec::new(),
        })
    }
}

/// Inode numbers are handed out in the order directories are loaded (each directory's
/// entries get the next numbers when its tree is first read), so the table is a function of
/// that order alone: recording it (`loads`) and loading the same directories again in the
/// same order in another process (`replay`) gives every inode its old number. That is how a
/// restored or forked monitor answers the node ids its guest already holds.
pub struct Inodes {
    objects: Arc<Objects>,
    table: RwLock<Vec<Arc<Inode>>>,
    links: Mutex<HashMap<Vec<u8>, u64>>,
    /// Directories in the order their entries were numbered.
    loads: Mutex<Vec<u64>>,
    /// Loads still to replay (a restored table), taken whole by the first request that
    /// needs one: a directory loaded out of order would number its entries differently.
    pending: Mutex<Option<Vec<u64>>>,
    replayed: AtomicBool,
}

impl Inodes {
    pub fn new(objects: Arc<Objects>, root_meta: Meta, root_tree: ObjectId) -> Inodes {
        let root = Arc::new(Inode {
            ino: ROOT,
            parent: ROOT,
            meta: root_meta,
            kind: Kind::Dir { tree: root_tree },
            nlink: AtomicU32::new(2),
            children: Mutex::new(None),
            offsets: OnceLock::new(),
        });
        Inodes {
            objects,
            table: RwLock::new(vec![root]),
            links: Mutex::new(HashMap::new()),
            loads: Mutex::new(Vec::new()),
            pending: Mutex::new(None),
            replayed: AtomicBool::new(true),
        }
    }

    /// A table that numbers like the one that recorded `loads` (see [`Inodes`]); the loads
    /// are replayed when first needed.
    pub fn restored(
        objects: Arc<Objects>,
        root_meta: Meta,
        root_tree: ObjectId,
        loads: Vec<u64>,
    ) -> Inodes {
        let i = Inodes::new(objects, root_meta, root_tree);
        if !loads.is_empty() {
            *i.pending.lock().unwrap_or_else(|p| p.into_inner()) = Some(loads);
            i.replayed.store(false, Ordering::Release);
        }
        i
    }

    /// The directories loaded so far, in order.
    pub fn loads(&self) -> Vec<u64> {
        // A table still waiting for its replay has those loads ahead of the new ones.
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let mut v = self.loads.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(p) = pending.as_ref() {
            v.extend_from_slice(p);
        }
        v
    }

    /// Replays the loads of a restored table (once; requests that need it wait).
    pub fn replay(&self) -> ObjResult<()> {
        if self.replayed.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let Some(list) = pending.take() else {
            return Ok(());
        };
        if let Err((i, e)) = self.load_in_order(&list) {
            // Tried again by the next request (an object may be reachable again).
            *pending = Some(list[i..].to_vec());
            return Err(e);
        }
        self.replayed.store(true, Ordering::Release);
        Ok(())
    }

    pub fn objects(&self) -> &Arc<Objects> {
        &self.objects
    }

    /// The inode numbered `ino`, replaying a restored table's loads first if it is not
    /// numbered yet.
    pub fn node(&self, ino: u64) -> ObjResult<Option<Arc<Inode>>> {
        if let Some(n) = self.get(ino) {
            return Ok(Some(n));
        }
        self.replay()?;
        Ok(self.get(ino))
    }

    pub fn get(&self, ino: u64) -> Option<Arc<Inode>> {
        let t = self.table.read().unwrap_or_else(|p| p.into_inner());
        usize::try_from(ino)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| t.get(i).cloned())
    }

    pub fn count(&self) -> usize {
        self.table.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// A directory's entries if its tree is loaded, without loading it.
    pub fn loaded_children(&self, dir: &Inode) -> Option<Arc<Vec<Child>>> {
        dir.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the inode a child names is known without loading a tree (a hard link's
    /// target is known once resolved).
    pub fn is_resolved(&self, child: &Child) -> bool {
        match &child.target {
            ChildTarget::Ino(i) => self.get(*i).is_some(),
            ChildTarget::Link(path) => self
                .links
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(path),
        }
    }

    /// A directory's entries, loading its tree on first use. Concurrent first uses of one
    /// directory load it once (the others wait on its lock).
    pub fn children(&self, dir: &Inode) -> ObjResult<Arc<Vec<Child>>> {
        if let Some(c) = dir
            .children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return Ok(c.clone());
        }
        self.replay()?;
        self.load(dir)
    }

    fn load(&self, dir: &Inode) -> ObjResult<Arc<Vec<Child>>> {
        self.load_with(dir, None)
    }

    /// Loads `dirs` in this order (each numbered by a load before it), the trees of as many
    /// as are numbered at a time fetched in one request: a mount of an image with hard links
    /// loads every tree, and a restored one replays its loads, hundreds of round trips to
    /// the host's daemon one by one. On failure, the index of the directory not loaded.
    fn load_in_order(&self, dirs: &[u64]) -> Result<(), (usize, FsError)> {
        let mut at = 0;
        while at < dirs.len() {
            let run: Vec<Arc<Inode>> = dirs[at..]
                .iter()
                .take(LOAD_BATCH)
                .map_while(|ino| self.get(*ino))
                .collect();
            if run.is_empty() {
                let ino = dirs[at];
                return Err((
                    at,
                    FsError::Invalid(format!(
                        "restored inode table: directory {ino} is not numbered by the loads before it"
                    )),
                ));
            }
            // Directories alike (empty ones, say) share a tree: asked once.
            let mut wanted: Vec<ObjectId> = run
                .iter()
                .filter(|d| self.loaded_children(d).is_none())
                .filter_map(|d| match &d.kind {
                    Kind::Dir { tree } => Some(*tree),
                    _ => None,
                })
                .collect();
            wanted.sort_unstable();
            wanted.dedup();
            let mut fetched: HashMap<ObjectId, Arc<Vec<u8>>> = HashMap::new();
            if !wanted.is_empty() {
                self.objects.manifests_each(&wanted, &mut |i, r| {
                    // A failure is met again by the load of its directory, which names it.
                    if let Ok(b) = r {
                        fetched.insert(wanted[i], b);
                    }
                });
            }
            for (k, d) in run.iter().enumerate() {
                let bytes = match &d.kind {
                    Kind::Dir { tree } => fetched.get(tree).cloned(),
                    _ => None,
                };
                self.load_with(d, bytes).map_err(|e| (at + k, e))?;
            }
            at += run.len();
        }
        Ok(())
    }

    /// Loads `dir`'s tree: from `bytes` when they were fetched ahead, else from the source.
    fn load_with(&self, dir: &Inode, bytes: Option<Arc<Vec<u8>>>) -> ObjResult<Arc<Vec<Child>>> {
        let Kind::Dir { tree } = &dir.kind else {
            return Err(FsError::Invalid(format!(
                "inode {} is not a directory",
                dir.ino
            )));
        };
        let mut slot = dir.children.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let bytes = match bytes {
            Some(b) => b,
            None => self.objects.manifest(tree)?,
        };
        let t = Tree::decode(tree, &bytes)?;
        let mut out = Vec::with_capacity(t.entries.len());
        let mut subdirs = 0;
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        for e in t.entries {
            let name = e.name.into_vec();
            let (meta, kind) = match e.node {
                Node::Hardlink { target } => {
                    out.push(Child {
                        name,
                        target: ChildTarget::Link(target.into_vec()),
                    });
                    continue;
                }
                Node::File { meta, size, data } => (meta, Kind::File { size, data }),
                Node::Dir { meta, tree } => {
                    subdirs += 1;
                    (meta, Kind::Dir { tree })
                }
                Node::Symlink { meta, target } => (
                    meta,
                    Kind::Symlink {
                        target: target.into_vec(),
                    },
                ),
                Node::CharDevice { meta, rdev } => (meta, Kind::CharDevice { rdev }),
                Node::BlockDevice { meta, rdev } => (meta, Kind::BlockDevice { rdev }),
                Node::Fifo { meta } => (meta, Kind::Fifo),
                Node::Socket { meta } => (meta, Kind::Socket),
            };
            let ino = table.len() as u64 + 1;
            let nlink = 1;
            table.push(Arc::new(Inode {
                ino,
                parent: dir.ino,
                meta,
                kind,
                nlink: AtomicU32::new(nlink),
                children: Mutex::new(None),
                offsets: OnceLock::new(),
            }));
            out.push(Child {
                name,
                target: ChildTarget::Ino(ino),
            });
        }
        self.loads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(dir.ino);
        drop(table);
        dir.nlink.store(2 + subdirs, Ordering::Relaxed);
        let c = Arc::new(out);
        *slot = Some(c.clone());
        Ok(c)
    }

    /// The inode a child names (following a hard link to its group's first name).
    pub fn resolve(&self, child: &Child) -> ObjResult<u64> {
        match &child.target {
            ChildTarget::Ino(i) => Ok(*i),
            ChildTarget::Link(path) => self.resolve_path(path),
        }
    }

    fn resolve_path(&self, path: &[u8]) -> ObjResult<u64> {
        if let Some(i) = self
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
        {
            return Ok(*i);
        }
        let mut ino = ROOT;
        for comp in path.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
            let dir = self
                .get(ino)
                .ok_or_else(|| FsError::Invalid("inode vanished".into()))?;
            let kids = self.children(&dir)?;
            let c = kids.iter().find(|c| c.name == comp).ok_or_else(|| {
                FsError::Invalid(format!(
                    "hard link target {} is not in the image",
                    String::from_utf8_lossy(path)
                ))
            })?;
            ino = match c.target {
                ChildTarget::Ino(i) => i,
                ChildTarget::Link(_) => {
                    return Err(FsError::Invalid(format!(
                        "hard link target {} is itself a link",
                        String::from_utf8_lossy(path)
                    )))
                }
            };
        }
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_vec(), ino);
        Ok(ino)
    }

    pub fn lookup(&self, dir: &Inode, name: &[u8]) -> ObjResult<Option<u64>> {
        let kids = self.children(dir)?;
        match kids.binary_search_by(|c| c.name.as_slice().cmp(name)) {
            Ok(i) => self.resolve(&kids[i]).map(Some),
            // Trees are sorted by name, but do not rely on it for correctness.
            Err(_) => match kids.iter().find(|c| c.name == name) {
                Some(c) => self.resolve(c).map(Some),
                None => Ok(None),
            },
        }
    }

    /// Loads every directory and counts hard links, so files in a link group report their
    /// true link count. Only images that have hard links pay for this walk (at mount).
    pub fn count_links(&self) -> ObjResult<()> {
        // Level by level, each level's trees fetched in batches.
        let mut level = vec![ROOT];
        let mut links = Vec::new();
        while !level.is_empty() {
            self.load_in_order(&level).map_err(|(_, e)| e)?;
            let mut next = Vec::new();
            for ino in &level {
                let dir = self
                    .get(*ino)
                    .ok_or_else(|| FsError::Invalid("inode vanished".into()))?;
                for c in self.children(&dir)?.iter() {
                    match &c.target {
                        ChildTarget::Ino(i) => {
                            if self.get(*i).is_some_and(|n| n.is_dir()) {
                                next.push(*i);
                            }
                        }
                        ChildTarget::Link(path) => links.push(path.clone()),
                    }
                }
            }
            level = next;
        }
        // Every tree is loaded: resolving a link fetches nothing.
        for path in &links {
            let t = self.resolve_path(path)?;
            if let Some(n) = self.get(t) {
                n.nlink.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}
