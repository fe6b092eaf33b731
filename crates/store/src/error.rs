use std::path::PathBuf;

use crate::ObjectId;

/// Errors of the object store. Each names the object or path it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no Starling store at {0} (it is created by the first import)")]
    NotAStore(PathBuf),
    #[error("{path}: store format version {found} is not supported (this build reads version {supported})")]
    UnsupportedStoreVersion {
        path: PathBuf,
        found: String,
        supported: u32,
    },
    #[error("object {0} is not in the store")]
    NotFound(ObjectId),
    #[error("object {id} is corrupt: {reason}")]
    Corrupt { id: ObjectId, reason: String },
    #[error("invalid object id {0:?}: expected 64 lower-case hex digits")]
    InvalidId(String),
    #[error("invalid ref name {0:?}")]
    InvalidRefName(String),
    #[error("{what} {reason}")]
    Invalid { what: String, reason: String },
    #[error("object {id} from {from}: {reason}")]
    Unavailable {
        id: ObjectId,
        from: String,
        reason: String,
    },
    #[error("store {path} is locked by another process ({what}); try again when it finishes")]
    Busy { path: PathBuf, what: &'static str },
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

/// The innermost cause of `e`: the OS error, the timeout or the protocol error that an HTTP
/// client error's own text (which names only the URL) leaves out. For the crates that fetch
/// (repositories, registries), said once in their errors.
pub fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut reason = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        reason = c.to_string();
        cause = c.source();
    }
    reason
}
