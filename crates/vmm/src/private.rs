//! Files and directories holding a VM's memory, state, logs or sockets: its owner's alone
//! (0600 files, 0700 directories), and files created new (`O_CREAT|O_EXCL`, never through a
//! link), so a file or link someone put there first is refused rather than written through.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates `path` (and any missing parents) 0700; an existing one must pass [`make_private`].
pub fn create_dir_all(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    make_private(path)
}

/// Checks that `path` is a directory of this user's (not a link, not another user's) and
/// makes it 0700 if others had any access: what is written in it is a VM's, and whoever may
/// write the directory may swap what is in it. Checked and changed through one descriptor,
/// so a name swapped in between changes nothing else.
pub fn make_private(path: &Path) -> std::io::Result<()> {
    let refuse = |why: String| {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} {why} (VM files go only in a directory of this user's)",
                path.display()
            ),
        ))
    };
    let dir = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(d) => d,
        // O_DIRECTORY|O_NOFOLLOW on a link fails ENOTDIR (or ELOOP): said as what it is.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
            let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
            return refuse(
                if link {
                    "is a symbolic link"
                } else {
                    "is not a directory"
                }
                .into(),
            );
        }
        Err(e) => return Err(e),
    };
    let md = dir.metadata()?;
    let me = euid();
    if md.uid() != me {
        return refuse(format!(
            "is owned by uid {}, not by you (uid {me})",
            md.uid()
        ));
    }
    if md.mode() & 0o077 != 0 {
        dir.set_permissions(std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// This process's effective user id.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Creates `path` new, 0600, for writing.
pub fn create_file(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_directory_is_made_private_and_a_link_or_a_stranger_s_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let open = t.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        create_dir_all(&open).unwrap();
        let mode = std::fs::metadata(&open).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&open, &link).unwrap();
        let e = create_dir_all(&link).unwrap_err().to_string();
        assert!(e.contains("is a symbolic link"), "{e}");
        if euid() != 0 {
            eprintln!("SKIP another user's directory: needs root to make one");
            return;
        }
        let theirs = t.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let e = create_dir_all(&theirs).unwrap_err().to_string();
        assert!(e.contains("owned by uid 65534"), "{e}");
    }

    #[test]
    fn files_and_directories_are_the_owner_s_and_a_planted_link_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("a/b");
        create_dir_all(&dir).unwrap();
        for d in [t.path().join("a"), dir.clone()] {
            assert_eq!(
                std::fs::metadata(&d).unwrap().permissions().mode() & 0o777,
                0o700
            );
        }
        let f = dir.join("memory");
        create_file(&f).unwrap();
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Already there: refused, not truncated.
        std::fs::write(&f, b"kept").unwrap();
        assert!(create_file(&f).is_err());
        assert_eq!(std::fs::read(&f).unwrap(), b"kept");
        // A link planted where a file is to be written is not followed.
        let target = t.path().join("elsewhere");
        std::os::unix::fs::symlink(&target, dir.join("state")).unwrap();
        assert!(create_file(&dir.join("state")).is_err());
        assert!(!target.exists());
    }
}
