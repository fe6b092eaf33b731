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

/// How much changed, by kind: what a reader wants before (or instead of) the list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub files_added: u64,
    pub files_removed: u64,
    pub files_modified: u64,
    /// Of the modified, those whose only change is their modification time.
    pub files_mtime_only: u64,
    /// `None` when the packages were not compared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packages: Option<BTreeMap<&'static str, u64>>,
}

/// Changes under one directory (`--stat`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DirStat {
    pub dir: String,
    pub added: u64,
    pub removed: u64,
    pub modified: u64,
}

impl Diff {
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for f in &self.files {
            match f.change {
                Change::Added => s.files_added += 1,
                Change::Removed => s.files_removed += 1,
                Change::Modified => {
                    s.files_modified += 1;
                    if f.details.iter().all(|d| d == "mtime") {
                        s.files_mtime_only += 1;
                    }
                }
            }
        }
        s.packages = self.packages.as_ref().map(|ps| {
            let mut by = BTreeMap::new();
            for p in ps {
                *by.entry(p.change).or_insert(0) += 1;
            }
            by
        });
        s
    }

    /// The same differences with modification times left out: an entry whose only change
    /// was its mtime is no change at all (a rebuild that touched every file).
    pub fn ignoring_times(mut self) -> Diff {
        self.files.retain_mut(|f| {
            f.details.retain(|d| d != "mtime");
            f.change != Change::Modified || !f.details.is_empty()
        });
        self
    }

    /// Changes counted per directory, `depth` components deep (`/usr/lib` at 2), in path
    /// order; an entry directly under a shallower directory counts there.
    pub fn stat(&self, depth: usize) -> Vec<DirStat> {
        let mut by: BTreeMap<String, DirStat> = BTreeMap::new();
        for f in &self.files {
            let comps: Vec<&str> = f.path.split('/').filter(|c| !c.is_empty()).collect();
            // The directory holding the entry, cut to `depth`.
            let parent = comps.len().saturating_sub(1).min(depth);
            let dir = format!("/{}", comps[..parent].join("/"));
            let e = by.entry(dir.clone()).or_insert_with(|| DirStat {
                dir,
                ..DirStat::default()
            });
            match f.change {
                Change::Added => e.added += 1,
                Change::Removed => e.removed += 1,
                Change::Modified => e.modified += 1,
            }
        }
        by.into_values().collect()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn change(path: &str, change: Change, details: &[&str]) -> FileChange {
        FileChange {
            path: path.into(),
            change,
            kind: "file",
            details: details.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn sample() -> Diff {
        Diff {
            files: vec![
                change("/etc/a", Change::Modified, &["content", "mtime"]),
                change("/etc/b", Change::Modified, &["mtime"]),
                change("/usr/lib/x/y", Change::Added, &[]),
                change("/usr/lib/z", Change::Removed, &[]),
                change("/top", Change::Added, &[]),
            ],
            packages: Some(vec![
                PackageChange {
                    name: "p".into(),
                    change: "upgraded",
                    old: Some("1".into()),
                    new: Some("2".into()),
                },
                PackageChange {
                    name: "q".into(),
                    change: "added",
                    old: None,
                    new: Some("1".into()),
                },
            ]),
            trees_read: 0,
        }
    }

    #[test]
    fn summary_counts_by_kind_and_mtime_only() {
        let s = sample().summary();
        assert_eq!(
            (
                s.files_added,
                s.files_removed,
                s.files_modified,
                s.files_mtime_only
            ),
            (2, 1, 2, 1)
        );
        let p = s.packages.unwrap();
        assert_eq!((p["upgraded"], p["added"]), (1, 1));
        assert!(!p.contains_key("removed"));
    }

    #[test]
    fn ignoring_times_drops_mtime_only_changes_and_the_mtime_detail() {
        let d = sample().ignoring_times();
        let paths: Vec<_> = d.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["/etc/a", "/usr/lib/x/y", "/usr/lib/z", "/top"]);
        assert_eq!(d.files[0].details, ["content"]);
        assert_eq!(d.summary().files_mtime_only, 0);
    }

    #[test]
    fn stat_groups_by_directory_prefix() {
        let st = sample().stat(2);
        let rows: Vec<_> = st
            .iter()
            .map(|r| (r.dir.as_str(), r.added, r.removed, r.modified))
            .collect();
        assert_eq!(
            rows,
            [("/", 1, 0, 0), ("/etc", 0, 0, 2), ("/usr/lib", 1, 1, 0)]
        );
    }
}
