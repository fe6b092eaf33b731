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

/// How file content is cut. The defaults are the measured choice; other values exist for the
/// benchmarks that justify them (an image imported with other parameters still reads back
/// fine, it just shares fewer chunks with the rest of the store).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkParams {
    /// Files up to this size are kept in their tree entry.
    pub inline_max: usize,
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl Default for ChunkParams {
    fn default() -> Self {
        ChunkParams::with_avg(64 * 1024)
    }
}

impl ChunkParams {
    /// FastCDC bounds at a quarter and four times the average, as its authors recommend.
    pub fn with_avg(avg: u32) -> Self {
        let avg = avg.clamp(1024, 4 << 20);
        ChunkParams {
            inline_max: 1024,
            min: avg / 4,
            avg,
            max: avg * 4,
        }
    }
}

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
    params: &ChunkParams,
    mut reader: impl Read,
    progress: &Progress,
    what: &dyn Fn(std::io::Error) -> Error,
) -> Result<(u64, FileData)> {
    let mut head = Vec::with_capacity(params.inline_max + 1);
    (&mut reader)
        .take(params.inline_max as u64 + 1)
        .read_to_end(&mut head)
        .map_err(what)?;
    if head.len() <= params.inline_max {
        progress
            .bytes
            .fetch_add(head.len() as u64, Ordering::Relaxed);
        return Ok((head.len() as u64, FileData::Inline(ByteBuf::from(head))));
    }
    let mut chunks = Vec::new();
    let mut size = 0u64;
    let stream = StreamCDC::new(
        std::io::Cursor::new(head).chain(reader),
        params.min,
        params.avg,
        params.max,
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
