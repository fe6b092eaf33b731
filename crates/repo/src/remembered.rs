//! What this host last verified each image reference of a repository to be, kept beside the
//! repository's trust state (`remotes/HASH/resolved.json`).
//!
//! When the repository cannot be reached (no connection, a timeout, a server error: not a
//! failed verification), a reference resolved here before still names its version as long as
//! the metadata it was verified under has not expired: the same bound TUF puts on a client
//! that cannot learn of newer metadata. So a VM or mount whose objects the host cache holds
//! starts while the origin is down, and says that it did.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use starling_image::reference::ImageRef;
use starling_store::ObjectId;
use tough::{TransportError, TransportErrorKind};

use crate::error::{Error, IoContext, Result};
use crate::pull::{datastore_in, Remote};

/// References kept per repository; the ones verified longest ago go first.
const MAX_ENTRIES: usize = 1024;
/// A file larger than this is not ours (each entry is ~200 bytes).
const MAX_FILE: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    /// The image record's name (a `@VERSION` reference names its image this way).
    pub name: String,
    pub version: String,
    /// When this host last verified it (Unix seconds).
    pub verified_unix: i64,
    /// The earliest expiry of the root, timestamp, snapshot and targets metadata then.
    pub expires_unix: i64,
}

fn file(dir: &Path, remote: &Remote) -> PathBuf {
    datastore_in(dir, remote).join("resolved.json")
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The file's format version; a file of another version remembers nothing (it is rewritten
/// on the next online resolve).
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct File {
    format: u32,
    refs: BTreeMap<String, Remembered>,
}

fn load(path: &Path) -> BTreeMap<String, Remembered> {
    let Ok(meta) = std::fs::metadata(path) else {
        return BTreeMap::new();
    };
    if meta.len() > MAX_FILE {
        return BTreeMap::new();
    }
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<File>(&b).ok())
        .filter(|f| f.format == FORMAT)
        .map(|f| f.refs)
        .unwrap_or_default()
}

/// Records that `what` was verified to be `name`@`id` under `repo`'s metadata, now.
pub fn remember(
    dir: &Path,
    remote: &Remote,
    what: &ImageRef,
    name: &str,
    id: &ObjectId,
    repo: &tough::Repository,
) -> Result<()> {
    let expires = [
        repo.root().signed.expires.as_second(),
        repo.timestamp().signed.expires.as_second(),
        repo.snapshot().signed.expires.as_second(),
        repo.targets().signed.expires.as_second(),
    ]
    .into_iter()
    .min()
    .unwrap_or(0);
    let path = file(dir, remote);
    let mut all = load(&path);
    all.insert(
        what.to_string(),
        Remembered {
            name: name.to_string(),
            version: id.to_string(),
            verified_unix: now(),
            expires_unix: expires,
        },
    );
    while all.len() > MAX_ENTRIES {
        let oldest = all
            .iter()
            .min_by_key(|(_, r)| r.verified_unix)
            .map(|(k, _)| k.clone());
        match oldest {
            Some(k) => all.remove(&k),
            None => break,
        };
    }
    let bytes = serde_json::to_vec_pretty(&File {
        format: FORMAT,
        refs: all,
    })
    .map_err(|e| Error::Invalid {
        what: path.display().to_string(),
        reason: e.to_string(),
    })?;
    // Written aside and renamed: a reader never sees half a file, concurrent writers lose at
    // most the other's entry.
    let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes).at(&tmp)?;
    std::fs::rename(&tmp, &path).at(&path)
}

/// What `what` was last verified to be on this host, if anything.
pub fn recall(dir: &Path, remote: &Remote, what: &ImageRef) -> Option<Remembered> {
    load(&file(dir, remote)).remove(&what.to_string())
}

/// Why a remembered resolution may not stand in: expired metadata.
pub fn usable(r: &Remembered) -> std::result::Result<(), String> {
    if r.expires_unix <= now() {
        return Err(format!(
            "the metadata it was last verified under (at {}) expired at {}",
            when(r.verified_unix),
            when(r.expires_unix)
        ));
    }
    Ok(())
}

/// A Unix time as RFC 3339 (UTC).
pub fn when(unix: i64) -> String {
    jiff::Timestamp::from_second(unix).map_or_else(|_| unix.to_string(), |t| t.to_string())
}

/// Why the repository could not be reached, once: the URL being fetched and the innermost
/// cause (the OS error, the timeout), not every layer's restatement of it.
pub fn why_unreachable(e: &Error) -> String {
    let Error::Tuf { source, .. } = e else {
        return e.to_string();
    };
    let mut url = None;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
    let mut innermost = e.to_string();
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<TransportError>() {
            url = Some(t.url().to_string());
        }
        innermost = err.to_string();
        cur = err.source();
    }
    match url {
        Some(u) if !innermost.contains(&u) => format!("fetching {u}: {innermost}"),
        _ => innermost,
    }
}

/// Whether `e` says the repository could not be reached (connection, timeout, server error),
/// as opposed to metadata that failed verification or an image it does not have.
pub fn is_unreachable(e: &Error) -> bool {
    match e {
        Error::Fetch { .. } => true,
        Error::Tuf { source, .. } => {
            let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
            while let Some(err) = cur {
                if let Some(t) = err.downcast_ref::<TransportError>() {
                    return t.kind() == TransportErrorKind::Other;
                }
                cur = err.source();
            }
            false
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wrapper as tough's own errors wrap a transport failure.
    #[derive(Debug)]
    struct Wrapped(TransportError);
    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Failed to fetch: {}", self.0)
        }
    }
    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    fn tuf(kind: TransportErrorKind) -> Error {
        Error::Tuf {
            what: "verifying the metadata".into(),
            source: Box::new(Wrapped(TransportError::new(
                kind,
                "http://h/timestamp.json",
            ))),
        }
    }

    #[test]
    fn only_a_repository_out_of_reach_is_unreachable() {
        assert!(is_unreachable(&tuf(TransportErrorKind::Other)));
        assert!(is_unreachable(&Error::Fetch {
            url: "http://h/objects/ab/cd".into(),
            reason: "connection refused".into()
        }));
        // Missing metadata, a bad signature, an unknown image: the repository answered.
        assert!(!is_unreachable(&tuf(TransportErrorKind::FileNotFound)));
        assert!(!is_unreachable(&Error::Tuf {
            what: "verifying".into(),
            source: "signature threshold not met".into(),
        }));
        assert!(!is_unreachable(&Error::UnknownImage("a:b".into())));
    }

    #[test]
    fn why_names_the_url_and_the_innermost_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let e = Error::Tuf {
            what: "verifying the metadata".into(),
            source: Box::new(Wrapped(TransportError::new_with_cause(
                TransportErrorKind::Other,
                "http://h/timestamp.json",
                io,
            ))),
        };
        assert_eq!(
            why_unreachable(&e),
            "fetching http://h/timestamp.json: Connection refused"
        );
    }

    #[test]
    fn a_remembered_version_stands_in_only_until_its_metadata_expires() {
        let mut r = Remembered {
            name: "debian".into(),
            version: "00".repeat(32),
            verified_unix: now() - 60,
            expires_unix: now() + 3600,
        };
        assert_eq!(usable(&r), Ok(()));
        r.expires_unix = now() - 1;
        let why = usable(&r).unwrap_err();
        assert!(why.contains("expired at "), "{why}");
    }

    #[test]
    fn a_file_that_is_not_ours_remembers_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("resolved.json");
        std::fs::write(&p, b"{not json").unwrap();
        assert!(load(&p).is_empty());
        std::fs::write(&p, vec![b' '; MAX_FILE as usize + 1]).unwrap();
        assert!(load(&p).is_empty());
        // Another format version.
        std::fs::write(&p, br#"{"format": 2, "refs": {}}"#).unwrap();
        assert!(load(&p).is_empty());
        std::fs::write(&p, br#"{"format": 1, "refs": {"a:b": {"name": "a", "version": "00", "verified_unix": 1, "expires_unix": 2}}}"#).unwrap();
        assert_eq!(load(&p).len(), 1);
    }
}
