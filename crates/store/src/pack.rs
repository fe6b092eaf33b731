//! Pack files: objects appended to a few large segment files instead of one file each, so an
//! import creates a handful of files rather than thousands, a warm read is one `pread` on an
//! open file, and objects written together sit together on disk.
//!
//! Segment `NAME.pack` (pack format 1) is a sequence of records:
//!
//! ```text
//! offset 0   magic "SLPK"
//!        4   u8  pack format (1)
//!        5   u8  flags: bit 0 = dead (evicted or collected; its bytes may be a hole)
//!        6   [u8;2] reserved, zero
//!        8   u32 LE length of the envelope that follows
//!       12   [u8;32] object id
//!       44   [u8;4] reserved, zero
//!       48   the object's store envelope (see `envelope`)
//! ```
//!
//! Index `NAME.idx` (index format 1) lists a sealed segment's live records so opening a store
//! reads one small file per segment instead of every record header:
//!
//! ```text
//! offset 0   magic "SLPI"
//!        4   u32 LE index format (1)
//!        8   u64 LE length of the segment it describes
//!       16   u64 LE entry count N
//!       24   N entries sorted by id: [u8;32] id, u64 LE record offset, u32 LE envelope
//!            length, u32 reserved
//!  24+48N   BLAKE3 of everything before it
//! ```
//!
//! A segment without an index (the cache's segment being appended to, or one a crash left
//! between its rename and its index's) is scanned instead; a torn record at its end (a crash
//! while appending) ends the scan and is cut off when the segment is opened for writing.
//! An index whose checksum or segment length does not match is ignored and the segment
//! scanned. Records are never trusted blindly: every read checks the record header's id and
//! dead flag, and the envelope is hashed by the reader.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::IoContext;
use crate::{Error, ObjectId, Result};

const MAGIC: &[u8; 4] = b"SLPK";
pub const PACK_FORMAT: u8 = 1;
pub const HEADER: u64 = 48;
const DEAD: u8 = 1;

const IDX_MAGIC: &[u8; 4] = b"SLPI";
pub const INDEX_FORMAT: u32 = 1;
const IDX_HEAD: usize = 24;
const IDX_ENTRY: usize = 48;
/// Bounds what an index may claim before it is read whole (a 64 MiB segment of 48-byte
/// records holds at most ~1.4 M).
const IDX_MAX_ENTRIES: u64 = 1 << 24;

/// One record of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub id: ObjectId,
    /// Offset of the record header in the segment.
    pub offset: u64,
    /// Envelope length.
    pub len: u32,
}

impl Record {
    pub fn end(&self) -> u64 {
        self.offset + HEADER + u64::from(self.len)
    }
}

/// The header and envelope of one record, ready to append.
pub fn encode_record(id: &ObjectId, env: &[u8]) -> Result<Vec<u8>> {
    let len = u32::try_from(env.len()).map_err(|_| Error::Corrupt {
        id: *id,
        reason: format!("envelope of {} bytes does not fit a pack record", env.len()),
    })?;
    let mut rec = Vec::with_capacity(HEADER as usize + env.len());
    rec.extend_from_slice(MAGIC);
    rec.extend_from_slice(&[PACK_FORMAT, 0, 0, 0]);
    rec.extend_from_slice(&len.to_le_bytes());
    rec.extend_from_slice(id.as_bytes());
    rec.extend_from_slice(&[0; 4]);
    rec.extend_from_slice(env);
    Ok(rec)
}

/// Parses a record header; `None` if these bytes are not one (a torn or foreign tail).
fn parse_header(h: &[u8; HEADER as usize]) -> Option<(ObjectId, u32, bool)> {
    if &h[..4] != MAGIC || h[4] != PACK_FORMAT {
        return None;
    }
    let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    let mut id = [0u8; 32];
    id.copy_from_slice(&h[12..44]);
    Some((ObjectId::from_bytes(id), len, h[5] & DEAD != 0))
}

/// Reads every record header of a segment, in file order. Returns the live records, the
/// number of dead ones, and where the last whole record ends (less than the file's size
/// when its tail is torn).
pub fn scan(f: &File, path: &Path) -> Result<(Vec<Record>, usize, u64)> {
    let size = f.metadata().at(path)?.len();
    let mut at = 0u64;
    let mut live = Vec::new();
    let mut dead = 0;
    let mut h = [0u8; HEADER as usize];
    while at + HEADER <= size {
        f.read_exact_at(&mut h, at).at(path)?;
        let Some((id, len, is_dead)) = parse_header(&h) else {
            break;
        };
        let rec = Record {
            id,
            offset: at,
            len,
        };
        if rec.end() > size {
            break;
        }
        if is_dead {
            dead += 1;
        } else {
            live.push(rec);
        }
        at = rec.end();
    }
    Ok((live, dead, at))
}

/// The envelope of `rec`, after checking that the header there is still this object's live
/// record (an index can be older than a collection that reused nothing but marked it dead).
pub fn read(f: &File, path: &Path, rec: &Record) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; HEADER as usize + rec.len as usize];
    f.read_exact_at(&mut buf, rec.offset).at(path)?;
    let mut h = [0u8; HEADER as usize];
    h.copy_from_slice(&buf[..HEADER as usize]);
    match parse_header(&h) {
        Some((id, len, false)) if id == rec.id && len == rec.len => {
            buf.drain(..HEADER as usize);
            Ok(buf)
        }
        Some((id, _, true)) if id == rec.id => Err(Error::NotFound(rec.id)),
        _ => Err(Error::Corrupt {
            id: rec.id,
            reason: format!(
                "pack {} has no record of it at offset {}",
                path.display(),
                rec.offset
            ),
        }),
    }
}

/// Marks a record dead and gives the whole blocks of its envelope back to the file system.
pub fn kill(f: &File, path: &Path, rec: &Record) -> Result<()> {
    f.write_all_at(&[DEAD], rec.offset + 5).at(path)?;
    // Whole blocks inside the envelope only: the header stays readable for a scan.
    let start = (rec.offset + HEADER).div_ceil(4096) * 4096;
    let end = rec.end() / 4096 * 4096;
    if end > start {
        // Not every file system punches holes; the record is dead either way.
        let _ = rustix::fs::fallocate(
            f,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            start,
            end - start,
        );
    }
    Ok(())
}

pub fn open_rw(p: &Path) -> Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(p)
        .at(p)?;
    // Objects are appended in the order they were first needed, which is mostly the order
    // they are read again: a larger kernel read-ahead window pays.
    let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::Sequential);
    Ok(f)
}

/// The bytes of an index over `records` for a segment of `pack_len` bytes.
pub fn encode_index(records: &[Record], pack_len: u64) -> Vec<u8> {
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by_key(|r| r.id);
    let mut out = Vec::with_capacity(IDX_HEAD + IDX_ENTRY * sorted.len() + 32);
    out.extend_from_slice(IDX_MAGIC);
    out.extend_from_slice(&INDEX_FORMAT.to_le_bytes());
    out.extend_from_slice(&pack_len.to_le_bytes());
    out.extend_from_slice(&(sorted.len() as u64).to_le_bytes());
    for r in sorted {
        out.extend_from_slice(r.id.as_bytes());
        out.extend_from_slice(&r.offset.to_le_bytes());
        out.extend_from_slice(&r.len.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
    }
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

/// Why an index cannot be used (the segment is scanned instead).
#[derive(Debug)]
pub struct BadIndex(pub String);

/// Parses an index; `pack_len` is the segment's current length, which must be the one the
/// index was written for.
pub fn decode_index(b: &[u8], pack_len: u64) -> std::result::Result<Vec<Record>, BadIndex> {
    let bad = |s: &str| Err(BadIndex(s.to_string()));
    if b.len() < IDX_HEAD + 32 || &b[..4] != IDX_MAGIC {
        return bad("not a pack index");
    }
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let format = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    if format != INDEX_FORMAT {
        return Err(BadIndex(format!(
            "index format {format}; this build reads {INDEX_FORMAT}"
        )));
    }
    let (described, count) = (word(8), word(16));
    if count > IDX_MAX_ENTRIES || b.len() as u64 != IDX_HEAD as u64 + IDX_ENTRY as u64 * count + 32
    {
        return bad("index length does not match its entry count");
    }
    let body = &b[..b.len() - 32];
    if blake3::hash(body).as_bytes() != &b[b.len() - 32..] {
        return bad("index checksum mismatch");
    }
    if described != pack_len {
        return Err(BadIndex(format!(
            "index describes {described} bytes, the segment has {pack_len}"
        )));
    }
    let mut out = Vec::with_capacity(count as usize);
    for e in body[IDX_HEAD..].chunks_exact(IDX_ENTRY) {
        let mut id = [0u8; 32];
        id.copy_from_slice(&e[..32]);
        let mut off = [0u8; 8];
        off.copy_from_slice(&e[32..40]);
        let rec = Record {
            id: ObjectId::from_bytes(id),
            offset: u64::from_le_bytes(off),
            len: u32::from_le_bytes([e[40], e[41], e[42], e[43]]),
        };
        if rec.end() > pack_len {
            return bad("index entry points past the segment's end");
        }
        out.push(rec);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_round_trip_and_refusals() {
        let recs: Vec<Record> = (0..5u8)
            .map(|i| Record {
                id: ObjectId::of(&[i]),
                offset: u64::from(i) * 100,
                len: 52,
            })
            .collect();
        let b = encode_index(&recs, 500);
        let mut back = decode_index(&b, 500).unwrap();
        back.sort_by_key(|r| r.offset);
        assert_eq!(back, recs);
        assert!(decode_index(&b, 501).is_err(), "a segment that grew");
        for i in [0, 5, 9, 17, 30, b.len() - 1] {
            let mut bad = b.clone();
            bad[i] ^= 1;
            assert!(decode_index(&bad, 500).is_err(), "flip at {i}");
        }
        assert!(decode_index(&b[..b.len() - 1], 500).is_err());
    }
}
