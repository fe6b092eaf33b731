//! Entry points for the fuzz targets in `fuzz/` and the corpus replay test: each feeds
//! arbitrary bytes to a parser and exercises everything it can reach. They must never panic;
//! errors are the expected outcome for almost every input.

use std::io::Read;
use std::sync::Arc;

use crate::device::BlockDev;
use crate::ext4::Ext4;

/// Opens `data` as an ext4 image and walks it: every directory, inode, xattr, link and up to
/// 1 MiB of each file. Work is bounded so hostile inputs cannot make it run away.
pub fn ext4(data: &[u8]) {
    let dev: Arc<dyn BlockDev> = Arc::new(data.to_vec());
    let Ok(fs) = Ext4::open(dev) else { return };
    let Ok(root) = fs.root() else { return };
    let mut stack = vec![(root, 0u32)];
    let mut budget = 10_000u32;
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = fs.read_dir(&dir) else {
            continue;
        };
        for (_, ino) in entries {
            budget = budget.saturating_sub(1);
            if budget == 0 {
                return;
            }
            let Ok(inode) = fs.inode(ino) else { continue };
            let _ = fs.xattrs(&inode);
            let _ = inode.rdev();
            if inode.is_dir() {
                if depth < 32 {
                    stack.push((inode, depth + 1));
                }
            } else if inode.is_symlink() {
                let _ = fs.read_link(&inode);
            } else if inode.is_file() {
                if let Ok(r) = fs.file_reader(&inode) {
                    let _ = std::io::copy(&mut r.take(1 << 20), &mut std::io::sink());
                }
            }
        }
    }
}

/// Reads `data` as a partition table and picks the root partition.
pub fn partitions(data: &[u8]) {
    let dev: Arc<dyn BlockDev> = Arc::new(data.to_vec());
    let _ = crate::partition::read_table(&*dev);
    let _ = crate::partition::root_filesystem(dev.clone(), None);
    let _ = crate::partition::root_filesystem(dev, Some(2));
}

/// Opens `data` as a qcow2 image file (through a temporary file, as imago reads files) and
/// reads from it.
pub fn qcow2(data: &[u8]) {
    let Ok(dir) = std::env::temp_dir().canonicalize() else {
        return;
    };
    let path = dir.join(format!("starling-fuzz-{}.qcow2", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok((dev, _)) = crate::device::open(&path, false) {
        let size = dev.size();
        let mut buf = vec![0u8; 4096];
        for off in [0, 65536, size / 2, size.saturating_sub(4096)] {
            let _ = dev.read_at(&mut buf, off);
        }
    }
    let _ = std::fs::remove_file(&path);
}
