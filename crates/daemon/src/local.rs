//! Who may use the daemon's API socket: its own user and root. The daemon acts with its
//! user's rights on whatever path a client names (mounts, stores, VMs' disks), so the socket
//! is made 0600 and every connecting peer's credentials (SO_PEERCRED) are checked as well — a
//! socket whose mode was opened up behind the daemon's back still serves nobody else: such a
//! peer gets one 403 answer saying so, and the connection is closed. (Serving other users,
//! each within their own rights, is not there yet.)

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};

/// The API socket, bound and made its user's alone.
pub fn bind(path: &Path) -> std::io::Result<OwnListener> {
    let inner = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(OwnListener {
        inner,
        me: rustix::process::geteuid().as_raw(),
        said: false,
    })
}

/// Accepts the connections of the daemon's user and root; answers others 403 and closes.
pub struct OwnListener {
    inner: UnixListener,
    me: u32,
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
            if uid == Some(self.me) || uid == Some(0) {
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

/// One HTTP answer naming why, then the connection closes.
async fn refuse(mut s: UnixStream, uid: Option<u32>, me: u32) {
    let body = serde_json::json!({
        "error": format!(
            "starlingd serves its own user ({me}) and root only, not user {}",
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
