//! A mounted image: the FUSE session and the threads that serve it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{FuseChannel, FuseSession};

use crate::imagefs::ImageFs;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mountpoint {0}: {1}")]
    Mountpoint(PathBuf, String),
    #[error("mounting {0}: {1}")]
    Fuse(PathBuf, String),
}

pub struct Mounted {
    pub mountpoint: PathBuf,
    pub fs: Arc<ImageFs>,
    session: FuseSession,
    threads: Vec<JoinHandle<()>>,
    live: Arc<AtomicUsize>,
}

/// Checks that `mountpoint` is an empty directory (mounting over content would hide it).
pub fn check_mountpoint(mountpoint: &Path) -> Result<PathBuf, MountError> {
    let bad = |why: String| MountError::Mountpoint(mountpoint.to_path_buf(), why);
    let abs = std::fs::canonicalize(mountpoint).map_err(|e| bad(e.to_string()))?;
    let mut rd = std::fs::read_dir(&abs).map_err(|e| bad(e.to_string()))?;
    if rd.next().is_some() {
        return Err(bad("is not empty".into()));
    }
    Ok(abs)
}

/// Mounts `fs` read-only at `mountpoint`, served by `threads` threads.
pub fn mount(fs: ImageFs, mountpoint: &Path, threads: usize) -> Result<Mounted, MountError> {
    let abs = check_mountpoint(mountpoint)?;
    let fuse_err =
        |e: fuse_backend_rs::transport::Error| MountError::Fuse(abs.clone(), e.to_string());
    let mut session = FuseSession::new(&abs, "starling", "starling", true).map_err(fuse_err)?;
    session.mount().map_err(fuse_err)?;
    let fs = Arc::new(fs);
    let server = Arc::new(Server::new(fs.clone()));
    let live = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for i in 0..threads.max(1) {
        let ch = match session.new_channel() {
            Ok(ch) => ch,
            Err(e) => {
                let _ = session.umount();
                return Err(fuse_err(e));
            }
        };
        let server = server.clone();
        let live = live.clone();
        live.fetch_add(1, Ordering::SeqCst);
        let h = std::thread::Builder::new()
            .name(format!("starling-fs-{i}"))
            .spawn(move || {
                serve(ch, &server);
                live.fetch_sub(1, Ordering::SeqCst);
            })
            .map_err(|e| MountError::Fuse(abs.clone(), e.to_string()))?;
        handles.push(h);
    }
    // After the serving threads start: the stat it needs is a FUSE request.
    set_readahead(&abs, READ_AHEAD_KB);
    Ok(Mounted {
        mountpoint: abs,
        fs,
        session,
        threads: handles,
        live,
    })
}

/// The kernel's read-ahead for the mount, in KiB. FUSE starts at 128 KiB, one request in
/// flight per sequential reader; a larger window keeps several requests (and our serving
/// threads) busy at once.
const READ_AHEAD_KB: u32 = 1024;

/// Sets the mount's read-ahead through its backing device info; best effort (a kernel that
/// refuses keeps its default).
fn set_readahead(mountpoint: &Path, kb: u32) {
    let Ok(st) = rustix::fs::stat(mountpoint) else {
        return;
    };
    let (major, minor) = (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev));
    let p = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    let _ = std::fs::write(p, format!("{kb}\n"));
}

fn serve(mut ch: FuseChannel, server: &Server<Arc<ImageFs>>) {
    // Ends when the session is woken for shutdown or the kernel side goes away.
    while let Ok(Some((reader, writer))) = ch.get_request() {
        if let Err(e) = server.handle_message(reader, writer.into(), None, None) {
            // EncodeMessage: the kernel side is gone (unmounted).
            if matches!(e, fuse_backend_rs::Error::EncodeMessage(_)) {
                break;
            }
        }
    }
}

impl Mounted {
    /// False once the kernel ended the session (unmounted from outside).
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst) > 0
    }

    /// Unmounts and waits for the serving threads.
    pub fn unmount(&mut self) -> Result<(), MountError> {
        let r = self
            .session
            .umount()
            .map_err(|e| MountError::Fuse(self.mountpoint.clone(), e.to_string()));
        let _ = self.session.wake();
        if r.is_ok() {
            for h in self.threads.drain(..) {
                let _ = h.join();
            }
        }
        r
    }
}
