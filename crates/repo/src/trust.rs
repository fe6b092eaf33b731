//! The repositories this host trusts: `remotes/HASH/` under a store (or the daemon's cache)
//! holds each one's TUF state: `root.json` (the current root, rotated by TUF as it goes),
//! `anchor.json` (the root first trusted, as given), `url` (which repository it is).
//!
//! A `--root` given again must be the root the repository is trusted with (the anchor, or the
//! current root): another repository's root, or a file that is not root metadata, is refused
//! with both named, never silently ignored. To trust another root, drop the old trust first
//! (`repo trust rm URL`).

use std::path::{Path, PathBuf};

use crate::error::{invalid, Error, IoContext, Result};
use crate::pull::{datastore_in, Remote};

/// What a root metadata file is, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootInfo {
    pub version: u64,
    /// sha256 of the file's bytes, hex.
    pub sha256: String,
}

impl std::fmt::Display for RootInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "root version {} (sha256 {})",
            self.version,
            &self.sha256[..12]
        )
    }
}

/// Checks that `bytes` (read from `shown`) is TUF root metadata.
pub fn root_info(bytes: &[u8], shown: &str) -> Result<RootInfo> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        invalid(
            shown.to_string(),
            format!("is not root metadata (not JSON: {e})"),
        )
    })?;
    let signed = v.get("signed");
    let kind = signed.and_then(|s| s.get("_type")).and_then(|t| t.as_str());
    if kind != Some("root") {
        return Err(invalid(
            shown.to_string(),
            format!(
                "is not root metadata (its signed._type is {})",
                kind.map_or("missing".to_string(), |k| format!("{k:?}"))
            ),
        ));
    }
    let version = signed
        .and_then(|s| s.get("version"))
        .and_then(|n| n.as_u64())
        .ok_or_else(|| invalid(shown.to_string(), "is root metadata without a version"))?;
    Ok(RootInfo {
        version,
        sha256: crate::meta::sha2_hex(bytes),
    })
}

/// The root to start from for `remote`, given `trusted_root` (the user's `--root`), with the
/// trust state under `dir`. A first contact records the anchor and the URL.
pub(crate) fn root_for(
    dir: &Path,
    remote: &Remote,
    trusted_root: Option<&Path>,
) -> Result<Option<Vec<u8>>> {
    let ds = datastore_in(dir, remote);
    let stored = ds.join("root.json");
    let given = match trusted_root {
        Some(p) => {
            let b = std::fs::read(p).at(p)?;
            let info = root_info(&b, &p.display().to_string())?;
            Some((p, b, info))
        }
        None => None,
    };
    if !stored.exists() {
        let Some((_, b, _)) = given else {
            return Ok(None);
        };
        std::fs::create_dir_all(&ds).at(&ds)?;
        // Left by a first contact that failed before TUF kept a root: replaced.
        for name in ["anchor.json", "url"] {
            match std::fs::remove_file(ds.join(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).at(ds.join(name))
                }
                _ => {}
            }
        }
        write_new(&ds.join("anchor.json"), &b)?;
        write_new(&ds.join("url"), remote.base.as_str().as_bytes())?;
        return Ok(Some(b));
    }
    let current = std::fs::read(&stored).at(&stored)?;
    if let Some((p, b, info)) = given {
        let anchor_path = ds.join("anchor.json");
        let anchor = std::fs::read(&anchor_path).ok();
        let same = b == current || anchor.as_deref() == Some(b.as_slice());
        if !same {
            let trusted = root_info(anchor.as_deref().unwrap_or(&current), "the trusted root")?;
            return Err(Error::OtherRoot {
                repo: remote.base.to_string(),
                reason: format!(
                    "is trusted with {trusted}; --root {} is {info}, another root: to trust it \
                     instead, drop the old trust first (`starling repo trust rm {}`)",
                    p.display(),
                    remote.base
                ),
            });
        }
    }
    Ok(Some(current))
}

/// Writes a file that must not exist yet (never through a link an attacker left).
fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .at(path)?;
    f.write_all(bytes).at(path)
}

/// A repository this host trusts.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Trusted {
    /// `None` for trust recorded before URLs were.
    pub url: Option<String>,
    /// The trust state's directory.
    pub dir: PathBuf,
    /// The current root's version (TUF rotates it), and the anchor's digest.
    pub root_version: Option<u64>,
    pub anchor_sha256: Option<String>,
}

/// Every repository trusted under `dir` (a store's root, or the daemon's cache).
pub fn list(dir: &Path) -> Result<Vec<Trusted>> {
    let remotes = dir.join("remotes");
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&remotes) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).at(&remotes),
    };
    for e in entries {
        let e = e.at(&remotes)?;
        let ds = e.path();
        if !ds.join("root.json").exists() {
            continue;
        }
        let info = |name: &str| {
            std::fs::read(ds.join(name))
                .ok()
                .and_then(|b| root_info(&b, name).ok())
        };
        out.push(Trusted {
            url: std::fs::read_to_string(ds.join("url")).ok(),
            root_version: info("root.json").map(|i| i.version),
            anchor_sha256: info("anchor.json")
                .or_else(|| info("root.json"))
                .map(|i| i.sha256),
            dir: ds,
        });
    }
    out.sort_by(|a, b| a.url.cmp(&b.url));
    Ok(out)
}

/// Drops the trust in `remote` (its roots, its metadata, what it resolved).
pub fn remove(dir: &Path, remote: &Remote) -> Result<()> {
    let ds = datastore_in(dir, remote);
    if !ds.exists() {
        return Err(Error::NotTrusted(remote.base.to_string()));
    }
    std::fs::remove_dir_all(&ds).at(&ds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_metadata_is_a_root() {
        let root = br#"{"signed": {"_type": "root", "version": 3}, "signatures": []}"#;
        let i = root_info(root, "r.json").unwrap();
        assert_eq!(i.version, 3);
        let e = root_info(
            br#"{"signed": {"_type": "targets", "version": 1}}"#,
            "t.json",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "t.json: is not root metadata (its signed._type is \"targets\")"
        );
        let e = root_info(b"hello", "x.txt").unwrap_err().to_string();
        assert!(
            e.starts_with("x.txt: is not root metadata (not JSON"),
            "{e}"
        );
    }
}
