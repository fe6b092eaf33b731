//! The manifest format: trees and commits, canonically encoded and stored as objects.
//!
//! A tree is one directory's entries sorted by name bytes. Equal directories encode to equal
//! bytes, so they are one object and diff skips them by id. Each encoded object starts with a
//! 4-byte kind magic and a u16 format version, followed by the postcard encoding of the value
//! (postcard's wire format is stable and deterministic for these types: no maps, no floats).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use starling_store::ObjectId;

use crate::error::{Error, Result};

pub const TREE_MAGIC: &[u8; 4] = b"SLTR";
pub const COMMIT_MAGIC: &[u8; 4] = b"SLCM";
pub const TREE_FORMAT_VERSION: u16 = 1;
/// 2: `TreeStats::xattrs`. Version 1 commits are still read (their xattr count unknown).
pub const COMMIT_FORMAT_VERSION: u16 = 2;

/// Inode metadata shared by every kind of entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Meta {
    /// Permission bits including setuid, setgid and sticky (mode & 0o7777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// Sorted by name; includes security.* (capabilities, SELinux labels) and trusted.*.
    pub xattrs: Vec<Xattr>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Xattr {
    pub name: ByteBuf,
    pub value: ByteBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub id: ObjectId,
    pub len: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileData {
    /// Small files live in their tree entry: no object of their own.
    Inline(ByteBuf),
    /// Content-defined chunks, in order; their lengths add up to the file size.
    Chunks(Vec<ChunkRef>),
}

impl FileData {
    /// The identity of the content, as search, `image stat` and caches use it: the BLAKE3
    /// hash of the chunk list (ids and lengths), or of the inline bytes. Equal content stored
    /// with the same chunking has the same id.
    pub fn content_id(&self) -> ObjectId {
        match self {
            FileData::Inline(b) => ObjectId::of(b),
            FileData::Chunks(c) => {
                let mut buf = Vec::with_capacity(c.len() * 36);
                for r in c {
                    buf.extend_from_slice(r.id.as_bytes());
                    buf.extend_from_slice(&r.len.to_le_bytes());
                }
                ObjectId::of(&buf)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Node {
    File {
        meta: Meta,
        size: u64,
        data: FileData,
    },
    Dir {
        meta: Meta,
        tree: ObjectId,
    },
    Symlink {
        meta: Meta,
        target: ByteBuf,
    },
    /// Another name for the inode at `target` (a `/`-joined path from the image root). The
    /// target is always the group's first path in depth-first name order, so it is met first
    /// by any walk of the tree.
    Hardlink {
        target: ByteBuf,
    },
    CharDevice {
        meta: Meta,
        rdev: u64,
    },
    BlockDevice {
        meta: Meta,
        rdev: u64,
    },
    Fifo {
        meta: Meta,
    },
    Socket {
        meta: Meta,
    },
}

impl Node {
    pub fn meta_mut(&mut self) -> Option<&mut Meta> {
        match self {
            Node::File { meta, .. }
            | Node::Dir { meta, .. }
            | Node::Symlink { meta, .. }
            | Node::CharDevice { meta, .. }
            | Node::BlockDevice { meta, .. }
            | Node::Fifo { meta }
            | Node::Socket { meta } => Some(meta),
            Node::Hardlink { .. } => None,
        }
    }

    pub fn meta(&self) -> Option<&Meta> {
        match self {
            Node::File { meta, .. }
            | Node::Dir { meta, .. }
            | Node::Symlink { meta, .. }
            | Node::CharDevice { meta, .. }
            | Node::BlockDevice { meta, .. }
            | Node::Fifo { meta }
            | Node::Socket { meta } => Some(meta),
            Node::Hardlink { .. } => None,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            Node::File { .. } => "file",
            Node::Dir { .. } => "dir",
            Node::Symlink { .. } => "symlink",
            Node::Hardlink { .. } => "hardlink",
            Node::CharDevice { .. } => "char",
            Node::BlockDevice { .. } => "block",
            Node::Fifo { .. } => "fifo",
            Node::Socket { .. } => "socket",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub name: ByteBuf,
    pub node: Node,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Tree {
    pub entries: Vec<Entry>,
}

/// Counts over a whole image version, kept in its commit so listings need no tree walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TreeStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub special: u64,
    /// Sum of regular file sizes (hardlinked content counted once).
    pub bytes: u64,
    /// Entries (the root included) carrying extended attributes; `None` in commits written
    /// before it was counted. With `Some(0)` a file system can tell its client there are
    /// none to ask for (a FUSE client otherwise asks on every lookup under overlayfs).
    pub xattrs: Option<u64>,
}

impl TreeStats {
    /// Counts an entry's extended attributes into `xattrs` (left unknown if it is).
    pub fn count_xattrs(&mut self, meta: &Meta) {
        if let (Some(n), false) = (&mut self.xattrs, meta.xattrs.is_empty()) {
            *n += 1;
        }
    }
}

/// Where a bootable image keeps its kernel, for the VM track.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootHints {
    pub kernel: String,
    pub initrd: Option<String>,
    pub cmdline: String,
}

/// One image version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    pub root: ObjectId,
    pub root_meta: Meta,
    /// The version this one replaced under its tag, if any. May be absent from the store once
    /// removed from every tag's history and collected.
    pub parent: Option<ObjectId>,
    pub created_unix_ns: i64,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub boot: Option<BootHints>,
    pub stats: TreeStats,
    /// Human description of where the content came from (e.g. "dir:/srv/rootfs").
    pub source: String,
}

fn encode<T: Serialize>(magic: &[u8; 4], version: u16, value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(magic);
    out.extend_from_slice(&version.to_le_bytes());
    // Serialising into a Vec cannot fail for these types (no maps with non-string keys etc.).
    postcard::to_extend(value, out).unwrap_or_default()
}

fn decode<'a, T: Deserialize<'a>>(
    what: &'static str,
    magic: &[u8; 4],
    supported: u16,
    id: &ObjectId,
    bytes: &'a [u8],
) -> Result<T> {
    let bad = |reason: String| Error::BadObject {
        id: *id,
        what,
        reason,
    };
    if bytes.len() < 6 || &bytes[..4] != magic {
        return Err(bad(format!("not a {what} object")));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != supported {
        return Err(bad(format!(
            "{what} format version {version} is not supported (this build reads {supported})"
        )));
    }
    let (value, rest) =
        postcard::take_from_bytes(&bytes[6..]).map_err(|e| bad(format!("undecodable: {e}")))?;
    if !rest.is_empty() {
        return Err(bad(format!("{} trailing bytes", rest.len())));
    }
    Ok(value)
}

impl Tree {
    pub fn encode(&self) -> Vec<u8> {
        encode(TREE_MAGIC, TREE_FORMAT_VERSION, self)
    }

    pub fn decode(id: &ObjectId, bytes: &[u8]) -> Result<Tree> {
        let t: Tree = decode("tree", TREE_MAGIC, TREE_FORMAT_VERSION, id, bytes)?;
        // Canonical order is part of the format: sorted, unique, valid names.
        for w in t.entries.windows(2) {
            if w[0].name >= w[1].name {
                return Err(Error::BadObject {
                    id: *id,
                    what: "tree",
                    reason: "entries not in strictly increasing name order".into(),
                });
            }
        }
        for e in &t.entries {
            if !crate::path::valid_name(&e.name) {
                return Err(Error::BadObject {
                    id: *id,
                    what: "tree",
                    reason: format!("invalid entry name {:?}", String::from_utf8_lossy(&e.name)),
                });
            }
        }
        Ok(t)
    }
}

impl Commit {
    pub fn encode(&self) -> Vec<u8> {
        encode(COMMIT_MAGIC, COMMIT_FORMAT_VERSION, self)
    }

    pub fn decode(id: &ObjectId, bytes: &[u8]) -> Result<Commit> {
        if bytes.get(4..6) == Some(&1u16.to_le_bytes()[..]) {
            let v1: CommitV1 = decode("commit", COMMIT_MAGIC, 1, id, bytes)?;
            return Ok(v1.into());
        }
        decode("commit", COMMIT_MAGIC, COMMIT_FORMAT_VERSION, id, bytes)
    }
}

/// A commit as format version 1 wrote it: its stats had no xattr count.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct CommitV1 {
    root: ObjectId,
    root_meta: Meta,
    parent: Option<ObjectId>,
    created_unix_ns: i64,
    name: String,
    labels: BTreeMap<String, String>,
    boot: Option<BootHints>,
    stats: TreeStatsV1,
    source: String,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct TreeStatsV1 {
    files: u64,
    dirs: u64,
    symlinks: u64,
    hardlinks: u64,
    special: u64,
    bytes: u64,
}

impl From<CommitV1> for Commit {
    fn from(c: CommitV1) -> Commit {
        let s = c.stats;
        Commit {
            root: c.root,
            root_meta: c.root_meta,
            parent: c.parent,
            created_unix_ns: c.created_unix_ns,
            name: c.name,
            labels: c.labels,
            boot: c.boot,
            stats: TreeStats {
                files: s.files,
                dirs: s.dirs,
                symlinks: s.symlinks,
                hardlinks: s.hardlinks,
                special: s.special,
                bytes: s.bytes,
                xattrs: None,
            },
            source: c.source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_commits_are_read_with_their_xattr_count_unknown() {
        let v1 = CommitV1 {
            root: ObjectId::of(b"root"),
            root_meta: Meta::default(),
            parent: None,
            created_unix_ns: 7,
            name: "old".into(),
            labels: BTreeMap::new(),
            boot: None,
            stats: TreeStatsV1 {
                files: 3,
                dirs: 2,
                symlinks: 1,
                hardlinks: 0,
                special: 0,
                bytes: 99,
            },
            source: "dir:/x".into(),
        };
        let bytes = encode(COMMIT_MAGIC, 1, &v1);
        let c = Commit::decode(&ObjectId::of(&bytes), &bytes).unwrap();
        assert_eq!(
            (c.name.as_str(), c.stats.files, c.stats.bytes),
            ("old", 3, 99)
        );
        assert_eq!(c.stats.xattrs, None);
        assert_eq!(c.source, "dir:/x");
        // What this build writes is version 2, and reads back whole.
        let again = c.encode();
        assert_eq!(&again[4..6], &2u16.to_le_bytes());
        assert_eq!(Commit::decode(&ObjectId::of(&again), &again).unwrap(), c);
    }

    fn entry(name: &[u8]) -> Entry {
        Entry {
            name: ByteBuf::from(name.to_vec()),
            node: Node::Fifo {
                meta: Meta::default(),
            },
        }
    }

    #[test]
    fn tree_round_trip_and_canonical_checks() {
        let t = Tree {
            entries: vec![entry(b"a"), entry(b"b\n\xff")],
        };
        let bytes = t.encode();
        let id = ObjectId::of(&bytes);
        assert_eq!(Tree::decode(&id, &bytes).unwrap(), t);

        let unsorted = Tree {
            entries: vec![entry(b"b"), entry(b"a")],
        };
        assert!(Tree::decode(&id, &unsorted.encode()).is_err());
        let bad_name = Tree {
            entries: vec![entry(b"..")],
        };
        assert!(Tree::decode(&id, &bad_name.encode()).is_err());

        let mut future = bytes.clone();
        future[4] = 9;
        let e = Tree::decode(&id, &future).unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
        assert!(Commit::decode(&id, &bytes).is_err());
    }
}
