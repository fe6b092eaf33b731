//! Writing a fresh ext4 file system from a tree, the way `mkfs.ext4 -d` does but straight from
//! a manifest: no staging directory, no root needed to set owners, nanosecond times kept.
//!
//! The layout is deliberately plain, all features the kernel and e2fsck have known for a
//! decade: 4 KiB blocks, 256-byte inodes (nanosecond times, in-inode xattrs), extents, linear
//! directories, sparse_super backups, no journal (the image is written once, then mounted or
//! copied). Data is laid out in inode order, each file contiguous but for group boundaries,
//! and all-zero blocks are left as holes in the output file.

mod alloc;
mod encode;
mod geometry;
mod output;

use std::path::Path;

use super::layout::ROOT_INO;
use crate::error::{Error, Result};
use geometry::Geometry;

/// The writer's choices: 4 KiB blocks, 256-byte inodes with 32 bytes of extra fields (the
/// rest holds xattrs), groups as large as one bitmap block covers.
const BS: u64 = 4096;
const INODE_SIZE: u64 = 256;
const EXTRA_ISIZE: u16 = 32;
const BLOCKS_PER_GROUP: u64 = BS * 8;
/// Inodes below this are reserved (the root is 2).
const FIRST_INO: u32 = 11;
/// Longest extent (longer ones would read as unwritten).
const MAX_EXTENT_LEN: u64 = super::layout::EXT_INIT_MAX_LEN;
const EXTENTS_PER_LEAF: usize =
    (BS as usize - super::layout::EXTENT_HEADER) / super::layout::EXTENT_ENTRY;

/// Where a file's bytes go: called with each piece in order.
pub type Sink<'a> = dyn FnMut(&[u8]) -> std::io::Result<()> + 'a;
/// Feeds inode `ino`'s content to the sink.
pub type Fill<'a> = dyn FnMut(u32, &mut Sink<'_>) -> std::io::Result<()> + 'a;

#[derive(Debug, Clone)]
pub struct NewInode {
    pub kind: NewKind,
    /// Permission bits incl. setuid, setgid, sticky.
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// Full names (`security.capability`) and values; ACLs in the xattr API's form.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Debug, Clone)]
pub enum NewKind {
    File { size: u64 },
    Dir,
    Symlink(Vec<u8>),
    CharDevice(u64),
    BlockDevice(u64),
    Fifo,
    Socket,
}

#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Total size in bytes; `None` chooses one that fits with headroom.
    pub size: Option<u64>,
    pub uuid: [u8; 16],
    pub label: String,
    /// Superblock creation and write time (Unix seconds).
    pub time: i64,
}

#[derive(Debug, Clone)]
pub struct WriteReport {
    pub size: u64,
    pub blocks: u64,
    pub free_blocks: u64,
    pub inodes: u32,
    pub free_inodes: u32,
}

struct Rec {
    node: NewInode,
    links: u32,
    parent: u32,
    children: Vec<(Vec<u8>, u32)>,
}

/// Collects a tree (root first, then children under parents that exist) and writes it.
pub struct Ext4Builder {
    /// `recs[ino - 1]`; reserved inodes are `None`.
    recs: Vec<Option<Rec>>,
}

impl Ext4Builder {
    pub fn new(root: NewInode) -> Result<Self> {
        if !matches!(root.kind, NewKind::Dir) {
            return Err(invalid("the ext4 root", "is not a directory"));
        }
        let mut recs: Vec<Option<Rec>> = (0..FIRST_INO - 1).map(|_| None).collect();
        recs[ROOT_INO as usize - 1] = Some(Rec {
            node: root,
            links: 2,
            parent: ROOT_INO,
            children: Vec::new(),
        });
        Ok(Ext4Builder { recs })
    }

    /// Adds `node` as `name` in directory `parent`; returns its inode number.
    pub fn add(&mut self, parent: u32, name: &[u8], node: NewInode) -> Result<u32> {
        check_name(name)?;
        let ino = u32::try_from(self.recs.len() + 1)
            .map_err(|_| invalid("the ext4 image", "has more than 2^32 inodes"))?;
        let is_dir = matches!(node.kind, NewKind::Dir);
        let p = self.dir_mut(parent)?;
        p.children.push((name.to_vec(), ino));
        if is_dir {
            p.links += 1;
        }
        self.recs.push(Some(Rec {
            node,
            links: if is_dir { 2 } else { 1 },
            parent,
            children: Vec::new(),
        }));
        Ok(ino)
    }

    /// Adds another name for the non-directory inode `target`.
    pub fn link(&mut self, parent: u32, name: &[u8], target: u32) -> Result<()> {
        check_name(name)?;
        match self
            .recs
            .get_mut(target as usize - 1)
            .and_then(|r| r.as_mut())
        {
            Some(r) if !matches!(r.node.kind, NewKind::Dir) => r.links += 1,
            _ => {
                return Err(invalid(
                    "a hard link",
                    format!("target inode {target} is not a non-directory"),
                ))
            }
        }
        self.dir_mut(parent)?.children.push((name.to_vec(), target));
        Ok(())
    }

    fn dir_mut(&mut self, ino: u32) -> Result<&mut Rec> {
        match self
            .recs
            .get_mut((ino as usize).wrapping_sub(1))
            .and_then(|r| r.as_mut())
        {
            Some(r) if matches!(r.node.kind, NewKind::Dir) => Ok(r),
            _ => Err(invalid(
                "an ext4 entry",
                format!("parent inode {ino} is not a directory"),
            )),
        }
    }

    /// Writes the file system to `path` (created or replaced). `fill(ino, sink)` must feed
    /// every regular file's bytes, in order, to `sink`; it is called once per file with
    /// content, in inode order.
    pub fn write(
        mut self,
        path: &Path,
        opts: &WriteOptions,
        fill: &mut Fill<'_>,
    ) -> Result<WriteReport> {
        let has_lf = self.recs[ROOT_INO as usize - 1]
            .as_ref()
            .is_some_and(|r| r.children.iter().any(|(n, _)| n == b"lost+found"));
        if !has_lf {
            // e2fsck wants a lost+found; images made by mkfs all have one.
            self.add(
                ROOT_INO,
                b"lost+found",
                NewInode {
                    kind: NewKind::Dir,
                    perm: 0o700,
                    uid: 0,
                    gid: 0,
                    mtime_sec: opts.time,
                    mtime_nsec: 0,
                    xattrs: Vec::new(),
                },
            )?;
        }
        let (mut place, need_blocks) = alloc::plan(&self.recs)?;
        let geo = Geometry::choose(opts.size, need_blocks, self.recs.len() as u64)?;
        let alloc = alloc::allocate(&geo, &self.recs, &mut place)?;
        output::write_image(path, &geo, &alloc, &self.recs, &place, opts, fill)
    }
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty()
        || name.len() > 255
        || name.contains(&b'/')
        || name.contains(&0)
        || name == b"."
        || name == b".."
    {
        return Err(invalid(
            format!("name {:?}", String::from_utf8_lossy(name)),
            "cannot be an ext4 directory entry (empty, longer than 255 bytes, or holds '/' or NUL)",
        ));
    }
    Ok(())
}

fn invalid(what: impl Into<String>, detail: impl Into<String>) -> Error {
    Error::Invalid {
        what: what.into(),
        detail: detail.into(),
    }
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}
