//! Object downloads from a repository, each bounded in size and time, and the repository as
//! an [`ObjectSource`]: read a repository image in place (inventory, diff, search, lazy
//! mounts through the host cache) without pulling it.

use std::time::Duration;

use starling_store::{ObjectId, ObjectSource, Origin};

use crate::error::{innermost, invalid, Error, Result};
use crate::pull::{ClientOptions, Remote};
use crate::push::object_rel;

/// No byte from the server for this long fails the request.
const STALL: Duration = Duration::from_secs(5);

/// A download task's outcome: the object, and its envelope with the URL it came from.
pub(crate) type Fetched = (ObjectId, Result<(Vec<u8>, String)>);

/// Object downloads from one repository, each bounded in size and time.
#[derive(Clone)]
pub struct Fetcher {
    remote: Remote,
    client: reqwest::Client,
    pub(crate) parallel: usize,
}

impl Fetcher {
    pub fn new(remote: Remote, opts: &ClientOptions) -> Result<Fetcher> {
        let client = reqwest::Client::builder()
            .timeout(opts.timeout)
            // A server that stops sending (stalled, its host gone) fails a read in seconds,
            // while a slow but moving download has the whole timeout.
            .read_timeout(STALL.min(opts.timeout))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| invalid("HTTP client", e.to_string()))?;
        Ok(Fetcher {
            remote,
            client,
            parallel: opts.parallel.max(1),
        })
    }

    /// An object's envelope, refusing more than its largest possible size (`len` is the
    /// uncompressed size it must have; zstd never expands by more than a small margin).
    pub async fn get(&self, id: &ObjectId, len: u64) -> Result<(Vec<u8>, String)> {
        let url = self.remote.join(&object_rel(id))?;
        let max = starling_store::HEADER_LEN as u64 + len + len / 128 + 1024;
        let shown = url.to_string();
        let fetch_err = |reason: String| Error::Fetch {
            url: shown.clone(),
            reason,
        };
        // More bytes than the object can have: the server is wrong, not unreachable.
        let too_big = |reason: String| Error::BadObject {
            id: id.to_hex(),
            url: shown.clone(),
            reason,
        };
        if self.remote.is_file() {
            let p = url
                .to_file_path()
                .map_err(|_| fetch_err("bad file URL".into()))?;
            let md = tokio::fs::metadata(&p)
                .await
                .map_err(|e| fetch_err(e.to_string()))?;
            if md.len() > max {
                return Err(too_big(format!(
                    "{} bytes is more than the {max} this object can have",
                    md.len()
                )));
            }
            let b = tokio::fs::read(&p)
                .await
                .map_err(|e| fetch_err(e.to_string()))?;
            return Ok((b, shown));
        }
        let mut resp = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| fetch_err(innermost(&e)))?;
        if !resp.status().is_success() {
            return Err(fetch_err(format!("HTTP {}", resp.status())));
        }
        if resp.content_length().is_some_and(|n| n > max) {
            return Err(too_big(format!(
                "declared {} bytes, more than the {max} this object can have",
                resp.content_length().unwrap_or(0)
            )));
        }
        let mut out = Vec::new();
        while let Some(piece) = resp.chunk().await.map_err(|e| fetch_err(innermost(&e)))? {
            out.extend_from_slice(&piece);
            if out.len() as u64 > max {
                return Err(too_big(format!(
                    "sent more than the {max} bytes this object can have"
                )));
            }
        }
        Ok((out, shown))
    }
}

/// A repository as a source of objects: each read fetched over HTTP (or from the directory)
/// within its size bound and verified by the reader. Reads block on `rt`: call from threads
/// that are not the runtime's own workers.
pub struct RemoteSource {
    fetcher: Fetcher,
    rt: tokio::runtime::Handle,
}

impl RemoteSource {
    pub fn new(
        remote: Remote,
        opts: &ClientOptions,
        rt: tokio::runtime::Handle,
    ) -> Result<RemoteSource> {
        Ok(RemoteSource {
            fetcher: Fetcher::new(remote, opts)?,
            rt,
        })
    }

    pub fn remote(&self) -> &Remote {
        &self.fetcher.remote
    }
}

impl ObjectSource for RemoteSource {
    fn envelope(&self, id: &ObjectId, max_len: u64) -> starling_store::Result<(Vec<u8>, Origin)> {
        let (env, _url) = self
            .rt
            .block_on(self.fetcher.get(id, max_len))
            .map_err(|e| starling_store::Error::Unavailable {
                id: *id,
                from: self.describe(),
                reason: match e {
                    Error::Fetch { reason, .. } => reason,
                    other => other.to_string(),
                },
            })?;
        Ok((env, Origin::Remote))
    }

    fn describe(&self) -> String {
        self.fetcher.remote.base.to_string()
    }
}
