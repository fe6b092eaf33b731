//! What a jailed monitor sees of the host's files: a mount namespace of its own whose root is
//! a small read-only tmpfs holding only what the VM needs, each at the path its caller named
//! (so nothing the monitor is told needs translating): the kernel, initrd and disks, its run
//! directory, its sockets' directories, the monitor binary and the libraries it is linked
//! with (a clone is this program started again), device nodes made for it alone (`/dev/kvm`
//! and the like, owned by the jail's user), and a `/proc` that shows its own processes only.
//! Firecracker's jailer does the same with a chroot directory and relative paths.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use super::Error;

/// How the monitor may use something it sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Read only (a kernel, a read-only disk, a snapshot).
    Read,
    /// Read and run (the monitor binary and its libraries).
    Exec,
    /// Read and write (the run directory, a writable disk).
    Write,
}

/// One host path the monitor sees, at the same path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shown {
    pub path: PathBuf,
    pub access: Access,
}

/// Where the new root is assembled, in this process's own mount namespace (others keep
/// their `/tmp`).
const NEW_ROOT: &str = "/tmp";

/// The device nodes a monitor needs, made in the jail for its user alone (`/dev/null`: what a
/// clone is started with as its stdin and stdout). TAPs are handed over opened, and lazy
/// restores (userfaultfd) are not jailed: `/dev/net/tun` and `/dev/userfaultfd` stay out.
const DEVICES: &[&str] = &["/dev/kvm", "/dev/null"];

/// Absolute, lexically, against the current directory; a path with `..` in it is refused
/// (the jail is built from the names as given, which `..` would lead out of).
pub fn absolute(path: &Path) -> Result<PathBuf, Error> {
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(Error::Refused {
            reason: format!("{} holds `..`: name it without", path.display()),
        });
    }
    std::path::absolute(path).map_err(|e| Error::setup(format!("resolving {}", path.display()), e))
}

/// Drops duplicates and entries inside another entry's directory with the same access
/// (that mount shows them already). One inside another with a different access is refused:
/// a kernel inside the writable run directory could be replaced by the jail's user, and a
/// writable file inside a read-only directory would widen to the whole directory. `/`
/// itself is never shown.
fn outermost(mut shown: Vec<Shown>) -> Result<Vec<Shown>, Error> {
    shown.sort_by(|a, b| a.path.cmp(&b.path));
    let mut out: Vec<Shown> = Vec::new();
    for s in shown {
        if s.path.parent().is_none() {
            return Err(Error::Refused {
                reason: "the jail does not show / (name the files the VM needs)".into(),
            });
        }
        match out.iter().find(|o| s.path.starts_with(&o.path)) {
            Some(o) if o.access == s.access => {}
            Some(o) => {
                return Err(Error::Refused {
                    reason: format!(
                        "{} ({:?}) lies inside {} ({:?}): move it out, or run with \
                         STARLING_JAIL=off",
                        s.path.display(),
                        s.access,
                        o.path.display(),
                        o.access
                    ),
                })
            }
            None => out.push(s),
        }
    }
    Ok(out)
}

/// Builds the view and makes it this process's root. Must run before the process has a
/// second thread (a mount namespace is per process, and `unshare` refuses a process whose
/// threads share its file system context). `owner` owns the device nodes.
pub fn enter(shown: Vec<Shown>, owner: (u32, u32)) -> Result<(), Error> {
    let shown = outermost(shown)?;
    close_inherited_directories()?;
    let cwd = std::env::current_dir().ok();

    // SAFETY: unshare takes no pointers; it only gives this process a copy of the mount table.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        let e = std::io::Error::last_os_error();
        let why = if e.raw_os_error() == Some(libc::EINVAL) {
            "a new mount namespace (the process already runs a second thread)".to_string()
        } else {
            "a new mount namespace".to_string()
        };
        return Err(Error::setup(why, e));
    }
    // Nothing done here propagates back to the host's mounts.
    mount(
        None::<&Path>,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
    .map_err(|e| Error::setup("making the mounts private", e))?;
    // Every source is opened (in the new namespace: a mount is bound only from its own)
    // before anything is mounted over it; the mounts are then made from these descriptors,
    // so what is shown is what was opened.
    let mut sources = Vec::with_capacity(shown.len());
    for s in &shown {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
            .open(&s.path)
            .map_err(|e| Error::setup(format!("opening {} to show it", s.path.display()), e))?;
        let dir = file
            .metadata()
            .map_err(|e| Error::setup(format!("reading {}", s.path.display()), e))?
            .is_dir();
        sources.push((s, file, dir));
    }
    let root = Path::new(NEW_ROOT);
    mount(
        Some("starling-jail"),
        root,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("mode=0755,size=4m,nr_inodes=4096"),
    )
    .map_err(|e| Error::setup("mounting the jail's root", e))?;

    for (s, file, dir) in &sources {
        let target = inside(root, &s.path);
        make_mount_point(&target, *dir)?;
        let source = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        mount(Some(&source), &target, None, libc::MS_BIND, None)
            .map_err(|e| Error::setup(format!("showing {}", s.path.display()), e))?;
        let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
        if s.access != Access::Write {
            flags |= libc::MS_RDONLY;
        }
        if s.access != Access::Exec {
            flags |= libc::MS_NOEXEC;
        }
        remount(&target, flags, &s.path)?;
    }
    drop(sources);

    let (uid, gid) = owner;
    for dev in DEVICES {
        let Ok(md) = std::fs::metadata(dev) else {
            continue;
        };
        if !md.file_type().is_char_device() {
            continue;
        }
        let target = inside(root, Path::new(dev));
        if let Some(parent) = target.parent() {
            mkdir_all(parent)?;
        }
        let c = cstring(&target)?;
        // SAFETY: c is a valid C string; mknod makes one node in the jail's own tmpfs.
        if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, md.rdev()) } != 0 {
            return Err(Error::setup(
                format!("making {dev} in the jail"),
                std::io::Error::last_os_error(),
            ));
        }
        std::os::unix::fs::chown(&target, Some(uid), Some(gid))
            .map_err(|e| Error::setup(format!("giving {dev} to the jail's user"), e))?;
    }

    let proc = root.join("proc");
    mkdir_all(&proc)?;
    // Its own processes only (its user's, and that user is the VM's alone), and no /proc/sys.
    mount(
        Some("proc"),
        &proc,
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some("hidepid=invisible,subset=pid"),
    )
    .map_err(|e| Error::setup("mounting the jail's /proc", e))?;

    remount(
        root,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
        root,
    )?;
    let old_root = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open("/")
        .map_err(|e| Error::setup("opening the host's root", e))?;
    std::env::set_current_dir(root).map_err(|e| Error::setup("entering the jail's root", e))?;
    // pivot_root(".", "."): the new root becomes this namespace's and this process's root,
    // with the old root stacked on it; the old one is then detached from where it lies (the
    // directory it is the root of), leaving no path to the host's files.
    let dot = c".";
    // SAFETY: both arguments are valid C strings; pivot_root changes only this namespace.
    if unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(Error::setup("pivot_root into the jail", e));
        }
        // A host running from its initramfs (rootfs, which cannot be pivoted away): the
        // new root is moved over `/` and entered with chroot, as runc does there. The old
        // root stays beneath it, out of reach of a process without capabilities.
        move_over_root()?;
    } else {
        // SAFETY: old_root is an open directory descriptor.
        if unsafe { libc::fchdir(old_root.as_raw_fd()) } != 0 {
            return Err(Error::setup(
                "entering the host's old root",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: dot is a valid C string.
        if unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) } != 0 {
            return Err(Error::setup(
                "detaching the host's root",
                std::io::Error::last_os_error(),
            ));
        }
    }
    drop(old_root);
    std::env::set_current_dir("/").map_err(|e| Error::setup("entering /", e))?;
    if let Some(cwd) = cwd {
        // Where the caller was, if the jail shows it: relative names keep working there.
        let _ = std::env::set_current_dir(cwd);
    }
    Ok(())
}

/// Moves the current directory's mount over `/` and makes it this process's root.
fn move_over_root() -> Result<(), Error> {
    mount(Some("."), Path::new("/"), None, libc::MS_MOVE, None)
        .map_err(|e| Error::setup("moving the jail's root over /", e))?;
    let dot = c".";
    // SAFETY: dot is a valid C string; chroot changes only this process's root.
    if unsafe { libc::chroot(dot.as_ptr()) } != 0 {
        return Err(Error::setup(
            "entering the jail's root",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Closes every descriptor this process inherited (or opened) on a directory, or as a bare
/// `O_PATH`: through one, `openat(fd, "..")` walks out of any root. Those a VM is started
/// with (guest memory, pipes, the fork budget) are neither.
fn close_inherited_directories() -> Result<(), Error> {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| Error::setup("listing this process's descriptors", e))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_GETFL takes no pointer; a descriptor closed meanwhile (the listing's
        // own) just fails.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            continue;
        }
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: st is written by fstat before it is read.
        let dir = unsafe { libc::fstat(fd, st.as_mut_ptr()) } == 0
            // SAFETY: fstat returned 0, so st is filled.
            && unsafe { st.assume_init() }.st_mode & libc::S_IFMT == libc::S_IFDIR;
        if dir || flags & libc::O_PATH != 0 {
            // SAFETY: fd is a descriptor of this process that nothing here uses after this.
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// `path` (absolute) under `root`.
fn inside(root: &Path, path: &Path) -> PathBuf {
    let mut p = root.to_path_buf();
    for c in path.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => {}
            other => p.push(other.as_os_str()),
        }
    }
    p
}

fn make_mount_point(target: &Path, dir: bool) -> Result<(), Error> {
    if dir {
        return mkdir_all(target);
    }
    if let Some(parent) = target.parent() {
        mkdir_all(parent)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(target)
        .map(drop)
        .map_err(|e| Error::setup(format!("making the mount point {}", target.display()), e))
}

fn mkdir_all(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| Error::setup(format!("making {} in the jail", dir.display()), e))
}

fn cstring(p: &Path) -> Result<CString, Error> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::Refused {
        reason: format!("{} holds a NUL byte", p.display()),
    })
}

fn mount(
    source: Option<impl AsRef<Path>>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> std::io::Result<()> {
    let source = source
        .map(|s| CString::new(s.as_ref().as_os_str().as_bytes()))
        .transpose()?;
    let target = CString::new(target.as_os_str().as_bytes())?;
    let fstype = fstype.map(CString::new).transpose()?;
    let data = data.map(CString::new).transpose()?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is null or a valid C string that outlives the call.
    let r = unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Changes a bind mount's flags. A mount whose file system was mounted `nodev`, `nosuid` or
/// `noexec` keeps that flag (the kernel refuses to clear a flag it locked), so that one is
/// added when the first try is refused.
fn remount(target: &Path, flags: libc::c_ulong, named: &Path) -> Result<(), Error> {
    let none: Option<&Path> = None;
    match mount(none, target, None, flags, None) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let locked = std::fs::metadata(target)
                .ok()
                .and_then(|_| statvfs_flags(target))
                .unwrap_or(0);
            mount(none, target, None, flags | locked, None)
                .map_err(|e| Error::setup(format!("limiting access to {}", named.display()), e))
        }
        Err(e) => Err(Error::setup(
            format!("limiting access to {}", named.display()),
            e,
        )),
    }
}

/// The mount flags of the mount holding `path`, as `MS_*` bits.
fn statvfs_flags(path: &Path) -> Option<libc::c_ulong> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: c is a valid C string and st is written by the call before it is read.
    if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled st.
    let f = unsafe { st.assume_init() }.f_flag;
    let mut out = 0;
    for (st_bit, ms_bit) in [
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if f & st_bit != 0 {
            out |= ms_bit;
        }
    }
    Some(out)
}

/// The files a copy of this program needs to start: the program and every file it has
/// mapped executable (its libraries and the dynamic loader, each at its real path), and the
/// loader under the name the program asks for (`PT_INTERP`, often a link elsewhere).
pub fn program_files(program: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut files = vec![program.to_path_buf()];
    let maps = std::fs::read_to_string("/proc/self/maps")
        .map_err(|e| Error::setup("reading /proc/self/maps", e))?;
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let perms = f.nth(1).unwrap_or("");
        if let Some(path) = f.nth(3) {
            if perms.contains('x') && path.starts_with('/') && !files.iter().any(|p| p == path) {
                files.push(PathBuf::from(path));
            }
        }
    }
    if let Some(interp) = interpreter(program)? {
        if !files.contains(&interp) {
            files.push(interp);
        }
    }
    Ok(files)
}

/// The ELF program's `PT_INTERP`, if it has one (a static program has none).
fn interpreter(program: &Path) -> Result<Option<PathBuf>, Error> {
    use std::io::{Read, Seek, SeekFrom};
    let bad = |why: &str| Error::Refused {
        reason: format!("{} is not an ELF64 program: {why}", program.display()),
    };
    let mut f = File::open(program)
        .map_err(|e| Error::setup(format!("reading {}", program.display()), e))?;
    let mut h = [0u8; 64];
    f.read_exact(&mut h).map_err(|_| bad("too short"))?;
    if &h[..4] != b"\x7fELF" || h[4] != 2 || h[5] != 1 {
        return Err(bad("not little-endian ELF64"));
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u64_at = |b: &[u8], o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a)
    };
    let phoff = u64_at(&h, 32);
    let phentsize = usize::from(u16_at(&h, 54));
    let phnum = usize::from(u16_at(&h, 56));
    if phentsize < 56 || phnum > 256 {
        return Err(bad("unexpected program headers"));
    }
    let mut ph = vec![0u8; phentsize * phnum];
    f.seek(SeekFrom::Start(phoff))
        .and_then(|_| f.read_exact(&mut ph))
        .map_err(|_| bad("program headers past its end"))?;
    for e in ph.chunks(phentsize) {
        if u32::from_le_bytes([e[0], e[1], e[2], e[3]]) != 3 {
            continue;
        }
        let (off, size) = (u64_at(e, 8), u64_at(e, 32));
        if size == 0 || size > 4096 {
            return Err(bad("its PT_INTERP is out of bounds"));
        }
        let mut name = vec![0u8; size as usize];
        f.seek(SeekFrom::Start(off))
            .and_then(|_| f.read_exact(&mut name))
            .map_err(|_| bad("its PT_INTERP is past its end"))?;
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        let p = PathBuf::from(std::ffi::OsStr::from_bytes(&name[..end]));
        return Ok(p.is_absolute().then_some(p));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_paths_are_shown_once_and_a_wider_or_narrower_one_inside_is_refused() {
        let s = |p: &str, access| Shown {
            path: p.into(),
            access,
        };
        let out = outermost(vec![
            s("/run/vm/console.log", Access::Write),
            s("/srv/kernel", Access::Read),
            s("/run/vm", Access::Write),
            s("/srv/kernel", Access::Read),
            s("/srv/kernels", Access::Exec),
        ])
        .unwrap();
        assert_eq!(
            out,
            vec![
                s("/run/vm", Access::Write),
                s("/srv/kernel", Access::Read),
                s("/srv/kernels", Access::Exec),
            ]
        );
        let e = outermost(vec![
            s("/run/vm", Access::Write),
            s("/run/vm/vmlinux", Access::Read),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/run/vm/vmlinux (Read) lies inside /run/vm (Write)"),
            "{e}"
        );
        let e = outermost(vec![s("/", Access::Read)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not show /"), "{e}");
        let e = absolute(Path::new("/srv/../etc/shadow"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds `..`"), "{e}");
    }

    #[test]
    fn a_program_s_files_are_itself_its_libraries_and_its_loader() {
        let exe = std::env::current_exe().unwrap();
        let files = program_files(&exe).unwrap();
        assert_eq!(files[0], exe);
        let libc_mapped = files.iter().any(|f| {
            f.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libc.so"))
        });
        assert!(libc_mapped, "{files:?}");
        let interp = interpreter(&exe).unwrap().expect("a dynamic test binary");
        assert!(files.contains(&interp), "{files:?}");
        assert!(interp.to_string_lossy().contains("ld-linux"), "{interp:?}");
        let e = interpreter(Path::new("/proc/self/status"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not an ELF64 program"), "{e}");
    }
}
