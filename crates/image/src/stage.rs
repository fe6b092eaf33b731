//! The staging tree: an importer's in-memory picture of the source, turned into tree objects
//! bottom-up once complete. Importers differ only in how they fill it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_bytes::ByteBuf;
use starling_store::{ObjectId, Txn};

use crate::error::{Error, Result};
use crate::manifest::{Entry, FileData, Meta, Node, Tree, TreeStats};
use crate::path;

pub(crate) enum Staged {
    Dir(StageDir),
    Node(Node),
    /// A regular file whose content is stored later, in parallel: `job` indexes the results.
    Pending {
        meta: Meta,
        job: usize,
    },
}

#[derive(Default)]
pub(crate) struct StageDir {
    pub meta: Meta,
    pub children: BTreeMap<Vec<u8>, Staged>,
}

/// Metadata of directories a tar archive implies but never lists.
pub(crate) fn implicit_dir_meta() -> Meta {
    Meta {
        mode: 0o755,
        ..Meta::default()
    }
}

impl StageDir {
    /// The directory at `comps`, created (with implicit metadata) where missing.
    pub fn dir_mut(&mut self, comps: &[Vec<u8>], source: &Path) -> Result<&mut StageDir> {
        let mut cur = self;
        for (i, c) in comps.iter().enumerate() {
            let slot = cur.children.entry(c.clone()).or_insert_with(|| {
                Staged::Dir(StageDir {
                    meta: implicit_dir_meta(),
                    children: BTreeMap::new(),
                })
            });
            cur = match slot {
                Staged::Dir(d) => d,
                _ => {
                    return Err(Error::NotADirectory {
                        source_path: source.to_path_buf(),
                        path: path::display(&path::join(&comps[..=i])),
                    })
                }
            };
        }
        Ok(cur)
    }

    /// Puts `item` at `comps` (non-empty), replacing what was there as a later tar entry does.
    /// A directory replacing a directory keeps its children.
    pub fn insert(&mut self, comps: &[Vec<u8>], item: Staged, source: &Path) -> Result<()> {
        let Some((last, parents)) = comps.split_last() else {
            return Ok(());
        };
        let parent = self.dir_mut(parents, source)?;
        match (parent.children.get_mut(last), item) {
            (Some(Staged::Dir(existing)), Staged::Dir(new)) => existing.meta = new.meta,
            (_, item) => {
                parent.children.insert(last.clone(), item);
            }
        }
        Ok(())
    }

    /// Replaces pending file contents with the stored results, so the tree stands alone.
    pub fn resolve_pending(&mut self, pending: &[(u64, FileData)]) {
        for child in self.children.values_mut() {
            match child {
                Staged::Dir(d) => d.resolve_pending(pending),
                Staged::Pending { meta, job } => {
                    if let Some((size, data)) = pending.get(*job) {
                        *child = Staged::Node(Node::File {
                            meta: meta.clone(),
                            size: *size,
                            data: data.clone(),
                        });
                    }
                }
                Staged::Node(_) => {}
            }
        }
    }

    /// Removes the entry at `comps`, if there is one.
    pub fn remove(&mut self, comps: &[Vec<u8>]) {
        let Some((last, parents)) = comps.split_last() else {
            return;
        };
        if parents.is_empty() {
            self.children.remove(last);
        } else if let Some(Staged::Dir(d)) = self.get_mut(parents) {
            d.children.remove(last);
        }
    }

    /// Below directory `dir`, drops every entry whose path is not in `keep` (an OCI opaque
    /// directory hides everything the lower layers put there).
    pub fn prune_except(
        &mut self,
        dir: &[Vec<u8>],
        keep: &std::collections::HashSet<Vec<Vec<u8>>>,
    ) {
        let d = if dir.is_empty() {
            Some(self)
        } else {
            match self.get_mut(dir) {
                Some(Staged::Dir(d)) => Some(d),
                _ => None,
            }
        };
        let Some(d) = d else { return };
        let mut path = dir.to_vec();
        d.prune_below(&mut path, keep);
    }

    fn prune_below(
        &mut self,
        path: &mut Vec<Vec<u8>>,
        keep: &std::collections::HashSet<Vec<Vec<u8>>>,
    ) {
        self.children.retain(|name, child| {
            path.push(name.clone());
            let kept = keep.contains(path.as_slice());
            if kept {
                if let Staged::Dir(sub) = child {
                    sub.prune_below(path, keep);
                }
            }
            path.pop();
            kept
        });
    }

    fn get_mut(&mut self, comps: &[Vec<u8>]) -> Option<&mut Staged> {
        let (last, parents) = comps.split_last()?;
        let mut cur = self;
        for c in parents {
            cur = match cur.children.get_mut(c)? {
                Staged::Dir(d) => d,
                _ => return None,
            };
        }
        cur.children.get_mut(last)
    }

    fn collect_links(&self, prefix: &mut Vec<Vec<u8>>, out: &mut Vec<(Vec<Vec<u8>>, Vec<u8>)>) {
        for (name, child) in &self.children {
            prefix.push(name.clone());
            match child {
                Staged::Dir(d) => d.collect_links(prefix, out),
                Staged::Node(Node::Hardlink { target }) => {
                    out.push((prefix.clone(), target.to_vec()))
                }
                _ => {}
            }
            prefix.pop();
        }
    }

    /// Makes every hard-link group canonical: the member first in depth-first name order holds
    /// the inode, the others point to it. Tar archives may list a group in any order.
    pub fn canonicalize_hardlinks(&mut self, source: &Path) -> Result<()> {
        let mut links = Vec::new();
        self.collect_links(&mut Vec::new(), &mut links);
        if links.is_empty() {
            return Ok(());
        }
        let link_targets: HashMap<Vec<Vec<u8>>, Vec<Vec<u8>>> = links
            .iter()
            .map(|(p, t)| (p.clone(), path::split(t).unwrap_or_default()))
            .collect();
        // Resolve chains (a link to a link) to the inode holder.
        let mut groups: BTreeMap<Vec<Vec<u8>>, Vec<Vec<Vec<u8>>>> = BTreeMap::new();
        for (link, _) in &links {
            let mut target = link_targets[link].clone();
            let mut hops = 0;
            while let Some(next) = link_targets.get(&target) {
                target = next.clone();
                hops += 1;
                if hops > links.len() {
                    break;
                }
            }
            let missing = || Error::HardlinkTargetMissing {
                source_path: source.to_path_buf(),
                link: path::display(&path::join(link)),
                target: path::display(&path::join(&link_targets[link])),
            };
            match self.get_mut(&target) {
                Some(Staged::Node(Node::Hardlink { .. })) | Some(Staged::Dir(_)) | None => {
                    return Err(missing())
                }
                Some(_) if target.is_empty() => return Err(missing()),
                Some(_) => {}
            }
            groups.entry(target).or_default().push(link.clone());
        }
        for (holder, members) in groups {
            // Component-wise order on paths is depth-first name order.
            let first = members.iter().min().filter(|m| **m < holder).cloned();
            let primary = match first {
                Some(first) => {
                    let inode = std::mem::replace(
                        self.get_mut(&holder).ok_or_else(|| internal(&holder))?,
                        link_to(&first),
                    );
                    *self.get_mut(&first).ok_or_else(|| internal(&first))? = inode;
                    first
                }
                None => holder,
            };
            for m in members.iter().filter(|m| **m != primary) {
                *self.get_mut(m).ok_or_else(|| internal(m))? = link_to(&primary);
            }
        }
        Ok(())
    }

    /// Writes this directory's tree (and all below it) to the store.
    pub fn write(
        &self,
        txn: &Txn<'_>,
        pending: &[(u64, FileData)],
        stats: &mut TreeStats,
    ) -> Result<ObjectId> {
        let mut entries = Vec::with_capacity(self.children.len());
        for (name, child) in &self.children {
            let node = match child {
                Staged::Dir(d) => {
                    stats.dirs += 1;
                    stats.count_xattrs(&d.meta);
                    Node::Dir {
                        meta: d.meta.clone(),
                        tree: d.write(txn, pending, stats)?,
                    }
                }
                Staged::Pending { meta, job } => {
                    let (size, data) = pending.get(*job).cloned().ok_or_else(|| Error::Io {
                        path: name_path(name),
                        source: std::io::Error::other("file content was not stored"),
                    })?;
                    count(&mut *stats, size, "file");
                    stats.count_xattrs(meta);
                    Node::File {
                        meta: meta.clone(),
                        size,
                        data,
                    }
                }
                Staged::Node(n) => {
                    let size = match n {
                        Node::File { size, .. } => *size,
                        _ => 0,
                    };
                    count(&mut *stats, size, n.kind_name());
                    if let Some(meta) = n.meta() {
                        stats.count_xattrs(meta);
                    }
                    n.clone()
                }
            };
            entries.push(Entry {
                name: ByteBuf::from(name.clone()),
                node,
            });
        }
        let bytes = Tree { entries }.encode();
        Ok(txn.put(&bytes)?.id)
    }
}

fn count(stats: &mut TreeStats, size: u64, kind: &str) {
    match kind {
        "file" => {
            stats.files += 1;
            stats.bytes += size;
        }
        "symlink" => stats.symlinks += 1,
        "hardlink" => stats.hardlinks += 1,
        _ => stats.special += 1,
    }
}

fn link_to(target: &[Vec<u8>]) -> Staged {
    Staged::Node(Node::Hardlink {
        target: ByteBuf::from(path::join(target)),
    })
}

fn name_path(name: &[u8]) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStrExt;
    std::path::PathBuf::from(std::ffi::OsStr::from_bytes(name))
}

fn internal(p: &[Vec<u8>]) -> Error {
    Error::Io {
        path: name_path(&path::join(p)),
        source: std::io::Error::other("hard-link group changed while being rewritten"),
    }
}
