//! The object socket: monitors of VMs whose root is an image read its objects here, through
//! the host cache (see `starling_store::wire` for the protocol). One thread per connection,
//! at most [`MAX_CONNECTIONS`] at once; the socket is the daemon user's alone.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use starling_store::wire::{self, Status};
use starling_store::ObjectSource;

use crate::sources::HostObjects;

/// Each monitor keeps a few connections; more than this at once is refused.
pub const MAX_CONNECTIONS: usize = 256;
/// A connection that sends nothing for this long is closed (the client reconnects).
const IDLE: Duration = Duration::from_secs(600);

pub struct ObjectServer {
    host: Arc<HostObjects>,
    live: AtomicUsize,
}

impl ObjectServer {
    pub fn new(host: Arc<HostObjects>) -> Arc<ObjectServer> {
        Arc::new(ObjectServer {
            host,
            live: AtomicUsize::new(0),
        })
    }

    /// The source a request names (see [`HostObjects::object_source`]).
    pub fn source(&self, name: &str) -> Result<Arc<dyn ObjectSource>, String> {
        self.host.object_source(name)
    }

    /// Listens on `path` (replacing a stale socket), in a thread of its own.
    pub fn listen(self: &Arc<Self>, path: &Path) -> std::io::Result<()> {
        let _ = std::fs::remove_file(path);
        let l = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let me = self.clone();
        std::thread::Builder::new()
            .name("starlingd-objects".into())
            .spawn(move || {
                for c in l.incoming() {
                    let Ok(c) = c else { continue };
                    if me.live.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                        me.live.fetch_sub(1, Ordering::AcqRel);
                        tracing::warn!(
                            "object socket: more than {MAX_CONNECTIONS} connections; refusing one"
                        );
                        continue;
                    }
                    let me2 = me.clone();
                    let spawned = std::thread::Builder::new()
                        .name("starlingd-objconn".into())
                        .spawn(move || {
                            me2.serve(c);
                            me2.live.fetch_sub(1, Ordering::AcqRel);
                        });
                    if spawned.is_err() {
                        me.live.fetch_sub(1, Ordering::AcqRel);
                    }
                }
            })?;
        Ok(())
    }

    fn serve(&self, mut c: UnixStream) {
        let _ = c.set_read_timeout(Some(IDLE));
        if wire::accept_hello(&mut c).is_err() {
            return;
        }
        while let Ok(Some(req)) = wire::read_request(&mut c) {
            let src = self.source(&req.source);
            // Each reply goes out as soon as it is known: the reader decodes one while the
            // next is read here.
            for (id, max_len) in &req.wanted {
                let r = src
                    .as_ref()
                    .map_err(|e| (Status::Failed, e.clone()))
                    .and_then(|src| {
                        src.envelope(id, *max_len).map_err(|e| match e {
                            starling_store::Error::NotFound(_) => (Status::NotFound, e.to_string()),
                            e => (Status::Failed, e.to_string()),
                        })
                    });
                let sent = match r {
                    Ok((env, origin)) => wire::write_reply(&mut c, Ok((&env, origin))),
                    Err(e) => wire::write_reply(&mut c, Err(e)),
                };
                if sent.is_err() {
                    return;
                }
            }
        }
    }
}
