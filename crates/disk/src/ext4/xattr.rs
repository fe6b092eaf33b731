//! Extended attributes as ext4 stores them: name indexes for the common prefixes, entry hashes,
//! and POSIX ACLs in ext4's compact form (the xattr API uses another layout).

use super::layout::*;
use super::{le16, le32, put16, put32};

const PREFIXES: [(u8, &[u8]); 4] = [
    (1, b"user."),
    (4, b"trusted."),
    (6, b"security."),
    (7, b"system."),
];
const ACL_ACCESS: &[u8] = b"system.posix_acl_access";
const ACL_DEFAULT: &[u8] = b"system.posix_acl_default";

/// The full name of an attribute stored under `index` with suffix `name`.
pub(crate) fn full_name(index: u8, name: &[u8]) -> Option<Vec<u8>> {
    match index {
        2 => Some(ACL_ACCESS.to_vec()),
        3 => Some(ACL_DEFAULT.to_vec()),
        _ => PREFIXES
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, p)| [*p, name].concat()),
    }
}

/// (index, suffix) for a full attribute name; `None` for a namespace ext4 cannot hold.
pub(crate) fn split_name(full: &[u8]) -> Option<(u8, &[u8])> {
    if full == ACL_ACCESS {
        return Some((2, b""));
    }
    if full == ACL_DEFAULT {
        return Some((3, b""));
    }
    PREFIXES
        .iter()
        .find(|(_, p)| full.starts_with(p) && full.len() > p.len())
        .map(|(i, p)| (*i, &full[p.len()..]))
}

pub(crate) fn is_acl(index: u8) -> bool {
    index == 2 || index == 3
}

/// e2fsprogs' entry hash (the signed-char variant, as x86 kernels computed it).
pub(crate) fn entry_hash(name: &[u8], value: &[u8]) -> u32 {
    let mut h: u32 = 0;
    for &c in name {
        h = (h << 5) ^ (h >> 27) ^ (c as i8 as i32 as u32);
    }
    if !value.is_empty() {
        for w in value.chunks(4) {
            let mut word = [0u8; 4];
            word[..w.len()].copy_from_slice(w);
            h = (h << 16) ^ (h >> 16) ^ u32::from_le_bytes(word);
        }
    }
    h
}

pub(crate) fn block_hash(entry_hashes: &[u32]) -> u32 {
    let mut h = 0u32;
    for &e in entry_hashes {
        if e == 0 {
            return 0;
        }
        h = (h << 16) ^ (h >> 16) ^ e;
    }
    h
}

const ACL_USER_OBJ: u16 = 1;
const ACL_USER: u16 = 2;
const ACL_GROUP_OBJ: u16 = 4;
const ACL_GROUP: u16 = 8;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;

/// ext4's ACL form (version 1, short entries without id) → the xattr API form (version 2).
pub(crate) fn acl_from_disk(b: &[u8]) -> Option<Vec<u8>> {
    if b.len() < 4 || le32(b, 0) != 1 {
        return None;
    }
    let mut out = 2u32.to_le_bytes().to_vec();
    let mut p = 4;
    while p < b.len() {
        if p + 4 > b.len() {
            return None;
        }
        let (tag, perm) = (le16(b, p), le16(b, p + 2));
        let id = match tag {
            ACL_USER | ACL_GROUP => {
                if p + 8 > b.len() {
                    return None;
                }
                let id = le32(b, p + 4);
                p += 8;
                id
            }
            ACL_USER_OBJ | ACL_GROUP_OBJ | ACL_MASK | ACL_OTHER => {
                p += 4;
                u32::MAX
            }
            _ => return None,
        };
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    Some(out)
}

/// The xattr API's ACL form → ext4's.
pub(crate) fn acl_to_disk(b: &[u8]) -> Option<Vec<u8>> {
    if b.len() < 4 || le32(b, 0) != 2 || !(b.len() - 4).is_multiple_of(8) {
        return None;
    }
    let mut out = 1u32.to_le_bytes().to_vec();
    for e in b[4..].chunks_exact(8) {
        let tag = le16(e, 0);
        let mut buf = [0u8; 8];
        put16(&mut buf, 0, tag);
        put16(&mut buf, 2, le16(e, 2));
        match tag {
            ACL_USER | ACL_GROUP => {
                put32(&mut buf, 4, le32(e, 4));
                out.extend_from_slice(&buf);
            }
            ACL_USER_OBJ | ACL_GROUP_OBJ | ACL_MASK | ACL_OTHER => out.extend_from_slice(&buf[..4]),
            _ => return None,
        }
    }
    Some(out)
}

/// Entries laid out for the in-inode area (`base` = 4, values relative to the first entry) or
/// an xattr block (`base` = 32, values relative to the block). `None` when they do not fit.
pub(crate) fn layout(
    entries: &[(u8, Vec<u8>, Vec<u8>)],
    region: usize,
    base: usize,
    rel_to_first: bool,
) -> Option<(Vec<u8>, Vec<u32>)> {
    let mut buf = vec![0u8; region];
    let mut pos = base;
    let mut vend = region;
    let mut hashes = Vec::new();
    for (index, name, value) in entries {
        let esize = (XATTR_ENTRY_HEADER + name.len() + 3) & !3;
        let vsize = (value.len() + 3) & !3;
        if name.len() > 255 || pos + esize + 4 > vend.checked_sub(vsize)? {
            return None;
        }
        vend -= vsize;
        buf[vend..vend + value.len()].copy_from_slice(value);
        let h = entry_hash(name, value);
        hashes.push(h);
        let e = &mut buf[pos..pos + esize];
        e[XE_NAME_LEN] = name.len() as u8;
        e[XE_NAME_INDEX] = *index;
        let offs = if rel_to_first { vend - base } else { vend };
        put16(
            e,
            XE_VALUE_OFFS,
            if value.is_empty() { 0 } else { offs as u16 },
        );
        put32(e, XE_VALUE_INUM, 0);
        put32(e, XE_VALUE_SIZE, value.len() as u32);
        put32(e, XE_HASH, h);
        e[XATTR_ENTRY_HEADER..XATTR_ENTRY_HEADER + name.len()].copy_from_slice(name);
        pos += esize;
    }
    Some((buf, hashes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_forms_round_trip() {
        let mut x = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (1u16, 6u16, u32::MAX),
            (2, 4, 1000),
            (4, 4, u32::MAX),
            (0x10, 6, u32::MAX),
            (0x20, 0, u32::MAX),
        ] {
            x.extend_from_slice(&tag.to_le_bytes());
            x.extend_from_slice(&perm.to_le_bytes());
            x.extend_from_slice(&id.to_le_bytes());
        }
        let d = acl_to_disk(&x).unwrap();
        assert_eq!(d.len(), 4 + 4 * 4 + 8);
        assert_eq!(acl_from_disk(&d).unwrap(), x);
    }

    #[test]
    fn names_split_and_join() {
        assert_eq!(
            split_name(b"security.capability"),
            Some((6, &b"capability"[..]))
        );
        assert_eq!(full_name(6, b"capability").unwrap(), b"security.capability");
        assert_eq!(split_name(b"system.posix_acl_access"), Some((2, &b""[..])));
        assert_eq!(split_name(b"user."), None);
        assert_eq!(split_name(b"weird.x"), None);
    }
}
