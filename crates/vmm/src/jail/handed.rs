//! Files a jailed monitor's devices need but its jail's user may not open (its caller's
//! console file, a writable disk, a TAP, which needs `CAP_NET_ADMIN` to attach to): opened
//! in the jail's plan while the monitor is still root and handed to the device that asks for
//! the same thing later, by a key naming it (`disk:rw:PATH`, `tap:NAME`, `console:PATH`). The
//! files stay their owners'; nothing is shown in the jail for them.

use std::fs::File;
use std::sync::Mutex;

static HANDED: Mutex<Vec<(String, File)>> = Mutex::new(Vec::new());

/// Keeps `file` for whoever asks for `key`.
pub fn put(key: String, file: File) {
    HANDED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((key, file));
}

/// The file kept for `key`, once.
pub fn take(key: &str) -> Option<File> {
    let mut handed = HANDED.lock().unwrap_or_else(|p| p.into_inner());
    let i = handed.iter().position(|(k, _)| k == key)?;
    Some(handed.swap_remove(i).1)
}

/// The key of a disk's base file.
pub fn disk_key(path: &std::path::Path, read_only: bool) -> String {
    format!(
        "disk:{}:{}",
        if read_only { "ro" } else { "rw" },
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_handed_once_to_whoever_names_it() {
        let f = tempfile::tempfile().unwrap();
        put("tap:handed-test".into(), f);
        assert!(take("tap:other").is_none());
        assert!(take("tap:handed-test").is_some());
        assert!(take("tap:handed-test").is_none());
    }
}
