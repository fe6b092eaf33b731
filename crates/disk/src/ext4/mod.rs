//! ext2/3/4: a reader for importing and a writer for exporting.
//!
//! Only what an image needs is implemented, but all of it: extents and block maps, htree
//! directories (read as linear blocks, which the format allows), 64-bit and meta_bg group
//! descriptors, in-inode and block xattrs (POSIX ACLs converted to the xattr form), nanosecond
//! times with the epoch bits, old and new device number encodings, inline data for files.

mod csum;
mod layout;
mod read;
mod write;
pub(crate) mod xattr;

pub use read::{Ext4, FileReader, Inode, Kind};
pub use write::{Ext4Builder, Fill, NewInode, NewKind, Sink, WriteOptions, WriteReport};

/// Seconds and the `_extra` field of an ext4 timestamp: two epoch bits extend the signed
/// 32-bit seconds to 34 bits, the other 30 bits are nanoseconds.
pub(crate) fn decode_time(lo: u32, extra: Option<u32>) -> (i64, u32) {
    let base = lo as i32 as i64;
    match extra {
        Some(x) => (base + (((x & 3) as i64) << 32), (x >> 2).min(999_999_999)),
        None => (base, 0),
    }
}

pub(crate) fn encode_time(sec: i64, nsec: u32) -> (u32, u32) {
    let lo = sec as i32;
    let epoch = ((sec - lo as i64) >> 32) & 3;
    (lo as u32, (nsec.min(999_999_999) << 2) | epoch as u32)
}

/// Linux's `makedev` / `major` / `minor` for 64-bit dev_t, as stat reports it.
pub fn makedev(major: u32, minor: u32) -> u64 {
    let (ma, mi) = (major as u64, minor as u64);
    ((ma & 0xffff_f000) << 32) | ((ma & 0xfff) << 8) | ((mi & 0xffff_ff00) << 12) | (mi & 0xff)
}

pub fn major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)) as u32
}

pub fn minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0xff)) as u32
}

pub(crate) fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

pub(crate) fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

pub(crate) fn put16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}

/// Groups with a superblock backup under sparse_super: 0, 1 and powers of 3, 5 and 7.
pub(crate) fn has_super_backup(group: u64, sparse: bool) -> bool {
    if !sparse || group <= 1 {
        return true;
    }
    [3u64, 5, 7].iter().any(|&b| {
        let mut p = b;
        while p < group {
            p *= b;
        }
        p == group
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_across_epochs() {
        for (s, ns) in [
            (0i64, 0u32),
            (-1, 5),
            (1 << 31, 999_999_999),
            (-(1 << 31), 1),
            (0x3_0000_0000, 7),
        ] {
            let (lo, x) = encode_time(s, ns);
            assert_eq!(decode_time(lo, Some(x)), (s, ns), "{s}");
        }
    }

    #[test]
    fn devices_round_trip() {
        for (ma, mi) in [(1, 3), (8, 0), (259, 65536), (4095, 1 << 19)] {
            let d = makedev(ma, mi);
            assert_eq!((major(d), minor(d)), (ma, mi));
        }
    }

    #[test]
    fn sparse_super_groups() {
        let g: Vec<u64> = (0..100).filter(|&g| has_super_backup(g, true)).collect();
        assert_eq!(g, vec![0, 1, 3, 5, 7, 9, 25, 27, 49, 81]);
    }
}
