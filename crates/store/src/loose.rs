//! Store format 1 kept one file per object under `objects/ab/cdef…`. Such objects are still
//! read, listed and collected, and [`crate::Store::migrate`] moves them into packs.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::error::IoContext;
use crate::store::{ObjectInfo, ObjectLocation};
use crate::{Error, ObjectId, Result};

#[derive(Debug)]
pub struct Loose {
    dir: PathBuf,
}

impl Loose {
    /// `None` when the store has no loose objects directory.
    pub fn open(dir: &Path) -> Result<Option<Loose>> {
        match fs::metadata(dir) {
            Ok(m) if m.is_dir() => Ok(Some(Loose { dir: dir.into() })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).at(dir),
        }
    }

    fn path(&self, id: &ObjectId) -> PathBuf {
        let hex = id.to_hex();
        self.dir.join(&hex[..2]).join(&hex[2..])
    }

    pub fn contains(&self, id: &ObjectId) -> bool {
        self.path(id).exists()
    }

    pub fn read(&self, id: &ObjectId) -> Result<Vec<u8>> {
        let p = self.path(id);
        match fs::read(&p) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(Error::NotFound(*id)),
            Err(e) => Err(e).at(p),
        }
    }

    pub fn location(&self, id: &ObjectId) -> Option<ObjectLocation> {
        let p = self.path(id);
        let len = fs::metadata(&p).ok()?.len();
        Some(ObjectLocation {
            path: p,
            offset: 0,
            len,
        })
    }

    /// Whether any loose object is left.
    pub fn any(&self) -> bool {
        self.list().is_ok_and(|(o, _)| !o.is_empty())
    }

    /// Every loose object; files not named like objects in the second list.
    pub fn list(&self) -> Result<(Vec<ObjectInfo>, Vec<PathBuf>)> {
        let mut out = Vec::new();
        let mut strays = Vec::new();
        let top = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok((out, strays)),
            Err(e) => return Err(e).at(&self.dir),
        };
        for fan in top {
            let fan = fan.at(&self.dir)?;
            let prefix = fan.file_name().to_string_lossy().into_owned();
            let dir = fan.path();
            if prefix.len() != 2 || !dir.is_dir() {
                strays.push(dir);
                continue;
            }
            for ent in fs::read_dir(&dir).at(&dir)? {
                let ent = ent.at(&dir)?;
                let name = ent.file_name();
                let parsed = name
                    .to_str()
                    .and_then(|n| format!("{prefix}{n}").parse::<ObjectId>().ok());
                match parsed {
                    Some(id) => out.push(ObjectInfo {
                        id,
                        stored_bytes: ent.metadata().at(ent.path())?.len(),
                    }),
                    None => strays.push(ent.path()),
                }
            }
        }
        Ok((out, strays))
    }

    pub fn disk_bytes(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        let (objs, _) = self.list()?;
        Ok(objs
            .iter()
            .filter_map(|o| fs::symlink_metadata(self.path(&o.id)).ok())
            .map(|m| m.blocks() * 512)
            .sum())
    }

    pub fn remove(&self, id: &ObjectId) -> Result<bool> {
        let p = self.path(id);
        match fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).at(p),
        }
    }

    /// Removes the directory once it holds no objects (empty fan-out directories only).
    pub fn remove_if_empty(&self) -> Result<bool> {
        let (objs, strays) = self.list()?;
        if !objs.is_empty() || !strays.is_empty() {
            return Ok(false);
        }
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(true),
            Err(e) => Err(e).at(&self.dir),
        }
    }
}
