//! Pack files for the host cache: objects appended to a few large segment files instead of
//! one file each, so a warm read is one `pread` on an open file (no path lookup, no inode
//! to load) and neighbouring chunks sit next to each other on disk.
//!
//! Segment `packs/NNNNNNNN.pack` (format 1): records, each a 48-byte header — magic `SLPK`,
//! format 1, flags (bit 0: dead), 2 reserved bytes, envelope length (u32 LE), the object id
//! (32 bytes), 4 reserved bytes — followed by the object's store envelope. Eviction marks a
//! record dead and punches a hole over its envelope (the space goes back to the file
//! system); a segment with nothing live is deleted. A crash can leave a torn record at the
//! end of the segment being written: the scan at open stops there and truncates it.
//! Nothing here is trusted blindly: callers hash each object before serving it from disk
//! the first time in their lifetime.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use starling_store::ObjectId;

use crate::error::{invalid, IoContext, Result};

const MAGIC: &[u8; 4] = b"SLPK";
const FORMAT: u8 = 1;
const HEADER: u64 = 48;
const DEAD: u8 = 1;
/// A new segment is started beyond this size.
const SEGMENT_MAX: u64 = 64 << 20;

#[derive(Clone, Copy, Debug)]
pub struct Loc {
    pub segment: u32,
    /// Offset of the record header.
    pub offset: u64,
    pub len: u32,
}

pub struct Packs {
    dir: PathBuf,
    files: RwLock<HashMap<u32, Arc<File>>>,
    writer: Mutex<Writer>,
    /// Live records per segment (a segment with none is deleted).
    live: Mutex<BTreeMap<u32, usize>>,
}

struct Writer {
    segment: u32,
    file: Arc<File>,
    end: u64,
}

fn seg_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{n:08}.pack"))
}

fn open_rw(p: &Path) -> Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(p)
        .at(p)?;
    // Objects are appended in the order they were first needed, which is mostly the order
    // they are read again: a larger kernel read-ahead window pays.
    let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::Sequential);
    Ok(f)
}

impl Packs {
    /// Opens (creating) the pack directory; returns the live objects in segment order
    /// (oldest first: the least recently used order a restart can recover).
    pub fn open(dir: &Path) -> Result<(Packs, Vec<(ObjectId, Loc)>)> {
        std::fs::create_dir_all(dir).at(dir)?;
        let mut segs: Vec<u32> = Vec::new();
        for e in std::fs::read_dir(dir).at(dir)? {
            let name = e.at(dir)?.file_name().to_string_lossy().into_owned();
            if let Some(n) = name.strip_suffix(".pack").and_then(|n| n.parse().ok()) {
                segs.push(n);
            }
        }
        segs.sort_unstable();
        let mut files = HashMap::new();
        let mut live = BTreeMap::new();
        let mut objects = Vec::new();
        let mut last_end = 0;
        for &n in &segs {
            let p = seg_path(dir, n);
            let f = open_rw(&p)?;
            let size = f.metadata().at(&p)?.len();
            let mut at = 0u64;
            let mut count = 0;
            let mut h = [0u8; HEADER as usize];
            while at + HEADER <= size {
                f.read_exact_at(&mut h, at).at(&p)?;
                let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
                if &h[..4] != MAGIC || h[4] != FORMAT || at + HEADER + u64::from(len) > size {
                    break;
                }
                if h[5] & DEAD == 0 {
                    let mut id = [0u8; 32];
                    id.copy_from_slice(&h[12..44]);
                    objects.push((
                        ObjectId::from_bytes(id),
                        Loc {
                            segment: n,
                            offset: at,
                            len,
                        },
                    ));
                    count += 1;
                }
                at += HEADER + u64::from(len);
            }
            if at < size {
                // A torn record (crash while appending): drop it.
                f.set_len(at).at(&p)?;
            }
            live.insert(n, count);
            files.insert(n, Arc::new(f));
            last_end = at;
        }
        // Append to the last segment while it has room, else to a fresh one.
        let (segment, end) = match segs.last() {
            Some(&n) if last_end < SEGMENT_MAX => (n, last_end),
            Some(&n) => (n + 1, 0),
            None => (0, 0),
        };
        let file = match files.get(&segment) {
            Some(f) => f.clone(),
            None => {
                let f = Arc::new(open_rw(&seg_path(dir, segment))?);
                files.insert(segment, f.clone());
                live.insert(segment, 0);
                f
            }
        };
        Ok((
            Packs {
                dir: dir.to_path_buf(),
                files: RwLock::new(files),
                writer: Mutex::new(Writer { segment, file, end }),
                live: Mutex::new(live),
            },
            objects,
        ))
    }

    /// Appends an object's envelope.
    pub fn put(&self, id: &ObjectId, env: &[u8]) -> Result<Loc> {
        let len = u32::try_from(env.len())
            .map_err(|_| invalid(format!("object {id}"), "larger than 4 GiB"))?;
        let mut rec = Vec::with_capacity(HEADER as usize + env.len());
        rec.extend_from_slice(MAGIC);
        rec.extend_from_slice(&[FORMAT, 0, 0, 0]);
        rec.extend_from_slice(&len.to_le_bytes());
        rec.extend_from_slice(id.as_bytes());
        rec.extend_from_slice(&[0; 4]);
        rec.extend_from_slice(env);
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if w.end >= SEGMENT_MAX {
            let n = w.segment + 1;
            let f = Arc::new(open_rw(&seg_path(&self.dir, n))?);
            self.files
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(n, f.clone());
            self.live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(n, 0);
            *w = Writer {
                segment: n,
                file: f,
                end: 0,
            };
        }
        let loc = Loc {
            segment: w.segment,
            offset: w.end,
            len,
        };
        let p = seg_path(&self.dir, w.segment);
        w.file.write_all_at(&rec, w.end).at(&p)?;
        w.end += rec.len() as u64;
        *self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(loc.segment)
            .or_insert(0) += 1;
        Ok(loc)
    }

    /// The envelope at `loc`.
    pub fn get(&self, loc: &Loc) -> Result<Vec<u8>> {
        let f = self
            .files
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&loc.segment)
            .cloned()
            .ok_or_else(|| invalid(format!("pack segment {}", loc.segment), "is gone"))?;
        let mut buf = vec![0u8; loc.len as usize];
        f.read_exact_at(&mut buf, loc.offset + HEADER)
            .at(seg_path(&self.dir, loc.segment))?;
        Ok(buf)
    }

    /// Marks the record dead and gives its space back (a hole); deletes the segment when
    /// nothing in it is live and it is not the one being appended to.
    pub fn remove(&self, loc: &Loc) -> Result<()> {
        let p = seg_path(&self.dir, loc.segment);
        let Some(f) = self
            .files
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&loc.segment)
            .cloned()
        else {
            return Ok(());
        };
        f.write_all_at(&[DEAD], loc.offset + 5).at(&p)?;
        // Whole blocks inside the envelope only: the header stays readable for the scan.
        let start = (loc.offset + HEADER).div_ceil(4096) * 4096;
        let end = (loc.offset + HEADER + u64::from(loc.len)) / 4096 * 4096;
        if end > start {
            let _ = rustix::fs::fallocate(
                &*f,
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                start,
                end - start,
            );
        }
        let writing = self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .segment;
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let n = live.entry(loc.segment).or_insert(1);
        *n = n.saturating_sub(1);
        if *n == 0 && loc.segment != writing {
            live.remove(&loc.segment);
            self.files
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&loc.segment);
            std::fs::remove_file(&p).at(&p)?;
        }
        Ok(())
    }

    /// Bytes the segment files occupy on disk (holes excluded).
    pub fn disk_bytes(&self) -> u64 {
        let files = self.files.read().unwrap_or_else(|p| p.into_inner());
        files
            .values()
            .filter_map(|f| f.metadata().ok())
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_torn_tails_and_removal() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("packs");
        let envs: Vec<(ObjectId, Vec<u8>)> = (0..5u8)
            .map(|i| {
                let data = vec![i; 10_000 + i as usize];
                (
                    ObjectId::of(&data),
                    starling_store::encode_envelope(&data, 3),
                )
            })
            .collect();
        let locs: Vec<Loc> = {
            let (p, found) = Packs::open(&d).unwrap();
            assert!(found.is_empty());
            envs.iter().map(|(id, e)| p.put(id, e).unwrap()).collect()
        };
        // A torn append at the end is dropped at the next open.
        let seg = seg_path(&d, 0);
        let f = OpenOptions::new().append(true).open(&seg).unwrap();
        use std::io::Write;
        (&f).write_all(b"SLPK\x01\0\0\0\xff\xff\0\0partial")
            .unwrap();
        let (p, found) = Packs::open(&d).unwrap();
        assert_eq!(found.len(), 5);
        for ((id, env), (fid, loc)) in envs.iter().zip(&found) {
            assert_eq!(id, fid);
            assert_eq!(&p.get(loc).unwrap(), env);
        }
        p.remove(&locs[1]).unwrap();
        let again = p.put(&envs[1].0, &envs[1].1).unwrap();
        assert!(
            again.offset > locs[4].offset,
            "appended after the old records"
        );
        drop(p);
        let (p, found) = Packs::open(&d).unwrap();
        assert_eq!(
            found.len(),
            5,
            "the dead record is skipped, the new one found"
        );
        assert_eq!(found[4].0, envs[1].0);
        assert_eq!(p.get(&found[4].1).unwrap(), envs[1].1);
    }
}
