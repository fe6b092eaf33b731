//! Object downloads from a repository, each bounded in size and time, and the repository as
//! an [`ObjectSource`]: read a repository image in place (inventory, diff, search, lazy
//! mounts through the host cache) without pulling it.

use std::sync::Arc;

use starling_store::{ObjectId, ObjectSource, Origin};

use crate::error::{innermost, Error, Result};
use crate::mirrors::Routes;
use crate::pull::{ClientOptions, Remote};
use crate::push::object_rel;

/// A download task's outcome: the object, and its envelope with the URL it came from.
pub(crate) type Fetched = (ObjectId, Result<(Vec<u8>, String)>);

/// Object downloads from one repository (its URL and mirrors, through its proxies), each
/// bounded in size and time.
#[derive(Clone)]
pub struct Fetcher {
    remote: Remote,
    routes: Arc<Routes>,
    pub(crate) parallel: usize,
}

impl Fetcher {
    pub fn new(remote: Remote, opts: &ClientOptions) -> Result<Fetcher> {
        Ok(Fetcher {
            routes: Routes::shared(&remote, opts)?,
            remote,
            parallel: opts.parallel.max(1),
        })
    }

    /// An object's envelope from the first route that serves it, refusing more than its
    /// largest possible size (`len` is the uncompressed size it must have; zstd never expands
    /// by more than a small margin) and an envelope that declares more than `len`. With more
    /// than one route, the envelope is verified against the object's id here, so that a
    /// mirror serving a damaged object is passed over for the next (with one route the reader
    /// verifies it, as it always does).
    pub async fn get(&self, id: &ObjectId, len: u64) -> Result<(Vec<u8>, String)> {
        let url = self.remote.join(&object_rel(id))?;
        let mut reasons = Vec::new();
        let mut newly_down = Vec::new();
        for i in self.routes.order() {
            let got = self.get_from(i, &url, id, len).await;
            // The declared length first, whatever the route: an envelope declaring more than
            // the object may have is never decompressed (a small download inflating to 1 GiB).
            let got = got.and_then(|(env, shown)| {
                let checked = starling_store::check_len(id, &env, len).and_then(|()| {
                    if self.routes.len() > 1 {
                        starling_store::decode_envelope(id, &env).map(|_| ())
                    } else {
                        Ok(())
                    }
                });
                match checked {
                    Ok(()) => Ok((env, shown)),
                    Err(e) => Err(Error::BadObject {
                        id: id.to_hex(),
                        url: shown,
                        reason: e.to_string(),
                    }),
                }
            });
            match got {
                Ok(v) => {
                    self.routes.succeeded(i);
                    self.routes.took_over(i, &newly_down);
                    return Ok(v);
                }
                // A mirror still syncing may lack an object: the next one may have it.
                Err(Error::Fetch { reason, .. }) if reason == NOT_FOUND => {
                    reasons.push((i, reason));
                }
                Err(e) => {
                    let why = match &e {
                        Error::Fetch { reason, .. } => reason.clone(),
                        other => other.to_string(),
                    };
                    if self.routes.failed(i) {
                        newly_down.push((i, why.clone()));
                    }
                    if self.routes.len() == 1 {
                        return Err(e);
                    }
                    reasons.push((i, why));
                }
            }
        }
        Err(self.routes.all_failed(&url, reasons))
    }

    async fn get_from(
        &self,
        i: usize,
        url: &url::Url,
        id: &ObjectId,
        len: u64,
    ) -> Result<(Vec<u8>, String)> {
        let route = self.routes.route(i);
        let url = self.routes.rebase(i, url);
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
        if route.is_file() {
            let p = url
                .to_file_path()
                .map_err(|_| fetch_err("bad file URL".into()))?;
            let md = match tokio::fs::metadata(&p).await {
                Ok(md) => md,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(fetch_err(NOT_FOUND.into()))
                }
                Err(e) => return Err(fetch_err(e.to_string())),
            };
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
        let mut resp = route
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| fetch_err(innermost(&e)))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(fetch_err(NOT_FOUND.into()));
        }
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

/// What a server answered for an object it does not have.
const NOT_FOUND: &str = "HTTP 404 Not Found";

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
