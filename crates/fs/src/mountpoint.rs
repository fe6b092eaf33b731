//! Where a mount goes, pinned. The directory is opened once (`O_PATH`) and everything after
//! works on that descriptor: its owner, its file system and its emptiness are checked on it,
//! and the new mount is attached onto it (`fsopen`/`fsmount`/`move_mount`), so a directory
//! swapped for a link to `/etc` between the check and the mount changes nothing. A mount is
//! known afterwards by its mount id, and detached through a descriptor of its root that was
//! checked to be that mount, never by a path that may by then lead elsewhere.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, StatxFlags, CWD};
use rustix::mount::{
    fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount,
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, UnmountFlags,
};

use crate::session::MountError;

/// File systems a user may mount onto, as `/proc/self/mountinfo` names them: not `/proc`,
/// `/sys`, cgroup or other pseudo file systems, where a directory a user owns is a kernel
/// interface, and not FUSE, whose server (perhaps the user's) could stall the daemon's
/// checks.
const USER_MOUNTABLE: &[&str] = &[
    "ext4", "ext3", "ext2", "tmpfs", "xfs", "btrfs", "overlay", "nfs", "nfs4", "zfs", "f2fs",
    "ramfs", "bcachefs",
];

/// mountinfo's type of the daemon's read-only mounts, and of its writable ones.
pub const FUSE_TYPE: &str = "fuse.starling";
pub const OVERLAY_TYPE: &str = "overlay";

/// A directory, opened once; what it is is read from the descriptor.
#[derive(Debug)]
pub struct Pinned {
    fd: OwnedFd,
    /// The path it was reached by at the time (for messages and listings only).
    pub shown: PathBuf,
    pub uid: u32,
    pub gid: u32,
}

impl Pinned {
    /// Opens `path`, which must be a directory. Links on the way are followed (what counts is
    /// the directory reached, which is checked through the descriptor).
    pub fn open(path: &Path) -> Result<Pinned, MountError> {
        let bad = |why: String| MountError::Mountpoint(path.to_path_buf(), why);
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| bad(std::io::Error::from(e).to_string()))?;
        // Asking nothing of the file system: a FUSE one (the caller's) could stall the
        // daemon's thread; the check that it is no FUSE directory comes next.
        let st = rustix::fs::statx(
            &fd,
            "",
            AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC,
            StatxFlags::UID | StatxFlags::GID,
        )
        .map_err(|e| bad(std::io::Error::from(e).to_string()))?;
        let shown = std::fs::read_link(proc_path(&fd)).unwrap_or_else(|_| path.to_path_buf());
        Ok(Pinned {
            fd,
            shown,
            uid: st.stx_uid,
            gid: st.stx_gid,
        })
    }

    /// `/proc/self/fd/N`: the pinned directory itself for calls that take only a path.
    pub fn proc_path(&self) -> PathBuf {
        proc_path(&self.fd)
    }

    /// The id of the mount the directory is on, and whether it is that mount's root.
    pub fn mount_id(&self) -> Result<(u64, bool), MountError> {
        mount_of(&self.fd).map_err(|e| self.bad(e.to_string()))
    }

    fn bad(&self, why: impl Into<String>) -> MountError {
        MountError::Mountpoint(self.shown.clone(), why.into())
    }

    /// Refuses a directory with anything in it (a mount over it would hide it).
    pub fn check_empty(&self) -> Result<(), MountError> {
        let dir = rustix::fs::openat(
            &self.fd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.bad(e.to_string()))?;
        let mut entries = rustix::fs::Dir::read_from(&dir).map_err(|e| self.bad(e.to_string()))?;
        for e in entries.by_ref() {
            let e = e.map_err(|e| self.bad(e.to_string()))?;
            let name = e.file_name().to_bytes();
            if name != b"." && name != b".." {
                return Err(self.bad("is not empty"));
            }
        }
        Ok(())
    }

    /// Refuses a directory on a file system users do not mount onto (`/proc`, `/sys`, …).
    pub fn check_user_mountable(&self) -> Result<(), MountError> {
        let id = mount_id(&self.fd).map_err(|e| self.bad(e.to_string()))?;
        let kind = mount_info(id)
            .map_err(|e| self.bad(e.to_string()))?
            .map(|(_, kind)| kind)
            .unwrap_or_default();
        if USER_MOUNTABLE.contains(&kind.as_str()) {
            return Ok(());
        }
        Err(self.bad(format!(
            "is on a file system of type {kind:?}; users mount onto directories of {} only",
            USER_MOUNTABLE.join(", ")
        )))
    }
}

fn proc_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// How a FUSE mount is made: the `/dev/fuse` connection, who it is shown as owned by, and
/// the largest read the kernel may send.
pub struct FuseOptions<'a> {
    pub dev: &'a std::fs::File,
    pub uid: u32,
    pub gid: u32,
    pub max_read: usize,
    /// Others than the owner may enter it (`allow_other`). A mount a user makes is theirs
    /// alone unless `/etc/fuse.conf` says `user_allow_other`, as fusermount3 has it: they
    /// choose what it serves and when, so it must not stall root's or others' programs.
    pub allow_other: bool,
}

/// Whether `/etc/fuse.conf` lets users' mounts be entered by others.
pub fn users_may_allow_other() -> bool {
    std::fs::read_to_string("/etc/fuse.conf")
        .is_ok_and(|c| c.lines().any(|l| l.trim() == "user_allow_other"))
}

/// Mounts a read-only `fuse.starling` file system served on `o.dev` onto `at`. Mounted
/// `nosuid,nodev,noatime`, with `default_permissions` (the kernel checks the image's
/// modes), as fuse-backend-rs mounts.
pub fn mount_fuse(at: &Pinned, o: &FuseOptions) -> Result<HeldMount, MountError> {
    let strings = [
        ("source", "starling".to_string()),
        ("subtype", "starling".to_string()),
        ("fd", o.dev.as_raw_fd().to_string()),
        ("rootmode", "40000".to_string()),
        ("user_id", o.uid.to_string()),
        ("group_id", o.gid.to_string()),
        ("max_read", o.max_read.to_string()),
    ];
    mount_new(
        at,
        "fuse",
        &strings,
        if o.allow_other {
            &["default_permissions", "allow_other", "ro"]
        } else {
            &["default_permissions", "ro"]
        },
        MountAttrFlags::MOUNT_ATTR_RDONLY | MountAttrFlags::MOUNT_ATTR_NOATIME,
    )
}

/// Mounts overlayfs over the daemon's own `lower`, `upper` and `work` directories onto `at`;
/// returns its mount id.
pub fn mount_overlay(
    at: &Pinned,
    lower: &Path,
    upper: &Path,
    work: &Path,
) -> Result<HeldMount, MountError> {
    let s = |p: &Path| p.display().to_string();
    let strings = [
        ("source", "overlay".to_string()),
        ("lowerdir", s(lower)),
        ("upperdir", s(upper)),
        ("workdir", s(work)),
    ];
    mount_new(at, "overlay", &strings, &[], MountAttrFlags::empty())
}

/// Creates a file system of `kind` with these settings and attaches it onto `at`, always
/// `nosuid,nodev` (an image grants no privileges and opens no devices on the host); returns
/// the new mount's id.
fn mount_new(
    at: &Pinned,
    kind: &str,
    strings: &[(&str, String)],
    flags: &[&str],
    attrs: MountAttrFlags,
) -> Result<HeldMount, MountError> {
    let err = |step: &str, e: rustix::io::Errno| {
        MountError::Fuse(
            at.shown.clone(),
            format!("{kind} {step}: {}", std::io::Error::from(e)),
        )
    };
    let fs = fsopen(kind, FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| err("fsopen", e))?;
    for (k, v) in strings {
        fsconfig_set_string(&fs, *k, v.as_str()).map_err(|e| err(k, e))?;
    }
    for flag in flags {
        fsconfig_set_flag(&fs, *flag).map_err(|e| err(flag, e))?;
    }
    fsconfig_create(&fs).map_err(|e| err("creating the file system", e))?;
    let mnt = fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        attrs | MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV,
    )
    .map_err(|e| err("fsmount", e))?;
    move_mount(
        &mnt,
        "",
        &at.fd,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(|e| err("move_mount", e))?;
    // Attached now: a failure from here on takes it down again.
    let st = match statx_now(&mnt) {
        Ok(st) if st.stx_mask & StatxFlags::MNT_ID.bits() != 0 && st.stx_mnt_id != 0 => st,
        other => {
            let _ = rustix::mount::unmount(proc_path(&mnt), UnmountFlags::DETACH);
            return Err(match other {
                Err(e) => err("statx", e),
                Ok(_) => err("statx (mount ids need Linux 5.8)", rustix::io::Errno::NOSYS),
            });
        }
    };
    Ok(HeldMount {
        id: st.stx_mnt_id,
        dev: rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor),
        root: mnt,
    })
}

/// A mount made here, held by a descriptor of its root for as long as it is ours: its id
/// cannot be given to another mount meanwhile, and it is unmounted through that descriptor,
/// never by walking a path (which another user could by then have made lead elsewhere, or
/// into a file system of theirs that never answers).
#[derive(Debug)]
pub struct HeldMount {
    pub id: u64,
    /// Its file system's device number.
    pub dev: u64,
    root: OwnedFd,
}

impl HeldMount {
    /// Whether it is still attached (not unmounted from outside).
    pub fn attached(&self) -> bool {
        mount_info(self.id).is_ok_and(|m| m.is_some())
    }

    /// Detaches it even while in use (`MNT_DETACH`); one unmounted from outside already is
    /// no error. The descriptor goes with it, which lets the kernel end the file system.
    pub fn detach(self) -> std::io::Result<()> {
        match rustix::mount::unmount(proc_path(&self.root), UnmountFlags::DETACH) {
            Ok(()) | Err(rustix::io::Errno::INVAL) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Unmounts it unless it is in use (`EBUSY`: it stays, held again, and is handed back
    /// with the error). Our own descriptor would make it busy, so it goes first and the
    /// unmount goes through the parent directory's descriptor (opened from the mount, not by
    /// path) and the mountpoint's name there, not followed (a mountpoint cannot be renamed).
    pub fn unmount(self) -> Result<(), (Option<HeldMount>, std::io::Error)> {
        let at = match mount_info(self.id) {
            Ok(Some((at, _))) => at,
            Ok(None) => return Ok(()),
            Err(e) => return Err((Some(self), e)),
        };
        let Some(name) = at.file_name().map(|n| n.to_owned()) else {
            let e = std::io::Error::other(format!("{} has no name", at.display()));
            return Err((Some(self), e));
        };
        let parent = match rustix::fs::openat(
            &self.root,
            "..",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(p) => p,
            Err(e) => return Err((Some(self), e.into())),
        };
        let reopen = |id: u64| -> std::io::Result<OwnedFd> {
            let there = rustix::fs::openat(
                &parent,
                &name,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::empty(),
            )?;
            if statx_now(&there)?.stx_mnt_id != id {
                return Err(std::io::Error::other(format!(
                    "{} is not where mount {id} is",
                    at.display()
                )));
            }
            Ok(there)
        };
        if let Err(e) = reopen(self.id) {
            return Err((Some(self), e));
        }
        let HeldMount { id, dev, root } = self;
        drop(root);
        match rustix::mount::unmount(proc_path(&parent).join(&name), UnmountFlags::NOFOLLOW) {
            Ok(()) => Ok(()),
            // Still mounted, so its id is still its own: held again.
            Err(e) => {
                let held = reopen(id).ok().map(|root| HeldMount { id, dev, root });
                Err((held, e.into()))
            }
        }
    }
}

/// `statx` of what `fd` holds for its mount id, device and mount-root attribute, asking
/// nothing of its file system: on a FUSE mount a stat is a request, which a server not
/// serving yet (or stalled) would never answer, and a FUSE mount that only its owner may
/// enter answers an empty request mask (and only that) to others too.
fn statx_now(fd: &impl AsFd) -> rustix::io::Result<rustix::fs::Statx> {
    rustix::fs::statx(
        fd,
        "",
        AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC,
        StatxFlags::empty(),
    )
}

fn mount_id(fd: &impl AsFd) -> rustix::io::Result<u64> {
    statx_now(fd).map(|st| st.stx_mnt_id)
}

/// The mount id of the mount `path` leads into (following links: asked for a path, a user
/// means what it shows them), and whether `path` is that mount's root.
pub fn mount_at(path: &Path) -> std::io::Result<(u64, bool)> {
    let fd = rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(mount_of(&fd)?)
}

/// The id of the mount `fd` is on, and whether it is that mount's root.
fn mount_of(fd: &impl AsFd) -> rustix::io::Result<(u64, bool)> {
    let st = statx_now(fd)?;
    let root = st
        .stx_attributes
        .contains(rustix::fs::StatxAttributes::MOUNT_ROOT);
    Ok((st.stx_mnt_id, root))
}

/// Detaches mount `id` of type `kind` after a daemon that held it died (nobody holds its
/// descriptor now), if `/proc/self/mountinfo` still shows it at `path`: through a
/// descriptor of `path` checked to be that mount. `Ok(false)`: it is not there.
pub fn detach_left(id: u64, path: &Path, kind: &str) -> std::io::Result<bool> {
    let here = mount_info(id)?.is_some_and(|(at, k)| at == path && k == kind);
    if !here {
        return Ok(false);
    }
    let fd = rustix::fs::openat(
        CWD,
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )?;
    if mount_of(&fd)? != (id, true) {
        return Ok(false);
    }
    rustix::mount::unmount(proc_path(&fd), UnmountFlags::DETACH)?;
    Ok(true)
}

/// Where mount `id` is attached now and its file system's type, from
/// `/proc/self/mountinfo` (octal escapes undone).
pub fn mount_info(id: u64) -> std::io::Result<Option<(PathBuf, String)>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    for line in info.lines() {
        if line.split(' ').next().and_then(|n| n.parse::<u64>().ok()) != Some(id) {
            continue;
        }
        let mut f = line.split(' ');
        let at = f.nth(4).map(|p| PathBuf::from(unescape(p)));
        // Optional fields end at " - "; the type follows.
        let kind = line
            .split_once(" - ")
            .and_then(|(_, rest)| rest.split(' ').next())
            .map(str::to_string);
        return Ok(at.zip(kind));
    }
    Ok(None)
}

/// mountinfo's `\040`-style escapes of space, tab, newline and backslash, undone.
fn unescape(s: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (b[i], octal) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    std::ffi::OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/a\\040b\\134c"), "/a b\\c");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/cut\\04"), "/cut\\04");
    }

    #[test]
    fn a_pinned_directory_is_checked_through_its_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("d");
        std::fs::create_dir(&d).unwrap();
        let p = Pinned::open(&d).unwrap();
        p.check_empty().unwrap();
        // The name now leads to a full directory; the pinned one is still the empty one.
        std::fs::rename(&d, dir.path().join("moved")).unwrap();
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("x"), b"x").unwrap();
        p.check_empty().unwrap();
        assert!(Pinned::open(&d).unwrap().check_empty().is_err());
        p.check_user_mountable().unwrap_or_else(|e| {
            // Only where the test's temporary directory is on an unusual file system.
            eprintln!("note: {e}");
        });
        let proc = Pinned::open(Path::new("/proc/self")).unwrap();
        let e = proc.check_user_mountable().unwrap_err().to_string();
        assert!(e.contains("users mount onto directories of"), "{e}");
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        assert!(Pinned::open(&file).is_err());
    }
}
