//! Exporters: an image version becomes a directory tree or a tar archive.

mod dir;
mod disk;
mod oci;
mod tar;

use std::io::Read;
use std::path::Path;

use starling_store::Store;

use crate::error::Result;
use crate::manifest::{ChunkRef, FileData};
use crate::versions::Resolved;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportFormat {
    Dir,
    Tar,
    /// ext4 file system image; `size` in bytes, `None` to fit with headroom.
    Ext4 {
        size: Option<u64>,
    },
    /// The ext4 image in a qcow2 container.
    Qcow2 {
        size: Option<u64>,
    },
    Erofs,
    /// An OCI image layout directory; the image is named `ref_name` in its index.
    Oci {
        ref_name: String,
    },
}

#[derive(Debug, Default)]
pub struct ExportReport {
    pub files: u64,
    pub bytes: u64,
    /// What could not be reproduced (e.g. device nodes when not root), one line each.
    pub warnings: Vec<String>,
}

pub fn export(
    store: &Store,
    image: &Resolved,
    dest: &Path,
    format: ExportFormat,
    progress: &crate::chunk::Progress,
) -> Result<ExportReport> {
    match format {
        ExportFormat::Dir => dir::export(store, image, dest, progress),
        ExportFormat::Tar => tar::export(store, image, dest, progress),
        ExportFormat::Ext4 { size } => {
            disk::export(store, image, dest, disk::DiskKind::Ext4, size, progress)
        }
        ExportFormat::Qcow2 { size } => {
            disk::export(store, image, dest, disk::DiskKind::Qcow2, size, progress)
        }
        ExportFormat::Oci { ref_name } => oci::export(store, image, dest, &ref_name, progress),
        ExportFormat::Erofs => {
            disk::export(store, image, dest, disk::DiskKind::Erofs, None, progress)
        }
    }
}

/// Streams a file's bytes out of the store, verifying each chunk.
pub(crate) struct ContentReader<'a> {
    store: &'a Store,
    inline: Option<&'a [u8]>,
    chunks: std::slice::Iter<'a, ChunkRef>,
    buf: Vec<u8>,
    pos: usize,
}

impl<'a> ContentReader<'a> {
    pub fn new(store: &'a Store, data: &'a FileData) -> Self {
        let (inline, chunks): (_, &[ChunkRef]) = match data {
            FileData::Inline(b) => (Some(b.as_slice()), &[]),
            FileData::Chunks(c) => (None, c),
        };
        ContentReader {
            store,
            inline,
            chunks: chunks.iter(),
            buf: Vec::new(),
            pos: 0,
        }
    }

    /// The next piece of content, or `None` at the end.
    pub fn next_piece(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        if let Some(b) = self.inline.take() {
            return Ok(Some(b.to_vec()));
        }
        match self.chunks.next() {
            None => Ok(None),
            Some(c) => {
                let data = self.store.get(&c.id).map_err(std::io::Error::other)?;
                if data.len() != c.len as usize {
                    return Err(std::io::Error::other(format!(
                        "chunk {} is {} bytes, the manifest says {}",
                        c.id,
                        data.len(),
                        c.len
                    )));
                }
                Ok(Some(data))
            }
        }
    }
}

impl Read for ContentReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.next_piece()? {
                None => return Ok(0),
                Some(b) => {
                    self.buf = b;
                    self.pos = 0;
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
