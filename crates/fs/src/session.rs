//! A mounted image: the FUSE session and the threads that serve it.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode};
use fuse_backend_rs::api::filesystem::FileSystem;
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
    let fs = Arc::new(fs);
    let (mountpoint, session, threads, live) = serve_at(fs.clone(), mountpoint, threads)?;
    Ok(Mounted {
        mountpoint,
        fs,
        session,
        threads,
        live,
    })
}

type Serving = (PathBuf, FuseSession, Vec<JoinHandle<()>>, Arc<AtomicUsize>);

/// Mounts any file system at `mountpoint` and starts its serving threads.
fn serve_at<F>(fs: F, mountpoint: &Path, threads: usize) -> Result<Serving, MountError>
where
    F: FileSystem + Send + Sync + 'static,
{
    let abs = check_mountpoint(mountpoint)?;
    let fuse_err =
        |e: fuse_backend_rs::transport::Error| MountError::Fuse(abs.clone(), e.to_string());
    let mut session = FuseSession::new(&abs, "starling", "starling", true).map_err(fuse_err)?;
    session.mount().map_err(fuse_err)?;
    let server = Arc::new(Server::new(fs));
    let live = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for i in 0..threads.max(1) {
        let started = session.new_channel().map_err(fuse_err).and_then(|ch| {
            let answers = session
                .get_fuse_file()
                .ok_or_else(|| MountError::Fuse(abs.clone(), "no /dev/fuse descriptor".into()))?
                .try_clone()
                .map_err(|e| MountError::Fuse(abs.clone(), e.to_string()))?;
            let server = server.clone();
            let live = live.clone();
            live.fetch_add(1, Ordering::SeqCst);
            std::thread::Builder::new()
                .name(format!("starling-fs-{i}"))
                .spawn(move || {
                    serve(ch, &answers, &server);
                    live.fetch_sub(1, Ordering::SeqCst);
                })
                .map_err(|e| MountError::Fuse(abs.clone(), e.to_string()))
        });
        match started {
            Ok(h) => handles.push(h),
            Err(e) => {
                let _ = session.umount();
                let _ = session.wake();
                return Err(e);
            }
        }
    }
    // After the serving threads start: the stat it needs is a FUSE request.
    set_readahead(&abs, READ_AHEAD_KB);
    Ok((abs, session, handles, live))
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

fn serve<F: FileSystem + Sync>(mut ch: FuseChannel, answers: &File, server: &Server<F>) {
    // Ends when the session is woken for shutdown or the kernel side goes away.
    while let Ok(Some((reader, writer))) = ch.get_request() {
        // Read before handling: the reply is built in the request's buffer.
        let header = reader.clone().read_obj::<InHeader>().ok();
        let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            server.handle_message(reader, writer.into(), None, None)
        }));
        match handled {
            // The kernel side is gone (unmounted).
            Ok(Err(fuse_backend_rs::Error::EncodeMessage(_))) => break,
            Ok(_) => {}
            // A bug met in one request (the panic hook has said where): that request fails
            // with EIO instead of leaving its caller waiting, and this thread serves on.
            Err(_) => {
                if let Some(h) = header {
                    answer_eio(answers, &h);
                }
            }
        }
    }
}

/// Answers request `h` with EIO, unless it is one the kernel expects no answer to.
fn answer_eio(answers: &File, h: &InHeader) {
    let unanswered = [Opcode::Forget, Opcode::BatchForget, Opcode::Interrupt];
    if unanswered.iter().any(|&o| o as u32 == h.opcode) {
        return;
    }
    // fuse_out_header: length, error (negative errno), the request's unique id.
    let mut reply = [0u8; 16];
    reply[..4].copy_from_slice(&16u32.to_ne_bytes());
    reply[4..8].copy_from_slice(&(-libc::EIO).to_ne_bytes());
    reply[8..].copy_from_slice(&h.unique.to_ne_bytes());
    let _ = (&*answers).write(&reply);
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

#[cfg(test)]
mod tests {
    use std::ffi::CStr;
    use std::io;
    use std::sync::mpsc;
    use std::time::Duration;

    use fuse_backend_rs::abi::fuse_abi::stat64;
    use fuse_backend_rs::api::filesystem::{Context, Entry, FileSystem, FsOptions};

    use super::*;

    /// A file system with a bug in two places: looking up `boom`, and reading `ok`.
    struct Buggy;

    fn attr(inode: u64) -> stat64 {
        // SAFETY: stat64 is a plain C struct of integers; all-zero is a valid value.
        let mut st: stat64 = unsafe { std::mem::zeroed() };
        st.st_ino = inode;
        st.st_mode = if inode == 1 {
            libc::S_IFDIR | 0o755
        } else {
            libc::S_IFREG | 0o644
        };
        st.st_nlink = 1;
        st.st_size = 5;
        st
    }

    impl FileSystem for Buggy {
        type Inode = u64;
        type Handle = u64;

        fn init(&self, _: FsOptions) -> io::Result<FsOptions> {
            Ok(FsOptions::empty())
        }

        fn lookup(&self, _: &Context, _: u64, name: &CStr) -> io::Result<Entry> {
            match name.to_bytes() {
                b"boom" => panic!("a bug met looking up boom"),
                b"ok" => Ok(Entry {
                    inode: 2,
                    generation: 0,
                    attr: attr(2),
                    attr_flags: 0,
                    attr_timeout: Duration::ZERO,
                    entry_timeout: Duration::ZERO,
                }),
                _ => Err(io::Error::from_raw_os_error(libc::ENOENT)),
            }
        }

        fn getattr(
            &self,
            _: &Context,
            inode: u64,
            _: Option<u64>,
        ) -> io::Result<(stat64, Duration)> {
            Ok((attr(inode), Duration::ZERO))
        }

        #[allow(clippy::too_many_arguments)]
        fn read(
            &self,
            _: &Context,
            _: u64,
            _: u64,
            _: &mut dyn fuse_backend_rs::api::filesystem::ZeroCopyWriter,
            _: u32,
            _: u64,
            _: Option<u64>,
            _: u32,
        ) -> io::Result<usize> {
            panic!("a bug met reading ok")
        }
    }

    /// `f` on its own thread, given at most 10 s. A request left unanswered would hang it
    /// (and this test process with it): the FUSE connection `dev` is then aborted through
    /// fusectl, which fails every request waiting on it, and the test fails.
    fn within<T: Send + 'static>(dev: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(v) => v,
            Err(_) => {
                let ctl = Path::new("/sys/fs/fuse/connections");
                if std::fs::read_dir(ctl).is_ok_and(|mut d| d.next().is_none()) {
                    let _ = std::process::Command::new("mount")
                        .args(["-t", "fusectl", "none"])
                        .arg(ctl)
                        .status();
                }
                let minor = rustix::fs::minor(dev);
                let _ = std::fs::write(ctl.join(minor.to_string()).join("abort"), "1");
                panic!("a FUSE request was never answered (connection {minor} aborted)");
            }
        }
    }

    #[test]
    fn a_panicking_request_fails_with_eio_and_the_mount_serves_on() {
        if !Path::new("/dev/fuse").exists() || !rustix::process::geteuid().is_root() {
            eprintln!("SKIPPED: mounting FUSE needs /dev/fuse and root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mp = dir.path().join("mnt");
        std::fs::create_dir(&mp).unwrap();
        // One serving thread: a thread lost to the panic would leave nobody to answer.
        let (abs, mut session, threads, live) = serve_at(Buggy, &mp, 1).unwrap();
        let dev = rustix::fs::stat(&abs).unwrap().st_dev;
        let errno = |r: io::Result<()>| r.err().and_then(|e| e.raw_os_error());
        for _ in 0..2 {
            let boom = abs.join("boom");
            assert_eq!(
                within(dev, move || errno(std::fs::metadata(boom).map(|_| ()))),
                Some(libc::EIO)
            );
            let ok = abs.join("ok");
            assert!(within(dev, move || std::fs::metadata(ok).is_ok()));
            let ok = abs.join("ok");
            assert_eq!(
                within(dev, move || errno(std::fs::read(ok).map(|_| ()))),
                Some(libc::EIO)
            );
        }
        assert_eq!(live.load(Ordering::SeqCst), 1);
        session.umount().unwrap();
        let _ = session.wake();
        for h in threads {
            h.join().unwrap();
        }
    }
}
