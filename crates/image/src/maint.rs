//! Store maintenance over images: stats, fsck (with the image paths that use a bad object) and
//! gc (mark from every version any tag has held, sweep the rest).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use rayon::prelude::*;
use serde::Serialize;
use starling_store::{ObjectId, Store};

use crate::error::{Error, Result};
use crate::manifest::{FileData, Node, Tree};
use crate::walk::Walker;
use crate::{path, tags};

/// Every version any tag holds or has held, with the tags that hold it.
fn roots(store: &Store) -> Result<HashMap<ObjectId, Vec<String>>> {
    let mut out: HashMap<ObjectId, Vec<String>> = HashMap::new();
    for rec in tags::all(store)? {
        for h in &rec.history {
            out.entry(h.version)
                .or_default()
                .push(format!("{}:{}", rec.name, rec.tag));
        }
        out.entry(rec.target).or_default();
    }
    for v in out.values_mut() {
        v.sort();
        v.dedup();
    }
    Ok(out)
}

/// Every object a version needs (its commit, trees and chunks); an error if any is missing
/// or unreadable (a push must never publish a version it cannot complete).
pub fn objects_of(store: &Store, version: &ObjectId) -> Result<Vec<ObjectId>> {
    let r = mark(store, std::iter::once(version));
    if let Some((id, why)) = r.bad.iter().next() {
        return Err(Error::BadObject {
            id: *id,
            what: "needed",
            reason: why.clone(),
        });
    }
    let mut v: Vec<ObjectId> = r.objects.into_iter().collect();
    v.sort();
    Ok(v)
}

#[derive(Default)]
struct Reach {
    objects: HashSet<ObjectId>,
    /// Referenced objects that could not be read, with why.
    bad: HashMap<ObjectId, String>,
}

/// Marks everything reachable from `versions` (manifests read in parallel, a level at a
/// time; chunks checked for presence).
fn mark<'a>(store: &Store, versions: impl Iterator<Item = &'a ObjectId>) -> Reach {
    let w = Walker::new(versions.copied()).run(|level| {
        level
            .par_iter()
            .map(|id| (*id, store.get(id).map_err(Error::from)))
            .collect()
    });
    let mut bad = w.bad.clone();
    for (id, _) in &w.chunks {
        if !store.contains(id) {
            bad.insert(*id, "missing".into());
        }
    }
    Reach {
        objects: w.objects().collect(),
        bad,
    }
}

#[derive(Debug, Serialize)]
pub struct StoreStats {
    pub objects: usize,
    /// Sum of object file sizes.
    pub stored_bytes: u64,
    /// Space the object files take on disk (allocated blocks).
    pub disk_bytes: u64,
    pub names: usize,
    pub tags: usize,
    pub versions: usize,
    /// Sum of the file bytes of every version: what storing each version whole would take.
    pub logical_bytes: u64,
}

pub fn stats(store: &Store) -> Result<StoreStats> {
    let (objects, _) = store.list_objects()?;
    let disk_bytes = store.disk_bytes()?;
    let all = tags::all(store)?;
    let names: HashSet<_> = all.iter().map(|r| r.name.clone()).collect();
    let roots = roots(store)?;
    let mut logical = 0;
    for v in roots.keys() {
        logical += crate::versions::load_commit(store, v)?.stats.bytes;
    }
    Ok(StoreStats {
        objects: objects.len(),
        stored_bytes: objects.iter().map(|o| o.stored_bytes).sum(),
        disk_bytes,
        names: names.len(),
        tags: all.len(),
        versions: roots.len(),
        logical_bytes: logical,
    })
}

#[derive(Debug, Serialize)]
pub struct Problem {
    pub object: ObjectId,
    pub reason: String,
    /// `image-version path` pairs that use the object (a version's tags, then the path).
    pub used_by: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct FsckReport {
    pub objects_checked: usize,
    pub versions: usize,
    pub problems: Vec<Problem>,
    /// Files under objects/ that are not named like objects.
    pub strays: Vec<PathBuf>,
    /// Intact objects no version uses (left by interrupted writers; gc reclaims them).
    pub unreferenced: usize,
}

impl FsckReport {
    pub fn clean(&self) -> bool {
        self.problems.is_empty() && self.strays.is_empty()
    }
}

/// Re-hashes every object, then finds which versions and paths use any bad one.
pub fn fsck(store: &Store) -> Result<FsckReport> {
    let (objects, strays) = store.list_objects()?;
    let mut bad: HashMap<ObjectId, String> = objects
        .par_iter()
        .filter_map(|o| store.verify(&o.id).err().map(|e| (o.id, e.to_string())))
        .collect();
    let roots = roots(store)?;
    let reach = mark(store, roots.keys());
    for (id, why) in reach.bad {
        bad.entry(id).or_insert(why);
    }
    let unreferenced = objects
        .iter()
        .filter(|o| !reach.objects.contains(&o.id) && !bad.contains_key(&o.id))
        .count();
    let mut used_by: HashMap<ObjectId, Vec<String>> = HashMap::new();
    if !bad.is_empty() {
        let mut clean_trees = HashSet::new();
        for (v, holders) in &roots {
            let who = format!("{}@{}", holders.join(","), v.short(12));
            if bad.contains_key(v) {
                used_by.entry(*v).or_default().push(who.clone());
                continue;
            }
            let c = crate::versions::load_commit(store, v)?;
            locate(
                store,
                &c.root,
                &mut Vec::new(),
                &who,
                &bad,
                &mut clean_trees,
                &mut used_by,
            );
        }
    }
    let mut problems: Vec<Problem> = bad
        .into_iter()
        .map(|(object, reason)| Problem {
            object,
            reason,
            used_by: used_by.remove(&object).unwrap_or_default(),
        })
        .collect();
    problems.sort_by_key(|p| p.object);
    Ok(FsckReport {
        objects_checked: objects.len(),
        versions: roots.len(),
        problems,
        strays,
        unreferenced,
    })
}

/// Records where bad objects sit under tree `t`; returns whether the subtree is clean.
fn locate(
    store: &Store,
    t: &ObjectId,
    comps: &mut Vec<Vec<u8>>,
    who: &str,
    bad: &HashMap<ObjectId, String>,
    clean: &mut HashSet<ObjectId>,
    used_by: &mut HashMap<ObjectId, Vec<String>>,
) -> bool {
    if clean.contains(t) {
        return true;
    }
    let at = |comps: &[Vec<u8>]| format!("{who} /{}", path::display(&path::join(comps)));
    if bad.contains_key(t) {
        used_by.entry(*t).or_default().push(at(comps));
        return false;
    }
    let Ok(tree) = store
        .get(t)
        .map_err(Error::from)
        .and_then(|b| Tree::decode(t, &b))
    else {
        return false;
    };
    let mut ok = true;
    for e in &tree.entries {
        comps.push(e.name.to_vec());
        match &e.node {
            Node::Dir { tree, .. } => ok &= locate(store, tree, comps, who, bad, clean, used_by),
            Node::File {
                data: FileData::Chunks(chunks),
                ..
            } => {
                for c in chunks.iter().filter(|c| bad.contains_key(&c.id)) {
                    used_by.entry(c.id).or_default().push(at(comps));
                    ok = false;
                }
            }
            _ => {}
        }
        comps.pop();
    }
    if ok {
        clean.insert(*t);
    }
    ok
}

#[derive(Debug, Serialize)]
pub struct GcReport {
    pub objects_removed: usize,
    pub bytes_freed: u64,
    pub objects_kept: usize,
    pub temp_files_removed: u64,
    /// Format-1 loose objects moved into packs.
    pub migrated: usize,
    /// Pack segments rewritten (mostly dead, or small ones merged).
    pub segments_repacked: usize,
    pub dry_run: bool,
}

/// Deletes every object no tag's history reaches. Runs only when no writer is active (it
/// waits for them, or with `wait` false refuses), and refuses while any reachable object is
/// unreadable, since a corrupt tree hides what it references.
pub fn gc(store: &Store, dry_run: bool, wait: bool) -> Result<GcReport> {
    let gc = store.lock_gc(wait)?;
    let roots = roots(store)?;
    let reach = mark(store, roots.keys());
    if let Some((id, why)) = reach.bad.iter().next() {
        return Err(Error::BadObject {
            id: *id,
            what: "reachable",
            reason: format!(
                "{why}; gc will not run while {} reachable object(s) are unreadable (see `starling store fsck`)",
                reach.bad.len()
            ),
        });
    }
    let c = store.collect(&gc, &|id| reach.objects.contains(id), dry_run)?;
    let mut report = GcReport {
        objects_removed: c.objects_removed,
        bytes_freed: c.bytes_freed,
        objects_kept: c.objects_kept,
        temp_files_removed: 0,
        migrated: c.migrated,
        segments_repacked: c.segments_repacked,
        dry_run,
    };
    if !dry_run {
        report.temp_files_removed = store.clean_temp()?;
        store.sync()?;
    }
    Ok(report)
}
