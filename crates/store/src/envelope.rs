//! The on-disk (and on-the-wire) form of one object.
//!
//! ```text
//! offset 0  magic  "SLOB"
//!        4  u8     envelope version (1)
//!        5  u8     codec: 0 = raw, 1 = zstd
//!        6  [u8;2] reserved, zero
//!        8  u64 LE length of the uncompressed object
//!       16  payload
//! ```
//! The declared length bounds decompression, so a corrupt or hostile payload cannot make a
//! reader allocate more than the object claims to be.

use crate::{Error, ObjectId};

pub const MAGIC: &[u8; 4] = b"SLOB";
pub const ENVELOPE_VERSION: u8 = 1;
pub const HEADER_LEN: usize = 16;
/// Objects larger than this are refused outright: chunks and trees are far smaller.
pub const MAX_OBJECT_LEN: u64 = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Raw = 0,
    Zstd = 1,
}

/// Wraps `data` in an envelope, compressing when that saves space.
pub fn encode(data: &[u8], level: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + data.len() / 2);
    out.extend_from_slice(&header(Codec::Raw, data.len() as u64));
    // Tiny objects rarely compress below their own size plus zstd's frame overhead.
    if data.len() >= 64 {
        if let Ok(z) = zstd::bulk::compress(data, level) {
            if z.len() + 8 < data.len() {
                out[5] = Codec::Zstd as u8;
                out.extend_from_slice(&z);
                return out;
            }
        }
    }
    out.extend_from_slice(data);
    out
}

fn header(codec: Codec, len: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(MAGIC);
    h[4] = ENVELOPE_VERSION;
    h[5] = codec as u8;
    h[8..16].copy_from_slice(&len.to_le_bytes());
    h
}

/// Parsed header: codec and uncompressed length.
pub fn parse_header(id: &ObjectId, bytes: &[u8]) -> Result<(Codec, u64), Error> {
    let corrupt = |reason: String| Error::Corrupt { id: *id, reason };
    if bytes.len() < HEADER_LEN {
        return Err(corrupt(format!(
            "envelope is {} bytes, shorter than its {HEADER_LEN}-byte header",
            bytes.len()
        )));
    }
    if &bytes[..4] != MAGIC {
        return Err(corrupt("bad envelope magic".into()));
    }
    if bytes[4] != ENVELOPE_VERSION {
        return Err(corrupt(format!(
            "envelope version {} is not supported (this build reads {ENVELOPE_VERSION})",
            bytes[4]
        )));
    }
    if bytes[6] != 0 || bytes[7] != 0 {
        return Err(corrupt("reserved header bytes are not zero".into()));
    }
    let codec = match bytes[5] {
        0 => Codec::Raw,
        1 => Codec::Zstd,
        c => return Err(corrupt(format!("unknown codec {c}"))),
    };
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[8..16]);
    let len = u64::from_le_bytes(len);
    if len > MAX_OBJECT_LEN {
        return Err(corrupt(format!("declared length {len} exceeds the limit")));
    }
    Ok((codec, len))
}

/// Unwraps an envelope and checks that the content hashes to `id`.
pub fn decode(id: &ObjectId, bytes: &[u8]) -> Result<Vec<u8>, Error> {
    let data = unwrap(id, bytes)?;
    let actual = ObjectId::of(&data);
    if actual != *id {
        return Err(Error::Corrupt {
            id: *id,
            reason: format!("content hashes to {actual}"),
        });
    }
    Ok(data)
}

/// Unwraps an envelope, checking its header and length but not the hash (for content whose
/// hash was checked before).
pub fn unwrap(id: &ObjectId, bytes: &[u8]) -> Result<Vec<u8>, Error> {
    let (codec, len) = parse_header(id, bytes)?;
    let payload = &bytes[HEADER_LEN..];
    let data = match codec {
        Codec::Raw => payload.to_vec(),
        Codec::Zstd => {
            zstd::bulk::decompress(payload, len as usize).map_err(|e| Error::Corrupt {
                id: *id,
                reason: format!("zstd payload does not decompress: {e}"),
            })?
        }
    };
    if data.len() as u64 != len {
        return Err(Error::Corrupt {
            id: *id,
            reason: format!("content is {} bytes, header says {len}", data.len()),
        });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_raw_and_zstd() {
        for data in [b"x".to_vec(), vec![7u8; 100_000], (0..=255u8).collect()] {
            let id = ObjectId::of(&data);
            let env = encode(&data, 3);
            assert_eq!(decode(&id, &env).unwrap(), data);
        }
        assert_eq!(encode(&[7u8; 100_000], 3)[5], Codec::Zstd as u8);
        assert_eq!(encode(b"x", 3)[5], Codec::Raw as u8);
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let data: Vec<u8> = (0..4000u32).map(|i| (i * 7 % 251) as u8).collect();
        let id = ObjectId::of(&data);
        let env = encode(&data, 3);
        for i in 0..env.len() {
            let mut bad = env.clone();
            bad[i] ^= 0x01;
            assert!(decode(&id, &bad).is_err(), "flip at {i} not caught");
        }
    }

    #[test]
    fn hostile_lengths_are_refused() {
        let id = ObjectId::of(b"abc");
        let mut env = encode(b"abc", 3);
        env[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(decode(&id, &env), Err(Error::Corrupt { .. })));
        assert!(decode(&id, &env[..10]).is_err());
    }
}
