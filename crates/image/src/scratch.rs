//! A VM's writable layer: an ext4 scratch disk that the guest mounts under the image (the
//! overlay's upper directory is `/upper`, its work directory `/work`; Micro-CernVM's union
//! over a scratch disk). The host writes it fresh with Starling's own ext4 writer, without a
//! journal, so after the guest syncs it the host reads it back with Starling's own ext4
//! reader (never the host kernel: the guest wrote it) and commits `/upper` as a new version
//! exactly as a writable mount's upper directory is committed. `/starling/` holds what the
//! guest's init is told (the command to run), outside the overlay.

use std::collections::BTreeMap;
use std::path::Path;

use starling_disk::ext4::{Ext4Builder, NewInode, NewKind, WriteOptions};
use starling_store::{ObjectId, Store};

use crate::chunk::{ChunkParams, Progress};
use crate::error::{Error, Result};
use crate::manifest::{Meta, Node};
use crate::overlay::OverlayCommit;
use crate::stage::{StageDir, Staged};

/// The directory of the scratch disk that holds the overlay's upper layer.
pub const UPPER: &str = "upper";
pub const WORK: &str = "work";
/// Files for the guest's init, outside the overlay.
pub const CONFIG_DIR: &str = "starling";

fn dir(perm: u32, meta: Option<&Meta>, time: i64) -> NewInode {
    match meta {
        Some(m) => NewInode {
            kind: NewKind::Dir,
            perm: m.mode & 0o7777,
            uid: m.uid,
            gid: m.gid,
            mtime_sec: m.mtime_sec,
            mtime_nsec: m.mtime_nsec,
            xattrs: m
                .xattrs
                .iter()
                .map(|x| (x.name.to_vec(), x.value.to_vec()))
                .collect(),
        },
        None => NewInode {
            kind: NewKind::Dir,
            perm,
            uid: 0,
            gid: 0,
            mtime_sec: time,
            mtime_nsec: 0,
            xattrs: Vec::new(),
        },
    }
}

/// Writes an empty scratch disk of `size` bytes (sparse) at `path`: `/upper` with the image
/// root's attributes (overlayfs shows the upper root's own), `/work`, and `config` files
/// under `/starling/` (root-only).
pub fn create(path: &Path, size: u64, root_meta: &Meta, config: &[(&str, &[u8])]) -> Result<()> {
    let disk = |e| Error::Disk {
        source_path: path.to_path_buf(),
        source: e,
    };
    let now = crate::now_unix_ns() / 1_000_000_000;
    let mut b = Ext4Builder::new(dir(0o755, None, now)).map_err(disk)?;
    let root = 2;
    b.add(root, UPPER.as_bytes(), dir(0, Some(root_meta), now))
        .map_err(disk)?;
    b.add(root, WORK.as_bytes(), dir(0o700, None, now))
        .map_err(disk)?;
    let cfg = b
        .add(root, CONFIG_DIR.as_bytes(), dir(0o700, None, now))
        .map_err(disk)?;
    let mut contents: BTreeMap<u32, &[u8]> = BTreeMap::new();
    for (name, bytes) in config {
        let ino = b
            .add(
                cfg,
                name.as_bytes(),
                NewInode {
                    kind: NewKind::File {
                        size: bytes.len() as u64,
                    },
                    perm: 0o600,
                    uid: 0,
                    gid: 0,
                    mtime_sec: now,
                    mtime_nsec: 0,
                    xattrs: Vec::new(),
                },
            )
            .map_err(disk)?;
        contents.insert(ino, bytes);
    }
    let opts = WriteOptions {
        size: Some(size),
        uuid: uuid_of(path),
        label: "starling-scratch".into(),
        time: now,
    };
    b.write(path, &opts, &mut |ino, sink| match contents.get(&ino) {
        Some(bytes) => sink(bytes),
        None => Ok(()),
    })
    .map_err(disk)?;
    Ok(())
}

/// A UUID that differs between scratch disks (their paths and creation times).
fn uuid_of(path: &Path) -> [u8; 16] {
    let seed = format!("{}{}", path.display(), crate::now_unix_ns());
    let mut u = [0u8; 16];
    u.copy_from_slice(&ObjectId::of(seed.as_bytes()).as_bytes()[..16]);
    u
}

/// Stores the scratch disk's upper layer as a version of `name:tag`, a child of `base`
/// (whose objects must be in `store`). Call with the guest's writes synced and the VM paused.
pub fn commit(
    store: &Store,
    base: &ObjectId,
    disk: &Path,
    name: &str,
    tag: &str,
    what: &str,
) -> Result<OverlayCommit> {
    crate::overlay::commit_with(store, base, name, tag, what, |txn| {
        let (mut root, pending, _) = crate::import::disk::stage(
            txn,
            disk,
            None,
            // The scratch disk is the monitor's raw file, never qcow2.
            false,
            &ChunkParams::default(),
            &Progress::default(),
        )?;
        root.resolve_pending(&pending);
        let Some(Staged::Dir(upper)) = root.children.remove(UPPER.as_bytes()) else {
            return Err(Error::Invalid(format!(
                "{}: no /{UPPER} directory: not a Starling scratch disk",
                disk.display()
            )));
        };
        Ok(rebase_links(upper, UPPER.as_bytes()))
    })
}

/// Hard links inside `/upper` name their targets from the disk's root; the commit needs them
/// from the layer's.
fn rebase_links(mut d: StageDir, prefix: &[u8]) -> StageDir {
    for child in d.children.values_mut() {
        match child {
            Staged::Dir(sub) => *sub = rebase_links(std::mem::take(sub), prefix),
            Staged::Node(Node::Hardlink { target }) => {
                let t = target.as_slice();
                if t.starts_with(prefix) && t.get(prefix.len()) == Some(&b'/') {
                    *target = serde_bytes::ByteBuf::from(t[prefix.len() + 1..].to_vec());
                }
            }
            _ => {}
        }
    }
    d
}
