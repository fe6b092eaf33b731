//! One blob into a registry by the distribution API's chunked upload, made to survive a
//! broken connection: after a failed chunk the upload's status (`GET` on its location) says
//! how much the registry holds, and the upload goes on from there; an upload the registry
//! forgot starts again. Before uploading, a blob this host pushed to another repository of the
//! same registry is mounted from there (`POST …?mount=&from=`), which sends no byte.
//!
//! oci-client does the authentication (its token is reused here); the session itself is ours
//! because oci-client's gives no way back into an upload that failed half way.

use std::io::SeekFrom;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION,
};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::error::{innermost, shown, unauthorized, Error, Result};
use crate::Progress;

/// Bytes per PATCH.
const CHUNK: u64 = 4 << 20;
/// Failed chunks (or lost sessions) one blob may survive.
pub const ATTEMPTS: u32 = 5;

/// How a blob got there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Uploaded {
        /// Times the upload went on after a failure from where the registry was, and times
        /// it had to start again (the registry had dropped or refused the session).
        resumed: u32,
        restarted: u32,
    },
    Mounted,
}

pub(crate) struct Uploader {
    pub http: reqwest::Client,
    /// `http://HOST:PORT` or `https://HOST`.
    pub base: String,
    pub registry: String,
    /// The repository pushed to.
    pub repository: String,
    pub auth: Option<HeaderValue>,
}

impl Uploader {
    fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = &self.auth {
            h.insert(AUTHORIZATION, a.clone());
        }
        h
    }

    fn url(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else {
            format!("{}{location}", self.base)
        }
    }

    fn failed(&self, what: &str, reason: String) -> Error {
        Error::Refused {
            registry: self.registry.clone(),
            what: what.to_string(),
            said: reason,
        }
    }

    /// Starts an upload session, or mounts the blob from `from` (a repository of this
    /// registry) when the registry agrees: `Ok(None)` then.
    async fn begin(&self, digest: &str, from: Option<&str>) -> Result<Option<String>> {
        let mut url = format!("{}/v2/{}/blobs/uploads/", self.base, self.repository);
        if let Some(src) = from {
            url = format!("{url}?mount={digest}&from={src}");
        }
        let res = self
            .http
            .post(&url)
            .headers(self.headers())
            .header(CONTENT_LENGTH, 0)
            .send()
            .await
            .map_err(|e| self.network(e))?;
        match res.status() {
            StatusCode::CREATED if from.is_some() => Ok(None),
            StatusCode::ACCEPTED => location(&res)
                .map(|l| Some(self.url(&l)))
                .ok_or_else(|| self.failed("an upload", "no Location in its answer".into())),
            s => Err(self.status_error("starting an upload", s, res).await),
        }
    }

    /// How many bytes of the upload at `url` the registry holds; `None` if it forgot it.
    async fn status(&self, url: &str) -> Result<Option<(u64, String)>> {
        let res = self
            .http
            .get(url)
            .headers(self.headers())
            .send()
            .await
            .map_err(|e| self.network(e))?;
        match res.status() {
            StatusCode::NO_CONTENT | StatusCode::OK => {
                let next = location(&res).map_or_else(|| url.to_string(), |l| self.url(&l));
                Ok(Some((range_end(&res).unwrap_or(0), next)))
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                let s = res.status();
                Err(self.status_error("asking an upload's status", s, res).await)
            }
            // Forgotten (404), or refused as it stands (the distribution registry cancels an
            // upload whose bytes are not where its session says): start again.
            _ => Ok(None),
        }
    }

    /// Sends the blob in `file` (of `size` bytes, `digest`), mounting it from `from` if the
    /// registry will.
    pub async fn send(
        &self,
        file: &mut tokio::fs::File,
        size: u64,
        digest: &str,
        from: Option<&str>,
        progress: &Arc<Progress>,
    ) -> Result<Sent> {
        let (mut resumed, mut restarted) = (0, 0);
        let mut failures = 0;
        let Some(mut url) = self.begin(digest, from).await? else {
            return Ok(Sent::Mounted);
        };
        let mut offset = 0u64;
        loop {
            match self
                .chunks(file, size, &mut url, &mut offset, progress)
                .await
            {
                Ok(()) => break,
                Err(e) => {
                    failures += 1;
                    if failures >= ATTEMPTS {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(failures))).await;
                    // Where the registry is: go on from there, or from the start of a new
                    // session if it forgot this one.
                    match self.status(&url).await {
                        Ok(Some((held, next))) => {
                            offset = held;
                            url = next;
                            resumed += 1;
                        }
                        Ok(None) => {
                            offset = 0;
                            restarted += 1;
                            url = self
                                .begin(digest, None)
                                .await?
                                .ok_or_else(|| self.failed("an upload", "no session".into()))?;
                        }
                        // Unreachable still: try the chunk again after the pause.
                        Err(Error::Unreachable { .. }) => continue,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        let sep = if url.contains('?') { '&' } else { '?' };
        let res = self
            .http
            .put(format!("{url}{sep}digest={digest}"))
            .headers(self.headers())
            .header(CONTENT_LENGTH, 0)
            .send()
            .await
            .map_err(|e| self.network(e))?;
        if res.status() != StatusCode::CREATED {
            let s = res.status();
            return Err(self
                .status_error(&format!("finishing blob {digest}"), s, res)
                .await);
        }
        Ok(Sent::Uploaded { resumed, restarted })
    }

    /// PATCHes from `offset` to the end, moving `url` and `offset` along.
    async fn chunks(
        &self,
        file: &mut tokio::fs::File,
        size: u64,
        url: &mut String,
        offset: &mut u64,
        progress: &Arc<Progress>,
    ) -> Result<()> {
        file.seek(SeekFrom::Start(*offset))
            .await
            .map_err(crate::pull::io("seeking a blob".into()))?;
        while *offset < size {
            let n = CHUNK.min(size - *offset);
            let mut buf = vec![0u8; n as usize];
            file.read_exact(&mut buf)
                .await
                .map_err(crate::pull::io("reading a blob".into()))?;
            let res = self
                .http
                .patch(url.as_str())
                .headers(self.headers())
                .header(CONTENT_TYPE, "application/octet-stream")
                .header("Content-Range", format!("{}-{}", *offset, *offset + n - 1))
                .header(CONTENT_LENGTH, n)
                .body(buf)
                .send()
                .await
                .map_err(|e| self.network(e))?;
            if res.status() != StatusCode::ACCEPTED {
                let s = res.status();
                return Err(self.status_error("sending a chunk", s, res).await);
            }
            if let Some(l) = location(&res) {
                *url = self.url(&l);
            }
            *offset += n;
            progress.bytes.fetch_add(n, Ordering::Relaxed);
        }
        Ok(())
    }

    fn network(&self, e: reqwest::Error) -> Error {
        Error::Unreachable {
            registry: self.registry.clone(),
            reason: innermost(&e),
        }
    }

    async fn status_error(&self, what: &str, s: StatusCode, res: reqwest::Response) -> Error {
        if s == StatusCode::UNAUTHORIZED || s == StatusCode::FORBIDDEN {
            return unauthorized(&self.registry, what, &format!("HTTP {}", s.as_u16()));
        }
        let body = res.text().await.unwrap_or_default();
        self.failed(what, format!("HTTP {}: {}", s.as_u16(), shown(&body)))
    }
}

fn location(res: &reqwest::Response) -> Option<String> {
    res.headers()
        .get(LOCATION)
        .and_then(|l| l.to_str().ok())
        .map(str::to_string)
}

/// The bytes an upload holds, from its `Range: 0-N` header (N + 1). The distribution
/// registry writes `0-0` for an empty upload as for one byte: read as empty, so at worst one
/// byte is sent again (and refused), never one skipped.
fn range_end(res: &reqwest::Response) -> Option<u64> {
    let r = res.headers().get("Range")?.to_str().ok()?;
    held(r)
}

fn held(range: &str) -> Option<u64> {
    let (_, end) = range.trim_start_matches("bytes=").split_once('-')?;
    match end.trim().parse::<u64>().ok()? {
        0 => Some(0),
        n => Some(n + 1),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ranges_say_how_much_is_held() {
        assert_eq!(super::held("0-0"), Some(0));
        assert_eq!(super::held("0-4194303"), Some(4 << 20));
        assert_eq!(super::held("bytes=0-9"), Some(10));
        assert_eq!(super::held("garbage"), None);
    }
}
