//! Reading ext2/3/4 from a [`BlockDev`], with no kernel involved.

use std::io::Read;
use std::sync::Arc;

use super::csum;
use super::layout::*;
use super::xattr;
use super::*;
use crate::device::BlockDev;
use crate::error::{corrupt, unsupported, Error, Result};

const SUPPORTED_INCOMPAT: u32 = INCOMPAT_FILETYPE
    | INCOMPAT_META_BG
    | INCOMPAT_EXTENTS
    | INCOMPAT_64BIT
    | INCOMPAT_MMP
    | INCOMPAT_FLEX_BG
    | INCOMPAT_CSUM_SEED
    | INCOMPAT_LARGEDIR
    | INCOMPAT_INLINE_DATA
    | INCOMPAT_CASEFOLD;
/// Deepest extent tree the kernel builds is 5 levels.
const MAX_EXTENT_DEPTH: u16 = 5;
/// Directories larger than this are refused rather than read into memory.
const MAX_DIR_BYTES: u64 = 256 << 20;
const MAX_SYMLINK: u64 = 4096;

/// An ext file system opened for reading.
pub struct Ext4 {
    dev: Arc<dyn BlockDev>,
    pub block_size: u64,
    pub blocks_count: u64,
    inodes_count: u32,
    inodes_per_group: u32,
    inode_size: u64,
    incompat: u32,
    /// Inode-table block of each group.
    inode_tables: Vec<u64>,
    pub volume_name: String,
    /// With metadata_csum: the file system's checksum seed.
    csum_seed: Option<u32>,
}

/// One inode, decoded.
#[derive(Debug, Clone)]
pub struct Inode {
    pub ino: u32,
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub links: u16,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    pub flags: u32,
    /// i_blocks: 512-byte sectors owned, data and metadata.
    sectors: u64,
    block: [u8; I_BLOCK_LEN],
    file_acl: u64,
    /// The in-inode xattr area (after i_extra_isize), empty for 128-byte inodes.
    ibody: Vec<u8>,
    /// Seed of this inode's extent and directory block checksums (metadata_csum).
    csum_seed: u32,
}

/// What an inode is, from its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
    Unknown,
}

impl Inode {
    pub fn kind(&self) -> u16 {
        self.mode & S_IFMT
    }
    pub fn file_kind(&self) -> Kind {
        match self.kind() {
            S_IFREG => Kind::File,
            S_IFDIR => Kind::Dir,
            S_IFLNK => Kind::Symlink,
            S_IFCHR => Kind::CharDevice,
            S_IFBLK => Kind::BlockDevice,
            S_IFIFO => Kind::Fifo,
            S_IFSOCK => Kind::Socket,
            _ => Kind::Unknown,
        }
    }
    pub fn is_dir(&self) -> bool {
        self.kind() == S_IFDIR
    }
    pub fn is_file(&self) -> bool {
        self.kind() == S_IFREG
    }
    pub fn is_symlink(&self) -> bool {
        self.kind() == S_IFLNK
    }
    /// Permission bits incl. setuid, setgid and sticky.
    pub fn perm(&self) -> u32 {
        (self.mode & 0o7777) as u32
    }
    /// Device number of a char or block device, in stat's encoding.
    pub fn rdev(&self) -> u64 {
        let (b0, b1) = (le32(&self.block, IB_OLD_DEV), le32(&self.block, IB_NEW_DEV));
        if b0 != 0 {
            makedev((b0 >> 8) & 0xff, b0 & 0xff)
        } else {
            makedev((b1 & 0xfff00) >> 8, (b1 & 0xff) | ((b1 >> 12) & 0xfff00))
        }
    }
}

impl Ext4 {
    pub fn open(dev: Arc<dyn BlockDev>) -> Result<Ext4> {
        let what = "the ext4 superblock";
        let mut sb = [0u8; SUPERBLOCK_SIZE];
        dev.read_at(&mut sb, SUPERBLOCK_OFFSET)
            .map_err(|source| Error::Read {
                what: "the ext4 superblock",
                offset: SUPERBLOCK_OFFSET,
                source,
            })?;
        if le16(&sb, SB_MAGIC) != MAGIC {
            return Err(Error::NoFilesystem(
                "no ext2/3/4 file system (superblock magic 0xEF53 not found at byte 1080)".into(),
            ));
        }
        let log = le32(&sb, SB_LOG_BLOCK_SIZE);
        if log > 6 {
            return Err(corrupt(what, format!("block size 2^{} KiB", log)));
        }
        let block_size = 1024u64 << log;
        let incompat = le32(&sb, SB_FEATURE_INCOMPAT);
        let ro_compat = le32(&sb, SB_FEATURE_RO_COMPAT);
        if incompat & INCOMPAT_RECOVER != 0 {
            return Err(unsupported(
                "this ext4 file system",
                "reading with an unreplayed journal (it was not unmounted cleanly; run e2fsck on it first)",
            ));
        }
        if incompat & INCOMPAT_JOURNAL_DEV != 0 {
            return Err(unsupported("this image", "an external journal device"));
        }
        let unknown = incompat & !SUPPORTED_INCOMPAT;
        if unknown != 0 {
            return Err(unsupported(
                "this ext4 file system",
                format!("incompatible feature flags 0x{unknown:x} (e.g. encryption, ea_inode)"),
            ));
        }
        if ro_compat & RO_COMPAT_BIGALLOC != 0 {
            return Err(unsupported("this ext4 file system", "bigalloc"));
        }
        let csum_seed = if ro_compat & RO_COMPAT_METADATA_CSUM != 0 {
            if sb[SB_CHECKSUM_TYPE] != CHECKSUM_TYPE_CRC32C {
                return Err(unsupported(
                    "this ext4 file system",
                    format!("checksum type {}", sb[SB_CHECKSUM_TYPE]),
                ));
            }
            if !csum::superblock_ok(&sb) {
                return Err(corrupt(what, "its checksum does not match (metadata_csum)"));
            }
            Some(if incompat & INCOMPAT_CSUM_SEED != 0 {
                le32(&sb, SB_CHECKSUM_SEED)
            } else {
                csum::crc32c(!0, &[&sb[SB_UUID..SB_UUID + 16]])
            })
        } else {
            None
        };
        let is64 = incompat & INCOMPAT_64BIT != 0;
        let blocks_count = le32(&sb, SB_BLOCKS_COUNT_LO) as u64
            | if is64 {
                (le32(&sb, SB_BLOCKS_COUNT_HI) as u64) << 32
            } else {
                0
            };
        let inodes_count = le32(&sb, SB_INODES_COUNT);
        let first_data_block = le32(&sb, SB_FIRST_DATA_BLOCK) as u64;
        let blocks_per_group = le32(&sb, SB_BLOCKS_PER_GROUP) as u64;
        let inodes_per_group = le32(&sb, SB_INODES_PER_GROUP);
        let rev = le32(&sb, SB_REV_LEVEL);
        let inode_size = if rev == 0 {
            GOOD_OLD_INODE_SIZE as u64
        } else {
            le16(&sb, SB_INODE_SIZE) as u64
        };
        if !(GOOD_OLD_INODE_SIZE as u64..=block_size).contains(&inode_size)
            || !inode_size.is_power_of_two()
        {
            return Err(corrupt(what, format!("inode size {inode_size}")));
        }
        if blocks_per_group == 0 || blocks_per_group > 8 * block_size {
            return Err(corrupt(
                what,
                format!("{blocks_per_group} blocks per group"),
            ));
        }
        if inodes_per_group == 0 || inodes_per_group as u64 > 8 * block_size {
            return Err(corrupt(
                what,
                format!("{inodes_per_group} inodes per group"),
            ));
        }
        if blocks_count <= first_data_block || blocks_count.saturating_mul(block_size) > dev.size()
        {
            return Err(corrupt(
                what,
                format!(
                    "{blocks_count} blocks of {block_size} bytes do not fit the {}-byte device (truncated image?)",
                    dev.size()
                ),
            ));
        }
        let groups = (blocks_count - first_data_block).div_ceil(blocks_per_group);
        if groups.saturating_mul(inodes_per_group as u64) < inodes_count as u64 {
            return Err(corrupt(
                what,
                "inode count exceeds groups × inodes per group",
            ));
        }
        let desc_size = if is64 {
            le16(&sb, SB_DESC_SIZE) as u64
        } else {
            GROUP_DESC_SIZE as u64
        };
        if !(GROUP_DESC_SIZE as u64..=1024).contains(&desc_size) || !desc_size.is_power_of_two() {
            return Err(corrupt(what, format!("group descriptor size {desc_size}")));
        }
        let per_block = block_size / desc_size;
        let sparse = ro_compat & RO_COMPAT_SPARSE_SUPER != 0;
        let first_meta_bg = le32(&sb, SB_FIRST_META_BG) as u64;
        let mut inode_tables = Vec::with_capacity(groups as usize);
        let mut block = vec![0u8; block_size as usize];
        let mut loaded = u64::MAX;
        for g in 0..groups {
            let db = g / per_block;
            let at = if incompat & INCOMPAT_META_BG != 0 && db >= first_meta_bg {
                let first = db * per_block;
                first_data_block
                    + first * blocks_per_group
                    + u64::from(has_super_backup(first, sparse))
            } else {
                first_data_block + 1 + db
            };
            if at != loaded {
                read_block_into(&*dev, block_size, at, &mut block, "group descriptors")?;
                loaded = at;
            }
            let o = ((g % per_block) * desc_size) as usize;
            let d = &block[o..o + desc_size as usize];
            if let Some(seed) = csum_seed {
                if !csum::group_desc_ok(seed, g as u32, d) {
                    return Err(corrupt(
                        "ext4 group descriptors",
                        format!("group {g}'s checksum does not match (metadata_csum)"),
                    ));
                }
            }
            let mut table = le32(d, BG_INODE_TABLE_LO) as u64;
            if is64 && desc_size >= 64 {
                table |= (le32(d, BG_INODE_TABLE_HI) as u64) << 32;
            }
            let table_blocks = (inodes_per_group as u64 * inode_size).div_ceil(block_size);
            if table < first_data_block || table.saturating_add(table_blocks) > blocks_count {
                return Err(corrupt(
                    "ext4 group descriptors",
                    format!("group {g}'s inode table at block {table} is outside the file system"),
                ));
            }
            inode_tables.push(table);
        }
        let volume_name =
            String::from_utf8_lossy(&sb[SB_VOLUME_NAME..SB_VOLUME_NAME + SB_VOLUME_NAME_LEN])
                .trim_end_matches('\0')
                .to_string();
        Ok(Ext4 {
            dev,
            block_size,
            blocks_count,
            inodes_count,
            inodes_per_group,
            inode_size,
            incompat,
            inode_tables,
            volume_name,
            csum_seed,
        })
    }

    pub fn root(&self) -> Result<Inode> {
        let r = self.inode(ROOT_INO)?;
        if !r.is_dir() {
            return Err(corrupt(
                "the ext4 root directory",
                "inode 2 is not a directory",
            ));
        }
        Ok(r)
    }

    pub fn inode(&self, ino: u32) -> Result<Inode> {
        if ino == 0 || ino > self.inodes_count {
            return Err(corrupt(
                "an ext4 directory entry",
                format!(
                    "inode number {ino} is out of range 1..={}",
                    self.inodes_count
                ),
            ));
        }
        let idx = (ino - 1) as u64;
        let g = (idx / self.inodes_per_group as u64) as usize;
        let off = self.inode_tables[g] * self.block_size
            + (idx % self.inodes_per_group as u64) * self.inode_size;
        let mut b = vec![0u8; self.inode_size as usize];
        self.dev
            .read_at(&mut b, off)
            .map_err(|source| Error::Read {
                what: "an ext4 inode",
                offset: off,
                source,
            })?;
        let large = self.inode_size > GOOD_OLD_INODE_SIZE as u64;
        let extra_isize = if large {
            le16(&b, I_EXTRA_ISIZE) as usize
        } else {
            0
        };
        if large && (extra_isize % 4 != 0 || GOOD_OLD_INODE_SIZE + extra_isize > b.len()) {
            return Err(corrupt(
                format!("ext4 inode {ino}"),
                format!("i_extra_isize {extra_isize}"),
            ));
        }
        let mut csum_seed = 0;
        if let Some(seed) = self.csum_seed {
            csum_seed = csum::inode_seed(seed, ino, le32(&b, I_GENERATION));
            // An all-zero inode has no checksum (e2fsprogs' rule); it is refused below as
            // not in use.
            if b.iter().any(|&x| x != 0) && !csum::inode_ok(csum_seed, &b, extra_isize) {
                return Err(corrupt(
                    format!("ext4 inode {ino}"),
                    "its checksum does not match (metadata_csum)",
                ));
            }
        }
        let (mode, links) = (le16(&b, I_MODE), le16(&b, I_LINKS_COUNT));
        if mode & S_IFMT == 0 || links == 0 {
            return Err(corrupt(
                format!("ext4 inode {ino}"),
                "an entry points to it but it is not in use (no file type or no links)",
            ));
        }
        // A field past the old inode exists only if i_extra_isize covers it.
        let extra = |o: usize| (extra_isize >= o + 4 - GOOD_OLD_INODE_SIZE).then(|| le32(&b, o));
        let (mtime_sec, mtime_nsec) = decode_time(le32(&b, I_MTIME), extra(I_MTIME_EXTRA));
        let mut block = [0u8; I_BLOCK_LEN];
        block.copy_from_slice(&b[I_BLOCK..I_BLOCK + I_BLOCK_LEN]);
        Ok(Inode {
            ino,
            mode: le16(&b, I_MODE),
            uid: le16(&b, I_UID) as u32 | (le16(&b, I_UID_HIGH) as u32) << 16,
            gid: le16(&b, I_GID) as u32 | (le16(&b, I_GID_HIGH) as u32) << 16,
            size: le32(&b, I_SIZE_LO) as u64 | (le32(&b, I_SIZE_HIGH) as u64) << 32,
            links: le16(&b, I_LINKS_COUNT),
            mtime_sec,
            mtime_nsec,
            flags: le32(&b, I_FLAGS),
            sectors: le32(&b, I_BLOCKS_LO) as u64 | (le16(&b, I_BLOCKS_HIGH) as u64) << 32,
            block,
            file_acl: le32(&b, I_FILE_ACL_LO) as u64 | (le16(&b, I_FILE_ACL_HIGH) as u64) << 32,
            ibody: if large {
                b[GOOD_OLD_INODE_SIZE + extra_isize..].to_vec()
            } else {
                Vec::new()
            },
            csum_seed,
        })
    }

    /// The entries of directory `dir` (without "." and ".."), as (name, inode number).
    pub fn read_dir(&self, dir: &Inode) -> Result<Vec<(Vec<u8>, u32)>> {
        let what = || format!("ext4 directory inode {}", dir.ino);
        if dir.size > MAX_DIR_BYTES {
            return Err(unsupported(
                what(),
                format!("a {}-byte directory", dir.size),
            ));
        }
        let mut out = Vec::new();
        if dir.flags & FL_INLINE_DATA != 0 {
            return Err(unsupported(what(), "inline-data directories"));
        }
        let mut data = Vec::with_capacity(dir.size as usize);
        let mut reader = self.file_reader(dir)?;
        // Blocks with data behind them (holes read as zeros).
        let mapped: Vec<(u64, u64)> = reader
            .map
            .iter()
            .filter(|m| !m.unwritten)
            .map(|m| (m.logical, m.logical + m.len))
            .collect();
        reader
            .read_to_end(&mut data)
            .map_err(|e| corrupt(what(), e.to_string()))?;
        let bs = self.block_size as usize;
        if data.is_empty() || data.len() % bs != 0 {
            return Err(corrupt(
                what(),
                format!("its size {} is not a whole number of blocks", dir.size),
            ));
        }
        for (n, blk) in data.chunks(bs).enumerate() {
            let bad = |d: String| corrupt(what(), format!("block {n}: {d}"));
            let b = n as u64;
            if !mapped.iter().any(|&(from, to)| (from..to).contains(&b)) {
                // The kernel's readdir passes over a hole in a linear directory; an htree
                // directory's blocks are all addressed by its index, and its first block
                // holds "." and "..".
                if n == 0 || dir.flags & FL_INDEX != 0 {
                    return Err(bad("a hole where the directory needs a block".into()));
                }
                continue;
            }
            // Checksummed leaves end in a 12-byte tail; htree index blocks are one entry
            // (or "." and "..") covering the block, their dx tail inside it.
            let mut end = bs;
            if self.csum_seed.is_some() {
                let dx = self.dx_count_at(dir, n, blk).map_err(bad)?;
                csum::dir_block(dir.csum_seed, blk, dx).map_err(bad)?;
                if dx.is_none() {
                    end = bs - DIRENT_TAIL;
                }
            }
            let mut p = 0usize;
            let mut k = 0usize;
            while p < end {
                if p + DE_NAME > end {
                    return Err(bad(format!("an entry at byte {p} runs past the block")));
                }
                let ino = le32(blk, p + DE_INODE);
                let rec_len = self.rec_len(le16(blk, p + DE_REC_LEN));
                let name_len = blk[p + DE_NAME_LEN] as usize;
                // The kernel's ext4_check_dir_entry: a zeroed block (rec_len 0) is damage,
                // not an empty directory.
                if rec_len < DE_NAME + 4
                    || !rec_len.is_multiple_of(4)
                    || rec_len < (DE_NAME + name_len).next_multiple_of(4)
                    || p + rec_len > end
                {
                    return Err(bad(format!(
                        "entry at byte {p} has record length {rec_len} (name length {name_len}): not a directory block"
                    )));
                }
                let name = &blk[p + DE_NAME..p + DE_NAME + name_len];
                if n == 0 && k < 2 {
                    let want: &[u8] = if k == 0 { b"." } else { b".." };
                    if name != want || ino == 0 || (k == 0 && ino != dir.ino) {
                        return Err(bad(format!(
                            "entry {k} is not {:?} (a directory starts with \".\" and \"..\")",
                            String::from_utf8_lossy(want)
                        )));
                    }
                } else if ino != 0 {
                    if name.is_empty()
                        || name.contains(&b'/')
                        || name.contains(&0)
                        || name == b"."
                        || name == b".."
                    {
                        return Err(bad(
                            "an entry name is empty, \".\" or \"..\", or holds '/' or NUL".into(),
                        ));
                    }
                    out.push((name.to_vec(), ino));
                }
                p += rec_len;
                k += 1;
            }
        }
        out.sort();
        if out.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(corrupt(what(), "two entries have the same name"));
        }
        Ok(out)
    }

    /// A directory entry's record length as stored (the kernel's ext4_rec_len_from_disk):
    /// 64 KiB blocks keep the top bits in the low two, and 0 or 65535 mean the whole block.
    fn rec_len(&self, raw: u16) -> usize {
        let raw = raw as usize;
        if self.block_size < 65536 {
            raw
        } else if raw == 0 || raw == 65535 {
            65536
        } else {
            (raw & 65532) | ((raw & 3) << 16)
        }
    }

    /// For block `n` of `dir`: where an htree index block keeps its count and limit, or
    /// `None` for a leaf (the kernel's is_dx_block and get_dx_countlimit).
    fn dx_count_at(&self, dir: &Inode, n: usize, blk: &[u8]) -> Result<Option<usize>, String> {
        if dir.flags & FL_INDEX == 0 {
            return Ok(None);
        }
        let first = self.rec_len(le16(blk, DE_REC_LEN));
        if first == blk.len() {
            return Ok(Some(8));
        }
        if n != 0 {
            return Ok(None);
        }
        // The root: "." (12 bytes), ".." to the end of the block, then dx_root_info (8 bytes:
        // reserved_zero, hash version, info_length, levels, flags).
        let dotdot = self.rec_len(le16(blk, 12 + DE_REC_LEN));
        if first == 12 && dotdot == blk.len() - 12 && le32(blk, 24) == 0 && blk[24 + 5] == 8 {
            return Ok(Some(32));
        }
        Err("not an htree root block (its first block in an indexed directory)".into())
    }

    pub fn read_link(&self, inode: &Inode) -> Result<Vec<u8>> {
        let what = || format!("ext4 symlink inode {}", inode.ino);
        if inode.size > MAX_SYMLINK {
            return Err(corrupt(what(), format!("target of {} bytes", inode.size)));
        }
        // A fast symlink keeps its target in i_block and owns no data blocks.
        let acl_sectors = if inode.file_acl != 0 {
            self.block_size / 512
        } else {
            0
        };
        let fast = inode.flags & (FL_EXTENTS | FL_INLINE_DATA) == 0
            && inode.size < FAST_SYMLINK_MAX as u64
            && inode.sectors.saturating_sub(acl_sectors) == 0;
        let target = if fast {
            inode.block[..inode.size as usize].to_vec()
        } else {
            let mut t = Vec::new();
            self.file_reader(inode)?
                .read_to_end(&mut t)
                .map_err(|e| corrupt(what(), e.to_string()))?;
            t
        };
        if target.is_empty() || target.contains(&0) {
            return Err(corrupt(what(), "empty target or target with NUL"));
        }
        Ok(target)
    }

    /// All xattrs of `inode` as (full name, value), sorted by name. POSIX ACLs come in the
    /// xattr API's form; inline data's `system.data` is not an attribute and is left out.
    pub fn xattrs(&self, inode: &Inode) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let what = || format!("ext4 inode {}'s xattrs", inode.ino);
        let mut out = Vec::new();
        let ib = &inode.ibody;
        let h = XATTR_IBODY_HEADER;
        if ib.len() >= h && le32(ib, XH_MAGIC) == XATTR_MAGIC {
            parse_entries(&ib[h..], 0, &ib[h..], &mut out).map_err(|d| corrupt(what(), d))?;
        }
        if inode.file_acl != 0 {
            if inode.file_acl >= self.blocks_count {
                return Err(corrupt(
                    what(),
                    format!("xattr block {} is outside the file system", inode.file_acl),
                ));
            }
            let blk = self.read_block(inode.file_acl, "an xattr block")?;
            if le32(&blk, XH_MAGIC) != XATTR_MAGIC {
                return Err(corrupt(what(), "xattr block has a bad magic number"));
            }
            if let Some(seed) = self.csum_seed {
                if !csum::xattr_block(seed, inode.file_acl, &blk) {
                    return Err(corrupt(
                        what(),
                        "xattr block checksum does not match (metadata_csum)",
                    ));
                }
            }
            parse_entries(&blk, XATTR_BLOCK_HEADER, &blk, &mut out)
                .map_err(|d| corrupt(what(), d))?;
        }
        let mut res = Vec::with_capacity(out.len());
        for (index, name, value) in out {
            if index == XATTR_INDEX_SYSTEM && name == b"data" {
                continue;
            }
            let full = xattr::full_name(index, &name)
                .ok_or_else(|| unsupported(what(), format!("xattr name index {index}")))?;
            let value = if xattr::is_acl(index) {
                xattr::acl_from_disk(&value)
                    .ok_or_else(|| corrupt(what(), "a POSIX ACL is malformed"))?
            } else {
                value
            };
            res.push((full, value));
        }
        res.sort();
        res.dedup_by(|a, b| a.0 == b.0);
        Ok(res)
    }

    /// A reader of the file's bytes; holes and unwritten extents read as zeros.
    pub fn file_reader(&self, inode: &Inode) -> Result<FileReader<'_>> {
        let what = || format!("ext4 inode {}", inode.ino);
        if inode.flags & FL_INLINE_DATA != 0 {
            let mut data = inode.block.to_vec();
            if inode.size > I_BLOCK_LEN as u64 {
                let ib = &inode.ibody;
                let h = XATTR_IBODY_HEADER;
                let mut entries = Vec::new();
                if ib.len() >= h && le32(ib, XH_MAGIC) == XATTR_MAGIC {
                    parse_entries(&ib[h..], 0, &ib[h..], &mut entries)
                        .map_err(|d| corrupt(what(), d))?;
                }
                let extra = entries
                    .into_iter()
                    .find(|(i, n, _)| *i == XATTR_INDEX_SYSTEM && n == b"data")
                    .map(|e| e.2)
                    .unwrap_or_default();
                data.extend_from_slice(&extra);
            }
            if (data.len() as u64) < inode.size {
                return Err(corrupt(what(), "inline data is shorter than the file size"));
            }
            data.truncate(inode.size as usize);
            return Ok(FileReader {
                fs: self,
                map: Vec::new(),
                inline: Some(data),
                size: inode.size,
                pos: 0,
                buf: Vec::new(),
                buf_pos: 0,
            });
        }
        let mut map = Vec::new();
        let nblocks = inode.size.div_ceil(self.block_size);
        if inode.flags & FL_EXTENTS != 0 {
            let iseed = self.csum_seed.map(|_| inode.csum_seed);
            self.walk_extents(&inode.block, MAX_EXTENT_DEPTH + 1, iseed, &mut map)
                .map_err(|d| corrupt(what(), d))?;
        } else {
            self.walk_block_map(inode, nblocks, &mut map)
                .map_err(|d| corrupt(what(), d))?;
        }
        map.sort_by_key(|m| m.logical);
        for w in map.windows(2) {
            if w[0].logical + w[0].len > w[1].logical {
                return Err(corrupt(what(), "overlapping extents"));
            }
        }
        for m in &map {
            if !m.unwritten
                && (m
                    .physical
                    .checked_add(m.len)
                    .is_none_or(|e| e > self.blocks_count))
            {
                return Err(corrupt(
                    what(),
                    format!(
                        "extent at block {} runs outside the file system",
                        m.physical
                    ),
                ));
            }
        }
        Ok(FileReader {
            fs: self,
            map,
            inline: None,
            size: inode.size,
            pos: 0,
            buf: Vec::new(),
            buf_pos: 0,
        })
    }

    fn walk_extents(
        &self,
        node: &[u8],
        depth_left: u16,
        iseed: Option<u32>,
        map: &mut Vec<Mapping>,
    ) -> Result<(), String> {
        if node.len() < EXTENT_HEADER || le16(node, EH_MAGIC) != EXTENT_MAGIC {
            return Err("bad extent header magic".into());
        }
        let entries = le16(node, EH_ENTRIES) as usize;
        let depth = le16(node, EH_DEPTH);
        if EXTENT_HEADER + entries * EXTENT_ENTRY > node.len() {
            return Err(format!("{entries} extent entries do not fit their node"));
        }
        if depth >= depth_left {
            return Err(format!("extent tree depth {depth} is too deep"));
        }
        for i in 0..entries {
            let at = EXTENT_HEADER + i * EXTENT_ENTRY;
            let e = &node[at..at + EXTENT_ENTRY];
            let logical = le32(e, EE_BLOCK) as u64;
            if depth == 0 {
                let raw_len = le16(e, EE_LEN) as u64;
                let (len, unwritten) = if raw_len > EXT_INIT_MAX_LEN {
                    (raw_len - EXT_INIT_MAX_LEN, true)
                } else {
                    (raw_len, false)
                };
                let physical = (le16(e, EE_START_HI) as u64) << 32 | le32(e, EE_START_LO) as u64;
                if len > 0 {
                    map.push(Mapping {
                        logical,
                        physical,
                        len,
                        unwritten,
                    });
                }
            } else {
                let child = (le16(e, EI_LEAF_HI) as u64) << 32 | le32(e, EI_LEAF_LO) as u64;
                if child >= self.blocks_count {
                    return Err(format!(
                        "extent index points at block {child}, outside the file system"
                    ));
                }
                let blk = self
                    .read_block(child, "an extent tree block")
                    .map_err(|e| e.to_string())?;
                if let Some(iseed) = iseed {
                    csum::extent_block(iseed, &blk).map_err(|e| format!("block {child}: {e}"))?;
                }
                self.walk_extents(&blk, depth, iseed, map)?;
            }
            if map.len() > 1 << 24 {
                return Err("more than 16M extents".into());
            }
        }
        Ok(())
    }

    /// ext2/3 block maps: 12 direct pointers, then single, double and triple indirect blocks.
    fn walk_block_map(
        &self,
        inode: &Inode,
        nblocks: u64,
        map: &mut Vec<Mapping>,
    ) -> Result<(), String> {
        let per = self.block_size / 4;
        let mut logical = 0u64;
        for i in 0..IB_DIRECT_BLOCKS {
            self.push_ptr(map, logical, le32(&inode.block, i * 4) as u64)?;
            logical += 1;
        }
        for (level, slot) in [(1u32, IB_IND_BLOCK), (2, IB_DIND_BLOCK), (3, IB_TIND_BLOCK)] {
            if logical >= nblocks {
                break;
            }
            let ptr = le32(&inode.block, slot * 4) as u64;
            let span = per.pow(level);
            if ptr != 0 {
                self.walk_indirect(ptr, level, logical, nblocks, map)?;
            }
            logical += span;
        }
        Ok(())
    }

    fn walk_indirect(
        &self,
        blk: u64,
        level: u32,
        start: u64,
        nblocks: u64,
        map: &mut Vec<Mapping>,
    ) -> Result<(), String> {
        if blk >= self.blocks_count {
            return Err(format!("indirect block {blk} is outside the file system"));
        }
        let data = self
            .read_block(blk, "an indirect block")
            .map_err(|e| e.to_string())?;
        let per = self.block_size / 4;
        let span = per.pow(level - 1);
        for i in 0..per {
            let l = start + i * span;
            if l >= nblocks {
                break;
            }
            let p = le32(&data, (i * 4) as usize) as u64;
            if p == 0 {
                continue;
            }
            if level == 1 {
                self.push_ptr(map, l, p)?;
            } else {
                self.walk_indirect(p, level - 1, l, nblocks, map)?;
            }
        }
        Ok(())
    }

    fn push_ptr(&self, map: &mut Vec<Mapping>, logical: u64, physical: u64) -> Result<(), String> {
        if physical == 0 {
            return Ok(());
        }
        if let Some(last) = map.last_mut() {
            if !last.unwritten
                && last.logical + last.len == logical
                && last.physical + last.len == physical
            {
                last.len += 1;
                return Ok(());
            }
        }
        map.push(Mapping {
            logical,
            physical,
            len: 1,
            unwritten: false,
        });
        Ok(())
    }

    fn read_block(&self, blk: u64, what: &'static str) -> Result<Vec<u8>> {
        let mut b = vec![0u8; self.block_size as usize];
        read_block_into(&*self.dev, self.block_size, blk, &mut b, what)?;
        Ok(b)
    }

    pub fn has_inline_data_feature(&self) -> bool {
        self.incompat & INCOMPAT_INLINE_DATA != 0
    }
}

fn read_block_into(
    dev: &dyn BlockDev,
    bs: u64,
    blk: u64,
    buf: &mut [u8],
    what: &'static str,
) -> Result<()> {
    let offset = blk.saturating_mul(bs);
    dev.read_at(buf, offset).map_err(|source| Error::Read {
        what,
        offset,
        source,
    })
}

/// Parses xattr entries starting at `entries[start..]`; value offsets are relative to `values`.
fn parse_entries(
    entries: &[u8],
    start: usize,
    values: &[u8],
    out: &mut Vec<(u8, Vec<u8>, Vec<u8>)>,
) -> Result<(), String> {
    let mut p = start;
    loop {
        if p + 4 > entries.len() {
            return Err("entry list is not terminated".into());
        }
        if le32(entries, p) == 0 {
            return Ok(());
        }
        if p + XATTR_ENTRY_HEADER > entries.len() {
            return Err("entry runs past its area".into());
        }
        let name_len = entries[p + XE_NAME_LEN] as usize;
        let index = entries[p + XE_NAME_INDEX];
        let offs = le16(entries, p + XE_VALUE_OFFS) as usize;
        let value_inum = le32(entries, p + XE_VALUE_INUM);
        let size = le32(entries, p + XE_VALUE_SIZE) as usize;
        if value_inum != 0 {
            return Err("values kept in separate inodes (ea_inode)".into());
        }
        let name_end = p + XATTR_ENTRY_HEADER + name_len;
        if name_end > entries.len() {
            return Err("entry name runs past its area".into());
        }
        let value = if size == 0 {
            Vec::new()
        } else {
            values
                .get(offs..offs.checked_add(size).ok_or("value size overflows")?)
                .ok_or_else(|| format!("value at {offs}+{size} runs past its area"))?
                .to_vec()
        };
        out.push((
            index,
            entries[p + XATTR_ENTRY_HEADER..name_end].to_vec(),
            value,
        ));
        p += (XATTR_ENTRY_HEADER + name_len + 3) & !3;
        if out.len() > 65536 {
            return Err("too many entries".into());
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Mapping {
    logical: u64,
    physical: u64,
    len: u64,
    unwritten: bool,
}

/// Sequential reader of one file's bytes.
pub struct FileReader<'a> {
    fs: &'a Ext4,
    map: Vec<Mapping>,
    inline: Option<Vec<u8>>,
    size: u64,
    pos: u64,
    buf: Vec<u8>,
    buf_pos: usize,
}

/// Reads are batched up to this many bytes of a contiguous extent.
const READ_BATCH: u64 = 1 << 20;

impl FileReader<'_> {
    fn fill(&mut self) -> std::io::Result<()> {
        let bs = self.fs.block_size;
        let block = self.pos / bs;
        let in_block = self.pos % bs;
        let remaining = self.size - self.pos;
        let idx = self.map.partition_point(|m| m.logical + m.len <= block);
        let (data_at, run) = match self.map.get(idx) {
            Some(m) if m.logical <= block => {
                let run = (m.len - (block - m.logical)) * bs - in_block;
                let at = if m.unwritten {
                    None
                } else {
                    Some((m.physical + block - m.logical) * bs + in_block)
                };
                (at, run)
            }
            Some(m) => (None, (m.logical - block) * bs - in_block),
            None => (None, remaining),
        };
        let n = run.min(remaining).min(READ_BATCH) as usize;
        self.buf.clear();
        self.buf.resize(n, 0);
        if let Some(at) = data_at {
            self.fs.dev.read_at(&mut self.buf, at)?;
        }
        self.buf_pos = 0;
        Ok(())
    }
}

impl Read for FileReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if let Some(data) = &self.inline {
            let p = self.pos as usize;
            let n = out.len().min(data.len() - p);
            out[..n].copy_from_slice(&data[p..p + n]);
            self.pos += n as u64;
            return Ok(n);
        }
        if self.pos >= self.size || out.is_empty() {
            return Ok(0);
        }
        if self.buf_pos == self.buf.len() {
            self.fill()?;
        }
        let n = out.len().min(self.buf.len() - self.buf_pos);
        out[..n].copy_from_slice(&self.buf[self.buf_pos..self.buf_pos + n]);
        self.buf_pos += n;
        self.pos += n as u64;
        Ok(n)
    }
}
