//! The shape of the file system: how many blocks and groups, inodes per group, and where each
//! group's metadata sits (superblock backup and descriptors in sparse_super groups, then the
//! block bitmap, the inode bitmap and the inode table; data after that).

use super::super::has_super_backup;
use super::super::layout::GROUP_DESC_SIZE;
use super::{invalid, BLOCKS_PER_GROUP, BS, INODE_SIZE};
use crate::error::Result;

pub(super) struct Geometry {
    /// Blocks in the file system.
    pub total: u64,
    pub groups: u64,
    pub inodes_per_group: u32,
    /// Blocks of group descriptors (after each superblock copy).
    pub gdt_blocks: u64,
    pub itable_blocks: u64,
}

impl Geometry {
    /// The geometry for `size` bytes if given, else the smallest that holds `need_blocks` of
    /// data (plus 20% and 16 MiB, and at least 10% free).
    pub fn choose(size: Option<u64>, need_blocks: u64, inodes_used: u64) -> Result<Geometry> {
        match size {
            Some(size) => Geometry::new(size / BS, inodes_used),
            None => {
                let mut total = (need_blocks + need_blocks / 5 + (16 << 20) / BS).max(2048);
                loop {
                    let g = Geometry::new(total, inodes_used)?;
                    if g.data_capacity() >= need_blocks + need_blocks / 10 + 64 {
                        return Ok(g);
                    }
                    total += total / 4;
                }
            }
        }
    }

    pub fn new(total: u64, inodes_used: u64) -> Result<Geometry> {
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
        // An inode bitmap is one block.
        ipg = ipg.clamp(16, BS * 8);
        if ipg * groups < inodes_used {
            return Err(invalid(
                "the ext4 size",
                format!("{} bytes cannot hold {inodes_used} inodes", total * BS),
            ));
        }
        let gdt_blocks = (groups * GROUP_DESC_SIZE as u64).div_ceil(BS);
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
        // A single short group can be smaller than its own inode table.
        if geo.group_len(groups - 1) < geo.meta_blocks(groups - 1) {
            return Err(invalid(
                "the ext4 size",
                format!(
                    "{} bytes cannot hold the tables of {inodes_used} inodes",
                    total * BS
                ),
            ));
        }
        Ok(geo)
    }

    /// Blocks in group `g` (the last may be short).
    pub fn group_len(&self, g: u64) -> u64 {
        (self.total - g * BLOCKS_PER_GROUP).min(BLOCKS_PER_GROUP)
    }

    /// Metadata blocks at the start of group `g`.
    pub fn meta_blocks(&self, g: u64) -> u64 {
        let sb = if has_super_backup(g, true) {
            1 + self.gdt_blocks
        } else {
            0
        };
        sb + 2 + self.itable_blocks
    }

    pub fn block_bitmap(&self, g: u64) -> u64 {
        self.inode_table(g) - 2
    }

    pub fn inode_bitmap(&self, g: u64) -> u64 {
        self.inode_table(g) - 1
    }

    pub fn inode_table(&self, g: u64) -> u64 {
        g * BLOCKS_PER_GROUP + self.meta_blocks(g) - self.itable_blocks
    }

    /// First block of group `g` free for data.
    pub fn data_start(&self, g: u64) -> u64 {
        g * BLOCKS_PER_GROUP + self.meta_blocks(g)
    }

    pub fn data_capacity(&self) -> u64 {
        (0..self.groups)
            .map(|g| self.group_len(g) - self.meta_blocks(g))
            .sum()
    }

    pub fn inodes(&self) -> u32 {
        self.inodes_per_group * self.groups as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_last_group_is_dropped() {
        // Two groups, the second 100 blocks: less than its metadata plus 64.
        let g = Geometry::new(BLOCKS_PER_GROUP + 100, 20).unwrap();
        assert_eq!((g.groups, g.total), (1, BLOCKS_PER_GROUP));
        // A second group with room for data is kept.
        let g = Geometry::new(BLOCKS_PER_GROUP + 4000, 20).unwrap();
        assert_eq!((g.groups, g.total), (2, BLOCKS_PER_GROUP + 4000));
    }

    #[test]
    fn metadata_sits_where_sparse_super_puts_it() {
        let g = Geometry::new(5 * BLOCKS_PER_GROUP, 100).unwrap();
        assert_eq!(g.groups, 5);
        // One inode per 16 KiB, rounded up to a multiple of 16 per group.
        assert_eq!(g.inodes_per_group, 8192);
        assert_eq!(g.itable_blocks, 8192 * INODE_SIZE / BS);
        // Group 0: superblock, one descriptor block, then bitmaps and the table.
        assert_eq!(g.block_bitmap(0), 2);
        assert_eq!(g.inode_bitmap(0), 3);
        assert_eq!(g.inode_table(0), 4);
        assert_eq!(g.data_start(0), 4 + g.itable_blocks);
        // Group 2 has no backup (not 0, 1 or a power of 3, 5, 7), group 3 does.
        assert_eq!(g.block_bitmap(2), 2 * BLOCKS_PER_GROUP);
        assert_eq!(g.block_bitmap(3), 3 * BLOCKS_PER_GROUP + 2);
        let meta: u64 = (0..5).map(|i| g.meta_blocks(i)).sum();
        assert_eq!(g.data_capacity(), 5 * BLOCKS_PER_GROUP - meta);
    }

    #[test]
    fn chosen_size_leaves_room() {
        let need = 100_000;
        let g = Geometry::choose(None, need, 5000).unwrap();
        assert!(g.data_capacity() >= need + need / 10 + 64);
        assert!(g.inodes() as u64 >= 5000);
        let g = Geometry::choose(Some(1 << 30), need, 5000).unwrap();
        assert_eq!(g.total * BS, 1 << 30);
    }

    #[test]
    fn sizes_out_of_range_are_refused() {
        assert!(Geometry::new(63, 1).is_err());
        assert!(Geometry::new(1 << 32, 1).is_err());
        // 256 blocks, but 5000 inodes (and room for more) want a 348-block inode table.
        let e = Geometry::new(256, 5000).err().unwrap().to_string();
        assert!(e.contains("cannot hold the tables of 5000 inodes"), "{e}");
        assert!(Geometry::new(256, 100).is_ok());
    }
}
