//! The VMM API: HTTP/1.1 with JSON bodies on a unix socket (`curl --unix-socket`), one request
//! per connection. Documented in docs/api/vmm.md.
//!
//! GET /v1/vm → status; POST /v1/vm/pause, /v1/vm/resume, /v1/vm/stop;
//! POST /v1/vm/snapshot {"dir": D, "stop": bool}; POST /v1/vm/fork {"count": N, "dir": D?};
//! POST /v1/vm/activate {"env": {K: V}, "args": A?}.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::vm::VmHandle;
use crate::Error;

pub struct ApiServer {
    path: PathBuf,
}

impl ApiServer {
    /// Call after setting the `done` flag given to `serve`: wakes the accepting thread.
    pub fn shutdown(self) {
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Starts serving the API at `path` (a stale socket file is replaced).
pub fn serve(path: &Path, vm: VmHandle, done: Arc<AtomicBool>) -> Result<ApiServer, Error> {
    let io = |source| Error::Io {
        what: format!("API socket {}", path.display()),
        source,
    };
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(io)?;
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            while let Ok((stream, _)) = listener.accept() {
                if done.load(Ordering::SeqCst) {
                    break;
                }
                let vm = vm.clone();
                let _ = std::thread::Builder::new()
                    .name("api-conn".into())
                    .spawn(move || handle(stream, &vm));
            }
        })
        .map_err(io)?;
    Ok(ApiServer {
        path: path.to_owned(),
    })
}

fn handle(stream: UnixStream, vm: &VmHandle) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    // Headers: only Content-Length matters (bodies are ignored but drained).
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; length.min(65536)];
    let _ = reader.read_exact(&mut body);
    let (code, json) = route(method, target, &body, vm);
    let text = json.to_string();
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        409 => "Conflict",
        _ => "Method Not Allowed",
    };
    let mut out = &stream;
    let _ = write!(
        out,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
}

/// A client call: `method path` with a JSON `body` to the API at `sock`; the status code and
/// the JSON answer.
pub fn call(
    sock: &Path,
    method: &str,
    path: &str,
    body: &serde_json::Value,
) -> std::io::Result<(u16, serde_json::Value)> {
    let mut s = UnixStream::connect(sock)?;
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: vmm\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer");
    let code = resp
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    let json = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((code, serde_json::from_str(json).map_err(|_| bad())?))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotBody {
    dir: std::path::PathBuf,
    #[serde(default)]
    stop: bool,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ForkBody {
    count: u32,
    #[serde(default)]
    dir: Option<std::path::PathBuf>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivateBody {
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    args: Option<String>,
}

fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, (u16, serde_json::Value)> {
    serde_json::from_slice(bytes).map_err(|e| {
        (
            400,
            serde_json::json!({"error": format!("request body: {e}")}),
        )
    })
}

fn outcome<T: serde::Serialize>(r: Result<T, String>) -> (u16, serde_json::Value) {
    match r {
        Ok(v) => (200, serde_json::to_value(v).unwrap_or_default()),
        Err(e) => (409, serde_json::json!({ "error": e })),
    }
}

fn route(method: &str, target: &str, bytes: &[u8], vm: &VmHandle) -> (u16, serde_json::Value) {
    let status = |vm: &VmHandle| serde_json::to_value(vm.status()).unwrap_or_default();
    match (method, target) {
        ("POST", "/v1/vm/snapshot") => match body::<SnapshotBody>(bytes) {
            Ok(b) => outcome(vm.snapshot(&b.dir, b.stop)),
            Err(e) => e,
        },
        ("POST", "/v1/vm/activate") => match body::<ActivateBody>(bytes) {
            Ok(b) => {
                let env: Vec<(String, String)> = b.env.into_iter().collect();
                match crate::service::activation_line(&env, b.args.as_deref()) {
                    Ok(line) => outcome(vm.activate(line)),
                    Err(e) => (400, serde_json::json!({ "error": e })),
                }
            }
            Err(e) => e,
        },
        ("POST", "/v1/vm/fork") => match body::<ForkBody>(bytes) {
            Ok(b) => outcome(vm.fork(b.count, b.dir.as_deref())),
            Err(e) => e,
        },
        ("GET", "/v1/vm") => (200, status(vm)),
        ("POST", "/v1/vm/pause") => {
            vm.pause();
            (200, status(vm))
        }
        ("POST", "/v1/vm/resume") => {
            vm.resume();
            (200, status(vm))
        }
        ("POST", "/v1/vm/stop") => {
            vm.stop(None);
            (200, serde_json::json!({"state": "stopping"}))
        }
        (
            _,
            "/v1/vm" | "/v1/vm/pause" | "/v1/vm/resume" | "/v1/vm/stop" | "/v1/vm/snapshot"
            | "/v1/vm/fork" | "/v1/vm/activate",
        ) => (
            405,
            serde_json::json!({"error": format!("{method} is not allowed on {target}")}),
        ),
        _ => (
            404,
            serde_json::json!({"error": format!("no such endpoint: {target}")}),
        ),
    }
}
