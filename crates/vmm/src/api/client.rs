//! The typed client of the monitor's API: one method per request, answers as the types the
//! server sends. Used by the command line and the pool library; `call` is the untyped
//! request underneath (for tests and tools that want the raw JSON).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::*;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers there (no such socket, the VM ended) or the connection broke.
    #[error("VM API socket {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The VM refused the request (its own message).
    #[error("VM {}: {message}", path.display())]
    Refused {
        path: PathBuf,
        code: u16,
        message: String,
    },
    /// The answer is not what the API sends.
    #[error("VM API socket {}: {reason}", path.display())]
    BadAnswer { path: PathBuf, reason: String },
}

/// A VM's API, at its socket.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn status(&self) -> Result<VmStatus, ClientError> {
        self.request("GET", PATH_VM, None::<&()>)
    }

    /// Whether a VM answers on the socket.
    pub fn answers(&self) -> bool {
        self.status().is_ok()
    }

    /// Returns once every vCPU has left the guest.
    pub fn pause(&self) -> Result<VmStatus, ClientError> {
        self.request("POST", PATH_PAUSE, None::<&()>)
    }

    pub fn resume(&self) -> Result<VmStatus, ClientError> {
        self.request("POST", PATH_RESUME, None::<&()>)
    }

    /// The VM ends (its monitor exits 0).
    pub fn stop(&self) -> Result<(), ClientError> {
        self.request::<Stopping, ()>("POST", PATH_STOP, None)
            .map(|_| ())
    }

    /// Writes a snapshot into `dir` (absent or empty; absolute, as the monitor resolves it
    /// from its own directory); then the VM stops, or goes on.
    pub fn snapshot(&self, dir: &Path, stop: bool) -> Result<SnapshotInfo, ClientError> {
        let req = SnapshotRequest {
            dir: dir.to_owned(),
            stop,
        };
        self.request("POST", PATH_SNAPSHOT, Some(&req))
    }

    /// Forks the VM into `count` clones; answers once all run.
    pub fn fork(&self, count: u32, dir: Option<&Path>) -> Result<ForkInfo, ClientError> {
        let req = ForkRequest {
            count,
            dir: dir.map(Path::to_owned),
        };
        self.request("POST", PATH_FORK, Some(&req))
    }

    /// Answers a docked guest's `ready` with its environment and arguments, and resumes it.
    pub fn activate(
        &self,
        env: &[(String, String)],
        args: Option<&str>,
        network: Option<&crate::spec::NetAttach>,
    ) -> Result<VmStatus, ClientError> {
        let req = ActivateRequest {
            env: env.iter().cloned().collect(),
            args: args.map(str::to_owned),
            network: network.cloned(),
        };
        self.request("POST", PATH_ACTIVATE, Some(&req))
    }

    fn request<T: DeserializeOwned, B: Serialize>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let bad = |reason: String| ClientError::BadAnswer {
            path: self.socket.clone(),
            reason,
        };
        let body = match body {
            Some(b) => serde_json::to_string(b).map_err(|e| bad(format!("request: {e}")))?,
            None => String::new(),
        };
        let (code, text) =
            exchange(&self.socket, method, path, &body).map_err(|source| ClientError::Io {
                path: self.socket.clone(),
                source,
            })?;
        if code != 200 {
            let message = serde_json::from_str::<ErrorBody>(&text)
                .map(|e| e.error)
                .unwrap_or_else(|_| format!("request refused ({code})"));
            return Err(ClientError::Refused {
                path: self.socket.clone(),
                code,
                message,
            });
        }
        serde_json::from_str(&text).map_err(|e| bad(format!("{method} {path}: {e}")))
    }
}

/// One request: the status code and the body of the answer.
fn exchange(sock: &Path, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = UnixStream::connect(sock)?;
    // One write: the monitor's reader then has the whole request at once.
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: vmm\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer")
        })?;
    let text = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((code, text.to_owned()))
}

/// An untyped call: `method path` with a JSON `body` (null: none); the status code and the
/// JSON answer.
pub fn call(
    sock: &Path,
    method: &str,
    path: &str,
    body: &serde_json::Value,
) -> std::io::Result<(u16, serde_json::Value)> {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let (code, text) = exchange(sock, method, path, &body)?;
    let json = serde_json::from_str(&text)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer"))?;
    Ok((code, json))
}
