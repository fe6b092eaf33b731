//! A disk as a stack of layers: a raw base file and copy-on-write overlays above it, each a
//! sparse file of the disk's size holding the 4 KiB blocks written while it was on top. Reads
//! take each block from the highest layer that has it. Freezing (a fork or a snapshot) stops
//! writes to every layer and puts a fresh overlay on top, so clones and the parent can share
//! everything below and diverge above.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const BLOCK: u64 = 4096;

/// One layer of a disk as saved: the base file (every block present) or a copy-on-write
/// overlay with the blocks it holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LayerState {
    pub path: PathBuf,
    /// None for the base; otherwise one bit per block present.
    pub present: Option<Vec<u64>>,
    /// The base's size and modification time (seconds, nanoseconds) when the snapshot was
    /// taken: a base written since then would silently corrupt every restore, so it is refused.
    pub stamp: Option<(u64, i64, i64)>,
}

struct Layer {
    file: File,
    path: PathBuf,
    /// None: the base (every block present).
    present: Option<Vec<u64>>,
}

impl Layer {
    fn has(&self, block: u64) -> bool {
        match &self.present {
            None => true,
            Some(bits) => bits
                .get((block / 64) as usize)
                .is_some_and(|w| w & (1 << (block % 64)) != 0),
        }
    }
}

pub struct LayeredDisk {
    layers: Vec<Layer>,
    len: u64,
    read_only: bool,
}

fn blocks_words(len: u64) -> usize {
    len.div_ceil(BLOCK).div_ceil(64) as usize
}

impl LayeredDisk {
    /// A plain raw file, written in place unless read-only.
    pub fn open_base(path: &Path, read_only: bool) -> std::io::Result<Self> {
        let file = match crate::jail::handed::take(&crate::jail::handed::disk_key(path, read_only))
        {
            Some(f) => f,
            None => OpenOptions::new().read(true).write(!read_only).open(path)?,
        };
        let len = file.metadata()?.len();
        Ok(LayeredDisk {
            layers: vec![Layer {
                file,
                path: path.to_owned(),
                present: None,
            }],
            len,
            read_only,
        })
    }

    /// The layers of a snapshot (all read-only), with a new overlay at `top` for a writable
    /// disk.
    pub fn open_layers(
        snaps: &[LayerState],
        top: Option<&Path>,
        read_only: bool,
    ) -> std::io::Result<Self> {
        let mut layers = Vec::new();
        for s in snaps {
            let file = File::open(&s.path)?;
            layers.push(Layer {
                file,
                path: s.path.clone(),
                present: s.present.clone(),
            });
        }
        let base = layers.first().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "a disk with no layers")
        })?;
        if base.present.is_some() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the lowest layer of a disk must be its base",
            ));
        }
        let len = base.file.metadata()?.len();
        if let Some(want) = snaps[0].stamp {
            if stamp(&base.file)? != want {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "base disk {} changed since the snapshot (its size or modification time differs)",
                        base.path.display()
                    ),
                ));
            }
        }
        let mut d = LayeredDisk {
            layers,
            len,
            read_only,
        };
        for l in &d.layers[1..] {
            if l.present.as_ref().map(Vec::len) != Some(blocks_words(len)) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "overlay {} does not match its base's size",
                        l.path.display()
                    ),
                ));
            }
        }
        if let (Some(top), false) = (top, read_only) {
            d.push_overlay(top)?;
        }
        Ok(d)
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn path(&self) -> &Path {
        &self.layers[0].path
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    fn push_overlay(&mut self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // What the guest writes to its disk: the owner's alone.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        file.set_len(self.len)?;
        self.layers.push(Layer {
            file,
            path: path.to_owned(),
            present: Some(vec![0; blocks_words(self.len)]),
        });
        Ok(())
    }

    /// The layers as they are now (written data flushed first).
    pub fn layers(&self) -> std::io::Result<Vec<LayerState>> {
        self.flush()?;
        self.layers
            .iter()
            .map(|l| {
                Ok(LayerState {
                    path: l.path.clone(),
                    present: l.present.clone(),
                    stamp: match l.present {
                        None => Some(stamp(&l.file)?),
                        Some(_) => None,
                    },
                })
            })
            .collect()
    }

    /// Stops writing to the current layers, returns them, and continues on a new overlay at
    /// `new_top` (a read-only disk has nothing to freeze and keeps its layers).
    pub fn freeze(&mut self, new_top: &Path) -> std::io::Result<Vec<LayerState>> {
        let frozen = self.layers()?;
        if !self.read_only {
            self.push_overlay(new_top)?;
        }
        Ok(frozen)
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        // One read per run of blocks that come from the same layer (a disk without overlays:
        // one read per request), not one per 4 KiB block.
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let layer = self.top(pos / BLOCK);
            let mut end = done + ((BLOCK - pos % BLOCK) as usize).min(buf.len() - done);
            while end < buf.len() && self.top((offset + end as u64) / BLOCK) == layer {
                end = (end + BLOCK as usize).min(buf.len());
            }
            self.layers[layer]
                .file
                .read_exact_at(&mut buf[done..end], pos)?;
            done = end;
        }
        Ok(())
    }

    /// The index of the highest layer holding `block` (the base holds every block).
    fn top(&self, block: u64) -> usize {
        self.layers.iter().rposition(|l| l.has(block)).unwrap_or(0)
    }

    pub fn write_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        if self.read_only {
            return Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        }
        if self.layers.len() == 1 {
            return self.layers[0].file.write_all_at(buf, offset);
        }
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let block = pos / BLOCK;
            let n = ((BLOCK - pos % BLOCK) as usize).min(buf.len() - done);
            let top = self.layers.len() - 1;
            if !self.layers[top].has(block) && n as u64 != BLOCK {
                // Part of a block: copy it up first so the rest of it stays.
                let start = block * BLOCK;
                let mut whole = vec![0u8; (BLOCK.min(self.len - start)) as usize];
                self.read_at(&mut whole, start)?;
                self.layers[top].file.write_all_at(&whole, start)?;
            }
            let t = &mut self.layers[top];
            t.file.write_all_at(&buf[done..done + n], pos)?;
            if let Some(bits) = t.present.as_mut() {
                if let Some(w) = bits.get_mut((block / 64) as usize) {
                    *w |= 1 << (block % 64);
                }
            }
            done += n;
        }
        Ok(())
    }

    pub fn flush(&self) -> std::io::Result<()> {
        match self.layers.last() {
            Some(l) if !self.read_only => l.file.sync_all(),
            _ => Ok(()),
        }
    }
}

fn stamp(f: &File) -> std::io::Result<(u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata()?;
    Ok((m.len(), m.mtime(), m.mtime_nsec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlays_diverge_and_partial_blocks_copy_up() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        std::fs::write(&base, vec![7u8; 64 * 1024]).unwrap();
        let mut parent = LayeredDisk::open_base(&base, false).unwrap();
        parent.write_at(b"parent-before", 0).unwrap();
        let frozen = parent.freeze(&dir.path().join("parent.ov")).unwrap();
        parent.write_at(b"PARENT", 100).unwrap();
        let mut clone =
            LayeredDisk::open_layers(&frozen, Some(&dir.path().join("clone.ov")), false).unwrap();
        clone.write_at(b"clone", 5000).unwrap();
        let mut b = [0u8; 13];
        clone.read_at(&mut b, 0).unwrap();
        assert_eq!(&b, b"parent-before");
        let mut b = [0u8; 6];
        clone.read_at(&mut b, 100).unwrap();
        assert_eq!(b, [7u8; 6], "the parent's later write is not in the clone");
        parent.read_at(&mut b, 100).unwrap();
        assert_eq!(&b, b"PARENT");
        let mut b = [0u8; 7];
        clone.read_at(&mut b, 4998).unwrap();
        assert_eq!(&b, &[7, 7, b'c', b'l', b'o', b'n', b'e']);
        parent.read_at(&mut b, 4998).unwrap();
        assert_eq!(b, [7u8; 7]);
        // The base file itself is untouched after the freeze.
        let raw = std::fs::read(&base).unwrap();
        assert_eq!(&raw[100..106], &[7u8; 6]);
        assert!(LayeredDisk::open_layers(&frozen[1..], None, true).is_err());
        // A base written after the snapshot is refused.
        let mut stale = frozen.clone();
        stale[0].stamp = Some((1, 2, 3));
        let e = LayeredDisk::open_layers(&stale, None, true).err().unwrap();
        assert!(e.to_string().contains("changed since the snapshot"), "{e}");
    }

    /// Reads of any offset and length over a stack of overlays give what a block-by-block
    /// reader of the same layers gives.
    #[test]
    fn reads_spanning_layers_match_block_by_block() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        let len = 40 * BLOCK as usize;
        std::fs::write(&base, (0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>()).unwrap();
        let mut d = LayeredDisk::open_base(&base, false).unwrap();
        let mut model: Vec<u8> = std::fs::read(&base).unwrap();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for round in 0..3 {
            d.freeze(&dir.path().join(format!("ov{round}"))).unwrap();
            for _ in 0..12 {
                let off = next(len as u64 - 9000) as usize;
                let n = 1 + next(9000) as usize;
                let data: Vec<u8> = (0..n).map(|i| (i as u8) ^ (round as u8 + 1)).collect();
                d.write_at(&data, off as u64).unwrap();
                model[off..off + n].copy_from_slice(&data);
            }
        }
        for _ in 0..300 {
            let off = next(len as u64) as usize;
            let n = 1 + next((len - off) as u64) as usize;
            let mut got = vec![0u8; n];
            d.read_at(&mut got, off as u64).unwrap();
            assert!(got == model[off..off + n], "read of {n} bytes at {off}");
        }
    }
}
