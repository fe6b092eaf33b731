//! Copying a part of an image out to the host from any object source (the local store or a
//! repository read in place): a kernel and its modules for a VM's boot artifact. Regular
//! files, directories and symlinks only, owned by whoever extracts, and bounded: an image
//! cannot make the host write more than the caller allows.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use starling_store::ObjectId;

use crate::browse::Browser;
use crate::error::{Error, IoContext, Result};
use crate::manifest::Node;

/// What an extraction wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct Extracted {
    pub files: u64,
    pub bytes: u64,
}

/// Copies the directory at `path` in the version whose root tree is `root` into `dest`
/// (created); refuses to write more than `max_bytes`. Names are taken as the image has them
/// but never `.`/`..` or with a `/`, so nothing lands outside `dest`.
pub fn extract_dir(
    browser: &mut Browser<'_>,
    root: &ObjectId,
    path: &str,
    dest: &Path,
    max_bytes: u64,
) -> Result<Extracted> {
    let tree = match browser.lookup(root, path.as_bytes(), true)? {
        Some(Node::Dir { tree, .. }) => tree,
        _ => {
            return Err(Error::Invalid(format!(
                "{path} is not a directory in the image"
            )))
        }
    };
    let mut done = Extracted::default();
    copy_tree(browser, root, &tree, dest, path, max_bytes, &mut done)?;
    Ok(done)
}

/// Copies the regular file at `path` (symlinks followed inside the image) to `dest`.
pub fn extract_file(
    browser: &mut Browser<'_>,
    root: &ObjectId,
    path: &str,
    dest: &Path,
    max_bytes: u64,
) -> Result<u64> {
    let bytes = browser
        .read_path(root, path, max_bytes)?
        .ok_or_else(|| Error::Invalid(format!("{path} is not a regular file in the image")))?;
    std::fs::write(dest, &bytes).at(dest)?;
    Ok(bytes.len() as u64)
}

fn bounded(done: &Extracted, size: u64, max: u64, what: &str) -> Result<()> {
    if done.bytes + size > max {
        return Err(Error::Invalid(format!(
            "{what}: more than {max} bytes to extract"
        )));
    }
    Ok(())
}

fn write(to: &Path, bytes: &[u8], done: &mut Extracted) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    // New files only, never through a link already there.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(to)
        .at(to)?;
    f.write_all(bytes).at(to)?;
    done.bytes += bytes.len() as u64;
    done.files += 1;
    Ok(())
}

fn copy_tree(
    browser: &mut Browser<'_>,
    root: &ObjectId,
    tree: &ObjectId,
    dest: &Path,
    what: &str,
    max: u64,
    done: &mut Extracted,
) -> Result<()> {
    std::fs::create_dir_all(dest).at(dest)?;
    let t = browser.tree(tree)?;
    for e in &t.entries {
        let name = e.name.as_slice();
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
            return Err(Error::Invalid(format!(
                "{what}: an entry has an unsafe name"
            )));
        }
        let to = dest.join(std::ffi::OsStr::from_bytes(name));
        let sub = format!("{what}/{}", String::from_utf8_lossy(name));
        match &e.node {
            Node::Dir { tree, .. } => copy_tree(browser, root, tree, &to, &sub, max, done)?,
            Node::File { size, data, .. } => {
                let bytes = bounded(done, *size, max, what)
                    .and_then(|()| browser.read(data, *size, max, &sub))?;
                write(&to, &bytes, done)?;
            }
            Node::Symlink { target, .. } => {
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &to).at(&to)?
            }
            // A hard link: another copy of its group's content (the target is a path from the
            // image root).
            Node::Hardlink { target } => {
                let p = format!("/{}", String::from_utf8_lossy(target));
                let left = max.saturating_sub(done.bytes);
                if let Some(bytes) = browser.read_path(root, &p, left)? {
                    write(&to, &bytes, done)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}
