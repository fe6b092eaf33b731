use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] starling_store::Error),
    #[error(transparent)]
    Image(#[from] starling_image::error::Error),
    /// TUF verification or signing failed; `what` says which step.
    #[error("{what}: {source}")]
    Tuf {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    /// A fetched object failed verification (hash, size, format).
    #[error("object {id} from {url}: {reason}")]
    BadObject {
        id: String,
        url: String,
        reason: String,
    },
    #[error("fetching {url}: {reason}")]
    Fetch { url: String, reason: String },
    /// Another publisher changed the repository first (object storage compare-and-swap).
    #[error("{0} changed during publication (another push won); try again")]
    Conflict(String),
    #[error("no image {0} in the repository")]
    UnknownImage(String),
    /// The repository could not be reached and nothing verified before can stand in.
    #[error("repository {repo} is unreachable ({reason}); {fallback}")]
    Unreachable {
        repo: String,
        reason: String,
        fallback: String,
    },
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

pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Invalid {
        what: what.into(),
        reason: reason.into(),
    }
}

/// Maps a tough error (of any of its error types) to ours, saying which step failed.
pub(crate) fn tuf<E: std::error::Error + Send + Sync + 'static>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> Error {
    let what = what.into();
    move |source| Error::Tuf {
        what,
        source: Box::new(source),
    }
}
