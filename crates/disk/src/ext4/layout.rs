//! The on-disk format, named: byte offsets of the superblock, group descriptor, inode,
//! extent, directory entry and xattr fields, the magic numbers, feature flags and mode bits.
//! The reader and the writer both use these, so a field has one name and one offset.
//! Offsets are from the start of their structure; `_LO`/`_HI` are the halves of a split field.

pub(crate) const SUPERBLOCK_OFFSET: u64 = 1024;
pub(crate) const SUPERBLOCK_SIZE: usize = 1024;
pub(crate) const MAGIC: u16 = 0xEF53;
pub(crate) const ROOT_INO: u32 = 2;

// Superblock fields.
pub(crate) const SB_INODES_COUNT: usize = 0;
pub(crate) const SB_BLOCKS_COUNT_LO: usize = 4;
pub(crate) const SB_FREE_BLOCKS_COUNT_LO: usize = 12;
pub(crate) const SB_FREE_INODES_COUNT: usize = 16;
pub(crate) const SB_FIRST_DATA_BLOCK: usize = 20;
/// Block size is 1024 << this.
pub(crate) const SB_LOG_BLOCK_SIZE: usize = 24;
pub(crate) const SB_LOG_CLUSTER_SIZE: usize = 28;
pub(crate) const SB_BLOCKS_PER_GROUP: usize = 32;
pub(crate) const SB_CLUSTERS_PER_GROUP: usize = 36;
pub(crate) const SB_INODES_PER_GROUP: usize = 40;
pub(crate) const SB_WTIME: usize = 48;
pub(crate) const SB_MAX_MNT_COUNT: usize = 54;
pub(crate) const SB_MAGIC: usize = 56;
pub(crate) const SB_STATE: usize = 58;
pub(crate) const SB_ERRORS: usize = 60;
pub(crate) const SB_LASTCHECK: usize = 64;
pub(crate) const SB_REV_LEVEL: usize = 76;
pub(crate) const SB_FIRST_INO: usize = 84;
pub(crate) const SB_INODE_SIZE: usize = 88;
pub(crate) const SB_BLOCK_GROUP_NR: usize = 90;
pub(crate) const SB_FEATURE_COMPAT: usize = 92;
pub(crate) const SB_FEATURE_INCOMPAT: usize = 96;
pub(crate) const SB_FEATURE_RO_COMPAT: usize = 100;
/// 16 bytes.
pub(crate) const SB_UUID: usize = 104;
pub(crate) const SB_VOLUME_NAME: usize = 120;
/// NUL-padded.
pub(crate) const SB_VOLUME_NAME_LEN: usize = 16;
/// 16 bytes.
pub(crate) const SB_HASH_SEED: usize = 236;
pub(crate) const SB_DEF_HASH_VERSION: usize = 252;
pub(crate) const SB_DESC_SIZE: usize = 254;
pub(crate) const SB_FIRST_META_BG: usize = 260;
pub(crate) const SB_MKFS_TIME: usize = 264;
pub(crate) const SB_BLOCKS_COUNT_HI: usize = 336;
pub(crate) const SB_MIN_EXTRA_ISIZE: usize = 348;
pub(crate) const SB_WANT_EXTRA_ISIZE: usize = 350;

/// `s_state`: cleanly unmounted.
pub(crate) const STATE_VALID: u16 = 1;
/// `s_errors`: continue on errors.
pub(crate) const ERRORS_CONTINUE: u16 = 1;
/// `s_rev_level`: dynamic inode sizes and feature flags.
pub(crate) const REV_DYNAMIC: u32 = 1;
/// `s_def_hash_version`: half MD4.
pub(crate) const HASH_HALF_MD4: u8 = 1;

pub(crate) const COMPAT_EXT_ATTR: u32 = 0x8;

pub(crate) const INCOMPAT_FILETYPE: u32 = 0x2;
pub(crate) const INCOMPAT_RECOVER: u32 = 0x4;
pub(crate) const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
pub(crate) const INCOMPAT_META_BG: u32 = 0x10;
pub(crate) const INCOMPAT_EXTENTS: u32 = 0x40;
pub(crate) const INCOMPAT_64BIT: u32 = 0x80;
pub(crate) const INCOMPAT_MMP: u32 = 0x100;
pub(crate) const INCOMPAT_FLEX_BG: u32 = 0x200;
pub(crate) const INCOMPAT_CSUM_SEED: u32 = 0x2000;
pub(crate) const INCOMPAT_LARGEDIR: u32 = 0x4000;
pub(crate) const INCOMPAT_INLINE_DATA: u32 = 0x8000;
pub(crate) const INCOMPAT_CASEFOLD: u32 = 0x20000;

pub(crate) const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
pub(crate) const RO_COMPAT_LARGE_FILE: u32 = 0x2;
pub(crate) const RO_COMPAT_DIR_NLINK: u32 = 0x20;
pub(crate) const RO_COMPAT_EXTRA_ISIZE: u32 = 0x40;
pub(crate) const RO_COMPAT_BIGALLOC: u32 = 0x200;

// Group descriptor fields. Without the 64bit feature a descriptor is 32 bytes.
pub(crate) const GROUP_DESC_SIZE: usize = 32;
pub(crate) const BG_BLOCK_BITMAP_LO: usize = 0;
pub(crate) const BG_INODE_BITMAP_LO: usize = 4;
pub(crate) const BG_INODE_TABLE_LO: usize = 8;
pub(crate) const BG_FREE_BLOCKS_COUNT_LO: usize = 12;
pub(crate) const BG_FREE_INODES_COUNT_LO: usize = 14;
pub(crate) const BG_USED_DIRS_COUNT_LO: usize = 16;
/// Only in 64-byte descriptors.
pub(crate) const BG_INODE_TABLE_HI: usize = 0x28;

// Inode fields. The first 128 bytes are ext2's; `i_extra_isize` says how much of the rest is
// fields, the remainder holds in-inode xattrs.
pub(crate) const GOOD_OLD_INODE_SIZE: usize = 128;
pub(crate) const I_MODE: usize = 0;
pub(crate) const I_UID: usize = 2;
pub(crate) const I_SIZE_LO: usize = 4;
pub(crate) const I_ATIME: usize = 8;
pub(crate) const I_CTIME: usize = 12;
pub(crate) const I_MTIME: usize = 16;
pub(crate) const I_GID: usize = 24;
pub(crate) const I_LINKS_COUNT: usize = 26;
/// 512-byte sectors owned, data and metadata.
pub(crate) const I_BLOCKS_LO: usize = 28;
pub(crate) const I_FLAGS: usize = 32;
/// 60 bytes: extent tree root, block map, fast symlink target or old device number.
pub(crate) const I_BLOCK: usize = 40;
pub(crate) const I_BLOCK_LEN: usize = 60;
// Inside `i_block`: device numbers (byte offsets: the old 16-bit encoding, else the new
// 32-bit one) and the ext2/3 block map (slots of 4-byte block numbers: 12 direct, then single,
// double and triple indirect).
pub(crate) const IB_OLD_DEV: usize = 0;
pub(crate) const IB_NEW_DEV: usize = 4;
pub(crate) const IB_DIRECT_BLOCKS: usize = 12;
pub(crate) const IB_IND_BLOCK: usize = 12;
pub(crate) const IB_DIND_BLOCK: usize = 13;
pub(crate) const IB_TIND_BLOCK: usize = 14;
pub(crate) const I_FILE_ACL_LO: usize = 104;
pub(crate) const I_SIZE_HIGH: usize = 108;
pub(crate) const I_BLOCKS_HIGH: usize = 116;
pub(crate) const I_FILE_ACL_HIGH: usize = 118;
pub(crate) const I_UID_HIGH: usize = 120;
pub(crate) const I_GID_HIGH: usize = 122;
pub(crate) const I_EXTRA_ISIZE: usize = 128;
pub(crate) const I_CTIME_EXTRA: usize = 132;
pub(crate) const I_MTIME_EXTRA: usize = 136;
pub(crate) const I_ATIME_EXTRA: usize = 140;
pub(crate) const I_CRTIME: usize = 144;
pub(crate) const I_CRTIME_EXTRA: usize = 148;

/// A symlink target shorter than this lives in `i_block` (a "fast" symlink).
pub(crate) const FAST_SYMLINK_MAX: usize = I_BLOCK_LEN;

pub(crate) const FL_EXTENTS: u32 = 0x80000;
pub(crate) const FL_INLINE_DATA: u32 = 0x1000_0000;

pub(crate) const S_IFMT: u16 = 0o170000;
pub(crate) const S_IFSOCK: u16 = 0o140000;
pub(crate) const S_IFLNK: u16 = 0o120000;
pub(crate) const S_IFREG: u16 = 0o100000;
pub(crate) const S_IFBLK: u16 = 0o060000;
pub(crate) const S_IFDIR: u16 = 0o040000;
pub(crate) const S_IFCHR: u16 = 0o020000;
pub(crate) const S_IFIFO: u16 = 0o010000;

// Extent tree nodes: a 12-byte header, then 12-byte entries (leaves at depth 0, indexes above).
pub(crate) const EXTENT_MAGIC: u16 = 0xF30A;
pub(crate) const EXTENT_HEADER: usize = 12;
pub(crate) const EXTENT_ENTRY: usize = 12;
pub(crate) const EH_MAGIC: usize = 0;
pub(crate) const EH_ENTRIES: usize = 2;
pub(crate) const EH_MAX: usize = 4;
pub(crate) const EH_DEPTH: usize = 6;
pub(crate) const EE_BLOCK: usize = 0;
pub(crate) const EE_LEN: usize = 4;
pub(crate) const EE_START_HI: usize = 6;
pub(crate) const EE_START_LO: usize = 8;
pub(crate) const EI_BLOCK: usize = 0;
pub(crate) const EI_LEAF_LO: usize = 4;
pub(crate) const EI_LEAF_HI: usize = 8;
/// Longest initialized extent; `ee_len` above this marks an unwritten one.
pub(crate) const EXT_INIT_MAX_LEN: u64 = 32768;
/// Extent entries that fit in `i_block` after the header.
pub(crate) const EXTENTS_IN_INODE: usize = (I_BLOCK_LEN - EXTENT_HEADER) / EXTENT_ENTRY;

// Linear directory entries: 8-byte header, then the name, padded to 4 bytes.
pub(crate) const DE_INODE: usize = 0;
pub(crate) const DE_REC_LEN: usize = 4;
pub(crate) const DE_NAME_LEN: usize = 6;
pub(crate) const DE_FILE_TYPE: usize = 7;
pub(crate) const DE_NAME: usize = 8;

// Directory entry file types.
pub(crate) const FT_REG_FILE: u8 = 1;
pub(crate) const FT_DIR: u8 = 2;
pub(crate) const FT_CHRDEV: u8 = 3;
pub(crate) const FT_BLKDEV: u8 = 4;
pub(crate) const FT_FIFO: u8 = 5;
pub(crate) const FT_SOCK: u8 = 6;
pub(crate) const FT_SYMLINK: u8 = 7;

// Extended attributes: a block starts with a 32-byte header, the in-inode area with the
// 4-byte magic; entries follow, values are packed from the end.
pub(crate) const XATTR_MAGIC: u32 = 0xEA02_0000;
pub(crate) const XATTR_BLOCK_HEADER: usize = 32;
pub(crate) const XATTR_IBODY_HEADER: usize = 4;
pub(crate) const XH_MAGIC: usize = 0;
pub(crate) const XH_REFCOUNT: usize = 4;
pub(crate) const XH_BLOCKS: usize = 8;
pub(crate) const XH_HASH: usize = 12;
pub(crate) const XATTR_ENTRY_HEADER: usize = 16;
pub(crate) const XE_NAME_LEN: usize = 0;
pub(crate) const XE_NAME_INDEX: usize = 1;
pub(crate) const XE_VALUE_OFFS: usize = 2;
pub(crate) const XE_VALUE_INUM: usize = 4;
pub(crate) const XE_VALUE_SIZE: usize = 8;
pub(crate) const XE_HASH: usize = 12;
/// The name index of inline data's `system.data`, which is not an attribute.
pub(crate) const XATTR_INDEX_SYSTEM: u8 = 7;

// metadata_csum (the kernel's ext4.h; e2fsprogs' csum.c).
pub(crate) const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
pub(crate) const SB_CHECKSUM_TYPE: usize = 0x175;
pub(crate) const SB_CHECKSUM_SEED: usize = 0x270;
pub(crate) const SB_CHECKSUM: usize = 0x3FC;
pub(crate) const CHECKSUM_TYPE_CRC32C: u8 = 1;
pub(crate) const BG_CHECKSUM: usize = 0x1E;
pub(crate) const I_GENERATION: usize = 0x64;
pub(crate) const I_CHECKSUM_LO: usize = 0x7C;
pub(crate) const I_CHECKSUM_HI: usize = 0x82;
/// i_extra_isize that covers i_checksum_hi.
pub(crate) const I_CHECKSUM_HI_EXTRA: usize = 4;
/// A hashed (htree) directory.
pub(crate) const FL_INDEX: u32 = 0x1000;
/// The last 12 bytes of a checksummed directory leaf block: a fake entry (inode 0, rec_len
/// 12, name_len 0, file type 0xDE) holding the checksum.
pub(crate) const DIRENT_TAIL: usize = 12;
pub(crate) const DIRENT_TAIL_FT: u8 = 0xDE;
pub(crate) const XH_CHECKSUM: usize = 16;
