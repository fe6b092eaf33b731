//! Collection: removing what no version needs (records marked dead and punched out), moving
//! format-1 loose objects into packs, and repacking segments that are mostly dead or small,
//! so the number of segments stays proportional to the live data.

use std::collections::{HashMap, HashSet};

use crate::lock::StoreLock;
use crate::packset::SegmentInfo;
use crate::{ObjectId, Result, Store};

/// A segment is repacked when less than this share of it is live...
const REPACK_LIVE_RATIO: f64 = 0.5;
/// ...or when it is smaller than this and there are several such.
const SMALL_SEGMENT: u64 = 16 << 20;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Collected {
    pub objects_removed: usize,
    /// Stored (envelope) bytes of the removed objects.
    pub bytes_freed: u64,
    pub objects_kept: usize,
    /// Format-1 loose objects moved into packs.
    pub migrated: usize,
    /// Segments rewritten into new ones.
    pub segments_repacked: usize,
}

impl Store {
    /// Removes every object `keep` does not want, migrates the loose objects kept, and
    /// repacks. The caller holds the exclusive lock ([`Store::lock_gc`]) and passes it in.
    pub fn collect(
        &self,
        _gc: &StoreLock,
        keep: &dyn Fn(&ObjectId) -> bool,
        dry_run: bool,
    ) -> Result<Collected> {
        self.reload()?;
        let (objects, _) = self.list_objects()?;
        let mut r = Collected::default();
        let mut victims = Vec::new();
        for o in &objects {
            if keep(&o.id) {
                r.objects_kept += 1;
            } else {
                victims.push(o.id);
                r.objects_removed += 1;
                r.bytes_freed += o.stored_bytes;
            }
        }
        if dry_run {
            return Ok(r);
        }
        self.remove_objects(&victims)?;
        r.migrated = self.migrate_locked()?;
        r.segments_repacked = self.repack()?;
        Ok(r)
    }

    /// Moves every format-1 loose object into packs (verified on the way) and removes the
    /// loose files. Takes the exclusive lock (waits for writers).
    pub fn migrate(&self) -> Result<usize> {
        let _gc = self.lock_gc(true)?;
        self.migrate_locked()
    }

    fn migrate_locked(&self) -> Result<usize> {
        let Some(loose) = self.loose() else {
            return Ok(0);
        };
        let (objs, _) = loose.list()?;
        if objs.is_empty() {
            loose.remove_if_empty()?;
            return Ok(0);
        }
        let txn = self.begin_with(None)?;
        let packs = self.packs()?;
        let mut moved = Vec::new();
        for o in &objs {
            if packs.contains(&o.id) {
                moved.push(o.id);
                continue;
            }
            let env = loose.read(&o.id)?;
            // A damaged loose object stays where it is for fsck to report.
            if txn.put_copy(&o.id, &env).is_ok() {
                moved.push(o.id);
            }
        }
        txn.commit()?;
        for id in &moved {
            loose.remove(id)?;
        }
        loose.remove_if_empty()?;
        Ok(moved.len())
    }

    /// Rewrites segments that are mostly dead, or small ones when there are several, into
    /// new segments; returns how many were retired.
    fn repack(&self) -> Result<usize> {
        // The transaction reloads the set: segments are chosen from what it loaded, and
        // named by file name from here to their retirement.
        let txn = self.begin_with(None)?;
        let packs = self.packs()?;
        let segs = packs.segments();
        let small = segs.iter().filter(|s| s.len < SMALL_SEGMENT).count();
        let chosen: Vec<&SegmentInfo> = segs
            .iter()
            .filter(|s| {
                (s.len > 0 && (s.live_bytes as f64) < s.len as f64 * REPACK_LIVE_RATIO)
                    || (small > 1 && s.len < SMALL_SEGMENT)
            })
            .collect();
        if chosen.is_empty() {
            return Ok(0);
        }
        let by_number: HashMap<u32, &str> =
            chosen.iter().map(|s| (s.seg, s.name.as_str())).collect();
        // A segment holding a record that does not read back whole stays (fsck reports it).
        let mut keep_segment = HashSet::new();
        for (id, loc) in packs.entries() {
            if let Some(name) = by_number.get(&loc.seg) {
                let copied = packs.read(&loc).and_then(|env| txn.put_copy(&id, &env));
                if let Err(e) = copied {
                    eprintln!("starling gc: not repacking around object {id}: {e}");
                    keep_segment.insert(*name);
                }
            }
        }
        txn.commit()?;
        let mut retired = 0;
        for s in chosen
            .iter()
            .filter(|s| !keep_segment.contains(s.name.as_str()))
        {
            packs.retire(&s.name)?;
            retired += 1;
        }
        packs.sync_dir()?;
        Ok(retired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_all(s: &Store, items: &[Vec<u8>]) -> Vec<ObjectId> {
        let t = s.begin().unwrap();
        let ids = items.iter().map(|d| t.put(d).unwrap().id).collect();
        t.commit().unwrap();
        ids
    }

    #[test]
    fn collect_removes_unwanted_and_repacks_small_segments() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_or_init(dir.path()).unwrap();
        let a = put_all(&s, &[b"a1".to_vec(), b"a2".to_vec()]);
        let b = put_all(&s, &[b"b1".to_vec(), b"b2".to_vec()]);
        let c = put_all(&s, &[b"c1".to_vec()]);
        let keep: HashSet<ObjectId> = [a[0], b[1], c[0]].into();
        let gc = s.lock_gc(false).unwrap();
        let dry = s.collect(&gc, &|id| keep.contains(id), true).unwrap();
        assert_eq!((dry.objects_removed, dry.objects_kept), (2, 3));
        assert_eq!(
            s.list_objects().unwrap().0.len(),
            5,
            "a dry run removes nothing"
        );
        let r = s.collect(&gc, &|id| keep.contains(id), false).unwrap();
        assert_eq!((r.objects_removed, r.objects_kept), (2, 3));
        assert_eq!(r.segments_repacked, 3);
        drop(gc);
        let fresh = Store::open(dir.path()).unwrap();
        let (objs, strays) = fresh.list_objects().unwrap();
        assert!(strays.is_empty(), "{strays:?}");
        let left: HashSet<ObjectId> = objs.iter().map(|o| o.id).collect();
        assert_eq!(left, keep);
        for id in &keep {
            fresh.verify(id).unwrap();
        }
        assert!(matches!(fresh.get(&a[1]), Err(crate::Error::NotFound(_))));
        let packs = std::fs::read_dir(dir.path().join("packs"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "pack")
            })
            .count();
        assert_eq!(packs, 1, "three small segments became one");
    }

    #[test]
    fn repack_after_a_segment_was_emptied_keeps_everything_kept() {
        // Emptying the oldest segment leaves a gap in the set's segment numbers; the repack
        // that follows must still copy and retire the segments it chose (a reload between
        // choosing and retiring once renumbered them, and the repack retired its own output).
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_or_init(dir.path()).unwrap();
        let garbage = put_all(&s, &[b"g1".to_vec(), b"g2".to_vec()]);
        let mut keep = HashSet::new();
        for i in 0..4u8 {
            keep.extend(put_all(&s, &[vec![b'k', i, 1], vec![b'k', i, 2]]));
        }
        let gc = s.lock_gc(false).unwrap();
        let r = s.collect(&gc, &|id| keep.contains(id), false).unwrap();
        assert_eq!(r.objects_removed, garbage.len());
        assert_eq!(r.segments_repacked, 4);
        drop(gc);
        let fresh = Store::open(dir.path()).unwrap();
        let left: HashSet<ObjectId> = fresh
            .list_objects()
            .unwrap()
            .0
            .iter()
            .map(|o| o.id)
            .collect();
        assert_eq!(left, keep);
        for id in &keep {
            fresh.verify(id).unwrap();
        }
    }

    #[test]
    fn format_1_stores_are_read_then_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // A store as format 1 left it: one envelope file per object.
        std::fs::create_dir_all(root.join("refs")).unwrap();
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        std::fs::write(root.join("starling-store"), "starling-store 1\n").unwrap();
        let mut ids = Vec::new();
        for d in [b"old one".as_slice(), b"old two"] {
            let id = ObjectId::of(d);
            let hex = id.to_hex();
            let p = root.join("objects").join(&hex[..2]);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join(&hex[2..]), crate::envelope::encode(d, 3)).unwrap();
            ids.push(id);
        }
        let s = Store::open(root).unwrap();
        assert_eq!(s.get(&ids[0]).unwrap(), b"old one");
        assert!(s.has_loose_objects());
        // The first write moves the layout to version 2 (older builds then refuse it).
        let new = put_all(&s, &[b"new".to_vec()])[0];
        let text = std::fs::read_to_string(root.join("starling-store")).unwrap();
        assert_eq!(text, "starling-store 2\n");
        assert_eq!(s.list_objects().unwrap().0.len(), 3);
        assert_eq!(s.migrate().unwrap(), 2);
        assert!(!root.join("objects").exists());
        let s = Store::open(root).unwrap();
        assert!(!s.has_loose_objects());
        for id in ids.iter().chain([&new]) {
            s.verify(id).unwrap();
        }
    }
}
