//! Putting the planned file system into the output file: directory and symlink blocks, xattr
//! blocks, extent leaves, file content fed through a sink, then inode tables, bitmaps, group
//! descriptors and every superblock copy. Writes are batched into large pwrites and all-zero
//! blocks are skipped, so they stay holes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::super::has_super_backup;
use super::super::layout::{GROUP_DESC_SIZE, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE};
use super::alloc::{is_slow_symlink, Allocator, Placement};
use super::encode;
use super::geometry::Geometry;
use super::{
    invalid, io, Fill, NewKind, Rec, WriteOptions, WriteReport, BLOCKS_PER_GROUP, BS,
    EXTENTS_PER_LEAF, INODE_SIZE,
};
use crate::error::{Error, Result};

const WRITE_BATCH: usize = 1 << 20;

/// Writes everything to `path` (created or replaced) and syncs it.
pub(super) fn write_image(
    path: &Path,
    geo: &Geometry,
    alloc: &Allocator<'_>,
    recs: &[Option<Rec>],
    place: &[Placement],
    opts: &WriteOptions,
    fill: &mut Fill<'_>,
) -> Result<WriteReport> {
    let file = File::create(path).map_err(|e| io(path, e))?;
    file.set_len(geo.total * BS).map_err(|e| io(path, e))?;
    let mut out = Batch::new(&file, path);
    metadata_blocks(&mut out, recs, place)?;
    contents(&mut out, recs, place, fill)?;
    let report = tables_and_superblocks(&mut out, geo, alloc, recs, place, opts)?;
    out.flush()?;
    file.sync_all().map_err(|e| io(path, e))?;
    Ok(report)
}

/// Directories, long symlinks, xattr blocks and extent leaves.
fn metadata_blocks(out: &mut Batch<'_>, recs: &[Option<Rec>], place: &[Placement]) -> Result<()> {
    for (i, rec) in recs.iter().enumerate() {
        let Some(rec) = rec else { continue };
        let p = &place[i];
        if let (Some(b), Some(data)) = (p.xattr_block, &p.block_xattrs) {
            out.put(b, data)?;
        }
        match &rec.node.kind {
            NewKind::Dir => write_runs(out, &p.runs, &p.dir_data)?,
            NewKind::Symlink(t) if is_slow_symlink(t) => {
                let mut b = t.clone();
                b.resize(BS as usize, 0);
                write_runs(out, &p.runs, &b)?;
            }
            _ => {}
        }
        for (li, &leaf) in p.leaves.iter().enumerate() {
            let runs =
                &p.runs[li * EXTENTS_PER_LEAF..((li + 1) * EXTENTS_PER_LEAF).min(p.runs.len())];
            out.put(leaf, &encode::extent_leaf_block(runs))?;
        }
    }
    Ok(())
}

/// Regular files' bytes, asked of `fill` in inode order.
fn contents(
    out: &mut Batch<'_>,
    recs: &[Option<Rec>],
    place: &[Placement],
    fill: &mut Fill<'_>,
) -> Result<()> {
    for (i, rec) in recs.iter().enumerate() {
        let Some(rec) = rec else { continue };
        let NewKind::File { size } = rec.node.kind else {
            continue;
        };
        if size == 0 {
            continue;
        }
        let ino = i as u32 + 1;
        let mut sink = FileSink {
            out: &mut *out,
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
    Ok(())
}

/// Inode tables, bitmaps, group descriptors and the superblock copies; the counts they hold
/// are the report's.
fn tables_and_superblocks(
    out: &mut Batch<'_>,
    geo: &Geometry,
    alloc: &Allocator<'_>,
    recs: &[Option<Rec>],
    place: &[Placement],
    opts: &WriteOptions,
) -> Result<WriteReport> {
    let inodes_used = recs.len() as u64;
    let ipg = geo.inodes_per_group;
    let mut dirs_in_group = vec![0u32; geo.groups as usize];
    for g in 0..geo.groups {
        // Inodes are numbered from the first group on: only the blocks of a table that hold
        // used inodes are built and written (the rest reads back as the zeros of a sparse
        // file; an 8 GiB scratch disk has 128 MiB of inode tables, nearly all empty).
        let used_here = inodes_used
            .saturating_sub(u64::from(g as u32 * ipg))
            .min(u64::from(ipg));
        let mut table = vec![0u8; (used_here * INODE_SIZE).div_ceil(BS) as usize * BS as usize];
        for k in 0..used_here as u32 {
            let ino = g as u32 * ipg + k + 1;
            let Some(Some(rec)) = recs.get(ino as usize - 1) else {
                continue;
            };
            if matches!(rec.node.kind, NewKind::Dir) {
                dirs_in_group[g as usize] += 1;
            }
            let at = (k as u64 * INODE_SIZE) as usize;
            encode::inode(
                &mut table[at..at + INODE_SIZE as usize],
                rec,
                &place[ino as usize - 1],
            )?;
        }
        if !table.is_empty() {
            out.put(geo.inode_table(g), &table)?;
        }
        out.put(
            geo.inode_bitmap(g),
            &encode::inode_bitmap(geo, g, inodes_used),
        )?;
        out.put(geo.block_bitmap(g), &encode::block_bitmap(geo, alloc, g))?;
    }
    let mut gdt = vec![0u8; (geo.gdt_blocks * BS) as usize];
    let mut free_blocks = 0u64;
    let mut free_inodes = 0u64;
    for g in 0..geo.groups {
        let at = g as usize * GROUP_DESC_SIZE;
        let fb = alloc.free(g);
        let used_inodes = inodes_used.saturating_sub(g * ipg as u64).min(ipg as u64);
        let fi = ipg as u64 - used_inodes;
        free_blocks += fb;
        free_inodes += fi;
        encode::group_desc(
            &mut gdt[at..at + GROUP_DESC_SIZE],
            geo,
            g,
            (fb, fi),
            dirs_in_group[g as usize],
        );
    }
    for g in 0..geo.groups {
        if !has_super_backup(g, true) {
            continue;
        }
        let sb = encode::superblock(geo, opts, g, free_blocks, free_inodes as u32);
        // The primary superblock sits 1024 bytes into block 0; backups start their group.
        let at = if g == 0 {
            SUPERBLOCK_OFFSET as usize
        } else {
            0
        };
        let mut b = vec![0u8; BS as usize];
        b[at..at + SUPERBLOCK_SIZE].copy_from_slice(&sb);
        let start = g * BLOCKS_PER_GROUP;
        out.put(start, &b)?;
        out.put(start + 1, &gdt)?;
    }
    Ok(WriteReport {
        size: geo.total * BS,
        blocks: geo.total,
        free_blocks,
        inodes: geo.inodes(),
        free_inodes: free_inodes as u32,
    })
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

/// Takes a file's bytes in pieces of any size and puts them, a block at a time, where its
/// runs say.
struct FileSink<'a, 'f> {
    out: &'a mut Batch<'f>,
    runs: &'a [(u64, u64, u64)],
    pos: u64,
    size: u64,
    block: Vec<u8>,
    /// The write error behind an `io::Error` handed back to `fill`.
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
