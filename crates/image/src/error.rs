use std::path::PathBuf;

use starling_store::ObjectId;

/// Errors of the image layer. Each names the image, path or object concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] starling_store::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} object {id} is invalid: {reason}")]
    BadObject {
        id: ObjectId,
        what: &'static str,
        reason: String,
    },
    #[error("invalid image reference {input:?}: {reason}")]
    BadRef { input: String, reason: String },
    #[error("no image {0}")]
    UnknownImage(String),
    #[error("image {name} has no tag latest and several others ({tags}): name one as {name}:TAG")]
    NoDefaultTag { name: String, tags: String },
    #[error("{name} has no version matching {prefix:?}")]
    UnknownVersion { name: String, prefix: String },
    #[error("version prefix {prefix:?} of {name} is ambiguous: {candidates}")]
    AmbiguousVersion {
        name: String,
        prefix: String,
        candidates: String,
    },
    #[error("{0}: source does not exist")]
    MissingSource(PathBuf),
    #[error(
        "{source_path}: not a directory, tar archive or disk image (use --format to force one)"
    )]
    UnknownFormat { source_path: PathBuf },
    #[error("{archive}: corrupt or truncated tar archive: {reason}")]
    BadTar { archive: PathBuf, reason: String },
    #[error("{archive}: entry {entry:?} is refused: {reason}")]
    UnsafeEntry {
        archive: PathBuf,
        entry: String,
        reason: &'static str,
    },
    #[error("{source_path}: hard link {link:?} points to {target:?}, which is not in the source")]
    HardlinkTargetMissing {
        source_path: PathBuf,
        link: String,
        target: String,
    },
    #[error("{source_path}: {path:?} is not a directory but has entries below it")]
    NotADirectory { source_path: PathBuf, path: String },
    #[error("{source_path}: {path:?}: unsupported file type {kind}")]
    UnsupportedEntry {
        source_path: PathBuf,
        path: String,
        kind: String,
    },
    #[error("{source_path}: {path:?} changed while it was being imported (another file or a link in its place); refused: import again once it is still")]
    SourceChanged { source_path: PathBuf, path: String },
    #[error("{dest}: destination is owned by uid {owner}, not by you: export into a directory of your own (another user could swap its entries for links while it fills)")]
    DestinationNotYours { dest: PathBuf, owner: u32 },
    #[error("{0}: destination exists and is not an empty directory")]
    DestinationNotEmpty(PathBuf),
    #[error("image {image}: {path:?}: {reason}")]
    Export {
        image: String,
        path: String,
        reason: String,
    },
    #[error("cannot remove {version} of {name}: it is the current version of {tag}; move or remove that tag first")]
    VersionInUse {
        name: String,
        version: String,
        tag: String,
    },
    #[error("{}: {source}", source_path.display())]
    Disk {
        source_path: PathBuf,
        #[source]
        source: starling_disk::Error,
    },
    #[error("{}: {path:?} in the image: {source}", source_path.display())]
    DiskEntry {
        source_path: PathBuf,
        /// Where inside the image, from its root.
        path: String,
        #[source]
        source: starling_disk::Error,
    },
    #[error("OCI layout {}: {reason}", layout.display())]
    BadOci { layout: PathBuf, reason: String },
    #[error("invalid {what} {input:?}: {reason}")]
    BadQuery {
        what: &'static str,
        input: String,
        reason: String,
    },
    #[error("{}: not a usable .deb: {reason}", path.display())]
    BadDeb { path: PathBuf, reason: String },
    #[error("image {image}: {reason}")]
    PackageDb { image: String, reason: String },
    /// Users cannot be added as asked (the name is taken, no id is free).
    #[error("image {image}: {reason}")]
    Accounts { image: String, reason: String },
    #[error("tag record {0} is corrupt: {1}")]
    BadTagRecord(String, String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.into(),
            source,
        })
    }
}

impl<T> IoContext<T> for rustix::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::Io {
            path: path.into(),
            source: e.into(),
        })
    }
}
