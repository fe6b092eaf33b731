//! The state file: a fixed header (magic, format version, flags, payload length, BLAKE3 of the
//! payload), the payload (postcard, zstd-compressed: mostly zeros in XSAVE and LAPIC pages,
//! and it travels over the network for lazy restores) and, when the flags say so, a keyed
//! BLAKE3 MAC of all that (`key.rs`: who wrote it, for a state that names host files). A file
//! from another format version is refused by its version number before any of it is decoded;
//! a damaged one fails its checksum.

use std::io::Read;
use std::path::Path;

use super::key::StateKey;
use super::VmState;
use crate::Error;

const MAGIC: &[u8; 8] = b"STRLSNAP";
/// Bumped whenever `VmState` or anything in it changes shape. 1: the VM's whole config and
/// device states kept apart from the devices (up to 2026-11); 2: `VmInfo`, and each virtio
/// device's transport and own state together.
pub const FORMAT_VERSION: u32 = 2;
const HEADER: usize = 8 + 4 + 4 + 8 + 32;
/// Flag: a MAC made with the writer's key follows the payload.
const KEYED: u32 = 1;
const MAC_BYTES: usize = 32;
/// Largest decoded state accepted (32 vCPUs and a few disks' bitmaps fit many times over).
const MAX_STATE: usize = 64 << 20;

/// What a state file's MAC says about who wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mac {
    /// Made with the key given: this user's Starling wrote it.
    Valid,
    /// The file has none (its writer had no key to use, or removed it).
    Absent,
    /// Made with another key, or the file was changed after.
    Invalid,
    /// The file has one, and no key was given to check it with.
    Unchecked,
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Snapshot {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// The state file for `state`, with a MAC made with `key` when given.
pub fn encode(state: &VmState, key: Option<&StateKey>) -> Result<Vec<u8>, Error> {
    let plain = postcard::to_allocvec(state)
        .map_err(|e| Error::Invalid(format!("encoding the VM state: {e}")))?;
    let payload = zstd::bulk::compress(&plain, 3)
        .map_err(|e| Error::Invalid(format!("compressing the VM state: {e}")))?;
    Ok(frame(&payload, key))
}

/// A state file around `payload` (the compressed encoding): header, length, checksum, and the
/// MAC of all that when a key is given.
pub fn frame(payload: &[u8], key: Option<&StateKey>) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len() + MAC_BYTES);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    let flags = if key.is_some() { KEYED } else { 0 };
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(blake3::hash(payload).as_bytes());
    out.extend_from_slice(payload);
    if let Some(k) = key {
        let mac = k.mac(&out);
        out.extend_from_slice(&mac);
    }
    out
}

/// The state in a state file, and what its MAC says checked with `key` (if given).
pub fn decode(path: &Path, bytes: &[u8], key: Option<&StateKey>) -> Result<(VmState, Mac), Error> {
    let (payload, mac) = unframe(path, bytes, key)?;
    // Streamed with a cap, so that memory grows with what really decompresses.
    let mut plain = Vec::new();
    zstd::stream::read::Decoder::new(payload)
        .and_then(|d| std::io::Read::take(d, MAX_STATE as u64 + 1).read_to_end(&mut plain))
        .map_err(|e| bad(path, format!("undecodable state: {e}")))?;
    if plain.len() > MAX_STATE {
        return Err(bad(path, "the state decodes to more than 64 MiB"));
    }
    let state =
        postcard::from_bytes(&plain).map_err(|e| bad(path, format!("undecodable state: {e}")))?;
    Ok((state, mac))
}

/// The payload of a state file whose header, length and checksum are right, and what its MAC
/// says.
fn unframe<'a>(
    path: &Path,
    bytes: &'a [u8],
    key: Option<&StateKey>,
) -> Result<(&'a [u8], Mac), Error> {
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
    let flags = word(12);
    if flags & !KEYED != 0 {
        return Err(bad(path, format!("unknown flags {flags:#x} in its header")));
    }
    let mac_len = if flags & KEYED != 0 { MAC_BYTES } else { 0 };
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[16..24]);
    let len = u64::from_le_bytes(len);
    let body = bytes.len() - HEADER;
    if body.checked_sub(mac_len).map(|n| n as u64) != Some(len) {
        return Err(bad(
            path,
            format!(
                "truncated or padded: header says {len} bytes of state{}, the file has {body}",
                if mac_len > 0 { " and a MAC" } else { "" }
            ),
        ));
    }
    let (signed, mac) = bytes.split_at(bytes.len() - mac_len);
    let payload = &signed[HEADER..];
    if blake3::hash(payload).as_bytes() != &bytes[24..56] {
        return Err(bad(path, "checksum mismatch: the state file is damaged"));
    }
    let mac = match (mac.is_empty(), key) {
        (true, _) => Mac::Absent,
        (false, None) => Mac::Unchecked,
        (false, Some(k)) if k.mac(signed) == mac => Mac::Valid,
        (false, Some(_)) => Mac::Invalid,
    };
    Ok((payload, mac))
}

/// Writes the state file at `path` (through a temporary file, synced, then renamed), with a
/// MAC made with `key` when given.
pub fn write(path: &Path, state: &VmState, key: Option<&StateKey>) -> Result<(), Error> {
    let bytes = encode(state, key)?;
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

pub fn read(path: &Path, key: Option<&StateKey>) -> Result<(VmState, Mac), Error> {
    let bytes = std::fs::read(path).map_err(|e| bad(path, e.to_string()))?;
    decode(path, &bytes, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_format_version_is_refused_by_number_before_decoding() {
        // A state file of format 1 (the one that held the VM's whole config): its payload is
        // never looked at.
        let mut old = frame(b"whatever format 1 held", None);
        old[8..12].copy_from_slice(&1u32.to_le_bytes());
        let e = decode(Path::new("snap/state"), &old, None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("snap/state")
                && e.contains("state format version 1; this Starling reads version 2"),
            "{e}"
        );
    }

    #[test]
    fn a_mac_tells_the_writer_s_key_and_any_change_after() {
        let p = Path::new("snap/state");
        let mine = StateKey::new([1; 32], "mine".into());
        let theirs = StateKey::new([2; 32], "theirs".into());
        let keyed = frame(b"payload", Some(&mine));
        let mac = |bytes: &[u8], key| unframe(p, bytes, key).map(|(_, m)| m).ok();
        assert_eq!(mac(&keyed, Some(&mine)), Some(Mac::Valid));
        assert_eq!(mac(&keyed, Some(&theirs)), Some(Mac::Invalid));
        assert_eq!(mac(&keyed, None), Some(Mac::Unchecked));
        assert_eq!(unframe(p, &keyed, Some(&mine)).unwrap().0, b"payload");
        // Without a key there is no MAC, and none is claimed.
        let plain = frame(b"payload", None);
        assert_eq!(mac(&plain, Some(&mine)), Some(Mac::Absent));
        // A payload changed and its checksum remade: the MAC no longer matches.
        let mut forged = keyed.clone();
        forged[HEADER] = b'P';
        let sum = *blake3::hash(&forged[HEADER..forged.len() - MAC_BYTES]).as_bytes();
        forged[24..56].copy_from_slice(&sum);
        assert_eq!(mac(&forged, Some(&mine)), Some(Mac::Invalid));
        // The flag cleared and the MAC cut off: an unkeyed file, which says so.
        let mut stripped = keyed[..keyed.len() - MAC_BYTES].to_vec();
        stripped[12..16].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(mac(&stripped, Some(&mine)), Some(Mac::Absent));
        // The MAC cut off with the flag left: too short.
        let e = unframe(p, &keyed[..keyed.len() - 1], Some(&mine))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("truncated or padded") && e.contains("and a MAC"),
            "{e}"
        );
        let mut odd = keyed.clone();
        odd[12] = 6;
        let e = unframe(p, &odd, Some(&mine)).err().unwrap().to_string();
        assert!(e.contains("unknown flags 0x6"), "{e}");
    }
}
