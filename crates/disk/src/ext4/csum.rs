//! metadata_csum: the CRC32C checksums ext4 keeps over its metadata, checked on read as the
//! kernel checks them (superblock, group descriptors, inodes, extent and directory blocks,
//! xattr blocks), so a damaged block is an error rather than content. Bitmaps and the
//! journal are not read, so not checked.

use crc_fast::{CrcAlgorithm, Digest};

use super::layout::*;
use super::{le16, le32};

/// ext4's crc32c: the raw register (no final inversion) continued from `seed`.
pub(crate) fn crc32c(seed: u32, parts: &[&[u8]]) -> u32 {
    let mut d = Digest::new_with_init_state(CrcAlgorithm::Crc32Iscsi, u64::from(seed));
    for p in parts {
        d.update(p);
    }
    d.get_state() as u32
}

/// Whether the superblock's own checksum matches.
pub(crate) fn superblock_ok(sb: &[u8]) -> bool {
    crc32c(!0, &[&sb[..SB_CHECKSUM]]) == le32(sb, SB_CHECKSUM)
}

/// Whether group descriptor `desc` of group `group` matches its 16-bit checksum.
pub(crate) fn group_desc_ok(seed: u32, group: u32, desc: &[u8]) -> bool {
    let c = crc32c(
        seed,
        &[
            &group.to_le_bytes(),
            &desc[..BG_CHECKSUM],
            &[0, 0],
            &desc[BG_CHECKSUM + 2..],
        ],
    );
    c & 0xFFFF == u32::from(le16(desc, BG_CHECKSUM))
}

/// The seed of one inode's checksums (its own, its extent and directory blocks').
pub(crate) fn inode_seed(seed: u32, ino: u32, generation: u32) -> u32 {
    crc32c(seed, &[&ino.to_le_bytes(), &generation.to_le_bytes()])
}

/// Whether raw inode `b` matches its checksum: 16 bits in an old-size inode, 32 when
/// i_extra_isize covers i_checksum_hi.
pub(crate) fn inode_ok(iseed: u32, b: &[u8], extra_isize: usize) -> bool {
    let hi = b.len() > GOOD_OLD_INODE_SIZE && extra_isize >= I_CHECKSUM_HI_EXTRA;
    let c = if hi {
        crc32c(
            iseed,
            &[
                &b[..I_CHECKSUM_LO],
                &[0, 0],
                &b[I_CHECKSUM_LO + 2..I_CHECKSUM_HI],
                &[0, 0],
                &b[I_CHECKSUM_HI + 2..],
            ],
        )
    } else {
        crc32c(
            iseed,
            &[&b[..I_CHECKSUM_LO], &[0, 0], &b[I_CHECKSUM_LO + 2..]],
        ) & 0xFFFF
    };
    let stored = u32::from(le16(b, I_CHECKSUM_LO))
        | if hi {
            u32::from(le16(b, I_CHECKSUM_HI)) << 16
        } else {
            0
        };
    c == stored
}

/// Checks an extent tree block's tail (after `eh_max` entries).
pub(crate) fn extent_block(iseed: u32, blk: &[u8]) -> Result<(), String> {
    let tail = EXTENT_HEADER + EXTENT_ENTRY * usize::from(le16(blk, EH_MAX));
    if tail + 4 > blk.len() {
        return Err("extent block has no room for its checksum".into());
    }
    if crc32c(iseed, &[&blk[..tail]]) != le32(blk, tail) {
        return Err("extent block checksum does not match (metadata_csum)".into());
    }
    Ok(())
}

/// Checks a directory block: an htree index block (`dx`: its count/limit at `count_at`) by
/// its dx tail, a leaf by the fake entry in its last 12 bytes.
pub(crate) fn dir_block(iseed: u32, blk: &[u8], dx: Option<usize>) -> Result<(), String> {
    match dx {
        Some(at) => {
            if at + 4 > blk.len() {
                return Err("htree block's count runs past the block".into());
            }
            let (limit, count) = (usize::from(le16(blk, at)), usize::from(le16(blk, at + 2)));
            let tail = at + limit * 8;
            if count > limit || tail + 8 > blk.len() {
                return Err(format!("htree block with {count} of {limit} entries"));
            }
            let c = crc32c(
                iseed,
                &[&blk[..at + count * 8], &blk[tail..tail + 4], &[0; 4]],
            );
            if c != le32(blk, tail + 4) {
                return Err("htree block checksum does not match (metadata_csum)".into());
            }
        }
        None => {
            let t = blk.len() - DIRENT_TAIL;
            let tail_ok = le32(blk, t) == 0
                && usize::from(le16(blk, t + DE_REC_LEN)) == DIRENT_TAIL
                && blk[t + DE_NAME_LEN] == 0
                && blk[t + DE_FILE_TYPE] == DIRENT_TAIL_FT;
            if !tail_ok {
                return Err("directory block has no checksum tail (metadata_csum)".into());
            }
            if crc32c(iseed, &[&blk[..t]]) != le32(blk, t + 8) {
                return Err("directory block checksum does not match (metadata_csum)".into());
            }
        }
    }
    Ok(())
}

/// Checks an xattr block (number `blk_nr`) against the checksum in its header.
pub(crate) fn xattr_block(seed: u32, blk_nr: u64, blk: &[u8]) -> bool {
    let c = crc32c(
        seed,
        &[
            &blk_nr.to_le_bytes(),
            &blk[..XH_CHECKSUM],
            &[0; 4],
            &blk[XH_CHECKSUM + 4..],
        ],
    );
    c == le32(blk, XH_CHECKSUM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_the_castagnoli_crc_without_its_final_inversion() {
        // CRC-32C's check value over "123456789" is 0xE3069283 (inverted at the end).
        assert_eq!(!crc32c(!0, &[b"123456789"]), 0xE306_9283);
        // Continuing from a seed equals one pass over the concatenation.
        assert_eq!(
            crc32c(crc32c(!0, &[b"1234"]), &[b"56789"]),
            crc32c(!0, &[b"123456789"])
        );
    }
}
