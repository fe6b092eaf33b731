//! The state file: a fixed header (magic, format version, payload length, BLAKE3 of the
//! payload) and the payload (postcard, zstd-compressed: mostly zeros in XSAVE and LAPIC
//! pages, and it travels over the network for lazy restores). A file from another format version is refused by its
//! version number before any of it is decoded; a damaged one fails its checksum.

use std::io::Read;
use std::path::Path;

use super::VmState;
use crate::Error;

const MAGIC: &[u8; 8] = b"STRLSNAP";
/// Bumped whenever `VmState` or anything in it changes shape. 1: the VM's whole config and
/// device states kept apart from the devices (up to 2026-11); 2: `VmInfo`, and each virtio
/// device's transport and own state together.
pub const FORMAT_VERSION: u32 = 2;
const HEADER: usize = 8 + 4 + 4 + 8 + 32;
/// Largest decoded state accepted (32 vCPUs and a few disks' bitmaps fit many times over).
const MAX_STATE: usize = 64 << 20;

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Snapshot {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

pub fn encode(state: &VmState) -> Result<Vec<u8>, Error> {
    let plain = postcard::to_allocvec(state)
        .map_err(|e| Error::Invalid(format!("encoding the VM state: {e}")))?;
    let payload = zstd::bulk::compress(&plain, 3)
        .map_err(|e| Error::Invalid(format!("compressing the VM state: {e}")))?;
    Ok(frame(&payload))
}

/// A state file around `payload` (the compressed encoding): header, length, checksum.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(blake3::hash(payload).as_bytes());
    out.extend_from_slice(payload);
    out
}

pub fn decode(path: &Path, bytes: &[u8]) -> Result<VmState, Error> {
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(bad(path, "not a Starling VM state file"));
    }
    let word =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let version = word(8);
    if version != FORMAT_VERSION {
        return Err(bad(
            path,
            format!(
                "state format version {version}; this Starling reads version {FORMAT_VERSION} \
                 (restore it with the Starling release that took it)"
            ),
        ));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[16..24]);
    let len = u64::from_le_bytes(len);
    let payload = &bytes[HEADER..];
    if payload.len() as u64 != len {
        return Err(bad(
            path,
            format!(
                "truncated or padded: header says {len} bytes of state, the file has {}",
                payload.len()
            ),
        ));
    }
    if blake3::hash(payload).as_bytes() != &bytes[24..56] {
        return Err(bad(path, "checksum mismatch: the state file is damaged"));
    }
    // Streamed with a cap, so that memory grows with what really decompresses.
    let mut plain = Vec::new();
    zstd::stream::read::Decoder::new(payload)
        .and_then(|d| std::io::Read::take(d, MAX_STATE as u64 + 1).read_to_end(&mut plain))
        .map_err(|e| bad(path, format!("undecodable state: {e}")))?;
    if plain.len() > MAX_STATE {
        return Err(bad(path, "the state decodes to more than 64 MiB"));
    }
    postcard::from_bytes(&plain).map_err(|e| bad(path, format!("undecodable state: {e}")))
}

pub fn write(path: &Path, state: &VmState) -> Result<(), Error> {
    let bytes = encode(state)?;
    let tmp = path.with_extension("tmp");
    let io = |source| Error::Io {
        what: format!("writing {}", path.display()),
        source,
    };
    {
        use std::io::Write;
        // A temporary file left by a crash goes (a link is removed, not followed).
        let _ = std::fs::remove_file(&tmp);
        let mut f = crate::private::create_file(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    // The rename itself must be durable before anyone is told the snapshot exists.
    let d = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(d)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

pub fn read(path: &Path) -> Result<VmState, Error> {
    let bytes = std::fs::read(path).map_err(|e| bad(path, e.to_string()))?;
    decode(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_format_version_is_refused_by_number_before_decoding() {
        // A state file of format 1 (the one that held the VM's whole config): its payload is
        // never looked at.
        let mut old = frame(b"whatever format 1 held");
        old[8..12].copy_from_slice(&1u32.to_le_bytes());
        let e = decode(Path::new("snap/state"), &old)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("snap/state")
                && e.contains("state format version 1; this Starling reads version 2"),
            "{e}"
        );
    }
}
