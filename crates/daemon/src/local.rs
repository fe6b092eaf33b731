//! Who may use the daemon's API socket. The daemon acts with root's rights on whatever a
//! client names, so by default it serves its own user and root only: the socket is made 0600
//! and every connecting peer's credentials (SO_PEERCRED) are checked as well — a socket whose
//! mode was opened up behind the daemon's back still serves nobody else (one 403 saying so,
//! and the connection is closed). With the configuration's `users`, the socket is opened to
//! every local user (0666) or one group (0660) and their connections are taken; what each
//! may do is then decided per request (`caller.rs`, `server.rs`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};

use crate::config::Users;

/// The API socket, bound and opened to whom `users` says.
pub fn bind(path: &Path, users: &Users) -> std::io::Result<OwnListener> {
    let inner = UnixListener::bind(path)?;
    let mode = match users {
        Users::Nobody => 0o600,
        Users::All => 0o666,
        Users::Group { gid, .. } => {
            rustix::fs::chown(path, None, Some(rustix::fs::Gid::from_raw(*gid)))?;
            0o660
        }
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(OwnListener {
        inner,
        me: rustix::process::geteuid().as_raw(),
        others: *users != Users::Nobody,
        said: false,
    })
}

/// Accepts the connections of the daemon's user and root, and of other users when they are
/// served; answers the rest 403 and closes.
pub struct OwnListener {
    inner: UnixListener,
    me: u32,
    others: bool,
    said: bool,
}

impl axum::serve::Listener for OwnListener {
    type Io = UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (UnixStream, Self::Addr) {
        loop {
            let (s, addr) = match self.inner.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("API socket: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let uid = s.peer_cred().ok().map(|c| c.uid());
            if uid == Some(self.me) || uid == Some(0) || (self.others && uid.is_some()) {
                return (s, addr);
            }
            if !self.said {
                tracing::warn!(
                    uid = uid.map_or("unknown".into(), |u| u.to_string()),
                    "API socket: refused a client of another user (said once)"
                );
                self.said = true;
            }
            let me = self.me;
            tokio::spawn(refuse(s, uid, me));
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// The peer of an API connection, as the kernel said when it was accepted.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, OwnListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, OwnListener>) -> Peer {
        // Taken only with credentials (`accept`); the fallback is nobody's.
        let (uid, gid) = stream
            .io()
            .peer_cred()
            .map(|c| (c.uid(), c.gid()))
            .unwrap_or((u32::MAX, u32::MAX));
        Peer { uid, gid }
    }
}

/// One HTTP answer naming why, then the connection closes.
async fn refuse(mut s: UnixStream, uid: Option<u32>, me: u32) {
    let body = serde_json::json!({
        "error": format!(
            "starlingd serves its own user ({me}) and root only, not user {}; its \
             configuration's `users` key lets other users mount images (docs/config.md)",
            uid.map_or("unknown".into(), |u| u.to_string())
        )
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        // The request's head first (up to 16 KiB), so the client reads the answer rather
        // than a reset connection.
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while head.len() < 16 << 10 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match tokio::io::AsyncReadExt::read(&mut s, &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let _ = s.write_all(answer.as_bytes()).await;
        let _ = s.shutdown().await;
    })
    .await;
}
