//! Where each inode's blocks go. First what every inode needs (its directory blocks and xattrs
//! encoded, so their sizes are known), then blocks handed out group by group in inode order:
//! an xattr block, the data as contiguous runs of at most one extent each, and extent leaf
//! blocks for an inode with more runs than fit in the inode.

use super::super::layout::{EXTENTS_IN_INODE, FAST_SYMLINK_MAX};
use super::encode::{dir_blocks, xattr_area, XattrArea};
use super::geometry::Geometry;
use super::{invalid, NewKind, Rec, BS, EXTENTS_PER_LEAF, MAX_EXTENT_LEN};
use crate::error::Result;

/// One inode's blocks and the bytes that go in them (other than file content).
#[derive(Default, Clone)]
pub(super) struct Placement {
    /// (logical, physical, len), in logical order.
    pub runs: Vec<(u64, u64, u64)>,
    /// Extent leaf blocks when the runs do not fit in the inode.
    pub leaves: Vec<u64>,
    pub xattr_block: Option<u64>,
    /// The in-inode xattr area, from its magic on.
    pub ibody_xattrs: Option<Vec<u8>>,
    /// The xattr block's content, when the attributes do not fit in the inode.
    pub block_xattrs: Option<Vec<u8>>,
    pub dir_data: Vec<u8>,
}

impl Placement {
    /// Blocks the inode owns, data and metadata (for `i_blocks`).
    pub fn blocks_owned(&self) -> u64 {
        self.runs.iter().map(|r| r.2).sum::<u64>()
            + self.leaves.len() as u64
            + self.xattr_block.is_some() as u64
    }
}

/// A symlink target too long for the inode gets one data block.
pub(super) fn is_slow_symlink(target: &[u8]) -> bool {
    target.len() >= FAST_SYMLINK_MAX
}

/// Data blocks of an inode: file content, directory blocks or a long symlink's target.
fn data_blocks(rec: &Rec, p: &Placement) -> u64 {
    match &rec.node.kind {
        NewKind::File { size } => size.div_ceil(BS),
        NewKind::Dir => p.dir_data.len() as u64 / BS,
        NewKind::Symlink(t) if is_slow_symlink(t) => 1,
        _ => 0,
    }
}

/// Encodes directories and xattrs; returns each inode's placement (by `ino - 1`) and an upper
/// bound of the blocks they need.
pub(super) fn plan(recs: &[Option<Rec>]) -> Result<(Vec<Placement>, u64)> {
    let mut place: Vec<Placement> = vec![Placement::default(); recs.len()];
    let mut need_blocks = 0u64;
    for (i, rec) in recs.iter().enumerate() {
        let Some(rec) = rec else { continue };
        let ino = i as u32 + 1;
        let p = &mut place[i];
        match xattr_area(ino, &rec.node.xattrs)? {
            Some(XattrArea::InInode(b)) => p.ibody_xattrs = Some(b),
            Some(XattrArea::Block(b)) => p.block_xattrs = Some(b),
            None => {}
        }
        need_blocks += p.block_xattrs.is_some() as u64;
        if let NewKind::Dir = rec.node.kind {
            p.dir_data = dir_blocks(ino, rec.parent, &rec.children, recs);
        }
        need_blocks += data_blocks(rec, p);
        if let NewKind::File { size } = rec.node.kind {
            // Leaf blocks, generously: runs may be cut short at group ends.
            need_blocks += size.div_ceil(BS) / (MAX_EXTENT_LEN * EXTENTS_PER_LEAF as u64 / 2) + 1;
        }
    }
    Ok((place, need_blocks))
}

/// Gives every inode its blocks, in inode order.
pub(super) fn allocate<'g>(
    geo: &'g Geometry,
    recs: &[Option<Rec>],
    place: &mut [Placement],
) -> Result<Allocator<'g>> {
    let mut alloc = Allocator::new(geo);
    for (i, rec) in recs.iter().enumerate() {
        let Some(rec) = rec else { continue };
        let p = &mut place[i];
        if p.block_xattrs.is_some() {
            p.xattr_block = Some(alloc.one()?);
        }
        let blocks = data_blocks(rec, p);
        let mut logical = 0;
        while logical < blocks {
            let (phys, len) = alloc.run((blocks - logical).min(MAX_EXTENT_LEN))?;
            p.runs.push((logical, phys, len));
            logical += len;
        }
        if p.runs.len() > EXTENTS_IN_INODE {
            // One level of index in the inode: at most 4 leaves.
            let leaves = p.runs.len().div_ceil(EXTENTS_PER_LEAF);
            if leaves > EXTENTS_IN_INODE {
                return Err(invalid(
                    format!("inode {}", i + 1),
                    format!(
                        "needs more than {} extents",
                        EXTENTS_IN_INODE * EXTENTS_PER_LEAF
                    ),
                ));
            }
            for _ in 0..leaves {
                p.leaves.push(alloc.one()?);
            }
        }
    }
    Ok(alloc)
}

/// Hands out blocks front to back, one group after the other.
pub(super) struct Allocator<'g> {
    geo: &'g Geometry,
    group: u64,
    /// Data blocks used in each group.
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
            let free = self.free(g);
            if free == 0 {
                self.group += 1;
                continue;
            }
            let len = want.min(free);
            let start = self.geo.data_start(g) + self.used[g as usize];
            self.used[g as usize] += len;
            return Ok((start, len));
        }
    }

    fn one(&mut self) -> Result<u64> {
        Ok(self.run(1)?.0)
    }

    /// Blocks in use in group `g`, metadata included (they come first).
    pub fn used(&self, g: u64) -> u64 {
        self.geo.meta_blocks(g) + self.used[g as usize]
    }

    /// Free blocks in group `g`.
    pub fn free(&self, g: u64) -> u64 {
        self.geo.group_len(g) - self.used(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ext4::write::BLOCKS_PER_GROUP;

    #[test]
    fn runs_are_contiguous_and_cross_groups() {
        let geo = Geometry::new(2 * BLOCKS_PER_GROUP, 100).unwrap();
        let mut a = Allocator::new(&geo);
        let first = a.run(10).unwrap();
        assert_eq!(first, (geo.data_start(0), 10));
        assert_eq!(a.one().unwrap(), geo.data_start(0) + 10);
        // A run is cut at the group's end; the rest comes from the next group.
        let room = a.free(0);
        let (at, len) = a.run(room + 5).unwrap();
        assert_eq!((at, len), (geo.data_start(0) + 11, room));
        assert_eq!(a.free(0), 0);
        assert_eq!(a.run(5).unwrap(), (geo.data_start(1), 5));
        assert_eq!(a.used(1), geo.meta_blocks(1) + 5);
    }

    #[test]
    fn running_out_is_an_error() {
        let geo = Geometry::new(2048, 10).unwrap();
        let mut a = Allocator::new(&geo);
        let cap = geo.data_capacity();
        assert_eq!(a.run(cap).unwrap().1, cap);
        let e = a.one().unwrap_err().to_string();
        assert!(e.contains("too small"), "{e}");
    }
}
