//! Writing a fresh ext4 file system from a tree, the way `mkfs.ext4 -d` does but straight from
//! a manifest: no staging directory, no root needed to set owners, nanosecond times kept.
//!
//! The layout is deliberately plain, all features the kernel and e2fsck have known for a
//! decade: 4 KiB blocks, 256-byte inodes (nanosecond times, in-inode xattrs), extents, linear
//! directories, sparse_super backups, no journal (the image is written once, then mounted or
//! copied). Data is laid out in inode order, each file contiguous but for group boundaries,
//! and all-zero blocks are left as holes in the output file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::xattr::{self, XATTR_MAGIC};
use super::*;
use crate::error::{Error, Result};

const BS: u64 = 4096;
const INODE_SIZE: u64 = 256;
const EXTRA_ISIZE: u16 = 32;
const BLOCKS_PER_GROUP: u64 = 32768;
const FIRST_INO: u32 = 11;
const MAX_EXTENT_LEN: u64 = 32768;
const EXTENTS_PER_LEAF: usize = ((BS as usize) - 12) / 12;
const WRITE_BATCH: usize = 1 << 20;

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

/// Where one inode's blocks went.
#[derive(Default, Clone)]
struct Placement {
    runs: Vec<(u64, u64, u64)>, // (logical, physical, len)
    leaves: Vec<u64>,
    xattr_block: Option<u64>,
    ibody_xattrs: Option<Vec<u8>>,
    block_xattrs: Option<Vec<u8>>,
    dir_data: Vec<u8>,
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
        let mut place: Vec<Placement> = vec![Placement::default(); self.recs.len()];
        let mut need_blocks = 0u64;
        for (i, rec) in self.recs.iter().enumerate() {
            let Some(rec) = rec else { continue };
            let ino = i as u32 + 1;
            let p = &mut place[i];
            prepare_xattrs(ino, &rec.node.xattrs, p)?;
            need_blocks += p.block_xattrs.is_some() as u64;
            need_blocks += match &rec.node.kind {
                NewKind::File { size } => {
                    size.div_ceil(BS)
                        + size.div_ceil(BS) / (MAX_EXTENT_LEN * EXTENTS_PER_LEAF as u64 / 2)
                        + 1
                }
                NewKind::Dir => {
                    p.dir_data = dir_blocks(ino, rec.parent, &rec.children, &self.recs);
                    p.dir_data.len() as u64 / BS
                }
                NewKind::Symlink(t) if t.len() >= 60 => 1,
                _ => 0,
            };
        }
        let inodes_used = self.recs.len() as u64;
        let geo = match opts.size {
            Some(size) => Geometry::new(size / BS, inodes_used)?,
            None => {
                let mut total = (need_blocks + need_blocks / 5 + (16 << 20) / BS).max(2048);
                loop {
                    let g = Geometry::new(total, inodes_used)?;
                    if g.data_capacity() >= need_blocks + need_blocks / 10 + 64 {
                        break g;
                    }
                    total += total / 4;
                }
            }
        };
        let mut alloc = Allocator::new(&geo);
        for (i, rec) in self.recs.iter().enumerate() {
            let Some(rec) = rec else { continue };
            let p = &mut place[i];
            if p.block_xattrs.is_some() {
                p.xattr_block = Some(alloc.one()?);
            }
            let blocks = match &rec.node.kind {
                NewKind::File { size } => size.div_ceil(BS),
                NewKind::Dir => p.dir_data.len() as u64 / BS,
                NewKind::Symlink(t) if t.len() >= 60 => 1,
                _ => 0,
            };
            let mut logical = 0;
            while logical < blocks {
                let (phys, len) = alloc.run((blocks - logical).min(MAX_EXTENT_LEN))?;
                p.runs.push((logical, phys, len));
                logical += len;
            }
            if p.runs.len() > 4 {
                let leaves = p.runs.len().div_ceil(EXTENTS_PER_LEAF);
                if leaves > 4 {
                    return Err(invalid(
                        format!("inode {}", i + 1),
                        "needs more than 1360 extents",
                    ));
                }
                for _ in 0..leaves {
                    p.leaves.push(alloc.one()?);
                }
            }
        }

        let file = File::create(path).map_err(|e| io(path, e))?;
        file.set_len(geo.total * BS).map_err(|e| io(path, e))?;
        let mut out = Batch::new(&file, path);

        // Data: directories, long symlinks, xattr blocks, extent leaves, then file contents.
        for (i, rec) in self.recs.iter().enumerate() {
            let Some(rec) = rec else { continue };
            let p = &place[i];
            if let (Some(b), Some(data)) = (p.xattr_block, &p.block_xattrs) {
                out.put(b, data)?;
            }
            match &rec.node.kind {
                NewKind::Dir => write_runs(&mut out, &p.runs, &p.dir_data)?,
                NewKind::Symlink(t) if t.len() >= 60 => {
                    let mut b = t.clone();
                    b.resize(BS as usize, 0);
                    write_runs(&mut out, &p.runs, &b)?;
                }
                _ => {}
            }
            for (li, &leaf) in p.leaves.iter().enumerate() {
                let runs =
                    &p.runs[li * EXTENTS_PER_LEAF..((li + 1) * EXTENTS_PER_LEAF).min(p.runs.len())];
                let mut b = vec![0u8; BS as usize];
                extent_node(&mut b, runs.len() as u16, EXTENTS_PER_LEAF as u16, 0);
                for (k, r) in runs.iter().enumerate() {
                    extent_leaf(&mut b[12 + k * 12..24 + k * 12], *r);
                }
                out.put(leaf, &b)?;
            }
        }
        for (i, rec) in self.recs.iter().enumerate() {
            let Some(rec) = rec else { continue };
            let NewKind::File { size } = rec.node.kind else {
                continue;
            };
            if size == 0 {
                continue;
            }
            let ino = i as u32 + 1;
            let mut sink = FileSink {
                out: &mut out,
                runs: &place[i].runs,
                pos: 0,
                size,
                block: Vec::with_capacity(BS as usize),
                err: None,
            };
            fill(ino, &mut |d| sink.push(d)).map_err(|e| Error::Invalid {
                what: format!("content of inode {ino}"),
                detail: e.to_string(),
            })?;
            if let Some(e) = sink.err.take() {
                return Err(e);
            }
            sink.finish()?;
            if sink.pos != size {
                return Err(invalid(
                    format!("content of inode {ino}"),
                    format!("{} bytes were given for a {size}-byte file", sink.pos),
                ));
            }
        }

        // Inode tables, bitmaps, descriptors, superblocks.
        let ipg = geo.inodes_per_group;
        let mut dirs_in_group = vec![0u32; geo.groups as usize];
        for g in 0..geo.groups {
            let mut table = vec![0u8; (ipg as u64 * INODE_SIZE) as usize];
            for k in 0..ipg {
                let ino = g as u32 * ipg + k + 1;
                let Some(Some(rec)) = self.recs.get(ino as usize - 1) else {
                    continue;
                };
                if matches!(rec.node.kind, NewKind::Dir) {
                    dirs_in_group[g as usize] += 1;
                }
                let at = (k as u64 * INODE_SIZE) as usize;
                encode_inode(
                    &mut table[at..at + INODE_SIZE as usize],
                    rec,
                    &place[ino as usize - 1],
                )?;
            }
            out.put(geo.inode_table(g), &table)?;
            let mut ibm = vec![0u8; BS as usize];
            for k in 0..(BS * 8) as u32 {
                let ino = g as u32 * ipg + k + 1;
                if k >= ipg || (ino as u64) <= inodes_used {
                    ibm[(k / 8) as usize] |= 1 << (k % 8);
                }
            }
            out.put(geo.inode_table(g) - 1, &ibm)?;
            let mut bbm = vec![0u8; BS as usize];
            let used = geo.meta_blocks(g) + alloc.used[g as usize];
            for k in 0..BS * 8 {
                if k < used || k >= geo.group_len(g) {
                    bbm[(k / 8) as usize] |= 1 << (k % 8);
                }
            }
            out.put(geo.inode_table(g) - 2, &bbm)?;
        }
        let mut gdt = vec![0u8; (geo.gdt_blocks * BS) as usize];
        let mut free_blocks = 0u64;
        let mut free_inodes = 0u64;
        for g in 0..geo.groups {
            let d = &mut gdt[(g * 32) as usize..(g * 32 + 32) as usize];
            let fb = geo.group_len(g) - geo.meta_blocks(g) - alloc.used[g as usize];
            let used_inodes = inodes_used.saturating_sub(g * ipg as u64).min(ipg as u64);
            let fi = ipg as u64 - used_inodes;
            free_blocks += fb;
            free_inodes += fi;
            put32(d, 0, (geo.inode_table(g) - 2) as u32);
            put32(d, 4, (geo.inode_table(g) - 1) as u32);
            put32(d, 8, geo.inode_table(g) as u32);
            put16(d, 12, fb as u16);
            put16(d, 14, fi as u16);
            put16(d, 16, dirs_in_group[g as usize] as u16);
        }
        for g in 0..geo.groups {
            if !has_super_backup(g, true) {
                continue;
            }
            let sb = superblock(&geo, opts, g, free_blocks, free_inodes as u32);
            let start = g * BLOCKS_PER_GROUP;
            if g == 0 {
                let mut b0 = vec![0u8; BS as usize];
                b0[1024..2048].copy_from_slice(&sb);
                out.put(0, &b0)?;
            } else {
                let mut b = vec![0u8; BS as usize];
                b[..1024].copy_from_slice(&sb);
                out.put(start, &b)?;
            }
            out.put(start + 1, &gdt)?;
        }
        out.flush()?;
        file.sync_all().map_err(|e| io(path, e))?;
        Ok(WriteReport {
            size: geo.total * BS,
            blocks: geo.total,
            free_blocks,
            inodes: geo.inodes_per_group * geo.groups as u32,
            free_inodes: free_inodes as u32,
        })
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

struct Geometry {
    total: u64,
    groups: u64,
    inodes_per_group: u32,
    gdt_blocks: u64,
    itable_blocks: u64,
}

impl Geometry {
    fn new(total: u64, inodes_used: u64) -> Result<Geometry> {
        if total < 64 {
            return Err(invalid(
                "the ext4 size",
                format!("{} bytes is too small", total * BS),
            ));
        }
        if total >= 1 << 32 {
            return Err(invalid("the ext4 size", "16 TiB or more is not supported"));
        }
        let mut groups = total.div_ceil(BLOCKS_PER_GROUP);
        // One inode per 16 KiB, as mkfs does, and always room for what is there plus some.
        let want = (total * BS / 16384).max(inodes_used + inodes_used / 10 + 64);
        let mut ipg = want.div_ceil(groups).div_ceil(16) * 16;
        ipg = ipg.clamp(16, BS * 8);
        if ipg * groups < inodes_used {
            return Err(invalid(
                "the ext4 size",
                format!("{} bytes cannot hold {inodes_used} inodes", total * BS),
            ));
        }
        let gdt_blocks = (groups * 32).div_ceil(BS);
        let itable_blocks = ipg * INODE_SIZE / BS;
        // A last group too small for its own metadata is dropped, as mkfs does.
        let mut geo = Geometry {
            total,
            groups,
            inodes_per_group: ipg as u32,
            gdt_blocks,
            itable_blocks,
        };
        if groups > 1 && geo.group_len(groups - 1) < geo.meta_blocks(groups - 1) + 64 {
            groups -= 1;
            geo.groups = groups;
            geo.total = groups * BLOCKS_PER_GROUP;
            if ipg * groups < inodes_used {
                return Geometry::new(total + BLOCKS_PER_GROUP, inodes_used);
            }
        }
        Ok(geo)
    }

    fn group_len(&self, g: u64) -> u64 {
        (self.total - g * BLOCKS_PER_GROUP).min(BLOCKS_PER_GROUP)
    }

    fn meta_blocks(&self, g: u64) -> u64 {
        let sb = if has_super_backup(g, true) {
            1 + self.gdt_blocks
        } else {
            0
        };
        sb + 2 + self.itable_blocks
    }

    fn inode_table(&self, g: u64) -> u64 {
        g * BLOCKS_PER_GROUP + self.meta_blocks(g) - self.itable_blocks
    }

    fn data_capacity(&self) -> u64 {
        (0..self.groups)
            .map(|g| self.group_len(g) - self.meta_blocks(g))
            .sum()
    }
}

struct Allocator<'g> {
    geo: &'g Geometry,
    group: u64,
    used: Vec<u64>,
}

impl<'g> Allocator<'g> {
    fn new(geo: &'g Geometry) -> Self {
        Allocator {
            geo,
            group: 0,
            used: vec![0; geo.groups as usize],
        }
    }

    /// Up to `want` contiguous blocks.
    fn run(&mut self, want: u64) -> Result<(u64, u64)> {
        loop {
            if self.group >= self.geo.groups {
                return Err(invalid(
                    "the ext4 size",
                    format!(
                        "{} bytes is too small for this image; leave out --size or give more",
                        self.geo.total * BS
                    ),
                ));
            }
            let g = self.group;
            let free = self.geo.group_len(g) - self.geo.meta_blocks(g) - self.used[g as usize];
            if free == 0 {
                self.group += 1;
                continue;
            }
            let len = want.min(free);
            let start = g * BLOCKS_PER_GROUP + self.geo.meta_blocks(g) + self.used[g as usize];
            self.used[g as usize] += len;
            return Ok((start, len));
        }
    }

    fn one(&mut self) -> Result<u64> {
        Ok(self.run(1)?.0)
    }
}

/// Batches block writes into large contiguous pwrites and skips all-zero blocks.
struct Batch<'f> {
    file: &'f File,
    path: &'f Path,
    at: u64,
    buf: Vec<u8>,
}

impl<'f> Batch<'f> {
    fn new(file: &'f File, path: &'f Path) -> Self {
        Batch {
            file,
            path,
            at: 0,
            buf: Vec::with_capacity(WRITE_BATCH),
        }
    }

    /// Writes whole blocks starting at block `blk`.
    fn put(&mut self, blk: u64, data: &[u8]) -> Result<()> {
        for (k, b) in data.chunks(BS as usize).enumerate() {
            let off = (blk + k as u64) * BS;
            if b.iter().all(|&x| x == 0) {
                self.flush()?;
                continue;
            }
            if self.buf.is_empty()
                || self.at + self.buf.len() as u64 != off
                || self.buf.len() >= WRITE_BATCH
            {
                self.flush()?;
                self.at = off;
            }
            self.buf.extend_from_slice(b);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.file
                .write_all_at(&self.buf, self.at)
                .map_err(|e| io(self.path, e))?;
            self.buf.clear();
        }
        Ok(())
    }
}

fn write_runs(out: &mut Batch<'_>, runs: &[(u64, u64, u64)], data: &[u8]) -> Result<()> {
    for &(logical, phys, len) in runs {
        let a = (logical * BS) as usize;
        let b = ((logical + len) * BS) as usize;
        out.put(phys, &data[a..b.min(data.len())])?;
    }
    Ok(())
}

struct FileSink<'a, 'f> {
    out: &'a mut Batch<'f>,
    runs: &'a [(u64, u64, u64)],
    pos: u64,
    size: u64,
    block: Vec<u8>,
    err: Option<Error>,
}

impl FileSink<'_, '_> {
    fn push(&mut self, mut d: &[u8]) -> std::io::Result<()> {
        if self.pos + d.len() as u64 > self.size {
            return Err(std::io::Error::other(format!(
                "more than the file's {} bytes",
                self.size
            )));
        }
        while !d.is_empty() {
            let take = (BS as usize - self.block.len()).min(d.len());
            self.block.extend_from_slice(&d[..take]);
            d = &d[take..];
            self.pos += take as u64;
            if self.block.len() == BS as usize {
                self.emit().map_err(|e| {
                    let msg = e.to_string();
                    self.err = Some(e);
                    std::io::Error::other(msg)
                })?;
            }
        }
        Ok(())
    }

    fn emit(&mut self) -> Result<()> {
        let logical = (self.pos - 1) / BS;
        let r = self
            .runs
            .iter()
            .find(|r| r.0 <= logical && logical < r.0 + r.2)
            .ok_or_else(|| invalid("file content", "outside its allocated blocks"))?;
        self.out.put(r.1 + logical - r.0, &self.block)?;
        self.block.clear();
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        if !self.block.is_empty() {
            self.block.resize(BS as usize, 0);
            self.emit()?;
        }
        Ok(())
    }
}

fn file_type(kind: &NewKind) -> u8 {
    match kind {
        NewKind::File { .. } => 1,
        NewKind::Dir => 2,
        NewKind::CharDevice(_) => 3,
        NewKind::BlockDevice(_) => 4,
        NewKind::Fifo => 5,
        NewKind::Socket => 6,
        NewKind::Symlink(_) => 7,
    }
}

/// Linear directory blocks: ".", "..", then the entries; the last entry of each block
/// stretches to the block's end.
fn dir_blocks(ino: u32, parent: u32, children: &[(Vec<u8>, u32)], recs: &[Option<Rec>]) -> Vec<u8> {
    let mut entries: Vec<(&[u8], u32, u8)> = vec![(b".", ino, 2), (b"..", parent, 2)];
    for (name, child) in children {
        let ft = recs[*child as usize - 1]
            .as_ref()
            .map_or(0, |r| file_type(&r.node.kind));
        entries.push((name, *child, ft));
    }
    let mut out = Vec::new();
    let mut block = vec![0u8; BS as usize];
    let mut pos = 0usize;
    let mut last = 0usize;
    for (name, ino, ft) in entries {
        let need = (8 + name.len() + 3) & !3;
        if pos + need > BS as usize {
            put16(&mut block, last + 4, (BS as usize - last) as u16);
            out.extend_from_slice(&block);
            block.fill(0);
            pos = 0;
        }
        put32(&mut block, pos, ino);
        put16(&mut block, pos + 4, need as u16);
        block[pos + 6] = name.len() as u8;
        block[pos + 7] = ft;
        block[pos + 8..pos + 8 + name.len()].copy_from_slice(name);
        last = pos;
        pos += need;
    }
    put16(&mut block, last + 4, (BS as usize - last) as u16);
    out.extend_from_slice(&block);
    out
}

fn prepare_xattrs(ino: u32, xattrs: &[(Vec<u8>, Vec<u8>)], p: &mut Placement) -> Result<()> {
    if xattrs.is_empty() {
        return Ok(());
    }
    let mut entries = Vec::new();
    for (name, value) in xattrs {
        let (index, suffix) = xattr::split_name(name).ok_or_else(|| {
            invalid(
                format!("xattr {:?} of inode {ino}", String::from_utf8_lossy(name)),
                "ext4 has no namespace for it (user., trusted., security., system. only)",
            )
        })?;
        let value = if xattr::is_acl(index) {
            xattr::acl_to_disk(value)
                .ok_or_else(|| invalid(format!("POSIX ACL of inode {ino}"), "is malformed"))?
        } else {
            value.clone()
        };
        entries.push((index, suffix.to_vec(), value));
    }
    entries.sort();
    let region = (INODE_SIZE - 128 - EXTRA_ISIZE as u64) as usize;
    if let Some((mut buf, _)) = xattr::layout(&entries, region, 4, true) {
        put32(&mut buf, 0, XATTR_MAGIC);
        p.ibody_xattrs = Some(buf);
        return Ok(());
    }
    let (mut buf, hashes) = xattr::layout(&entries, BS as usize, 32, false).ok_or_else(|| {
        invalid(
            format!("xattrs of inode {ino}"),
            "do not fit in one 4 KiB ext4 xattr block",
        )
    })?;
    put32(&mut buf, 0, XATTR_MAGIC);
    put32(&mut buf, 4, 1);
    put32(&mut buf, 8, 1);
    put32(&mut buf, 12, xattr::block_hash(&hashes));
    p.block_xattrs = Some(buf);
    Ok(())
}

fn extent_node(b: &mut [u8], entries: u16, max: u16, depth: u16) {
    put16(b, 0, EXTENT_MAGIC);
    put16(b, 2, entries);
    put16(b, 4, max);
    put16(b, 6, depth);
}

fn extent_leaf(e: &mut [u8], (logical, phys, len): (u64, u64, u64)) {
    put32(e, 0, logical as u32);
    put16(e, 4, len as u16);
    put16(e, 6, (phys >> 32) as u16);
    put32(e, 8, phys as u32);
}

fn encode_inode(b: &mut [u8], rec: &Rec, p: &Placement) -> Result<()> {
    let n = &rec.node;
    let (kind_bits, size) = match &n.kind {
        NewKind::File { size } => (S_IFREG, *size),
        NewKind::Dir => (S_IFDIR, p.dir_data.len() as u64),
        NewKind::Symlink(t) => (S_IFLNK, t.len() as u64),
        NewKind::CharDevice(_) => (S_IFCHR, 0),
        NewKind::BlockDevice(_) => (S_IFBLK, 0),
        NewKind::Fifo => (S_IFIFO, 0),
        NewKind::Socket => (S_IFSOCK, 0),
    };
    put16(b, 0, kind_bits | (n.perm & 0o7777) as u16);
    put16(b, 2, n.uid as u16);
    put32(b, 4, size as u32);
    let (t, x) = encode_time(n.mtime_sec, n.mtime_nsec);
    for o in [8, 12, 16] {
        put32(b, o, t);
    }
    put16(b, 24, n.gid as u16);
    put16(b, 26, rec.links.min(65000) as u16);
    let blocks: u64 = p.runs.iter().map(|r| r.2).sum::<u64>()
        + p.leaves.len() as u64
        + p.xattr_block.is_some() as u64;
    let sectors = blocks * (BS / 512);
    put32(b, 28, sectors as u32);
    let mut flags = 0;
    match &n.kind {
        NewKind::Symlink(t) if t.len() < 60 => b[40..40 + t.len()].copy_from_slice(t),
        NewKind::CharDevice(rdev) | NewKind::BlockDevice(rdev) => {
            let (ma, mi) = (major(*rdev), minor(*rdev));
            if ma < 256 && mi < 256 {
                put32(b, 40, (ma << 8) | mi);
            } else {
                put32(b, 44, (mi & 0xff) | (ma << 8) | ((mi & !0xff) << 12));
            }
        }
        NewKind::Fifo | NewKind::Socket => {}
        _ => {
            flags |= FL_EXTENTS;
            let ib = &mut b[40..100];
            if p.leaves.is_empty() {
                extent_node(ib, p.runs.len() as u16, 4, 0);
                for (k, r) in p.runs.iter().enumerate() {
                    extent_leaf(&mut ib[12 + k * 12..24 + k * 12], *r);
                }
            } else {
                extent_node(ib, p.leaves.len() as u16, 4, 1);
                for (k, &leaf) in p.leaves.iter().enumerate() {
                    let e = &mut ib[12 + k * 12..24 + k * 12];
                    put32(e, 0, p.runs[k * EXTENTS_PER_LEAF].0 as u32);
                    put32(e, 4, leaf as u32);
                    put16(e, 8, (leaf >> 32) as u16);
                }
            }
        }
    }
    put32(b, 32, flags);
    if let Some(xb) = p.xattr_block {
        put32(b, 104, xb as u32);
    }
    put32(b, 108, (size >> 32) as u32);
    put16(b, 116, (sectors >> 32) as u16);
    put16(b, 120, (n.uid >> 16) as u16);
    put16(b, 122, (n.gid >> 16) as u16);
    put16(b, 128, EXTRA_ISIZE);
    for o in [132, 136, 140, 148] {
        put32(b, o, x);
    }
    put32(b, 144, t);
    if let Some(xa) = &p.ibody_xattrs {
        let start = 128 + EXTRA_ISIZE as usize;
        b[start..start + xa.len()].copy_from_slice(xa);
    }
    Ok(())
}

fn superblock(
    geo: &Geometry,
    opts: &WriteOptions,
    group: u64,
    free_blocks: u64,
    free_inodes: u32,
) -> Vec<u8> {
    let mut s = vec![0u8; 1024];
    let inodes = geo.inodes_per_group * geo.groups as u32;
    put32(&mut s, 0, inodes);
    put32(&mut s, 4, geo.total as u32);
    put32(&mut s, 12, free_blocks as u32);
    put32(&mut s, 16, free_inodes);
    put32(&mut s, 20, 0);
    put32(&mut s, 24, 2);
    put32(&mut s, 28, 2);
    put32(&mut s, 32, BLOCKS_PER_GROUP as u32);
    put32(&mut s, 36, BLOCKS_PER_GROUP as u32);
    put32(&mut s, 40, geo.inodes_per_group);
    let t = opts.time.clamp(0, u32::MAX as i64) as u32;
    put32(&mut s, 48, t);
    put16(&mut s, 54, 0xFFFF);
    put16(&mut s, 56, MAGIC);
    put16(&mut s, 58, 1);
    put16(&mut s, 60, 1);
    put32(&mut s, 64, t);
    put32(&mut s, 76, 1);
    put32(&mut s, 84, FIRST_INO);
    put16(&mut s, 88, INODE_SIZE as u16);
    put16(&mut s, 90, group as u16);
    put32(&mut s, 92, COMPAT_EXT_ATTR);
    put32(&mut s, 96, INCOMPAT_FILETYPE | INCOMPAT_EXTENTS);
    put32(
        &mut s,
        100,
        RO_COMPAT_SPARSE_SUPER | RO_COMPAT_LARGE_FILE | RO_COMPAT_DIR_NLINK | RO_COMPAT_EXTRA_ISIZE,
    );
    s[104..120].copy_from_slice(&opts.uuid);
    let label = opts.label.as_bytes();
    let l = label.len().min(16);
    s[120..120 + l].copy_from_slice(&label[..l]);
    // Directory hash seed: only used once htree indexes get built on a mounted copy.
    for (k, b) in opts.uuid.iter().enumerate() {
        s[236 + k] = b.rotate_left(3) ^ 0x5a;
    }
    s[252] = 1;
    put32(&mut s, 264, t);
    put16(&mut s, 348, EXTRA_ISIZE);
    put16(&mut s, 350, EXTRA_ISIZE);
    s
}
