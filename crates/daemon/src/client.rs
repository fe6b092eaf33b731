//! The `starling` side of the API: JSON requests to starlingd over its unix socket.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach starlingd at {0}: {1} (is the daemon running? start it with `starlingd` or `systemctl start starlingd`)")]
    Unreachable(PathBuf, String),
    /// The daemon refused the request; `status` is its HTTP status (404: no such thing).
    #[error("starlingd: {message}")]
    Daemon { status: u16, message: String },
    #[error("starlingd answered {0}: {1}")]
    Protocol(u16, String),
}

pub struct Client {
    socket: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl Client {
    pub fn new(socket: &Path) -> Result<Client, ClientError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Unreachable(socket.to_path_buf(), e.to_string()))?;
        Ok(Client {
            socket: socket.to_path_buf(),
            rt,
        })
    }

    pub fn get<R: DeserializeOwned>(&self, path: &str) -> Result<R, ClientError> {
        self.call("GET", path, None::<&()>)
    }

    pub fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, ClientError> {
        self.call("POST", path, Some(body))
    }

    pub fn delete<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, ClientError> {
        self.call("DELETE", path, Some(body))
    }

    fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<R, ClientError> {
        let unreachable = |e: String| ClientError::Unreachable(self.socket.clone(), e);
        let bytes = match body {
            Some(b) => {
                serde_json::to_vec(b).map_err(|e| ClientError::Protocol(0, e.to_string()))?
            }
            None => Vec::new(),
        };
        let (status, body) = self.rt.block_on(async {
            let stream = tokio::net::UnixStream::connect(&self.socket)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            tokio::spawn(conn);
            let req = Request::builder()
                .method(method)
                .uri(path)
                .header("host", "starlingd")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(bytes)))
                .map_err(|e| ClientError::Protocol(0, e.to_string()))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, ClientError>((status, body))
        })?;
        if !(200..300).contains(&status) {
            return Err(match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(e) => ClientError::Daemon {
                    status,
                    message: e.error,
                },
                Err(_) => ClientError::Protocol(status, String::from_utf8_lossy(&body).into()),
            });
        }
        serde_json::from_slice(&body).map_err(|e| {
            ClientError::Protocol(status, format!("{e}: {}", String::from_utf8_lossy(&body)))
        })
    }
}
