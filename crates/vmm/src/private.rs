//! Files and directories holding a VM's memory, state, logs or sockets: its owner's alone
//! (0600 files, 0700 directories), and files created new (`O_CREAT|O_EXCL`, never through a
//! link), so a file or link someone put there first is refused rather than written through.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Creates `path` (and any missing parents) 0700; an existing directory is left as it is.
pub fn create_dir_all(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
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
    use std::os::unix::fs::PermissionsExt;

    use super::*;

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
