//! Sockets a jailed monitor listens on, bound before it gives root up: its caller names
//! where they go (`--api-socket`, `--vsock`), and that directory need be neither shown in the
//! jail nor writable by the jail's user. The socket files are its caller's (0600); the
//! monitor only accepts on them.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

static BOUND: Mutex<Vec<(PathBuf, UnixListener)>> = Mutex::new(Vec::new());

/// Binds `path` now (replacing a stale socket) for the device or server that will serve it.
pub fn bind_now(path: &Path) -> std::io::Result<()> {
    let listener = bind(path)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    BOUND
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((path.to_path_buf(), listener));
    Ok(())
}

/// The listener bound for `path` earlier, or one bound now.
pub fn listener(path: &Path) -> std::io::Result<UnixListener> {
    let mut bound = BOUND.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(i) = bound.iter().position(|(p, _)| p == path) {
        return Ok(bound.swap_remove(i).1);
    }
    drop(bound);
    bind(path)
}

fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path)
}
