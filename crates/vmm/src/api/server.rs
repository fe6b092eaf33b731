//! The API server: one thread accepting on the unix socket, a thread per connection (at most
//! [`MAX_CONNECTIONS`] at once), one request per connection, routed to a [`Controller`].
//! The socket is bound once the vCPUs run: whoever sees it sees a running VM.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::*;
use crate::Error;

/// Largest request body read (bodies are small JSON objects).
const MAX_BODY: usize = 65536;

/// Largest request line and headers read.
const MAX_HEAD: u64 = 16384;

/// Connections answered at once; more are closed as they come (a local client holding
/// connections open cannot make the monitor start threads without end).
pub const MAX_CONNECTIONS: usize = 64;

/// How long a stopping monitor waits for the answers it still owes.
const DRAIN: Duration = Duration::from_secs(2);

pub struct ApiServer {
    path: PathBuf,
    /// Connections being answered.
    in_flight: Arc<AtomicUsize>,
    done: Arc<AtomicBool>,
}

impl ApiServer {
    /// Stops accepting (waking the accepting thread), removes the socket, then waits (a
    /// bounded time) for the answers in flight. The request that stopped the VM (`snapshot
    /// --stop`, `stop`) is one of them: without the wait the process could end before its
    /// answer was written, and the client read an empty one.
    pub fn shutdown(self) {
        self.done.store(true, Ordering::SeqCst);
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
        let t = std::time::Instant::now();
        while self.in_flight.load(Ordering::SeqCst) > 0 && t.elapsed() < DRAIN {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Serves the API at `path` (a stale socket file is replaced).
pub fn serve(path: &Path, vm: Arc<dyn Controller>) -> Result<ApiServer, Error> {
    let io = |source| Error::Io {
        what: format!("API socket {}", path.display()),
        source,
    };
    let listener = crate::jail::sockets::listener(path).map_err(io)?;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let (counted, stopped) = (in_flight.clone(), done.clone());
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            while let Ok((stream, _)) = listener.accept() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                // Counted before the thread starts, so a burst cannot pass the bound.
                if counted.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    counted.fetch_sub(1, Ordering::SeqCst);
                    continue;
                }
                let vm = vm.clone();
                let spawned = std::thread::Builder::new().name("api-conn".into()).spawn({
                    let counted = counted.clone();
                    move || {
                        handle(stream, &*vm);
                        counted.fetch_sub(1, Ordering::SeqCst);
                    }
                });
                if spawned.is_err() {
                    counted.fetch_sub(1, Ordering::SeqCst);
                }
            }
        })
        .map_err(io)?;
    Ok(ApiServer {
        path: path.to_owned(),
        in_flight,
        done,
    })
}

fn handle(stream: UnixStream, vm: &dyn Controller) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    // However long a client's lines: no more than a request's bound is read.
    let mut reader = BufReader::new((&stream).take(MAX_HEAD + MAX_BODY as u64));
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    // Headers: only Content-Length matters.
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
    let mut body = vec![0u8; length.min(MAX_BODY)];
    let _ = reader.read_exact(&mut body);
    let (code, text) = match route(method, target, &body, vm) {
        Ok(json) => (200, json),
        Err(r) => (r.code, json(&ErrorBody { error: r.message })),
    };
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

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(bytes).map_err(|e| Refusal::bad_request(format!("request body: {e}")))
}

/// The answer to one request: its JSON, or why not.
fn route(method: &str, target: &str, bytes: &[u8], vm: &dyn Controller) -> Result<String, Refusal> {
    match (method, target) {
        ("GET", PATH_VM) => Ok(json(&vm.status())),
        ("POST", PATH_PAUSE) => Ok(json(&vm.pause())),
        ("POST", PATH_RESUME) => Ok(json(&vm.resume())),
        ("POST", PATH_STOP) => {
            vm.stop();
            Ok(json(&Stopping {
                state: Activity::Stopping,
            }))
        }
        ("POST", PATH_SNAPSHOT) => vm.snapshot(&body(bytes)?).map(|v| json(&v)),
        ("POST", PATH_FORK) => vm.fork(&body(bytes)?).map(|v| json(&v)),
        ("POST", PATH_ACTIVATE) => vm.activate(&body(bytes)?).map(|v| json(&v)),
        (
            _,
            PATH_VM | PATH_PAUSE | PATH_RESUME | PATH_STOP | PATH_SNAPSHOT | PATH_FORK
            | PATH_ACTIVATE,
        ) => Err(Refusal {
            code: 405,
            message: format!("{method} is not allowed on {target}"),
        }),
        _ => Err(Refusal {
            code: 404,
            message: format!("no such endpoint: {target}"),
        }),
    }
}
