//! New image versions made by editing manifests: Debian packages installed the way dpkg
//! unpacks them (files placed, obsolete files removed, conffiles kept when changed locally,
//! the dpkg database updated), overlays of a directory, removals. Maintainer scripts are not
//! run; the report says which packages have them. Content is stored once for all images.
//!
//! Here: the entry point, one transaction for every target image, and the staged-tree edits
//! the overlay and packages share; [`dpkg`] unpacks packages, [`relations`] checks their
//! dependencies, [`derive`] sets the hostname and adds users.

mod accounts;
mod derive;
mod dpkg;
mod relations;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use serde::Serialize;
use starling_store::{ObjectId, Store, Txn};

use crate::browse::Browser;
use crate::chunk::{store_content, ChunkParams, Progress};
use crate::diff::Diff;
use crate::edit::{Edit, Editor, Edits};
use crate::error::{Error, Result};
use crate::manifest::{Commit, FileData, Meta, Node, Tree, TreeStats};
use crate::path;
use crate::pkg::Inventories;
use crate::reference::ImageRef;
use crate::stage::{StageDir, Staged};
use crate::{now_unix_ns, tags, versions};

pub struct UpdateOptions<'a> {
    pub debs: Vec<&'a Path>,
    pub overlay: Option<&'a Path>,
    pub remove: Vec<String>,
    pub dry_run: bool,
    /// Refuse (instead of warn) when a package's dependencies are not satisfied.
    pub strict: bool,
    pub chunking: ChunkParams,
    /// Write /etc/hostname (and the 127.0.1.1 line of /etc/hosts).
    pub hostname: Option<String>,
    /// Users to add (passwd, group, shadow with a locked password, a home directory).
    pub add_users: Vec<String>,
    pub op: &'static str,
}

/// One image to change: the version to start from and the tag that gets the result.
#[derive(Debug, Clone)]
pub struct Target {
    pub from: ImageRef,
    pub name: String,
    pub tag: String,
}

#[derive(Debug, Serialize)]
pub struct UpdateReport {
    pub image: String,
    pub old: ObjectId,
    /// The new version; `None` in a dry run or when nothing changed.
    pub new: Option<ObjectId>,
    pub diff: Diff,
    pub warnings: Vec<String>,
}

/// Makes a new version of each target and moves its tag there, unless `dry_run`; the new
/// versions are stored in one transaction.
pub fn update(
    store: &Store,
    targets: &[Target],
    opts: &UpdateOptions<'_>,
    progress: &Progress,
) -> Result<Vec<UpdateReport>> {
    if let Some(h) = &opts.hostname {
        derive::check_hostname(h)?;
    }
    for u in &opts.add_users {
        derive::check_user_name(u)?;
    }
    let _writer = store.lock_writer()?;
    let txn = store.begin()?;
    let mut prepared = Vec::new();
    for p in &opts.debs {
        prepared.push(dpkg::prepare(&txn, p, &opts.chunking, progress)?);
    }
    let overlay = match opts.overlay {
        Some(dir) => Some(crate::import::stage_dir(
            &txn,
            dir,
            &opts.chunking,
            progress,
        )?),
        None => None,
    };

    let _refs = store.lock_refs()?;
    let mut inv = Inventories::new(store);
    let mut reports = Vec::new();
    let mut commits = Vec::new();
    let mut stats_cache: HashMap<ObjectId, TreeStats> = HashMap::new();
    let mut all_new_trees = Vec::new();
    for t in targets {
        let (name, tag) = (&t.name, &t.tag);
        let display = format!("{name}:{tag}");
        let from = versions::resolve(store, &t.from)?;
        let old = from.commit;
        let maker = Maker {
            txn: &txn,
            params: &opts.chunking,
            progress,
        };
        let mut warnings = Vec::new();
        let mut edits = Edits::default();
        let now = now_unix_ns();
        if !prepared.is_empty() {
            dpkg::install_debs(
                &mut inv,
                &maker,
                &old,
                &display,
                &prepared,
                &mut edits,
                &mut warnings,
                now,
            )?;
        }
        if let Some(o) = &overlay {
            let mut children = BTreeMap::new();
            stage_edits(o, true, &mut Vec::new(), &BTreeSet::new(), &mut children);
            merge_edits(&mut edits.children, children);
        }
        derive::customize(
            &mut inv.browser,
            &maker,
            &display,
            &old,
            opts,
            &mut edits,
            &mut warnings,
            now,
        )?;
        for r in &opts.remove {
            match inv.browser.lookup(&old.root, r.as_bytes(), false)? {
                Some(_) => edits.set(r.as_bytes(), Edit::Remove, &default_dir())?,
                None => warnings.push(format!("--remove {r}: not in the image")),
            }
        }
        let mut editor = Editor::new(&mut inv.browser);
        let new_root = editor.apply(&old.root, &edits)?;
        let new_trees = std::mem::take(&mut editor.new_trees);
        for (id, bytes) in &new_trees {
            inv.browser.preload(*id, Tree::decode(id, bytes)?);
        }
        let diff = crate::diff::diff(
            &mut inv,
            (&old.root, &old.root_meta),
            (&new_root, &old.root_meta),
        )?;
        let mut report = UpdateReport {
            image: display.clone(),
            old: from.id,
            new: None,
            diff,
            warnings,
        };
        if new_root != old.root && !opts.dry_run {
            let mut stats = tree_stats(&mut inv.browser, &new_root, &mut stats_cache)?;
            stats.count_xattrs(&old.root_meta);
            let what: Vec<String> = prepared
                .iter()
                .map(|p| format!("{}={}", p.deb.name(), p.deb.version()))
                .chain(opts.overlay.map(|o| format!("overlay {}", o.display())))
                .chain(opts.remove.iter().map(|r| format!("-{r}")))
                .chain(opts.hostname.iter().map(|h| format!("hostname={h}")))
                .chain(opts.add_users.iter().map(|u| format!("user+{u}")))
                .collect();
            let commit = Commit {
                root: new_root,
                root_meta: old.root_meta.clone(),
                parent: Some(from.id),
                created_unix_ns: now,
                name: name.clone(),
                labels: old.labels.clone(),
                boot: old.boot.clone(),
                stats,
                source: format!("{}: {}", opts.op, what.join(" ")),
            };
            let bytes = commit.encode();
            report.new = Some(ObjectId::of(&bytes));
            commits.push((name.clone(), tag.clone(), bytes));
            all_new_trees.extend(new_trees);
        }
        reports.push(report);
    }
    if let Some(r) = reports
        .iter()
        .find(|r| r.warnings.iter().any(|w| w.starts_with("unsatisfied")))
    {
        if opts.strict {
            return Err(Error::PackageDb {
                image: r.image.clone(),
                reason: format!("{} (--strict)", r.warnings.join("; ")),
            });
        }
    }
    if opts.dry_run {
        return Ok(reports);
    }
    for (_, bytes) in &all_new_trees {
        txn.put(bytes)?;
    }
    let mut ids = Vec::new();
    for (name, tag, bytes) in &commits {
        ids.push((name, tag, txn.put(bytes)?.id));
    }
    txn.commit()?;
    for (name, tag, id) in ids {
        tags::point(store, name, tag, id, opts.op)?;
    }
    Ok(reports)
}

/// Stores files the update makes itself (dpkg database entries, edited configuration files)
/// through the normal chunking, and makes their chunks readable before the transaction
/// commits (for the diff).
struct Maker<'t, 'a> {
    txn: &'t Txn<'a>,
    params: &'t ChunkParams,
    progress: &'t Progress,
}

impl Maker<'_, '_> {
    fn file(&self, browser: &mut Browser<'_>, bytes: Vec<u8>, meta: Meta) -> Result<Node> {
        let (size, data) = store_content(
            self.txn,
            self.params,
            bytes.as_slice(),
            self.progress,
            &|e| Error::Io {
                path: "dpkg database".into(),
                source: e,
            },
        )?;
        if let FileData::Chunks(chunks) = &data {
            let mut at = 0usize;
            for c in chunks {
                let end = at + c.len as usize;
                browser.pending.insert(c.id, bytes[at..end].to_vec());
                at = end;
            }
        }
        Ok(Node::File { meta, size, data })
    }
}

fn default_dir() -> Meta {
    Meta {
        mode: 0o755,
        ..Meta::default()
    }
}

/// Edits that put a staged tree into the image: directories merged (existing ones keep their
/// metadata unless `set_meta`), everything else replaced.
fn stage_edits(
    d: &StageDir,
    set_meta: bool,
    comps: &mut Vec<Vec<u8>>,
    skip: &BTreeSet<String>,
    out: &mut BTreeMap<Vec<u8>, Edit>,
) {
    for (name, child) in &d.children {
        comps.push(name.clone());
        let p = format!("/{}", path::display(&path::join(comps)));
        match child {
            Staged::Dir(sub) => {
                let mut children = BTreeMap::new();
                stage_edits(sub, set_meta, comps, skip, &mut children);
                out.insert(
                    name.clone(),
                    Edit::Dir {
                        meta: sub.meta.clone(),
                        set_meta,
                        children,
                    },
                );
            }
            Staged::Node(n) if !skip.contains(&p) => {
                out.insert(name.clone(), Edit::Put(n.clone()));
            }
            _ => {}
        }
        comps.pop();
    }
}

/// Merges `src` into `dst`: directory edits combine, anything else from `src` wins.
fn merge_edits(dst: &mut BTreeMap<Vec<u8>, Edit>, src: BTreeMap<Vec<u8>, Edit>) {
    for (k, v) in src {
        match (dst.get_mut(&k), v) {
            (
                Some(Edit::Dir {
                    children: d,
                    meta,
                    set_meta,
                }),
                Edit::Dir {
                    children: c,
                    meta: m,
                    set_meta: sm,
                },
            ) => {
                if sm {
                    *meta = m;
                    *set_meta = true;
                }
                merge_edits(d, c);
            }
            (_, v) => {
                dst.insert(k, v);
            }
        }
    }
}

/// Statistics of a tree, memoised by tree id so shared subtrees are counted once.
pub(crate) fn tree_stats(
    b: &mut Browser<'_>,
    id: &ObjectId,
    cache: &mut HashMap<ObjectId, TreeStats>,
) -> Result<TreeStats> {
    if let Some(s) = cache.get(id) {
        return Ok(*s);
    }
    let t = b.tree(id)?;
    let mut s = TreeStats {
        xattrs: Some(0),
        ..TreeStats::default()
    };
    for e in &t.entries {
        if let Some(meta) = e.node.meta() {
            s.count_xattrs(meta);
        }
        match &e.node {
            Node::Dir { tree, .. } => {
                s.dirs += 1;
                let sub = tree_stats(b, tree, cache)?;
                s.files += sub.files;
                s.dirs += sub.dirs;
                s.bytes += sub.bytes;
                s.symlinks += sub.symlinks;
                s.hardlinks += sub.hardlinks;
                s.special += sub.special;
                s.xattrs = s.xattrs.zip(sub.xattrs).map(|(a, b)| a + b);
            }
            Node::File { size, .. } => {
                s.files += 1;
                s.bytes += size;
            }
            Node::Symlink { .. } => s.symlinks += 1,
            Node::Hardlink { .. } => s.hardlinks += 1,
            _ => s.special += 1,
        }
    }
    cache.insert(*id, s);
    Ok(s)
}
