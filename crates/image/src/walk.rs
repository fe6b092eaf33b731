//! The one walk over what image versions reference: commits, then their trees breadth first
//! a level at a time, then the chunks. Each level is handed to the caller whole, so a remote
//! source can fetch it in parallel (pull), a store can read it in parallel (fsck, gc), and
//! a copy can take only what its target lacks (commit of a writable mount). Every object is
//! met once however many versions and directories share it.

use std::collections::{HashMap, HashSet};

use starling_store::ObjectId;

use crate::error::Result;
use crate::manifest::{Commit, FileData, Node, Tree};

/// Breadth-first walker: ask it for the next level of manifests, feed it their bytes.
pub struct Walker {
    commits: HashSet<ObjectId>,
    seen: HashSet<ObjectId>,
    next: Vec<ObjectId>,
    chunks: Vec<(ObjectId, u64)>,
    manifests: Vec<ObjectId>,
    bad: HashMap<ObjectId, String>,
}

/// What a walk met.
#[derive(Debug, Default)]
pub struct Walked {
    /// Commits and trees, in the order they were met.
    pub manifests: Vec<ObjectId>,
    /// Every chunk referenced, once, with its recorded length.
    pub chunks: Vec<(ObjectId, u64)>,
    /// Manifests that could not be read or decoded, with why (see [`Walker::fail`]).
    pub bad: HashMap<ObjectId, String>,
}

impl Walked {
    /// Every object met (manifests and chunks).
    pub fn objects(&self) -> impl Iterator<Item = ObjectId> + '_ {
        self.manifests
            .iter()
            .copied()
            .chain(self.chunks.iter().map(|(id, _)| *id))
    }
}

impl Walker {
    /// Starts at these versions (commit ids).
    pub fn new(versions: impl IntoIterator<Item = ObjectId>) -> Walker {
        let mut w = Walker {
            commits: HashSet::new(),
            seen: HashSet::new(),
            next: Vec::new(),
            chunks: Vec::new(),
            manifests: Vec::new(),
            bad: HashMap::new(),
        };
        for v in versions {
            if w.seen.insert(v) {
                w.commits.insert(v);
                w.next.push(v);
            }
        }
        w
    }

    /// The manifests to load now (each met for the first time), or `None` when the walk is
    /// done. Feed every one back with [`Walker::feed`] (or [`Walker::fail`]) before asking
    /// again.
    pub fn next_level(&mut self) -> Option<Vec<ObjectId>> {
        if self.next.is_empty() {
            return None;
        }
        let level = std::mem::take(&mut self.next);
        self.manifests.extend_from_slice(&level);
        Some(level)
    }

    /// Decodes a manifest of the current level and queues what it references.
    pub fn feed(&mut self, id: &ObjectId, bytes: &[u8]) -> Result<()> {
        if self.commits.contains(id) {
            let c = Commit::decode(id, bytes)?;
            if self.seen.insert(c.root) {
                self.next.push(c.root);
            }
            return Ok(());
        }
        let tree = Tree::decode(id, bytes)?;
        for e in tree.entries {
            match e.node {
                Node::Dir { tree, .. } if self.seen.insert(tree) => self.next.push(tree),
                Node::File {
                    data: FileData::Chunks(chunks),
                    ..
                } => {
                    for c in chunks {
                        if self.seen.insert(c.id) {
                            self.chunks.push((c.id, u64::from(c.len)));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Records a manifest that could not be had; what it references is not walked.
    pub fn fail(&mut self, id: &ObjectId, why: String) {
        self.bad.insert(*id, why);
    }

    /// Feeds a manifest, recording a decoding failure instead of returning it.
    pub fn feed_or_fail(&mut self, id: &ObjectId, bytes: Result<Vec<u8>>) {
        if let Err(e) = bytes.and_then(|b| self.feed(id, &b)) {
            self.fail(id, e.to_string());
        }
    }

    pub fn finish(self) -> Walked {
        Walked {
            manifests: self.manifests,
            chunks: self.chunks,
            bad: self.bad,
        }
    }

    /// Walks to the end with `load` reading each level (in any order, in parallel if it
    /// likes); unreadable manifests are recorded, not fatal.
    pub fn run(
        mut self,
        mut load: impl FnMut(&[ObjectId]) -> Vec<(ObjectId, Result<Vec<u8>>)>,
    ) -> Walked {
        while let Some(level) = self.next_level() {
            for (id, bytes) in load(&level) {
                self.feed_or_fail(&id, bytes);
            }
        }
        self.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ChunkRef, Entry, Meta};

    fn file(name: &str, chunks: &[(ObjectId, u32)]) -> Entry {
        Entry {
            name: serde_bytes::ByteBuf::from(name.as_bytes().to_vec()),
            node: Node::File {
                meta: Meta::default(),
                size: chunks.iter().map(|c| u64::from(c.1)).sum(),
                data: FileData::Chunks(
                    chunks
                        .iter()
                        .map(|&(id, len)| ChunkRef { id, len })
                        .collect(),
                ),
            },
        }
    }

    #[test]
    fn shared_subtrees_and_chunks_are_met_once() {
        let (c1, c2) = (ObjectId::of(b"c1"), ObjectId::of(b"c2"));
        let sub = Tree {
            entries: vec![file("a", &[(c1, 2), (c2, 2)])],
        };
        let sub_id = ObjectId::of(&sub.encode());
        let dir = |name: &str| Entry {
            name: serde_bytes::ByteBuf::from(name.as_bytes().to_vec()),
            node: Node::Dir {
                meta: Meta::default(),
                tree: sub_id,
            },
        };
        let root = Tree {
            entries: vec![dir("x"), dir("y"), file("z", &[(c1, 2)])],
        };
        let root_id = ObjectId::of(&root.encode());
        let objects: HashMap<ObjectId, Vec<u8>> =
            [(root_id, root.encode()), (sub_id, sub.encode())].into();
        let commit_bytes = Commit {
            root: root_id,
            root_meta: Meta::default(),
            parent: None,
            created_unix_ns: 0,
            name: "t".into(),
            labels: Default::default(),
            boot: None,
            stats: Default::default(),
            source: String::new(),
        }
        .encode();
        let commit_id = ObjectId::of(&commit_bytes);
        let mut levels = Vec::new();
        let w = Walker::new([commit_id, commit_id]).run(|level| {
            levels.push(level.len());
            level
                .iter()
                .map(|id| {
                    let b = if *id == commit_id {
                        Some(commit_bytes.clone())
                    } else {
                        objects.get(id).cloned()
                    };
                    (*id, b.ok_or(starling_store::Error::NotFound(*id).into()))
                })
                .collect()
        });
        assert_eq!(
            levels,
            vec![1, 1, 1],
            "commit, root, the shared subtree once"
        );
        assert_eq!(w.chunks, vec![(c1, 2), (c2, 2)]);
        assert!(w.bad.is_empty());
        assert_eq!(w.objects().count(), 5);
    }

    #[test]
    fn unreadable_manifests_are_recorded_and_not_walked() {
        let v = ObjectId::of(b"version");
        let w = Walker::new([v]).run(|level| {
            level
                .iter()
                .map(|id| (*id, Err(starling_store::Error::NotFound(*id).into())))
                .collect()
        });
        assert_eq!(w.bad.len(), 1);
        assert!(w.chunks.is_empty());
    }
}
