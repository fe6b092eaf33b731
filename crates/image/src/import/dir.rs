//! Import of a directory tree. Walks in name order without following symlinks, records
//! metadata, and stores file contents in parallel once the walk is done.

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use rayon::prelude::*;
use serde_bytes::ByteBuf;
use starling_store::Txn;

use crate::chunk::{store_content, ChunkParams, Progress};
use crate::error::{Error, IoContext, Result};
use crate::manifest::{FileData, Node};
use crate::meta_fs::read_meta;
use crate::path;
use crate::stage::{StageDir, Staged};

struct Walk<'a> {
    source: &'a Path,
    /// (dev, ino) of multiply-linked inodes → the first path met, which holds the inode.
    inodes: HashMap<(u64, u64), Vec<u8>>,
    jobs: Vec<PathBuf>,
}

/// Builds the staging tree for directory `source` and stores all file contents.
pub(crate) fn stage(
    txn: &Txn<'_>,
    source: &Path,
    params: &ChunkParams,
    progress: &Progress,
) -> Result<(StageDir, Vec<(u64, FileData)>)> {
    let md = fs::symlink_metadata(source).at(source)?;
    let mut root = StageDir {
        meta: read_meta(source, &md)?,
        children: Default::default(),
    };
    let mut walk = Walk {
        source,
        inodes: HashMap::new(),
        jobs: Vec::new(),
    };
    walk.dir(source, &mut Vec::new(), &mut root)?;
    let contents = walk
        .jobs
        .par_iter()
        .map(|p| {
            let f = File::open(p).at(p)?;
            let r = store_content(txn, params, f, progress, &|e| Error::Io {
                path: p.clone(),
                source: e,
            });
            progress.files.fetch_add(1, Ordering::Relaxed);
            r
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((root, contents))
}

impl Walk<'_> {
    fn dir(&mut self, dir: &Path, comps: &mut Vec<Vec<u8>>, stage: &mut StageDir) -> Result<()> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .at(dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()
            .at(dir)?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let p = dir.join(&name);
            let md = fs::symlink_metadata(&p).at(&p)?;
            let ft = md.file_type();
            let nb = name.as_bytes().to_vec();
            comps.push(nb.clone());
            let meta = read_meta(&p, &md)?;
            let item = if ft.is_dir() {
                let mut sub = StageDir {
                    meta,
                    children: Default::default(),
                };
                self.dir(&p, comps, &mut sub)?;
                Staged::Dir(sub)
            } else if let Some(first) = self.seen_inode(&md, comps) {
                Staged::Node(Node::Hardlink {
                    target: ByteBuf::from(first),
                })
            } else if ft.is_file() {
                self.jobs.push(p.clone());
                Staged::Pending {
                    meta,
                    job: self.jobs.len() - 1,
                }
            } else if ft.is_symlink() {
                let target = fs::read_link(&p).at(&p)?;
                Staged::Node(Node::Symlink {
                    meta,
                    target: ByteBuf::from(target.as_os_str().as_bytes().to_vec()),
                })
            } else if ft.is_char_device() {
                Staged::Node(Node::CharDevice {
                    meta,
                    rdev: md.rdev(),
                })
            } else if ft.is_block_device() {
                Staged::Node(Node::BlockDevice {
                    meta,
                    rdev: md.rdev(),
                })
            } else if ft.is_fifo() {
                Staged::Node(Node::Fifo { meta })
            } else if ft.is_socket() {
                Staged::Node(Node::Socket { meta })
            } else {
                return Err(Error::UnsupportedEntry {
                    source_path: self.source.to_path_buf(),
                    path: path::display(&path::join(comps)),
                    kind: format!("{ft:?}"),
                });
            };
            stage.children.insert(nb, item);
            comps.pop();
        }
        Ok(())
    }

    /// For an inode with several names: the path that already holds it, or `None` after
    /// recording `comps` as its holder.
    fn seen_inode(&mut self, md: &fs::Metadata, comps: &[Vec<u8>]) -> Option<Vec<u8>> {
        if md.nlink() < 2 {
            return None;
        }
        let key = (md.dev(), md.ino());
        if let Some(first) = self.inodes.get(&key) {
            return Some(first.clone());
        }
        self.inodes.insert(key, path::join(comps));
        None
    }
}
