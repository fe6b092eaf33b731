//! Import of a directory tree. Walks in name order by directory descriptor, never following
//! a symlink (`beneath`), records metadata, and stores file contents in parallel once the
//! walk is done — each file reopened beneath the source's descriptor and checked to be the
//! inode the walk saw, so a file swapped for a link meanwhile is refused, never read.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use rayon::prelude::*;
use rustix::fs::{AtFlags, FileType, OFlags, Stat};
use serde_bytes::ByteBuf;
use starling_store::Txn;

use crate::beneath;
use crate::chunk::{store_content, ChunkParams, Progress};
use crate::error::{Error, IoContext, Result};
use crate::manifest::{FileData, Node};
use crate::meta_fs::{read_meta, read_meta_fd};
use crate::path;
use crate::stage::{StageDir, Staged};

/// A regular file whose content is read once the walk is done.
struct Job {
    /// `/`-joined path from the source's root.
    rel: Vec<u8>,
    dev: u64,
    ino: u64,
}

/// What a walk of the source found: the staging tree and the files still to read.
struct Walked {
    root: StageDir,
    fd: OwnedFd,
    jobs: Vec<Job>,
}

struct Walk<'a> {
    source: &'a Path,
    /// (dev, ino) of multiply-linked inodes → the first path met, which holds the inode.
    inodes: HashMap<(u64, u64), Vec<u8>>,
    jobs: Vec<Job>,
}

/// Builds the staging tree for directory `source` and stores all file contents.
pub(crate) fn stage(
    txn: &Txn<'_>,
    source: &Path,
    params: &ChunkParams,
    progress: &Progress,
) -> Result<(StageDir, Vec<(u64, FileData)>)> {
    let walked = walk(source)?;
    let contents = store_files(txn, source, &walked, params, progress)?;
    Ok((walked.root, contents))
}

fn walk(source: &Path) -> Result<Walked> {
    let fd = beneath::open_root(source)?;
    let st = rustix::fs::fstat(&fd).at(source)?;
    let mut root = StageDir {
        meta: read_meta_fd(&fd, source, &st)?,
        children: Default::default(),
    };
    let mut walk = Walk {
        source,
        inodes: HashMap::new(),
        jobs: Vec::new(),
    };
    walk.dir(&fd, source, &mut Vec::new(), &mut root)?;
    Ok(Walked {
        root,
        fd,
        jobs: walk.jobs,
    })
}

fn store_files(
    txn: &Txn<'_>,
    source: &Path,
    walked: &Walked,
    params: &ChunkParams,
    progress: &Progress,
) -> Result<Vec<(u64, FileData)>> {
    walked
        .jobs
        .par_iter()
        .map(|job| {
            let p = source.join(OsStr::from_bytes(&job.rel));
            // NONBLOCK: a FIFO swapped in must not hang the import before it is refused.
            let fd =
                beneath::open_beneath(&walked.fd, &job.rel, OFlags::RDONLY | OFlags::NONBLOCK, &p)?;
            let st = rustix::fs::fstat(&fd).at(&p)?;
            if (st.st_dev, st.st_ino) != (job.dev, job.ino)
                || FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
            {
                return Err(changed(source, &job.rel));
            }
            let r = store_content(txn, params, File::from(fd), progress, &|e| Error::Io {
                path: p.clone(),
                source: e,
            });
            progress.files.fetch_add(1, Ordering::Relaxed);
            r
        })
        .collect()
}

fn changed(source: &Path, rel: &[u8]) -> Error {
    Error::SourceChanged {
        source_path: source.to_path_buf(),
        path: path::display(rel),
    }
}

impl Walk<'_> {
    fn dir(
        &mut self,
        fd: &OwnedFd,
        shown: &Path,
        comps: &mut Vec<Vec<u8>>,
        stage: &mut StageDir,
    ) -> Result<()> {
        let mut names = Vec::new();
        for e in rustix::fs::Dir::read_from(fd).at(shown)? {
            let name = e.at(shown)?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                names.push(name);
            }
        }
        names.sort();
        for nb in names {
            let p: PathBuf = shown.join(OsStr::from_bytes(&nb));
            let st =
                rustix::fs::statat(fd, OsStr::from_bytes(&nb), AtFlags::SYMLINK_NOFOLLOW).at(&p)?;
            comps.push(nb.clone());
            let item = self.entry(fd, &nb, &p, &st, comps)?;
            stage.children.insert(nb, item);
            comps.pop();
        }
        Ok(())
    }

    fn entry(
        &mut self,
        dir: &OwnedFd,
        name: &[u8],
        p: &Path,
        st: &Stat,
        comps: &mut Vec<Vec<u8>>,
    ) -> Result<Staged> {
        let ft = FileType::from_raw_mode(st.st_mode);
        if ft == FileType::Directory {
            let sub = beneath::sub_dir(dir, name, p)?;
            if !beneath::same_inode(&sub, st, p)? {
                return Err(changed(self.source, &path::join(comps)));
            }
            let mut staged = StageDir {
                meta: read_meta_fd(&sub, p, st)?,
                children: Default::default(),
            };
            self.dir(&sub, p, comps, &mut staged)?;
            return Ok(Staged::Dir(staged));
        }
        if let Some(first) = self.seen_inode(st, comps) {
            return Ok(Staged::Node(Node::Hardlink {
                target: ByteBuf::from(first),
            }));
        }
        let meta = read_meta(&beneath::proc_path(dir, name), p, st)?;
        let rdev = st.st_rdev;
        Ok(match ft {
            FileType::RegularFile => {
                self.jobs.push(Job {
                    rel: path::join(comps),
                    dev: st.st_dev,
                    ino: st.st_ino,
                });
                Staged::Pending {
                    meta,
                    job: self.jobs.len() - 1,
                }
            }
            FileType::Symlink => {
                let target =
                    rustix::fs::readlinkat(dir, OsStr::from_bytes(name), Vec::new()).at(p)?;
                Staged::Node(Node::Symlink {
                    meta,
                    target: ByteBuf::from(target.into_bytes()),
                })
            }
            FileType::CharacterDevice => Staged::Node(Node::CharDevice { meta, rdev }),
            FileType::BlockDevice => Staged::Node(Node::BlockDevice { meta, rdev }),
            FileType::Fifo => Staged::Node(Node::Fifo { meta }),
            FileType::Socket => Staged::Node(Node::Socket { meta }),
            other => {
                return Err(Error::UnsupportedEntry {
                    source_path: self.source.to_path_buf(),
                    path: path::display(&path::join(comps)),
                    kind: format!("{other:?}"),
                })
            }
        })
    }

    /// For an inode with several names: the path that already holds it, or `None` after
    /// recording `comps` as its holder.
    fn seen_inode(&mut self, st: &Stat, comps: &[Vec<u8>]) -> Option<Vec<u8>> {
        if st.st_nlink < 2 {
            return None;
        }
        let key = (st.st_dev, st.st_ino);
        if let Some(first) = self.inodes.get(&key) {
            return Some(first.clone());
        }
        self.inodes.insert(key, path::join(comps));
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A source whose file is read once the walk is done, and a secret outside it.
    fn source() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("a")).unwrap();
        std::fs::write(src.join("a/f"), b"what the walk saw").unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("f"), b"SECRET of the host").unwrap();
        (dir, src, outside)
    }

    fn read_after(swap: impl FnOnce(&Path, &Path)) -> Result<Vec<(u64, FileData)>> {
        let (dir, src, outside) = source();
        let store = starling_store::Store::open_or_init(dir.path().join("store")).unwrap();
        let txn = store.begin().unwrap();
        let walked = walk(&src).unwrap();
        assert_eq!(walked.jobs.len(), 1);
        swap(&src, &outside);
        store_files(
            &txn,
            &src,
            &walked,
            &ChunkParams::default(),
            &Progress::default(),
        )
    }

    #[test]
    fn a_file_or_directory_swapped_for_a_link_after_the_walk_is_refused_not_read() {
        // Unchanged: read.
        let read = read_after(|_, _| {}).unwrap();
        assert_eq!(read[0].0, 17);
        // The file swapped for a link to a host file.
        let e = read_after(|src, outside| {
            std::fs::remove_file(src.join("a/f")).unwrap();
            symlink(outside.join("f"), src.join("a/f")).unwrap();
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("a/f") && e.contains("symbolic link"), "{e}");
        // The directory above it swapped for a link to a host directory.
        let e = read_after(|src, outside| {
            std::fs::rename(src.join("a"), src.join("moved")).unwrap();
            symlink(outside, src.join("a")).unwrap();
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("a/f") && e.contains("symbolic link"), "{e}");
        // Another file (a hard link to the host file) in its place: not the inode walked.
        let e = read_after(|src, outside| {
            std::fs::remove_file(src.join("a/f")).unwrap();
            std::fs::hard_link(outside.join("f"), src.join("a/f")).unwrap();
        })
        .unwrap_err();
        assert!(matches!(e, Error::SourceChanged { .. }), "{e}");
        assert!(e.to_string().contains("\"a/f\" changed"), "{e}");
        // A FIFO in its place is refused without hanging the import.
        let e = read_after(|src, _| {
            std::fs::remove_file(src.join("a/f")).unwrap();
            rustix::fs::mknodat(
                rustix::fs::CWD,
                src.join("a/f"),
                FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o600),
                0,
            )
            .unwrap();
        })
        .unwrap_err();
        assert!(matches!(e, Error::SourceChanged { .. }), "{e}");
    }

    #[test]
    fn directories_keep_their_extended_attributes() {
        let (_dir, src, _) = source();
        for (d, v) in [(src.clone(), &b"root"[..]), (src.join("a"), &b"sub"[..])] {
            if let Err(e) = xattr::set(&d, "user.note", v) {
                eprintln!("SKIP: user xattrs on {}: {e}", d.display());
                return;
            }
        }
        let walked = walk(&src).unwrap();
        let note = |m: &crate::manifest::Meta| {
            m.xattrs
                .iter()
                .find(|x| x.name.as_slice() == b"user.note")
                .map(|x| x.value.to_vec())
        };
        assert_eq!(note(&walked.root.meta).as_deref(), Some(&b"root"[..]));
        let Some(Staged::Dir(a)) = walked.root.children.get(&b"a"[..]) else {
            panic!("a is not a directory");
        };
        assert_eq!(note(&a.meta).as_deref(), Some(&b"sub"[..]));
    }

    #[test]
    fn links_in_the_source_are_recorded_as_links_never_followed() {
        let (_dir, src, outside) = source();
        symlink(&outside, src.join("to-outside")).unwrap();
        symlink(outside.join("f"), src.join("a/to-secret")).unwrap();
        let walked = walk(&src).unwrap();
        assert_eq!(walked.jobs.len(), 1, "only a/f is content to read");
        let Some(Staged::Node(Node::Symlink { target, .. })) =
            walked.root.children.get(&b"to-outside"[..])
        else {
            panic!("to-outside is not a link");
        };
        assert_eq!(target.as_slice(), outside.as_os_str().as_bytes());
    }
}
