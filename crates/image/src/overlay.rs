//! Committing the upper layer of a kernel overlayfs mount (a writable mount over an image)
//! as a new version of that image: what the upper directory holds is put into the image,
//! whiteouts (0/0 character devices) remove, opaque directories (`trusted.overlay.opaque=y`)
//! replace the lower directory's entries, and overlayfs' own `trusted.overlay.*` attributes
//! are not kept.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use starling_store::{ObjectId, Store, Txn};

use crate::browse::Browser;
use crate::chunk::{ChunkParams, Progress};
use crate::edit::{Edit, Editor, Edits};
use crate::error::Result;
use crate::manifest::{Commit, Meta, Node, Tree};
use crate::stage::{StageDir, Staged};
use crate::{now_unix_ns, tags};

const OVERLAY_XATTRS: &[u8] = b"trusted.overlay.";

#[derive(Debug)]
pub struct OverlayCommit {
    pub version: ObjectId,
    /// Paths put, removed.
    pub put: usize,
    pub removed: usize,
}

fn strip(meta: &Meta) -> Meta {
    let mut m = meta.clone();
    m.xattrs.retain(|x| !x.name.starts_with(OVERLAY_XATTRS));
    m
}

fn is_opaque(meta: &Meta) -> bool {
    meta.xattrs
        .iter()
        .any(|x| x.name.as_slice() == b"trusted.overlay.opaque" && x.value.as_slice() == b"y")
}

fn strip_node(n: &Node) -> Node {
    let mut n = n.clone();
    if let Some(m) = n.meta_mut() {
        *m = strip(m);
    }
    n
}

struct Walk<'a, 's> {
    browser: &'a mut Browser<'s>,
    put: usize,
    removed: usize,
}

impl Walk<'_, '_> {
    /// Edits for the upper directory `d`, whose lower counterpart is the tree `lower` (if
    /// the image has a directory there).
    fn dir(&mut self, d: &StageDir, lower: Option<ObjectId>) -> Result<BTreeMap<Vec<u8>, Edit>> {
        let lower_tree: Option<std::rc::Rc<Tree>> = match lower {
            Some(id) => Some(self.browser.tree(&id)?),
            None => None,
        };
        let lower_child = |name: &[u8]| -> Option<&Node> {
            lower_tree
                .as_ref()
                .and_then(|t| t.entries.iter().find(|e| e.name.as_slice() == name))
                .map(|e| &e.node)
        };
        let mut out = BTreeMap::new();
        for (name, child) in &d.children {
            match child {
                Staged::Node(Node::CharDevice { rdev: 0, .. }) => {
                    if lower_child(name).is_some() {
                        out.insert(name.clone(), Edit::Remove);
                        self.removed += 1;
                    }
                }
                Staged::Dir(sub) => {
                    let opaque = is_opaque(&sub.meta);
                    let below = match lower_child(name) {
                        Some(Node::Dir { tree, .. }) if !opaque => Some(*tree),
                        _ => None,
                    };
                    let mut children = self.dir(sub, below)?;
                    if let (true, Some(Node::Dir { tree, .. })) = (opaque, lower_child(name)) {
                        // Opaque: whatever the lower directory held and the upper does not is gone.
                        for e in &self.browser.tree(tree)?.entries {
                            if !sub.children.contains_key(e.name.as_slice()) {
                                children.insert(e.name.to_vec(), Edit::Remove);
                                self.removed += 1;
                            }
                        }
                    }
                    if !matches!(lower_child(name), Some(Node::Dir { .. })) {
                        self.put += 1;
                    }
                    out.insert(
                        name.clone(),
                        Edit::Dir {
                            meta: strip(&sub.meta),
                            set_meta: true,
                            children,
                        },
                    );
                }
                Staged::Node(n) => {
                    out.insert(name.clone(), Edit::Put(strip_node(n)));
                    self.put += 1;
                }
                Staged::Pending { .. } => {}
            }
        }
        Ok(out)
    }
}

/// Stores the upper directory's content and tags the result `name:tag`, a child of `base`.
pub fn commit_upper(
    store: &Store,
    base: &ObjectId,
    upper: &Path,
    name: &str,
    tag: &str,
    what: &str,
) -> Result<OverlayCommit> {
    commit_with(store, base, name, tag, what, |txn| {
        crate::import::stage_dir(txn, upper, &ChunkParams::default(), &Progress::default())
    })
}

/// Commits an upper layer that `stage` reads (with its content stored in the transaction),
/// applied onto `base` with overlayfs' rules, as `name:tag`.
pub(crate) fn commit_with(
    store: &Store,
    base: &ObjectId,
    name: &str,
    tag: &str,
    what: &str,
    stage: impl FnOnce(&Txn<'_>) -> Result<StageDir>,
) -> Result<OverlayCommit> {
    let _writer = store.lock_writer()?;
    let old = Commit::decode(base, &store.get(base)?)?;
    let txn = store.begin()?;
    let staged = stage(&txn)?;
    let mut browser = Browser::new(store);
    let mut walk = Walk {
        browser: &mut browser,
        put: 0,
        removed: 0,
    };
    let children = walk.dir(&staged, Some(old.root))?;
    let (put, removed) = (walk.put, walk.removed);
    let edits = Edits { children };
    let mut editor = Editor::new(&mut browser);
    let new_root = editor.apply(&old.root, &edits)?;
    let new_trees = std::mem::take(&mut editor.new_trees);
    for (id, bytes) in &new_trees {
        browser.preload(*id, Tree::decode(id, bytes)?);
    }
    let root_meta = strip(&staged.meta);
    let mut stats = crate::update::tree_stats(&mut browser, &new_root, &mut HashMap::new())?;
    stats.count_xattrs(&root_meta);
    for bytes in new_trees.values() {
        txn.put(bytes)?;
    }
    let commit = Commit {
        root: new_root,
        // The upper root carries the mounted root's attributes (the daemon gives it the
        // image root's when it creates the layer), changed or not.
        root_meta,
        parent: Some(*base),
        created_unix_ns: now_unix_ns(),
        name: name.to_string(),
        labels: old.labels.clone(),
        boot: old.boot.clone(),
        stats,
        source: what.to_string(),
    };
    let id = txn.put(&commit.encode())?.id;
    txn.commit()?;
    let _refs = store.lock_refs()?;
    tags::point(store, name, tag, id, "commit")?;
    Ok(OverlayCommit {
        version: id,
        put,
        removed,
    })
}
