//! Differences between two image versions, computed on manifests: subtrees with equal ids are
//! skipped without being read, so the cost follows the size of the change, not of the image.
//! Package changes come from the two package databases.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::Serialize;
use starling_store::ObjectId;

use crate::browse::Browser;
use crate::error::Result;
use crate::manifest::{Meta, Node, Tree};
use crate::path;
use crate::pkg::{Inventories, Inventory};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Added,
    Removed,
    Modified,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileChange {
    /// Image path, `/`-rooted (invalid UTF-8 shown escaped).
    pub path: String,
    pub change: Change,
    /// Kind in the newer version (the older one for removals).
    pub kind: &'static str,
    /// What changed, for modifications: "content", "type", "mode 644→755", "owner 0:0→1:1",
    /// "xattrs", "target", "mtime", "device", "link".
    pub details: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PackageChange {
    pub name: String,
    pub change: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Diff {
    pub files: Vec<FileChange>,
    /// `None` when either image has no package database.
    pub packages: Option<Vec<PackageChange>>,
    /// Trees read to compute the diff (equal subtrees are not read).
    pub trees_read: u64,
}

pub fn diff(
    inv: &mut Inventories<'_>,
    a: (&ObjectId, &Meta),
    b: (&ObjectId, &Meta),
) -> Result<Diff> {
    let mut d = Diff::default();
    let mut w = Walker {
        browser: &mut inv.browser,
        out: &mut d,
    };
    let root_details = meta_changes(a.1, b.1);
    if !root_details.is_empty() {
        w.out.files.push(FileChange {
            path: "/".into(),
            change: Change::Modified,
            kind: "dir",
            details: root_details,
        });
    }
    w.trees(a.0, b.0, &mut Vec::new())?;
    let ia = inv.of(a.0, "a").ok();
    let ib = inv.of(b.0, "b").ok();
    if let (Some(x), Some(y)) = (ia, ib) {
        d.packages = Some(package_changes(&x, &y));
    }
    Ok(d)
}

struct Walker<'a, 's> {
    browser: &'a mut Browser<'s>,
    out: &'a mut Diff,
}

impl Walker<'_, '_> {
    fn tree(&mut self, id: &ObjectId) -> Result<std::rc::Rc<Tree>> {
        self.out.trees_read += 1;
        self.browser.tree(id)
    }

    fn trees(&mut self, a: &ObjectId, b: &ObjectId, comps: &mut Vec<Vec<u8>>) -> Result<()> {
        if a == b {
            return Ok(());
        }
        let (ta, tb) = (self.tree(a)?, self.tree(b)?);
        let (mut i, mut j) = (0, 0);
        while i < ta.entries.len() || j < tb.entries.len() {
            let ord = match (ta.entries.get(i), tb.entries.get(j)) {
                (Some(x), Some(y)) => x.name.cmp(&y.name),
                (Some(_), None) => Ordering::Less,
                _ => Ordering::Greater,
            };
            match ord {
                Ordering::Less => {
                    let e = &ta.entries[i];
                    comps.push(e.name.to_vec());
                    self.whole(&e.node, Change::Removed, comps)?;
                    comps.pop();
                    i += 1;
                }
                Ordering::Greater => {
                    let e = &tb.entries[j];
                    comps.push(e.name.to_vec());
                    self.whole(&e.node, Change::Added, comps)?;
                    comps.pop();
                    j += 1;
                }
                Ordering::Equal => {
                    let (x, y) = (&ta.entries[i].node, &tb.entries[j].node);
                    comps.push(ta.entries[i].name.to_vec());
                    self.node(x, y, comps)?;
                    comps.pop();
                    i += 1;
                    j += 1;
                }
            }
        }
        Ok(())
    }

    /// An entry (and, for a directory, everything below it) added or removed.
    fn whole(&mut self, n: &Node, change: Change, comps: &mut Vec<Vec<u8>>) -> Result<()> {
        self.push(comps, change, n.kind_name(), Vec::new());
        if let Node::Dir { tree, .. } = n {
            let t = self.tree(tree)?;
            for e in &t.entries {
                comps.push(e.name.to_vec());
                self.whole(&e.node, change, comps)?;
                comps.pop();
            }
        }
        Ok(())
    }

    fn node(&mut self, x: &Node, y: &Node, comps: &mut Vec<Vec<u8>>) -> Result<()> {
        if x == y {
            return Ok(());
        }
        if std::mem::discriminant(x) != std::mem::discriminant(y) {
            // A type change: the old entry goes, the new one comes.
            self.whole(x, Change::Removed, comps)?;
            return self.whole(y, Change::Added, comps);
        }
        let mut details = match (x.meta(), y.meta()) {
            (Some(a), Some(b)) => meta_changes(a, b),
            _ => Vec::new(),
        };
        match (x, y) {
            (Node::Dir { tree: a, .. }, Node::Dir { tree: b, .. }) => {
                if !details.is_empty() {
                    self.push(comps, Change::Modified, "dir", details);
                }
                return self.trees(a, b, comps);
            }
            (
                Node::File {
                    size: sa, data: da, ..
                },
                Node::File {
                    size: sb, data: db, ..
                },
            ) if sa != sb || da != db => {
                details.insert(0, "content".into());
            }
            (Node::Symlink { target: a, .. }, Node::Symlink { target: b, .. }) if a != b => {
                details.insert(
                    0,
                    format!("target {}→{}", path::display(a), path::display(b)),
                );
            }
            (Node::Hardlink { target: a }, Node::Hardlink { target: b }) if a != b => {
                details.push(format!("link {}→{}", path::display(a), path::display(b)));
            }
            (Node::CharDevice { rdev: a, .. }, Node::CharDevice { rdev: b, .. })
            | (Node::BlockDevice { rdev: a, .. }, Node::BlockDevice { rdev: b, .. })
                if a != b =>
            {
                details.push("device".into());
            }
            _ => {}
        }
        if !details.is_empty() {
            self.push(comps, Change::Modified, y.kind_name(), details);
        }
        Ok(())
    }

    fn push(
        &mut self,
        comps: &[Vec<u8>],
        change: Change,
        kind: &'static str,
        details: Vec<String>,
    ) {
        self.out.files.push(FileChange {
            path: format!("/{}", path::display(&path::join(comps))),
            change,
            kind,
            details,
        });
    }
}

fn meta_changes(a: &Meta, b: &Meta) -> Vec<String> {
    let mut d = Vec::new();
    if a.mode != b.mode {
        d.push(format!("mode {:o}→{:o}", a.mode, b.mode));
    }
    if (a.uid, a.gid) != (b.uid, b.gid) {
        d.push(format!("owner {}:{}→{}:{}", a.uid, a.gid, b.uid, b.gid));
    }
    if a.xattrs != b.xattrs {
        d.push("xattrs".into());
    }
    if (a.mtime_sec, a.mtime_nsec) != (b.mtime_sec, b.mtime_nsec) {
        d.push("mtime".into());
    }
    d
}

fn package_changes(a: &Inventory, b: &Inventory) -> Vec<PackageChange> {
    let key = |p: &crate::pkg::Package| (p.name.clone(), p.architecture.clone());
    let ma: BTreeMap<_, _> = a.packages.iter().map(|p| (key(p), p)).collect();
    let mb: BTreeMap<_, _> = b.packages.iter().map(|p| (key(p), p)).collect();
    let mut out = Vec::new();
    for (k, p) in &ma {
        match mb.get(k) {
            None => out.push(PackageChange {
                name: p.name.clone(),
                change: "removed",
                old: Some(p.version.clone()),
                new: None,
            }),
            Some(q) if q.version != p.version => out.push(PackageChange {
                name: p.name.clone(),
                change: match b.db.cmp_versions(&p.version, &q.version) {
                    Ordering::Less => "upgraded",
                    Ordering::Greater => "downgraded",
                    Ordering::Equal => "changed",
                },
                old: Some(p.version.clone()),
                new: Some(q.version.clone()),
            }),
            _ => {}
        }
    }
    for (k, q) in &mb {
        if !ma.contains_key(k) {
            out.push(PackageChange {
                name: q.name.clone(),
                change: "added",
                old: None,
                new: Some(q.version.clone()),
            });
        }
    }
    out.sort_by(|x, y| x.name.cmp(&y.name));
    out
}
