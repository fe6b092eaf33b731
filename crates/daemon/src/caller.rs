//! Who is asking, and acting with their rights. The API socket's peer credentials
//! (SO_PEERCRED, read when the connection is accepted) make each request's [`Caller`]: the
//! daemon's own user and root administer the host; other local users (when the
//! configuration's `users` lets them in) may mount images read-only onto directories they
//! own, see and unmount their own mounts, and nothing else. Whatever such a user names — the
//! mountpoint, a store, a record or prefetch file — is opened with their rights
//! ([`as_user`]: the calling thread's effective ids switched to theirs and back), so the
//! daemon reads and writes for them only what they could themselves.

use std::path::Path;

use rustix::process::{Gid, Uid};

/// The identity of one API connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The daemon's own user, or root.
    Admin { uid: u32 },
    /// Any other local user, with the primary group the kernel gave for them.
    User { uid: u32, gid: u32 },
}

impl Caller {
    /// The caller on the other end of a connection whose peer credentials are `uid`, `gid`.
    pub fn from_peer(uid: u32, gid: u32) -> Caller {
        let me = rustix::process::geteuid().as_raw();
        if uid == me || uid == 0 {
            Caller::Admin { uid }
        } else {
            Caller::User { uid, gid }
        }
    }

    pub fn uid(&self) -> u32 {
        match self {
            Caller::Admin { uid } | Caller::User { uid, .. } => *uid,
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Admin { .. })
    }
}

/// Runs `f` with the effective user and group of `caller` (and that group alone) on this
/// thread, then restores the daemon's; an administrator's `f` runs as the daemon. Only this
/// thread changes (the raw system calls, not libc's process-wide wrappers); a thread `f`
/// started would inherit the user's ids (none does). The daemon must run as root to act for
/// another user.
pub fn as_user<T>(caller: &Caller, f: impl FnOnce() -> T) -> std::io::Result<T> {
    let Caller::User { uid, gid } = *caller else {
        return Ok(f());
    };
    if !rustix::process::geteuid().is_root() {
        return Err(std::io::Error::other(format!(
            "starlingd does not run as root and cannot act as user {uid}"
        )));
    }
    let (my_gid, my_groups) = (
        rustix::process::getegid(),
        rustix::process::getgroups().map_err(std::io::Error::from)?,
    );
    // Groups and group first, while this thread still has the capabilities to set them;
    // each step taken is undone, and only those (a daemon without CAP_SETGID fails the first
    // and changes nothing).
    let mut done = 0;
    type Step<'a> = &'a dyn Fn() -> rustix::io::Result<()>;
    let steps: [Step; 3] = [
        &|| rustix::thread::set_thread_groups(&[Gid::from_raw(gid)]),
        &|| rustix::thread::set_thread_res_gid(None, Gid::from_raw(gid), None),
        &|| rustix::thread::set_thread_res_uid(None, Uid::from_raw(uid), None),
    ];
    let mut switched = Ok(());
    for step in steps {
        switched = step();
        if switched.is_err() {
            break;
        }
        done += 1;
    }
    let result = switched.map(|()| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    // The saved user id stayed root: setting the effective one back restores the
    // capabilities, then the group and groups can be restored.
    let mut restored = Ok(());
    if done >= 3 {
        restored =
            restored.and_then(|()| rustix::thread::set_thread_res_uid(None, Uid::ROOT, None));
    }
    if done >= 2 {
        restored = restored.and_then(|()| rustix::thread::set_thread_res_gid(None, my_gid, None));
    }
    if done >= 1 {
        restored = restored.and_then(|()| rustix::thread::set_thread_groups(&my_groups));
    }
    if let Err(e) = restored {
        // A pool thread left with a user's identity would serve others with it.
        tracing::error!("restoring the daemon's identity after acting as user {uid}: {e}");
        std::process::abort();
    }
    if done >= 2 {
        // Changing ids made the kernel mark the whole process not dumpable (no core dumps,
        // /proc/PID root's alone): it is itself again.
        let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::Dumpable);
    }
    match result {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(p)) => std::panic::resume_unwind(p),
        Err(e) => Err(std::io::Error::other(format!(
            "acting as user {uid}: {} (starlingd needs CAP_SETUID and CAP_SETGID to serve \
             other users)",
            std::io::Error::from(e)
        ))),
    }
}

/// Whether `caller` could open `path` for reading (as themselves).
pub fn may_read(caller: &Caller, path: &Path) -> Result<(), String> {
    match as_user(caller, || std::fs::File::open(path)) {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) | Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_user_s_rights_are_used_on_this_thread_only_and_restored() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIPPED: acting as another user needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"root's").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let nobody = Caller::User {
            uid: 65534,
            gid: 65534,
        };
        let e = may_read(&nobody, &secret).unwrap_err();
        assert!(e.contains("Permission denied"), "{e}");
        // Made as the user: theirs.
        let made = dir.path().join("made");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        as_user(&nobody, || std::fs::write(&made, b"x"))
            .unwrap()
            .unwrap();
        let st = rustix::fs::stat(&made).unwrap();
        assert_eq!((st.st_uid, st.st_gid), (65534, 65534));
        // The thread is the daemon again, and other threads never changed.
        may_read(&Caller::Admin { uid: 0 }, &secret).unwrap();
        assert!(std::fs::read(&secret).is_ok());
        assert_eq!(rustix::process::geteuid().as_raw(), 0);
        // A panic inside still restores the identity.
        let caught = std::panic::catch_unwind(|| {
            let _ = as_user(&nobody, || panic!("inside"));
        });
        assert!(caught.is_err());
        assert_eq!(rustix::process::geteuid().as_raw(), 0);
        assert!(std::fs::read(&secret).is_ok());
    }
}
