//! The uncompressed kernel inside a bzImage: the payload the boot stub would decompress in the
//! guest, decompressed once on the host instead. Booted as an ELF through its PVH note, it
//! skips the in-guest decompressor (the bulk of early boot on slow or nested machines).
//! Payloads: LZ4 (legacy frames, as the kernel writes them), gzip, zstd, xz.

use std::io::Read;

use crate::Error;

const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// Kernel LZ4 blocks decompress to at most 8 MiB each.
const LZ4_BLOCK: usize = 8 << 20;
/// Refuse payloads that would decompress beyond this (a kernel is well under it).
const MAX_VMLINUX: u64 = 512 << 20;

fn bad(reason: impl Into<String>) -> Error {
    Error::Invalid(format!("bzImage: {}", reason.into()))
}

/// Extracts the ELF vmlinux from a bzImage (boot protocol 2.08 or later).
pub fn extract(bzimage: &[u8]) -> Result<Vec<u8>, Error> {
    let at = |o: usize, n: usize| bzimage.get(o..o + n).ok_or_else(|| bad("file too short"));
    if at(0x202, 4)? != b"HdrS" {
        return Err(bad("no HdrS signature: not a bzImage"));
    }
    let version = u16::from_le_bytes([at(0x206, 2)?[0], at(0x206, 2)?[1]]);
    if version < 0x0208 {
        return Err(bad(format!(
            "boot protocol {version:#x} has no payload fields"
        )));
    }
    let setup_sects = match at(0x1f1, 1)?[0] {
        0 => 4,
        n => usize::from(n),
    };
    let u32_at = |o: usize| -> Result<usize, Error> {
        let b = at(o, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248)?;
    let payload = bzimage
        .get(start..start + u32_at(0x24c)?)
        .ok_or_else(|| bad("payload outside the file"))?;
    let out = match payload {
        [0x02, 0x21, 0x4c, 0x18, ..] => lz4_legacy(payload)?,
        [0x1f, 0x8b, ..] => read_all(flate2::read::GzDecoder::new(payload))?,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => {
            read_all(zstd::stream::read::Decoder::new(payload).map_err(|e| bad(e.to_string()))?)?
        }
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => read_all(liblzma::read::XzDecoder::new(payload))?,
        _ => {
            return Err(bad(
                "payload compression not supported (lz4, gzip, zstd, xz are)",
            ))
        }
    };
    if out.get(..4) != Some(b"\x7fELF") {
        return Err(bad("the decompressed payload is not an ELF file"));
    }
    Ok(out)
}

fn read_all(r: impl Read) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    r.take(MAX_VMLINUX)
        .read_to_end(&mut out)
        .map_err(|e| bad(format!("decompressing: {e}")))?;
    Ok(out)
}

fn lz4_legacy(mut data: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; LZ4_BLOCK];
    let mut frames = 0;
    while data.len() >= 4 {
        let word = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        data = &data[4..];
        if word == LZ4_LEGACY_MAGIC {
            frames += 1;
            continue;
        }
        let len = word as usize;
        // The kernel appends the uncompressed size after the last block.
        if len > data.len() || frames == 0 {
            break;
        }
        let n = lz4_flex::block::decompress_into(&data[..len], &mut buf)
            .map_err(|e| bad(format!("lz4 block: {e}")))?;
        out.extend_from_slice(&buf[..n]);
        if out.len() as u64 > MAX_VMLINUX {
            return Err(bad("decompresses to more than 512 MiB"));
        }
        data = &data[len..];
    }
    if frames == 0 || out.is_empty() {
        return Err(bad("empty lz4 payload"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_bzimage() {
        assert!(extract(b"short").is_err());
        let mut fake = vec![0u8; 4096];
        fake[0x202..0x206].copy_from_slice(b"HdrS");
        fake[0x206] = 0x0f;
        fake[0x207] = 0x02;
        let e = extract(&fake).unwrap_err().to_string();
        assert!(e.contains("not supported") || e.contains("outside"), "{e}");
    }
}
