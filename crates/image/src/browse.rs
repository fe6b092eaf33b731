//! Reading inside an image version without exporting it: path lookup through the Merkle
//! trees (symlinks followed within the image, as a chroot would), and file content. Trees are
//! cached by id, so walking many versions that share subtrees reads each subtree once.

use std::collections::HashMap;
use std::rc::Rc;

use starling_store::{ObjectId, ObjectSource, MAX_MANIFEST};

use crate::error::{Error, Result};
use crate::manifest::{FileData, Node, Tree};

const MAX_SYMLINK_HOPS: usize = 40;

pub struct Browser<'s> {
    pub source: &'s dyn ObjectSource,
    trees: HashMap<ObjectId, Rc<Tree>>,
    /// Chunks made but not yet committed (an update's new files), readable here.
    pub pending: HashMap<ObjectId, Vec<u8>>,
}

impl<'s> Browser<'s> {
    pub fn new(source: &'s dyn ObjectSource) -> Self {
        Browser {
            source,
            trees: HashMap::new(),
            pending: HashMap::new(),
        }
    }

    /// Makes a tree that is not (yet) in the store visible to lookups, e.g. one an edit made.
    pub fn preload(&mut self, id: ObjectId, tree: Tree) {
        self.trees.insert(id, Rc::new(tree));
    }

    pub fn tree(&mut self, id: &ObjectId) -> Result<Rc<Tree>> {
        if let Some(t) = self.trees.get(id) {
            return Ok(t.clone());
        }
        let t = Rc::new(Tree::decode(id, &self.source.get(id, MAX_MANIFEST)?)?);
        self.trees.insert(*id, t.clone());
        Ok(t)
    }

    /// The node at `path` (`/`-separated) below `root`, following symlinks in every component
    /// (and in the last one when `follow_last`) the way the kernel would inside a chroot, and
    /// resolving hard links to the inode holder. `None` when nothing is there.
    pub fn lookup(
        &mut self,
        root: &ObjectId,
        path: &[u8],
        follow_last: bool,
    ) -> Result<Option<Node>> {
        let mut todo: Vec<Vec<u8>> = components(path).into_iter().rev().collect();
        let mut dirs: Vec<ObjectId> = vec![*root];
        let mut names: Vec<Vec<u8>> = Vec::new();
        let mut hops = 0;
        let mut current: Option<Node> = None;
        while let Some(c) = todo.pop() {
            if c == b".." {
                if dirs.len() > 1 {
                    dirs.pop();
                    names.pop();
                }
                current = None;
                continue;
            }
            let dir = *dirs.last().unwrap_or(root);
            let tree = self.tree(&dir)?;
            let Ok(i) = tree.entries.binary_search_by(|e| e.name.as_slice().cmp(&c)) else {
                return Ok(None);
            };
            let node = tree.entries[i].node.clone();
            let last = todo.is_empty();
            match node {
                Node::Symlink { target, .. } if !last || follow_last => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Ok(None);
                    }
                    if target.first() == Some(&b'/') {
                        dirs.truncate(1);
                        names.clear();
                    }
                    for t in components(&target).into_iter().rev() {
                        todo.push(t);
                    }
                    current = None;
                }
                Node::Hardlink { target } if last => {
                    return self.lookup(root, &target, false);
                }
                Node::Dir { tree, .. } => {
                    dirs.push(tree);
                    names.push(c);
                    current = Some(node);
                }
                other => {
                    if !last {
                        return Ok(None);
                    }
                    current = Some(other);
                }
            }
        }
        Ok(current.or_else(|| {
            // The path named a directory reached through ".." or the root itself.
            Some(Node::Dir {
                meta: Default::default(),
                tree: *dirs.last().unwrap_or(root),
            })
        }))
    }

    /// A file's bytes, refused beyond `max` bytes.
    pub fn read(&self, data: &FileData, size: u64, max: u64, what: &str) -> Result<Vec<u8>> {
        if size > max {
            return Err(Error::Io {
                path: what.into(),
                source: std::io::Error::other(format!(
                    "{size} bytes is more than the {max} this reads"
                )),
            });
        }
        let mut out = Vec::with_capacity(size as usize);
        match data {
            FileData::Inline(b) => out.extend_from_slice(b),
            FileData::Chunks(chunks) => {
                for c in chunks {
                    match self.pending.get(&c.id) {
                        Some(b) => out.extend_from_slice(b),
                        None => {
                            let b = self.source.get(&c.id, u64::from(c.len))?;
                            if b.len() != c.len as usize {
                                return Err(Error::Io {
                                    path: what.into(),
                                    source: std::io::Error::other(format!(
                                        "chunk {} is {} bytes, the manifest says {}",
                                        c.id,
                                        b.len(),
                                        c.len
                                    )),
                                });
                            }
                            out.extend_from_slice(&b);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// The content of the regular file at `path`, following symlinks; `None` if absent or not
    /// a regular file.
    pub fn read_path(&mut self, root: &ObjectId, path: &str, max: u64) -> Result<Option<Vec<u8>>> {
        match self.lookup(root, path.as_bytes(), true)? {
            Some(Node::File { size, data, .. }) => Ok(Some(self.read(&data, size, max, path)?)),
            _ => Ok(None),
        }
    }
}

fn components(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(|c| c.to_vec())
        .collect()
}
