//! Where a repository's files live: a local directory, or S3-compatible object storage
//! (via the `object_store` crate). Publication needs only four operations from either: read a
//! file (with a version token), list a prefix, create a file that must not exist yet, and
//! replace `metadata/timestamp.json` if it is still the version that was read (the commit
//! point). A directory gets that last guarantee from the publication flock; S3 from a
//! conditional PUT (`If-Match`), so two publishers never both win.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use tough::{async_trait, Bytes, Transport, TransportError, TransportErrorKind, TransportStream};

use crate::error::{invalid, Error, IoContext, Result};

#[derive(Clone, Debug)]
pub enum Backend {
    Dir(PathBuf),
    S3 {
        store: Arc<dyn ObjectStore>,
        /// `s3://bucket/prefix/`, for messages and as the base of TUF URLs.
        url: String,
    },
}

/// The version of a file as read, for a later conditional replace.
#[derive(Clone, Debug, Default)]
pub struct FileVersion(Option<UpdateVersion>);

impl Backend {
    /// `s3://bucket[/prefix]` (credentials, endpoint and region from the usual `AWS_*`
    /// environment variables) or a directory path.
    pub fn parse(dest: &str) -> Result<Backend> {
        let Some(rest) = dest.strip_prefix("s3://") else {
            if let Some((scheme, _)) = dest.split_once("://") {
                // Publishing writes files: over HTTP, serve the directory (or bucket) instead.
                return Err(invalid(
                    format!("repository {dest:?}"),
                    format!(
                        "cannot publish to {scheme}://: give a directory or s3://BUCKET/PREFIX"
                    ),
                ));
            }
            return Ok(Backend::Dir(PathBuf::from(dest)));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid(format!("repository {dest}"), "names no bucket"));
        }
        let s3 = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| invalid(format!("repository {dest}"), e.to_string()))?;
        let prefix = prefix.trim_matches('/');
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(PrefixStore::new(s3, prefix))
        };
        let url = if prefix.is_empty() {
            format!("s3://{bucket}/")
        } else {
            format!("s3://{bucket}/{prefix}/")
        };
        Ok(Backend::S3 { store, url })
    }

    pub fn describe(&self) -> String {
        match self {
            Backend::Dir(d) => d.display().to_string(),
            Backend::S3 { url, .. } => url.trim_end_matches('/').to_string(),
        }
    }

    /// The local directory, for a directory backend.
    pub fn dir(&self) -> Option<&Path> {
        match self {
            Backend::Dir(d) => Some(d),
            Backend::S3 { .. } => None,
        }
    }

    fn s3_err(&self, rel: &str, e: object_store::Error) -> Error {
        Error::Fetch {
            url: format!("{}{rel}", self.base()),
            reason: e.to_string(),
        }
    }

    /// Base URL string every file's URL starts with (a `file://` or `s3://` URL).
    pub fn base(&self) -> String {
        match self {
            Backend::Dir(d) => {
                let abs = std::fs::canonicalize(d).unwrap_or_else(|_| d.clone());
                url::Url::from_directory_path(&abs)
                    .map(|u| u.to_string())
                    .unwrap_or_else(|_| format!("file://{}/", abs.display()))
            }
            Backend::S3 { url, .. } => url.clone(),
        }
    }

    pub fn url(&self, sub: &str) -> Result<url::Url> {
        let s = format!("{}{sub}", self.base());
        url::Url::parse(&s).map_err(|e| invalid(s, e.to_string()))
    }

    pub async fn get(&self, rel: &str) -> Result<Option<(Vec<u8>, FileVersion)>> {
        match self {
            Backend::Dir(d) => {
                let p = d.join(rel);
                match std::fs::read(&p) {
                    Ok(b) => Ok(Some((b, FileVersion(None)))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e).at(&p),
                }
            }
            Backend::S3 { store, .. } => match store.get(&ObjPath::from(rel)).await {
                Ok(r) => {
                    let v = UpdateVersion {
                        e_tag: r.meta.e_tag.clone(),
                        version: r.meta.version.clone(),
                    };
                    let bytes = r.bytes().await.map_err(|e| self.s3_err(rel, e))?;
                    Ok(Some((bytes.to_vec(), FileVersion(Some(v)))))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.s3_err(rel, e)),
            },
        }
    }

    /// Paths (relative to the repository) of every file under `prefix` (a directory name
    /// ending in '/'), recursively.
    pub async fn list(&self, prefix: &str) -> Result<BTreeSet<String>> {
        match self {
            Backend::Dir(d) => {
                let mut out = BTreeSet::new();
                let mut stack = vec![d.join(prefix)];
                while let Some(dir) = stack.pop() {
                    let rd = match std::fs::read_dir(&dir) {
                        Ok(rd) => rd,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e).at(&dir),
                    };
                    for e in rd {
                        let e = e.at(&dir)?;
                        let p = e.path();
                        if e.file_type().at(&p)?.is_dir() {
                            stack.push(p);
                        } else if let Ok(rel) = p.strip_prefix(d) {
                            out.insert(rel.to_string_lossy().into_owned());
                        }
                    }
                }
                Ok(out)
            }
            Backend::S3 { store, .. } => {
                let p = ObjPath::from(prefix.trim_end_matches('/'));
                store
                    .list(Some(&p))
                    .map_ok(|m| m.location.to_string())
                    .try_collect()
                    .await
                    .map_err(|e| self.s3_err(prefix, e))
            }
        }
    }

    /// Writes a file that must not exist yet; returns false (and writes nothing) if it does.
    /// Atomic: readers see the whole file or none.
    pub async fn create(&self, rel: &str, bytes: &[u8]) -> Result<bool> {
        match self {
            Backend::Dir(d) => create_file(&d.join(rel), bytes),
            Backend::S3 { store, .. } => {
                let opts = PutOptions {
                    mode: PutMode::Create,
                    ..PutOptions::default()
                };
                match store
                    .put_opts(&ObjPath::from(rel), PutPayload::from(bytes.to_vec()), opts)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
                    Err(e) => Err(self.s3_err(rel, e)),
                }
            }
        }
    }

    /// Replaces `rel` atomically if it is still at `expected` (None: if it does not exist).
    /// A directory relies on the caller holding the publication lock.
    pub async fn replace(
        &self,
        rel: &str,
        bytes: &[u8],
        expected: Option<&FileVersion>,
    ) -> Result<()> {
        match self {
            Backend::Dir(d) => {
                let dest = d.join(rel);
                let tmp = tmp_name(&dest);
                write_synced(&tmp, bytes)?;
                std::fs::rename(&tmp, &dest).at(&dest)?;
                if let Some(parent) = dest.parent() {
                    std::fs::File::open(parent)
                        .and_then(|f| f.sync_all())
                        .at(parent)?;
                }
                Ok(())
            }
            Backend::S3 { store, .. } => {
                let mode = match expected {
                    None | Some(FileVersion(None)) => PutMode::Create,
                    Some(FileVersion(Some(v))) => PutMode::Update(v.clone()),
                };
                let opts = PutOptions {
                    mode,
                    ..PutOptions::default()
                };
                match store
                    .put_opts(&ObjPath::from(rel), PutPayload::from(bytes.to_vec()), opts)
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(
                        object_store::Error::AlreadyExists { .. }
                        | object_store::Error::Precondition { .. },
                    ) => Err(Error::Conflict(format!("{}{rel}", self.base()))),
                    Err(e) => Err(self.s3_err(rel, e)),
                }
            }
        }
    }

    /// Exclusive publication lock for a directory (flock on `.lock`, waited for). Object
    /// storage has no lock; its publications are compare-and-swap (see [`Self::replace`]).
    pub fn lock(&self) -> Result<Option<std::fs::File>> {
        let Backend::Dir(d) = self else {
            return Ok(None);
        };
        lock_dir(d).map(Some)
    }

    /// A TUF transport reading this backend's files (tough loads metadata through it).
    pub fn transport(&self) -> BackendTransport {
        BackendTransport {
            backend: self.clone(),
            base: self.base(),
        }
    }
}

fn tmp_name(dest: &Path) -> PathBuf {
    dest.with_file_name(format!(
        ".{}.tmp-{}",
        dest.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ))
}

fn write_synced(p: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(p).at(p)?;
    f.write_all(bytes).and_then(|_| f.sync_all()).at(p)
}

/// Create-only atomic write: the bytes go to a temporary name, which is then hard-linked to
/// the destination (link fails if the destination exists, unlike rename).
fn create_file(dest: &Path, bytes: &[u8]) -> Result<bool> {
    if dest.exists() {
        return Ok(false);
    }
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).at(parent)?;
    }
    let tmp = tmp_name(dest);
    write_synced(&tmp, bytes)?;
    let r = std::fs::hard_link(&tmp, dest);
    let _ = std::fs::remove_file(&tmp);
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e).at(dest),
    }
}

#[derive(Clone, Debug)]
pub struct BackendTransport {
    backend: Backend,
    base: String,
}

#[async_trait]
impl Transport for BackendTransport {
    async fn fetch(&self, url: url::Url) -> Result<TransportStream, TransportError> {
        let Some(rel) = url.as_str().strip_prefix(&self.base) else {
            return Err(TransportError::new(
                TransportErrorKind::UnsupportedUrlScheme,
                url,
            ));
        };
        match self.backend.get(rel).await {
            Ok(Some((bytes, _))) => {
                let item: Result<Bytes, TransportError> = Ok(Bytes::from(bytes));
                Ok(Box::pin(futures::stream::iter([item])))
            }
            Ok(None) => Err(TransportError::new(TransportErrorKind::FileNotFound, url)),
            Err(e) => Err(TransportError::new_with_cause(
                TransportErrorKind::Other,
                url,
                e,
            )),
        }
    }
}

/// An exclusive flock on `dir/.lock` (made if missing), waited for; released when the file is
/// dropped. Across threads and processes alike (each call opens its own description).
pub(crate) fn lock_dir(dir: &Path) -> Result<std::fs::File> {
    let p = dir.join(".lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .at(&p)?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).map_err(|e| Error::Io {
        path: p.clone(),
        source: e.into(),
    })?;
    Ok(f)
}
