//! Copy-on-write edits of an image's Merkle tree: only the directories on the paths that
//! change are rewritten; every other subtree keeps its id. New trees are kept in memory until
//! the caller stores them, so a dry run writes nothing.

use std::collections::{BTreeMap, HashMap};

use serde_bytes::ByteBuf;
use starling_store::{ObjectId, Txn};

use crate::browse::Browser;
use crate::error::{Error, Result};
use crate::manifest::{Entry, Meta, Node, Tree};
use crate::path;

/// What to do at one name.
#[derive(Debug, Clone)]
pub enum Edit {
    /// Put this node here, replacing whatever is there (a directory replaced as a whole).
    Put(Node),
    Remove,
    /// Descend: edit inside the directory here. If there is none, one is created with `meta`;
    /// an existing one takes `meta` only when `set_meta` (an overlay does, a package does not).
    Dir {
        meta: Meta,
        set_meta: bool,
        children: BTreeMap<Vec<u8>, Edit>,
    },
}

/// A set of edits rooted at the image root.
#[derive(Debug, Clone, Default)]
pub struct Edits {
    pub children: BTreeMap<Vec<u8>, Edit>,
}

impl Edits {
    /// Records `edit` at `path` (image path); parents get `Dir` edits with `dir_meta`.
    pub fn set(&mut self, path: &[u8], edit: Edit, dir_meta: &Meta) -> Result<()> {
        let comps = path::split(path)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| Error::BadQuery {
                what: "image path",
                input: path::display(path),
                reason: "not a path inside the image".into(),
            })?;
        let (last, parents) = comps.split_last().expect("non-empty");
        let mut cur = &mut self.children;
        for p in parents {
            let slot = cur.entry(p.clone()).or_insert_with(|| Edit::Dir {
                meta: dir_meta.clone(),
                set_meta: false,
                children: BTreeMap::new(),
            });
            if !matches!(slot, Edit::Dir { .. }) {
                *slot = Edit::Dir {
                    meta: dir_meta.clone(),
                    set_meta: false,
                    children: BTreeMap::new(),
                };
            }
            let Edit::Dir { children, .. } = slot else {
                unreachable!()
            };
            cur = children;
        }
        // A directory edit already recorded keeps its children when a Dir edit comes again.
        match (cur.get_mut(last), edit) {
            (
                Some(Edit::Dir { meta, set_meta, .. }),
                Edit::Dir {
                    meta: m,
                    set_meta: s,
                    ..
                },
            ) => {
                if s {
                    *meta = m;
                    *set_meta = true;
                }
            }
            (_, e) => {
                cur.insert(last.clone(), e);
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }
}

/// Applies edits, keeping the rewritten trees in memory.
pub struct Editor<'b, 's> {
    pub browser: &'b mut Browser<'s>,
    /// Encoded trees made by the edits, by id.
    pub new_trees: HashMap<ObjectId, Vec<u8>>,
}

impl<'b, 's> Editor<'b, 's> {
    pub fn new(browser: &'b mut Browser<'s>) -> Self {
        Editor {
            browser,
            new_trees: HashMap::new(),
        }
    }

    /// The root tree id after applying `edits` to `root`.
    pub fn apply(&mut self, root: &ObjectId, edits: &Edits) -> Result<ObjectId> {
        self.dir(Some(root), &edits.children)
    }

    fn load(&mut self, id: &ObjectId) -> Result<Tree> {
        if let Some(b) = self.new_trees.get(id) {
            return Tree::decode(id, b);
        }
        Ok((*self.browser.tree(id)?).clone())
    }

    fn dir(
        &mut self,
        tree: Option<&ObjectId>,
        edits: &BTreeMap<Vec<u8>, Edit>,
    ) -> Result<ObjectId> {
        let mut entries: BTreeMap<Vec<u8>, Node> = match tree {
            Some(id) => self
                .load(id)?
                .entries
                .into_iter()
                .map(|e| (e.name.into_vec(), e.node))
                .collect(),
            None => BTreeMap::new(),
        };
        for (name, e) in edits {
            match e {
                Edit::Put(n) => {
                    entries.insert(name.clone(), n.clone());
                }
                Edit::Remove => {
                    entries.remove(name);
                }
                Edit::Dir {
                    meta,
                    set_meta,
                    children,
                } => {
                    let (sub, meta) = match entries.get(name) {
                        Some(Node::Dir { tree, meta: old }) if !set_meta => {
                            (Some(*tree), old.clone())
                        }
                        Some(Node::Dir { tree, .. }) => (Some(*tree), meta.clone()),
                        _ => (None, meta.clone()),
                    };
                    let id = self.dir(sub.as_ref(), children)?;
                    entries.insert(name.clone(), Node::Dir { meta, tree: id });
                }
            }
        }
        let t = Tree {
            entries: entries
                .into_iter()
                .map(|(name, node)| Entry {
                    name: ByteBuf::from(name),
                    node,
                })
                .collect(),
        };
        let bytes = t.encode();
        let id = ObjectId::of(&bytes);
        self.new_trees.insert(id, bytes);
        Ok(id)
    }

    /// Stores the trees the edits made (those not already in the store).
    pub fn store(&self, txn: &Txn<'_>) -> Result<()> {
        for b in self.new_trees.values() {
            txn.put(b)?;
        }
        Ok(())
    }
}
