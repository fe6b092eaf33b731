//! The bytes of each on-disk structure the writer makes: directory blocks, xattr areas,
//! extent nodes, inodes, bitmaps, group descriptors and the superblock. Pure functions of
//! what was planned; `output` puts them in the file.

use super::super::layout::*;
use super::super::xattr;
use super::super::{encode_time, major, minor, put16, put32};
use super::alloc::{is_slow_symlink, Allocator, Placement};
use super::geometry::Geometry;
use super::{
    invalid, NewKind, Rec, WriteOptions, BLOCKS_PER_GROUP, BS, EXTENTS_PER_LEAF, EXTRA_ISIZE,
    FIRST_INO, INODE_SIZE,
};
use crate::error::Result;

fn file_type(kind: &NewKind) -> u8 {
    match kind {
        NewKind::File { .. } => FT_REG_FILE,
        NewKind::Dir => FT_DIR,
        NewKind::CharDevice(_) => FT_CHRDEV,
        NewKind::BlockDevice(_) => FT_BLKDEV,
        NewKind::Fifo => FT_FIFO,
        NewKind::Socket => FT_SOCK,
        NewKind::Symlink(_) => FT_SYMLINK,
    }
}

/// Linear directory blocks: ".", "..", then the entries; the last entry of each block
/// stretches to the block's end.
pub(super) fn dir_blocks(
    ino: u32,
    parent: u32,
    children: &[(Vec<u8>, u32)],
    recs: &[Option<Rec>],
) -> Vec<u8> {
    let mut entries: Vec<(&[u8], u32, u8)> = vec![(b".", ino, FT_DIR), (b"..", parent, FT_DIR)];
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
        let need = (DE_NAME + name.len() + 3) & !3;
        if pos + need > BS as usize {
            put16(&mut block, last + DE_REC_LEN, (BS as usize - last) as u16);
            out.extend_from_slice(&block);
            block.fill(0);
            pos = 0;
        }
        put32(&mut block, pos + DE_INODE, ino);
        put16(&mut block, pos + DE_REC_LEN, need as u16);
        block[pos + DE_NAME_LEN] = name.len() as u8;
        block[pos + DE_FILE_TYPE] = ft;
        block[pos + DE_NAME..pos + DE_NAME + name.len()].copy_from_slice(name);
        last = pos;
        pos += need;
    }
    put16(&mut block, last + DE_REC_LEN, (BS as usize - last) as u16);
    out.extend_from_slice(&block);
    out
}

/// Where an inode's xattrs go, encoded.
#[derive(Debug)]
pub(super) enum XattrArea {
    /// The in-inode area after the extra fields, from its magic on.
    InInode(Vec<u8>),
    /// An xattr block's content.
    Block(Vec<u8>),
}

/// The inode's xattrs as an in-inode area if they fit there, else as an xattr block.
pub(super) fn xattr_area(ino: u32, xattrs: &[(Vec<u8>, Vec<u8>)]) -> Result<Option<XattrArea>> {
    if xattrs.is_empty() {
        return Ok(None);
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
    let region = INODE_SIZE as usize - GOOD_OLD_INODE_SIZE - EXTRA_ISIZE as usize;
    if let Some((mut buf, _)) = xattr::layout(&entries, region, XATTR_IBODY_HEADER, true) {
        put32(&mut buf, XH_MAGIC, XATTR_MAGIC);
        return Ok(Some(XattrArea::InInode(buf)));
    }
    let (mut buf, hashes) = xattr::layout(&entries, BS as usize, XATTR_BLOCK_HEADER, false)
        .ok_or_else(|| {
            invalid(
                format!("xattrs of inode {ino}"),
                "do not fit in one 4 KiB ext4 xattr block",
            )
        })?;
    put32(&mut buf, XH_MAGIC, XATTR_MAGIC);
    put32(&mut buf, XH_REFCOUNT, 1);
    put32(&mut buf, XH_BLOCKS, 1);
    put32(&mut buf, XH_HASH, xattr::block_hash(&hashes));
    Ok(Some(XattrArea::Block(buf)))
}

fn extent_header(b: &mut [u8], entries: u16, max: u16, depth: u16) {
    put16(b, EH_MAGIC, EXTENT_MAGIC);
    put16(b, EH_ENTRIES, entries);
    put16(b, EH_MAX, max);
    put16(b, EH_DEPTH, depth);
}

fn extent_entry(b: &mut [u8], k: usize) -> &mut [u8] {
    let at = EXTENT_HEADER + k * EXTENT_ENTRY;
    &mut b[at..at + EXTENT_ENTRY]
}

fn extent_leaf(e: &mut [u8], (logical, phys, len): (u64, u64, u64)) {
    put32(e, EE_BLOCK, logical as u32);
    put16(e, EE_LEN, len as u16);
    put16(e, EE_START_HI, (phys >> 32) as u16);
    put32(e, EE_START_LO, phys as u32);
}

fn extent_index(e: &mut [u8], logical: u64, leaf: u64) {
    put32(e, EI_BLOCK, logical as u32);
    put32(e, EI_LEAF_LO, leaf as u32);
    put16(e, EI_LEAF_HI, (leaf >> 32) as u16);
}

/// An extent leaf block holding `runs`.
pub(super) fn extent_leaf_block(runs: &[(u64, u64, u64)]) -> Vec<u8> {
    let mut b = vec![0u8; BS as usize];
    extent_header(&mut b, runs.len() as u16, EXTENTS_PER_LEAF as u16, 0);
    for (k, r) in runs.iter().enumerate() {
        extent_leaf(extent_entry(&mut b, k), *r);
    }
    b
}

/// One inode (`INODE_SIZE` bytes).
pub(super) fn inode(b: &mut [u8], rec: &Rec, p: &Placement) -> Result<()> {
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
    put16(b, I_MODE, kind_bits | (n.perm & 0o7777) as u16);
    put16(b, I_UID, n.uid as u16);
    put32(b, I_SIZE_LO, size as u32);
    // atime and ctime are the mtime: the manifest keeps only that.
    let (t, x) = encode_time(n.mtime_sec, n.mtime_nsec);
    for o in [I_ATIME, I_CTIME, I_MTIME] {
        put32(b, o, t);
    }
    put16(b, I_GID, n.gid as u16);
    put16(b, I_LINKS_COUNT, rec.links.min(65000) as u16);
    let sectors = p.blocks_owned() * (BS / 512);
    put32(b, I_BLOCKS_LO, sectors as u32);
    let mut flags = 0;
    let ib = &mut b[I_BLOCK..I_BLOCK + I_BLOCK_LEN];
    match &n.kind {
        NewKind::Symlink(t) if !is_slow_symlink(t) => ib[..t.len()].copy_from_slice(t),
        NewKind::CharDevice(rdev) | NewKind::BlockDevice(rdev) => {
            let (ma, mi) = (major(*rdev), minor(*rdev));
            if ma < 256 && mi < 256 {
                put32(ib, IB_OLD_DEV, (ma << 8) | mi);
            } else {
                put32(
                    ib,
                    IB_NEW_DEV,
                    (mi & 0xff) | (ma << 8) | ((mi & !0xff) << 12),
                );
            }
        }
        NewKind::Fifo | NewKind::Socket => {}
        _ => {
            flags |= FL_EXTENTS;
            let max = EXTENTS_IN_INODE as u16;
            if p.leaves.is_empty() {
                extent_header(ib, p.runs.len() as u16, max, 0);
                for (k, r) in p.runs.iter().enumerate() {
                    extent_leaf(extent_entry(ib, k), *r);
                }
            } else {
                extent_header(ib, p.leaves.len() as u16, max, 1);
                for (k, &leaf) in p.leaves.iter().enumerate() {
                    let first_logical = p.runs[k * EXTENTS_PER_LEAF].0;
                    extent_index(extent_entry(ib, k), first_logical, leaf);
                }
            }
        }
    }
    put32(b, I_FLAGS, flags);
    if let Some(xb) = p.xattr_block {
        put32(b, I_FILE_ACL_LO, xb as u32);
    }
    put32(b, I_SIZE_HIGH, (size >> 32) as u32);
    put16(b, I_BLOCKS_HIGH, (sectors >> 32) as u16);
    put16(b, I_UID_HIGH, (n.uid >> 16) as u16);
    put16(b, I_GID_HIGH, (n.gid >> 16) as u16);
    put16(b, I_EXTRA_ISIZE, EXTRA_ISIZE);
    for o in [I_CTIME_EXTRA, I_MTIME_EXTRA, I_ATIME_EXTRA, I_CRTIME_EXTRA] {
        put32(b, o, x);
    }
    put32(b, I_CRTIME, t);
    if let Some(xa) = &p.ibody_xattrs {
        let start = GOOD_OLD_INODE_SIZE + EXTRA_ISIZE as usize;
        b[start..start + xa.len()].copy_from_slice(xa);
    }
    Ok(())
}

/// Group `g`'s inode bitmap: inodes up to `inodes_used` are taken, and the bits past the
/// group's inodes are set, as the format wants.
pub(super) fn inode_bitmap(geo: &Geometry, g: u64, inodes_used: u64) -> Vec<u8> {
    let ipg = geo.inodes_per_group;
    let mut ibm = vec![0u8; BS as usize];
    for k in 0..(BS * 8) as u32 {
        let ino = g as u32 * ipg + k + 1;
        if k >= ipg || (ino as u64) <= inodes_used {
            ibm[(k / 8) as usize] |= 1 << (k % 8);
        }
    }
    ibm
}

/// Group `g`'s block bitmap: its used blocks come first; the bits past a short last group
/// are set.
pub(super) fn block_bitmap(geo: &Geometry, alloc: &Allocator<'_>, g: u64) -> Vec<u8> {
    let mut bbm = vec![0u8; BS as usize];
    let used = alloc.used(g);
    for k in 0..BS * 8 {
        if k < used || k >= geo.group_len(g) {
            bbm[(k / 8) as usize] |= 1 << (k % 8);
        }
    }
    bbm
}

/// One group descriptor, written into `d`.
pub(super) fn group_desc(d: &mut [u8], geo: &Geometry, g: u64, free: (u64, u64), dirs: u32) {
    put32(d, BG_BLOCK_BITMAP_LO, geo.block_bitmap(g) as u32);
    put32(d, BG_INODE_BITMAP_LO, geo.inode_bitmap(g) as u32);
    put32(d, BG_INODE_TABLE_LO, geo.inode_table(g) as u32);
    put16(d, BG_FREE_BLOCKS_COUNT_LO, free.0 as u16);
    put16(d, BG_FREE_INODES_COUNT_LO, free.1 as u16);
    put16(d, BG_USED_DIRS_COUNT_LO, dirs as u16);
}

/// The superblock copy kept in group `group`.
pub(super) fn superblock(
    geo: &Geometry,
    opts: &WriteOptions,
    group: u64,
    free_blocks: u64,
    free_inodes: u32,
) -> Vec<u8> {
    let mut s = vec![0u8; SUPERBLOCK_SIZE];
    put32(&mut s, SB_INODES_COUNT, geo.inodes());
    put32(&mut s, SB_BLOCKS_COUNT_LO, geo.total as u32);
    put32(&mut s, SB_FREE_BLOCKS_COUNT_LO, free_blocks as u32);
    put32(&mut s, SB_FREE_INODES_COUNT, free_inodes);
    // 4 KiB blocks: the superblock is in block 0.
    put32(&mut s, SB_FIRST_DATA_BLOCK, 0);
    let log_block = (BS / 1024).trailing_zeros();
    put32(&mut s, SB_LOG_BLOCK_SIZE, log_block);
    put32(&mut s, SB_LOG_CLUSTER_SIZE, log_block);
    put32(&mut s, SB_BLOCKS_PER_GROUP, BLOCKS_PER_GROUP as u32);
    put32(&mut s, SB_CLUSTERS_PER_GROUP, BLOCKS_PER_GROUP as u32);
    put32(&mut s, SB_INODES_PER_GROUP, geo.inodes_per_group);
    let t = opts.time.clamp(0, u32::MAX as i64) as u32;
    put32(&mut s, SB_WTIME, t);
    // No mount-count checks (-1).
    put16(&mut s, SB_MAX_MNT_COUNT, 0xFFFF);
    put16(&mut s, SB_MAGIC, MAGIC);
    put16(&mut s, SB_STATE, STATE_VALID);
    put16(&mut s, SB_ERRORS, ERRORS_CONTINUE);
    put32(&mut s, SB_LASTCHECK, t);
    put32(&mut s, SB_REV_LEVEL, REV_DYNAMIC);
    put32(&mut s, SB_FIRST_INO, FIRST_INO);
    put16(&mut s, SB_INODE_SIZE, INODE_SIZE as u16);
    put16(&mut s, SB_BLOCK_GROUP_NR, group as u16);
    put32(&mut s, SB_FEATURE_COMPAT, COMPAT_EXT_ATTR);
    put32(
        &mut s,
        SB_FEATURE_INCOMPAT,
        INCOMPAT_FILETYPE | INCOMPAT_EXTENTS,
    );
    put32(
        &mut s,
        SB_FEATURE_RO_COMPAT,
        RO_COMPAT_SPARSE_SUPER | RO_COMPAT_LARGE_FILE | RO_COMPAT_DIR_NLINK | RO_COMPAT_EXTRA_ISIZE,
    );
    s[SB_UUID..SB_UUID + 16].copy_from_slice(&opts.uuid);
    let label = opts.label.as_bytes();
    let l = label.len().min(SB_VOLUME_NAME_LEN);
    s[SB_VOLUME_NAME..SB_VOLUME_NAME + l].copy_from_slice(&label[..l]);
    // Directory hash seed: only used once htree indexes get built on a mounted copy.
    for (k, b) in opts.uuid.iter().enumerate() {
        s[SB_HASH_SEED + k] = b.rotate_left(3) ^ 0x5a;
    }
    s[SB_DEF_HASH_VERSION] = HASH_HALF_MD4;
    put32(&mut s, SB_MKFS_TIME, t);
    put16(&mut s, SB_MIN_EXTRA_ISIZE, EXTRA_ISIZE);
    put16(&mut s, SB_WANT_EXTRA_ISIZE, EXTRA_ISIZE);
    s
}

#[cfg(test)]
mod tests {
    use super::super::super::{le16, le32};
    use super::*;
    use crate::ext4::write::NewInode;

    fn rec(kind: NewKind) -> Option<Rec> {
        Some(Rec {
            node: NewInode {
                kind,
                perm: 0o644,
                uid: 0,
                gid: 0,
                mtime_sec: 0,
                mtime_nsec: 0,
                xattrs: Vec::new(),
            },
            links: 1,
            parent: ROOT_INO,
            children: Vec::new(),
        })
    }

    /// Walks a directory block as the reader does: (inode, rec_len, name, type).
    fn entries(block: &[u8]) -> Vec<(u32, usize, Vec<u8>, u8)> {
        let mut out = Vec::new();
        let mut p = 0;
        while p < block.len() {
            let rec_len = le16(block, p + DE_REC_LEN) as usize;
            assert!(
                rec_len >= DE_NAME && p + rec_len <= block.len(),
                "entry at {p}: rec_len {rec_len}"
            );
            let n = block[p + DE_NAME_LEN] as usize;
            out.push((
                le32(block, p + DE_INODE),
                rec_len,
                block[p + DE_NAME..p + DE_NAME + n].to_vec(),
                block[p + DE_FILE_TYPE],
            ));
            p += rec_len;
        }
        out
    }

    #[test]
    fn directory_entries_fill_blocks_and_the_last_stretches() {
        let mut recs: Vec<Option<Rec>> = (0..11).map(|_| None).collect();
        let mut children = Vec::new();
        // 300 entries of 16 bytes each (8 + 5 name bytes, padded): more than one block.
        for i in 0..300u32 {
            recs.push(rec(if i % 2 == 0 {
                NewKind::File { size: 0 }
            } else {
                NewKind::Symlink(b"x".to_vec())
            }));
            children.push((format!("f{i:04}").into_bytes(), 12 + i));
        }
        let d = dir_blocks(ROOT_INO, ROOT_INO, &children, &recs);
        assert_eq!(d.len(), 2 * BS as usize);
        let first = entries(&d[..BS as usize]);
        let second = entries(&d[BS as usize..]);
        assert_eq!(first[0], (ROOT_INO, 12, b".".to_vec(), FT_DIR));
        assert_eq!(first[1], (ROOT_INO, 12, b"..".to_vec(), FT_DIR));
        assert_eq!(first[2].3, FT_REG_FILE);
        assert_eq!(first[3].3, FT_SYMLINK);
        assert_eq!(first.len() - 2 + second.len(), 300);
        // rec_lens sum to the block in both blocks; names run on in order.
        for b in [&first, &second] {
            assert_eq!(b.iter().map(|e| e.1).sum::<usize>(), BS as usize);
        }
        assert_eq!(second.last().unwrap().2, b"f0299");
        assert_eq!(second[0].2, format!("f{:04}", first.len() - 2).into_bytes());
    }

    #[test]
    fn small_xattrs_stay_in_the_inode_large_ones_get_a_block() {
        let small = vec![(b"user.a".to_vec(), b"1".to_vec())];
        let Some(XattrArea::InInode(ib)) = xattr_area(12, &small).unwrap() else {
            panic!("one small xattr is not in the inode");
        };
        assert_eq!(le32(&ib, XH_MAGIC), XATTR_MAGIC);
        assert_eq!(ib.len(), INODE_SIZE as usize - GOOD_OLD_INODE_SIZE - 32);
        let big = vec![(b"user.big".to_vec(), vec![b'q'; 1500])];
        let Some(XattrArea::Block(blk)) = xattr_area(12, &big).unwrap() else {
            panic!("a 1500-byte xattr is not in a block");
        };
        assert_eq!(blk.len(), BS as usize);
        assert_eq!(le32(&blk, XH_MAGIC), XATTR_MAGIC);
        assert_eq!(le32(&blk, XH_REFCOUNT), 1);
        assert_ne!(le32(&blk, XH_HASH), 0);
        assert!(xattr_area(12, &[]).unwrap().is_none());
        let e = xattr_area(12, &[(b"weird.x".to_vec(), b"1".to_vec())]).unwrap_err();
        assert!(e.to_string().contains("no namespace"), "{e}");
    }

    #[test]
    fn inodes_hold_owner_size_times_and_extents() {
        let mut r = rec(NewKind::File {
            size: (5 << 32) + 7,
        })
        .unwrap();
        r.node.uid = 70_000;
        r.node.gid = 100_000;
        r.node.mtime_sec = 1 << 33;
        r.node.mtime_nsec = 5;
        let p = Placement {
            runs: vec![(0, 1000, 32768), (32768, 40000, 3)],
            ..Placement::default()
        };
        let mut b = vec![0u8; INODE_SIZE as usize];
        inode(&mut b, &r, &p).unwrap();
        assert_eq!(le16(&b, I_MODE), S_IFREG | 0o644);
        assert_eq!(
            le16(&b, I_UID) as u32 | (le16(&b, I_UID_HIGH) as u32) << 16,
            70_000
        );
        assert_eq!(
            le16(&b, I_GID) as u32 | (le16(&b, I_GID_HIGH) as u32) << 16,
            100_000
        );
        assert_eq!(le32(&b, I_SIZE_LO), 7);
        assert_eq!(le32(&b, I_SIZE_HIGH), 5);
        assert_eq!(
            crate::ext4::decode_time(le32(&b, I_MTIME), Some(le32(&b, I_MTIME_EXTRA))),
            (1 << 33, 5)
        );
        assert_eq!(le32(&b, I_BLOCKS_LO), (32768 + 3) * 8);
        assert_eq!(le32(&b, I_FLAGS), FL_EXTENTS);
        let ib = &b[I_BLOCK..I_BLOCK + I_BLOCK_LEN];
        assert_eq!(le16(ib, EH_MAGIC), EXTENT_MAGIC);
        assert_eq!(le16(ib, EH_ENTRIES), 2);
        assert_eq!(le16(ib, EH_DEPTH), 0);
        let e1 = &ib[EXTENT_HEADER + EXTENT_ENTRY..];
        assert_eq!(le32(e1, EE_BLOCK), 32768);
        assert_eq!(le16(e1, EE_LEN), 3);
        assert_eq!(le32(e1, EE_START_LO), 40000);
    }

    #[test]
    fn devices_use_the_old_encoding_when_they_fit() {
        let mut b = vec![0u8; INODE_SIZE as usize];
        let dev = crate::ext4::makedev(8, 1);
        inode(
            &mut b,
            &rec(NewKind::BlockDevice(dev)).unwrap(),
            &Placement::default(),
        )
        .unwrap();
        assert_eq!(le32(&b, I_BLOCK + IB_OLD_DEV), 0x801);
        assert_eq!(le32(&b, I_FLAGS), 0);
        let mut b = vec![0u8; INODE_SIZE as usize];
        let dev = crate::ext4::makedev(259, 65536);
        inode(
            &mut b,
            &rec(NewKind::CharDevice(dev)).unwrap(),
            &Placement::default(),
        )
        .unwrap();
        assert_eq!(le32(&b, I_BLOCK + IB_OLD_DEV), 0);
        assert_ne!(le32(&b, I_BLOCK + IB_NEW_DEV), 0);
    }
}
