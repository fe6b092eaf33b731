//! TUF-signed image repositories on plain HTTP: `init`, `push` (objects the repository lacks,
//! then signed metadata), `serve`, and `pull` (TUF verification first, then every object
//! checked against its content address as it arrives).
#![forbid(unsafe_code)]

pub mod backend;
pub mod error;
pub mod fetch;
pub mod group;
pub mod keys;
pub mod meta;
pub mod mirrors;
pub mod pull;
pub mod push;
pub mod record;
pub mod refresh;
pub mod remembered;
pub mod serve;
pub mod trust;

pub use error::{Error, Result};

/// A runtime for the async parts (tough, HTTP), for callers that are not async.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            path: "tokio runtime".into(),
            source,
        })
}
