//! Import of a disk image (raw or qcow2, whole-disk or partitioned) holding ext2/3/4, read in
//! userspace: no loop device, no mount, no root.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::Ordering;

use rayon::prelude::*;
use serde_bytes::ByteBuf;
use starling_disk::ext4::{Ext4, Inode};
use starling_store::Txn;

use crate::chunk::{store_content, ChunkParams, Progress};
use crate::error::{Error, Result};
use crate::manifest::{FileData, Meta, Node, Xattr};
use crate::path;
use crate::stage::{self, StageDir};

/// The staged tree, the stored file contents it refers to, and where it came from.
pub(crate) type Staged = (StageDir, Vec<(u64, FileData)>, DiskSource);

/// What was read: for the commit's source description.
pub(crate) struct DiskSource {
    pub format: &'static str,
    pub partition: Option<u32>,
}

pub(crate) fn stage(
    txn: &Txn<'_>,
    source: &Path,
    partition: Option<u32>,
    allow_backing: bool,
    params: &ChunkParams,
    progress: &Progress,
) -> Result<Staged> {
    let disk = |e| Error::Disk {
        source_path: source.to_path_buf(),
        source: e,
    };
    let (dev, format) = starling_disk::device::open(source, allow_backing).map_err(disk)?;
    let (fsdev, part) = starling_disk::partition::root_filesystem(dev, partition).map_err(disk)?;
    let fs = Ext4::open(fsdev).map_err(disk)?;
    let root_inode = fs.root().map_err(|e| Error::DiskEntry {
        source_path: source.to_path_buf(),
        path: "/".into(),
        source: e,
    })?;
    let mut walk = Walk {
        fs: &fs,
        source,
        holders: HashMap::new(),
        jobs: Vec::new(),
        depth: 0,
        on_path: HashSet::from([root_inode.ino]),
    };
    let mut root = StageDir {
        meta: walk.meta(&root_inode, &[])?,
        children: Default::default(),
    };
    walk.dir(&root_inode, &mut Vec::new(), &mut root)?;
    let jobs = std::mem::take(&mut walk.jobs);
    let contents = jobs
        .par_iter()
        .map(|(inode, at)| {
            let entry = |e| Error::DiskEntry {
                source_path: source.to_path_buf(),
                path: format!("/{}", path::display(at)),
                source: e,
            };
            let what = |e: std::io::Error| {
                entry(starling_disk::Error::Corrupt {
                    what: format!("ext4 inode {}", inode.ino),
                    detail: e.to_string(),
                })
            };
            let reader = fs.file_reader(inode).map_err(entry)?;
            let r = store_content(txn, params, reader, progress, &what);
            progress.files.fetch_add(1, Ordering::Relaxed);
            r
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((
        root,
        contents,
        DiskSource {
            format: format.name(),
            partition: part.map(|p| p.number),
        },
    ))
}

const MAX_DEPTH: usize = 4096;

struct Walk<'a> {
    fs: &'a Ext4,
    source: &'a Path,
    /// Inode → the first path met (depth-first name order), which holds it.
    holders: HashMap<u32, Vec<u8>>,
    /// Regular files to read once the walk is done, with their paths.
    jobs: Vec<(Inode, Vec<u8>)>,
    depth: usize,
    /// Directories from the root to here: an entry naming one of them is a loop.
    on_path: HashSet<u32>,
}

impl Walk<'_> {
    /// `e`, met at `comps` inside the image.
    fn err(&self, e: starling_disk::Error, comps: &[Vec<u8>]) -> Error {
        Error::DiskEntry {
            source_path: self.source.to_path_buf(),
            path: format!("/{}", path::display(&path::join(comps))),
            source: e,
        }
    }

    fn meta(&self, inode: &Inode, comps: &[Vec<u8>]) -> Result<Meta> {
        let xattrs = self
            .fs
            .xattrs(inode)
            .map_err(|e| self.err(e, comps))?
            .into_iter()
            .map(|(name, value)| Xattr {
                name: ByteBuf::from(name),
                value: ByteBuf::from(value),
            })
            .collect();
        Ok(Meta {
            mode: inode.perm(),
            uid: inode.uid,
            gid: inode.gid,
            mtime_sec: inode.mtime_sec,
            mtime_nsec: inode.mtime_nsec,
            xattrs,
        })
    }

    fn dir(&mut self, dir: &Inode, comps: &mut Vec<Vec<u8>>, stage: &mut StageDir) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err(
                starling_disk::Error::Corrupt {
                    what: "the ext4 directory tree".into(),
                    detail: format!("deeper than {MAX_DEPTH} levels (a directory loop?)"),
                },
                comps,
            ));
        }
        for (name, ino) in self.fs.read_dir(dir).map_err(|e| self.err(e, comps))? {
            comps.push(name.clone());
            let inode = self.fs.inode(ino).map_err(|e| self.err(e, comps));
            comps.pop();
            let inode = inode?;
            // mkfs makes an empty /lost+found in every ext file system; it is not content.
            if comps.is_empty() && name == b"lost+found" && inode.is_dir() {
                let empty = self
                    .fs
                    .read_dir(&inode)
                    .map_err(|e| self.err(e, std::slice::from_ref(&name)))?
                    .is_empty();
                if empty {
                    continue;
                }
            }
            comps.push(name.clone());
            let item = self.entry(inode, comps)?;
            stage.children.insert(name, item);
            comps.pop();
        }
        self.depth -= 1;
        Ok(())
    }

    fn entry(&mut self, inode: Inode, comps: &mut Vec<Vec<u8>>) -> Result<stage::Staged> {
        if inode.is_dir() {
            if !self.on_path.insert(inode.ino) {
                return Err(self.err(
                    starling_disk::Error::Corrupt {
                        what: "the ext4 directory tree".into(),
                        detail: "a directory that contains itself".into(),
                    },
                    comps,
                ));
            }
            let mut sub = StageDir {
                meta: self.meta(&inode, comps)?,
                children: Default::default(),
            };
            self.dir(&inode, comps, &mut sub)?;
            self.on_path.remove(&inode.ino);
            return Ok(stage::Staged::Dir(sub));
        }
        if inode.links > 1 {
            if let Some(first) = self.holders.get(&inode.ino) {
                return Ok(stage::Staged::Node(Node::Hardlink {
                    target: ByteBuf::from(first.clone()),
                }));
            }
            self.holders.insert(inode.ino, path::join(comps));
        }
        let meta = self.meta(&inode, comps)?;
        use starling_disk::ext4::Kind;
        Ok(match inode.file_kind() {
            Kind::File => {
                self.jobs.push((inode, path::join(comps)));
                stage::Staged::Pending {
                    meta,
                    job: self.jobs.len() - 1,
                }
            }
            Kind::Symlink => stage::Staged::Node(Node::Symlink {
                meta,
                target: ByteBuf::from(self.fs.read_link(&inode).map_err(|e| self.err(e, comps))?),
            }),
            Kind::CharDevice => stage::Staged::Node(Node::CharDevice {
                meta,
                rdev: inode.rdev(),
            }),
            Kind::BlockDevice => stage::Staged::Node(Node::BlockDevice {
                meta,
                rdev: inode.rdev(),
            }),
            Kind::Fifo => stage::Staged::Node(Node::Fifo { meta }),
            Kind::Socket => stage::Staged::Node(Node::Socket { meta }),
            Kind::Dir | Kind::Unknown => {
                return Err(self.err(
                    starling_disk::Error::Corrupt {
                        what: format!("ext4 inode {}", inode.ino),
                        detail: format!("unknown file type in mode 0o{:o}", inode.mode),
                    },
                    comps,
                ))
            }
        })
    }
}

/// Whether `head` (the first 2 KiB of a file) looks like a disk image we can read.
pub(crate) fn looks_like_disk(head: &[u8]) -> bool {
    let n = head.len();
    head.starts_with(starling_disk::device::QCOW2_MAGIC)
        || (n >= 1082 && head[1080..1082] == [0x53, 0xEF])
        || (n >= 512 && head[510..512] == [0x55, 0xAA])
}
