use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Reading the image itself failed (I/O error or a read past its end).
    #[error("reading {what} at byte {offset}: {source}")]
    Read {
        what: &'static str,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    /// The image is damaged: refused whole, never read as a smaller tree.
    #[error(
        "{what} is corrupt: {detail} (the image is damaged; `e2fsck -fn` or `qemu-img check` \
         on it says more)"
    )]
    Corrupt { what: String, detail: String },
    #[error("{what}: {detail} is not supported")]
    Unsupported { what: String, detail: String },
    #[error("{0}")]
    NoFilesystem(String),
    #[error("{what}: {detail}")]
    Invalid { what: String, detail: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> Error {
    Error::Corrupt {
        what: what.into(),
        detail: detail.into(),
    }
}

pub(crate) fn unsupported(what: impl Into<String>, detail: impl Into<String>) -> Error {
    Error::Unsupported {
        what: what.into(),
        detail: detail.into(),
    }
}
