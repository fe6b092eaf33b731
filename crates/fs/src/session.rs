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
use crate::mountpoint::{HeldMount, Pinned};
use std::os::unix::fs::OpenOptionsExt;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mountpoint {0}: {1}")]
    Mountpoint(PathBuf, String),
    #[error("mounting {0}: {1}")]
    Fuse(PathBuf, String),
}

pub struct Mounted {
    /// Where it was mounted (as the path read then; it may have moved since).
    pub mountpoint: PathBuf,
    /// The kernel's id of the mount.
    pub mount_id: u64,
    pub fs: Arc<ImageFs>,
    /// Held until unmounted (None after).
    mount: Option<HeldMount>,
    session: FuseSession,
    threads: Vec<JoinHandle<()>>,
    live: Arc<AtomicUsize>,
}

/// Who a mount is shown as owned by (`user_id`, `group_id` in the mount's options), and
/// whether others may enter it.
#[derive(Debug, Clone, Copy)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub allow_other: bool,
}

/// Mounts `fs` read-only onto the pinned directory `at` (checked by the caller), served by
/// `threads` threads.
pub fn mount(
    fs: ImageFs,
    at: &Pinned,
    owner: Owner,
    threads: usize,
) -> Result<Mounted, MountError> {
    let fs = Arc::new(fs);
    let s = serve_at(fs.clone(), at, owner, threads)?;
    Ok(Mounted {
        mountpoint: at.shown.clone(),
        mount_id: s.mount.id,
        fs,
        mount: Some(s.mount),
        session: s.session,
        threads: s.threads,
        live: s.live,
    })
}

struct Serving {
    mount: HeldMount,
    session: FuseSession,
    threads: Vec<JoinHandle<()>>,
    live: Arc<AtomicUsize>,
}

/// Mounts any file system onto `at` and starts its serving threads.
fn serve_at<F>(fs: F, at: &Pinned, owner: Owner, threads: usize) -> Result<Serving, MountError>
where
    F: FileSystem + Send + Sync + 'static,
{
    let abs = at.shown.clone();
    let fuse_err =
        |e: fuse_backend_rs::transport::Error| MountError::Fuse(abs.clone(), e.to_string());
    let io_err = |e: std::io::Error| MountError::Fuse(abs.clone(), e.to_string());
    // The session only dispatches requests: the mount is made here, onto the pinned
    // descriptor. Its own mount and unmount go by path, so it is given one that is never a
    // mount point: were it ever to unmount, it would find nothing there.
    let mut session = FuseSession::new(Path::new("/proc/self/fd"), "starling", "starling", true)
        .map_err(fuse_err)?;
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")
        .map_err(|e| MountError::Fuse(abs.clone(), format!("/dev/fuse: {e}")))?;
    let made = crate::mountpoint::mount_fuse(
        at,
        &crate::mountpoint::FuseOptions {
            dev: &dev,
            uid: owner.uid,
            gid: owner.gid,
            max_read: session.bufsize(),
            allow_other: owner.allow_other,
        },
    )?;
    // The channels poll the connection and must not block in read.
    if let Err(e) = rustix::fs::fcntl_setfl(&dev, rustix::fs::OFlags::NONBLOCK) {
        let _ = made.detach();
        return Err(io_err(e.into()));
    }
    session.set_fuse_file(dev);
    let server = Arc::new(Server::new(fs));
    let live = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for i in 0..threads.max(1) {
        let started = session.new_channel().map_err(fuse_err).and_then(|ch| {
            let answers = session
                .get_fuse_file()
                .ok_or_else(|| MountError::Fuse(abs.clone(), "no /dev/fuse descriptor".into()))?
                .try_clone()
                .map_err(io_err)?;
            let server = server.clone();
            let live = live.clone();
            live.fetch_add(1, Ordering::SeqCst);
            std::thread::Builder::new()
                .name(format!("starling-fs-{i}"))
                .spawn(move || {
                    serve(ch, &answers, &server);
                    live.fetch_sub(1, Ordering::SeqCst);
                })
                .map_err(io_err)
        });
        match started {
            Ok(h) => handles.push(h),
            Err(e) => {
                let _ = made.detach();
                let _ = session.wake();
                return Err(e);
            }
        }
    }
    set_readahead(made.dev, READ_AHEAD_KB);
    Ok(Serving {
        mount: made,
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
fn set_readahead(dev: u64, kb: u32) {
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
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
    /// False once unmounted, from outside too (the kernel ended the session, or the mount is
    /// no longer attached).
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst) > 0 && self.mount.as_ref().is_some_and(|m| m.attached())
    }

    /// Unmounts (found by its mount id, wherever it is now) and waits for the serving
    /// threads. A mount already gone from outside is no error.
    pub fn unmount(&mut self) -> Result<(), MountError> {
        let r = match self.mount.take() {
            Some(m) => m
                .detach()
                .map_err(|e| MountError::Fuse(self.mountpoint.clone(), e.to_string())),
            None => Ok(()),
        };
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
        let at = Pinned::open(&mp).unwrap();
        let s = serve_at(Buggy, &at, ROOT, 1).unwrap();
        let abs = mp.clone();
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
        assert_eq!(s.live.load(Ordering::SeqCst), 1);
        s.mount.detach().unwrap();
        let _ = s.session.wake();
        for h in s.threads {
            h.join().unwrap();
        }
    }

    const ROOT: Owner = Owner {
        uid: 0,
        gid: 0,
        allow_other: true,
    };

    /// The name swapped for a link to another directory after the pin: the mount goes onto
    /// the directory pinned, the link's target is untouched, and unmounting finds the
    /// mount where it is now (its parent renamed), not by the name it was made at.
    #[test]
    fn a_mount_goes_onto_the_pinned_directory_whatever_its_name_leads_to_by_then() {
        if !Path::new("/dev/fuse").exists() || !rustix::process::geteuid().is_root() {
            eprintln!("SKIPPED: mounting FUSE needs /dev/fuse and root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (mp, victim) = (dir.path().join("a/mnt"), dir.path().join("victim"));
        std::fs::create_dir_all(&mp).unwrap();
        std::fs::create_dir(&victim).unwrap();
        let at = Pinned::open(&mp).unwrap();
        at.check_empty().unwrap();
        std::fs::rename(dir.path().join("a"), dir.path().join("b")).unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::os::unix::fs::symlink(&victim, &mp).unwrap();
        let s = serve_at(Buggy, &at, ROOT, 1).unwrap();
        let moved = dir.path().join("b/mnt");
        let (id, root) = crate::mountpoint::mount_at(&moved).unwrap();
        assert_eq!(
            (id, root),
            (s.mount.id, true),
            "mounted where the pinned directory is"
        );
        let (victim_id, victim_root) = crate::mountpoint::mount_at(&victim).unwrap();
        assert!(
            victim_id != s.mount.id && !victim_root,
            "nothing mounted on the link's target"
        );
        let (where_now, kind) = crate::mountpoint::mount_info(s.mount.id).unwrap().unwrap();
        assert_eq!(
            (where_now, kind.as_str()),
            (moved.clone(), crate::mountpoint::FUSE_TYPE)
        );
        // Moved again before the unmount: unmounted through the descriptor held, wherever
        // it is now.
        std::fs::rename(dir.path().join("b"), dir.path().join("c")).unwrap();
        assert!(s.mount.attached());
        let id = s.mount.id;
        // In use: not unmounted, handed back held; free: unmounted.
        let busy = rustix::fs::open(
            dir.path().join("c/mnt"),
            rustix::fs::OFlags::PATH,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        let (held, e) = s.mount.unmount().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBUSY), "{e}");
        let held = held.expect("held again");
        assert!(held.attached());
        drop(busy);
        held.unmount().unwrap();
        assert!(crate::mountpoint::mount_info(id).unwrap().is_none());
        assert!(
            !crate::mountpoint::mount_at(&dir.path().join("c/mnt"))
                .unwrap()
                .1
        );
        let _ = s.session.wake();
        for h in s.threads {
            h.join().unwrap();
        }
    }
}
