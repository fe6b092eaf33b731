//! Export to a tar archive: GNU headers (base-256 numbers, long names) plus PAX records for
//! what ustar cannot say (nanosecond mtimes, xattrs as SCHILY.xattr.*), the combination GNU
//! tar and bsdtar both read. `DEST` ending in .gz/.tgz or .zst is compressed; `-` is stdout.
//! A file destination is written beside and renamed into place, so it is never half-written.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::Ordering;

use starling_store::{ObjectId, Store};
use tar::{EntryType, Header};

use crate::chunk::Progress;
use crate::error::{Error, IoContext, Result};
use crate::export::{ContentReader, ExportReport};
use crate::manifest::{Meta, Node, Tree};
use crate::path;
use crate::versions::Resolved;

pub(crate) fn export(
    store: &Store,
    image: &Resolved,
    dest: &Path,
    progress: &Progress,
) -> Result<ExportReport> {
    let name = dest.to_string_lossy();
    let compress = if name.ends_with(".gz") || name.ends_with(".tgz") {
        "gz"
    } else if name.ends_with(".zst") {
        "zst"
    } else {
        ""
    };
    if name == "-" {
        let out = std::io::stdout().lock();
        let (report, mut w) = write_archive(store, image, BufWriter::new(out), progress, dest)?;
        w.flush().at(dest)?;
        return Ok(report);
    }
    let tmp = dest.with_file_name(format!(
        ".{}.partial-{}",
        dest.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let file = File::create(&tmp).at(&tmp)?;
    let buffered = BufWriter::with_capacity(1 << 20, file);
    let result = (|| {
        let (report, file) = match compress {
            "gz" => {
                let gz = flate2::write::GzEncoder::new(buffered, flate2::Compression::default());
                let (report, gz) = write_archive(store, image, gz, progress, &tmp)?;
                (report, gz.finish().at(&tmp)?)
            }
            "zst" => {
                let z = zstd::stream::write::Encoder::new(buffered, 3).at(&tmp)?;
                let (report, z) = write_archive(store, image, z, progress, &tmp)?;
                (report, z.finish().at(&tmp)?)
            }
            _ => write_archive(store, image, buffered, progress, &tmp)?,
        };
        file.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .at(&tmp)?;
        Ok(report)
    })();
    match result {
        Ok(report) => {
            fs::rename(&tmp, dest).at(dest)?;
            Ok(report)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Writes the image as a tar stream into `writer` and hands the writer back for finishing.
pub(crate) fn write_archive<'a, W: Write>(
    store: &'a Store,
    image: &Resolved,
    writer: W,
    progress: &'a Progress,
    dest: &'a Path,
) -> Result<(ExportReport, W)> {
    let mut ex = TarExport {
        store,
        image: image.display.clone(),
        builder: tar::Builder::new(writer),
        report: ExportReport::default(),
        progress,
        dest,
    };
    ex.entry(
        b"./",
        &Node::Dir {
            meta: image.commit.root_meta.clone(),
            tree: image.commit.root,
        },
    )?;
    ex.tree(&image.commit.root, &mut Vec::new())?;
    let mut inner = ex.builder.into_inner().at(dest)?;
    inner.flush().at(dest)?;
    Ok((ex.report, inner))
}

struct TarExport<'a, W: Write> {
    store: &'a Store,
    image: String,
    builder: tar::Builder<W>,
    report: ExportReport,
    progress: &'a Progress,
    dest: &'a Path,
}

impl<W: Write> TarExport<'_, W> {
    fn tree(&mut self, id: &ObjectId, comps: &mut Vec<Vec<u8>>) -> Result<()> {
        let tree = Tree::decode(id, &self.store.get(id)?)?;
        for e in &tree.entries {
            comps.push(e.name.to_vec());
            // No "./" prefix: the tar crate strips it from short names but not from GNU long
            // names, and GNU tar matches directories by exact name when restoring their times.
            let mut p = path::join(comps);
            if let Node::Dir { .. } = e.node {
                p.push(b'/');
            }
            self.entry(&p, &e.node)?;
            if let Node::Dir { tree, .. } = &e.node {
                self.tree(tree, comps)?;
            }
            comps.pop();
        }
        Ok(())
    }

    fn entry(&mut self, p: &[u8], node: &Node) -> Result<()> {
        let dest = self.dest;
        let io = |e: std::io::Error| Error::Io {
            path: dest.to_path_buf(),
            source: e,
        };
        let mut h = Header::new_gnu();
        if let Some(meta) = node.meta() {
            self.pax(meta)?;
            h.set_mode(meta.mode);
            h.set_uid(meta.uid as u64);
            h.set_gid(meta.gid as u64);
            h.set_mtime(meta.mtime_sec.max(0) as u64);
        }
        h.set_size(0);
        let path = Path::new(OsStr::from_bytes(p));
        match node {
            Node::File { size, data, .. } => {
                h.set_entry_type(EntryType::Regular);
                h.set_size(*size);
                let reader = ContentReader::new(self.store, data);
                self.builder
                    .append_data(&mut h, path, reader)
                    .map_err(|e| Error::Export {
                        image: self.image.clone(),
                        path: path::display(p),
                        reason: e.to_string(),
                    })?;
                self.progress.files.fetch_add(1, Ordering::Relaxed);
                self.progress.bytes.fetch_add(*size, Ordering::Relaxed);
                self.report.files += 1;
                self.report.bytes += size;
            }
            Node::Dir { .. } => {
                h.set_entry_type(EntryType::Directory);
                self.builder
                    .append_data(&mut h, path, std::io::empty())
                    .map_err(io)?;
            }
            Node::Symlink { target, .. } => {
                h.set_entry_type(EntryType::Symlink);
                self.builder
                    .append_link(&mut h, path, OsStr::from_bytes(target))
                    .map_err(io)?;
            }
            Node::Hardlink { target } => {
                // The inode's metadata travels with its first name; zeros here are ignored.
                h.set_entry_type(EntryType::Link);
                h.set_mode(0o644);
                h.set_uid(0);
                h.set_gid(0);
                h.set_mtime(0);
                self.builder
                    .append_link(&mut h, path, OsStr::from_bytes(target))
                    .map_err(io)?;
            }
            Node::CharDevice { rdev, .. } | Node::BlockDevice { rdev, .. } => {
                h.set_entry_type(if matches!(node, Node::CharDevice { .. }) {
                    EntryType::Char
                } else {
                    EntryType::Block
                });
                h.set_device_major(rustix::fs::major(*rdev)).map_err(io)?;
                h.set_device_minor(rustix::fs::minor(*rdev)).map_err(io)?;
                self.builder
                    .append_data(&mut h, path, std::io::empty())
                    .map_err(io)?;
            }
            Node::Fifo { .. } => {
                h.set_entry_type(EntryType::Fifo);
                self.builder
                    .append_data(&mut h, path, std::io::empty())
                    .map_err(io)?;
            }
            Node::Socket { .. } => {
                self.report.warnings.push(format!(
                    "{}: socket left out (tar cannot hold sockets)",
                    path::display(p)
                ));
            }
        }
        Ok(())
    }

    /// PAX records for what the GNU header cannot carry exactly.
    fn pax(&mut self, meta: &Meta) -> Result<()> {
        let mut recs: Vec<(String, Vec<u8>)> = Vec::new();
        if meta.mtime_nsec != 0 || meta.mtime_sec < 0 {
            recs.push((
                "mtime".into(),
                pax_time(meta.mtime_sec, meta.mtime_nsec).into_bytes(),
            ));
        }
        for x in &meta.xattrs {
            let name = std::str::from_utf8(&x.name).map_err(|_| Error::Export {
                image: self.image.clone(),
                path: String::new(),
                reason: format!("xattr name {:?} is not UTF-8; tar cannot carry it", x.name),
            })?;
            recs.push((format!("SCHILY.xattr.{name}"), x.value.to_vec()));
        }
        if recs.is_empty() {
            return Ok(());
        }
        self.builder
            .append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .at(self.dest)
    }
}

fn pax_time(sec: i64, nsec: u32) -> String {
    if sec >= 0 {
        format!("{sec}.{nsec:09}")
    } else if nsec == 0 {
        format!("{sec}")
    } else {
        // -1.25 s is sec = -2, nsec = 750_000_000.
        format!("-{}.{:09}", -(sec + 1), 1_000_000_000 - nsec)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pax_time_signs() {
        assert_eq!(super::pax_time(12, 500_000_000), "12.500000000");
        assert_eq!(super::pax_time(-2, 750_000_000), "-1.250000000");
        assert_eq!(super::pax_time(-3, 0), "-3");
    }
}
