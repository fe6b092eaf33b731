//! The key that authenticates state files. A state names host files — a disk's base and
//! overlays, the store or object socket behind a virtio-fs device — which a restore opens with
//! its user's rights; a checksum only says the file is whole, not who wrote it. So a state
//! that names host files carries a keyed BLAKE3 MAC made with its user's key, and a restore
//! opens those files only when the MAC checks (`file.rs`, `mod.rs`).
//!
//! The key is 32 random bytes in a file of its user's own, mode 0600: `STARLING_SNAPSHOT_KEY`,
//! else `/var/lib/starling/snapshot.key` for root (one key whether a VM was started by
//! `starlingd`, which has no home, or by root's command line: each restores the other's pools
//! and snapshots) and `$XDG_CONFIG_HOME/starling/snapshot.key` or
//! `~/.config/starling/snapshot.key` for other users. It is made the first time a VM is
//! started. Hosts of a fleet that restore each other's snapshots share one key file.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::Error;

pub const KEY_BYTES: usize = 32;

pub struct StateKey {
    key: [u8; KEY_BYTES],
    path: PathBuf,
}

impl StateKey {
    pub fn new(key: [u8; KEY_BYTES], path: PathBuf) -> Self {
        StateKey { key, path }
    }

    /// The keyed BLAKE3 of `bytes`.
    pub fn mac(&self, bytes: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.key, bytes).as_bytes()
    }

    /// Where the key was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Where this process's key is.
pub fn default_path() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(p) = env("STARLING_SNAPSHOT_KEY") {
        return p;
    }
    if crate::private::euid() == 0 {
        return PathBuf::from(ROOT_KEY);
    }
    if let Some(d) = env("XDG_CONFIG_HOME") {
        return d.join("starling/snapshot.key");
    }
    match env("HOME") {
        Some(h) => h.join(".config/starling/snapshot.key"),
        None => PathBuf::from(ROOT_KEY),
    }
}

/// Root's key (and that of a user without a home, who cannot make it there).
const ROOT_KEY: &str = "/var/lib/starling/snapshot.key";

static PREPARED: OnceLock<Result<StateKey, Error>> = OnceLock::new();

/// Reads (or makes) the key now, while the process may still open and create files: a
/// monitor does so before its seccomp filter is in place, for the snapshots it may write
/// later. Whether that worked is kept, and told by `get`.
pub fn prepare() {
    PREPARED.get_or_init(|| load_or_create(&default_path()));
}

/// Holds no key in this process, for good: a jailed monitor must not carry root's key into
/// its jail (a guest that took it over could sign states naming host files). Its snapshots'
/// states carry no MAC, so those naming host resources are restored by nobody.
pub fn forgo() {
    let path = default_path();
    PREPARED.get_or_init(|| {
        Err(bad(
            &path,
            "not read by a jailed monitor (states naming disks, TAPs or image roots are \
             neither signed nor trusted in a jail)",
        ))
    });
}

/// This process's key, read (or made) once.
pub fn get() -> Result<&'static StateKey, &'static Error> {
    PREPARED
        .get_or_init(|| load_or_create(&default_path()))
        .as_ref()
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::SnapshotKey {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Reads the key at `path`, making it first (32 bytes from the kernel's random source, in a
/// private directory) when there is none.
pub fn load_or_create(path: &Path) -> Result<StateKey, Error> {
    if let Some(k) = load(path)? {
        return Ok(k);
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // Made 0700 if missing, taken as it is otherwise (a configuration directory may be a
    // link of the user's own): the key file itself is checked, as ssh checks a private key.
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(dir)
        .map_err(|e| bad(path, format!("creating {}: {e}", dir.display())))?;
    let mut key = [0u8; KEY_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut r| r.read_exact(&mut key))
        .map_err(|e| bad(path, format!("reading /dev/urandom: {e}")))?;
    // Written whole under a name of its own, then linked into place: a process that starts
    // at the same moment either sees no key or all of it, and one of the two keys wins.
    static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".snapshot.key.{}.{n}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = crate::private::create_file(&tmp)
        .and_then(|mut f| f.write_all(&key).and_then(|()| f.sync_all()));
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(StateKey::new(key, path.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            load(path)?.ok_or_else(|| bad(path, "it vanished as it was being made"))
        }
        Err(e) => Err(bad(path, format!("writing it: {e}"))),
    }
}

/// The key at `path`; None when there is no file there. A key another user could read or
/// replace is refused, as ssh refuses such a private key.
fn load(path: &Path) -> Result<Option<StateKey>, Error> {
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(bad(path, "it is a symbolic link (the key must be a file)"))
        }
        Err(e) => return Err(bad(path, e.to_string())),
    };
    let m = f.metadata().map_err(|e| bad(path, e.to_string()))?;
    if !m.is_file() {
        return Err(bad(path, "not a regular file"));
    }
    let me = crate::private::euid();
    if m.uid() != me {
        return Err(bad(
            path,
            format!("owned by user {}, not by this user ({me})", m.uid()),
        ));
    }
    if m.mode() & 0o077 != 0 {
        return Err(bad(
            path,
            format!(
                "mode {:04o}: others may read it (chmod 600 {})",
                m.mode() & 0o7777,
                path.display()
            ),
        ));
    }
    let mut key = [0u8; KEY_BYTES];
    let mut rest = Vec::new();
    f.read_exact(&mut key)
        .and_then(|()| f.read_to_end(&mut rest))
        .map_err(|e| bad(path, format!("reading it: {e}")))?;
    if !rest.is_empty() {
        return Err(bad(
            path,
            format!("{} bytes; a key is {KEY_BYTES}", KEY_BYTES + rest.len()),
        ));
    }
    Ok(Some(StateKey::new(key, path.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_key_is_made_once_privately_and_read_back_the_same() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("conf/starling/snapshot.key");
        // Made by whichever of several processes gets there first; all end with one key.
        let keys: Vec<[u8; 32]> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| load_or_create(&path).unwrap().mac(b"x")))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(load_or_create(&path).unwrap().mac(b"x"), keys[0]);
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!((m.len(), m.mode() & 0o777), (32, 0o600));
        assert_eq!(
            std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777,
            0o700
        );
        // Nothing left over from the making.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        // Another key file gives other MACs.
        let other = load_or_create(&t.path().join("other.key")).unwrap();
        assert_ne!(other.mac(b"x"), keys[0]);
    }

    #[test]
    fn a_key_others_could_read_or_swap_is_refused_by_name() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("snapshot.key");
        load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create(&path).err().unwrap().to_string();
        assert!(
            e.contains(&path.display().to_string())
                && e.contains("mode 0644")
                && e.contains("chmod 600"),
            "{e}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = t.path().join("link.key");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let e = load_or_create(&link).err().unwrap().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        let short = t.path().join("short.key");
        std::fs::write(&short, b"0123").unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = load_or_create(&short).err().unwrap().to_string();
        assert!(e.contains("reading it"), "{e}");
        let long = t.path().join("long.key");
        std::fs::write(&long, [7u8; 40]).unwrap();
        std::fs::set_permissions(&long, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = load_or_create(&long).err().unwrap().to_string();
        assert!(e.contains("40 bytes; a key is 32"), "{e}");
        // Someone else's (as root: give it away).
        if crate::private::euid() == 0 {
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            let e = load_or_create(&path).err().unwrap().to_string();
            assert!(e.contains("owned by user 65534"), "{e}");
        }
    }
}
