//! File content into objects: tiny files inline, the rest cut by content-defined chunking.
//!
//! FastCDC (the 2020 variant) finds the same cut points in the same content wherever it sits,
//! so an edit or insertion changes only the chunks it touches. Sizes are chosen from the
//! measurements in bench/ (see docs/ARCHITECTURE.md): most files of a Debian tree are smaller
//! than one chunk and are stored whole, which already gives file-level dedup; large files
//! (libraries, locale archives, images) get sub-file dedup across package versions.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};

use fastcdc::v2020::StreamCDC;
use serde_bytes::ByteBuf;
use starling_store::Txn;

use crate::error::{Error, Result};
use crate::manifest::{ChunkRef, FileData};

/// Files up to this size are kept in their tree entry.
pub const INLINE_MAX: usize = 64;
pub const CHUNK_MIN: u32 = 16 * 1024;
pub const CHUNK_AVG: u32 = 64 * 1024;
pub const CHUNK_MAX: u32 = 256 * 1024;

/// Live counters an importer or exporter advances, for progress display.
#[derive(Debug, Default)]
pub struct Progress {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    /// Bytes that were new to the store (after dedup, before compression).
    pub new_bytes: AtomicU64,
}

/// Stores everything `reader` yields; returns the byte count and how to find the bytes again.
/// `what` names the source in errors.
pub fn store_content(
    txn: &Txn<'_>,
    mut reader: impl Read,
    progress: &Progress,
    what: &dyn Fn(std::io::Error) -> Error,
) -> Result<(u64, FileData)> {
    let mut head = Vec::with_capacity(INLINE_MAX + 1);
    (&mut reader)
        .take(INLINE_MAX as u64 + 1)
        .read_to_end(&mut head)
        .map_err(what)?;
    if head.len() <= INLINE_MAX {
        progress
            .bytes
            .fetch_add(head.len() as u64, Ordering::Relaxed);
        return Ok((head.len() as u64, FileData::Inline(ByteBuf::from(head))));
    }
    let mut chunks = Vec::new();
    let mut size = 0u64;
    let stream = StreamCDC::new(
        std::io::Cursor::new(head).chain(reader),
        CHUNK_MIN,
        CHUNK_AVG,
        CHUNK_MAX,
    );
    for chunk in stream {
        let chunk = chunk.map_err(|e| match e {
            fastcdc::v2020::Error::IoError(io) => what(io),
            other => what(std::io::Error::other(other.to_string())),
        })?;
        let put = txn.put(&chunk.data)?;
        let len = chunk.data.len() as u64;
        size += len;
        progress.bytes.fetch_add(len, Ordering::Relaxed);
        if put.new {
            progress.new_bytes.fetch_add(len, Ordering::Relaxed);
        }
        chunks.push(ChunkRef {
            id: put.id,
            len: chunk.data.len() as u32,
        });
    }
    Ok((size, FileData::Chunks(chunks)))
}
