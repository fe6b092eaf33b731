//! Refs: small named files, each replaced atomically (temp file, fsync, rename, fsync dir).
//!
//! A ref is the only thing that makes objects visible as a version, so a crash at any point
//! leaves either the old ref or the new one, never a torn one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::IoContext;
use crate::{Error, Result, Store};

/// Ref names are single path components of printable ASCII without `/`, so the image layer
/// encodes its own structure (names, tags) into them.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b'\\');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidRefName(name.to_string()))
    }
}

impl Store {
    fn ref_dir(&self, namespace: &str) -> Result<PathBuf> {
        check_name(namespace)?;
        Ok(self.root().join("refs").join(namespace))
    }

    /// Reads a ref, `None` if it does not exist.
    pub fn read_ref(&self, namespace: &str, name: &str) -> Result<Option<Vec<u8>>> {
        check_name(name)?;
        let path = self.ref_dir(namespace)?.join(name);
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).at(path),
        }
    }

    /// Replaces a ref atomically and durably.
    pub fn write_ref(&self, namespace: &str, name: &str, value: &[u8]) -> Result<()> {
        check_name(name)?;
        let dir = self.ref_dir(namespace)?;
        fs::create_dir_all(&dir).at(&dir)?;
        let (tmp_path, mut f) = self.temp_file()?;
        let result = (|| {
            f.write_all(value).at(&tmp_path)?;
            f.sync_all().at(&tmp_path)?;
            drop(f);
            let dest = dir.join(name);
            fs::rename(&tmp_path, &dest).at(&dest)?;
            sync_dir(&dir)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp_path);
        }
        result
    }

    /// Removes a ref; `false` if it did not exist.
    pub fn remove_ref(&self, namespace: &str, name: &str) -> Result<bool> {
        check_name(name)?;
        let dir = self.ref_dir(namespace)?;
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(&dir)?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).at(path),
        }
    }

    /// Names of all refs in a namespace, sorted.
    pub fn list_refs(&self, namespace: &str) -> Result<Vec<String>> {
        let dir = self.ref_dir(namespace)?;
        let mut out = Vec::new();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).at(dir),
        };
        for ent in rd {
            let ent = ent.at(&dir)?;
            if let Some(name) = ent.file_name().to_str() {
                if check_name(name).is_ok() {
                    out.push(name.to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir).and_then(|d| d.sync_all()).at(dir)
}
