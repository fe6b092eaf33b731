//! MBR and GPT partition tables, and which partition holds the root file system.

use crate::device::{BlockDev, Slice};
use crate::error::{corrupt, Error, Result};
use std::sync::Arc;

const SECTOR: u64 = 512;
/// GPT partition type "Linux root (x86-64)" as stored on disk (mixed-endian GUID).
const GPT_LINUX_ROOT_X86_64: [u8; 16] = [
    0xE3, 0xBC, 0x68, 0x4F, 0xCD, 0xE8, 0xB1, 0x4D, 0x96, 0xE7, 0xFB, 0xCA, 0xF9, 0x84, 0xB7, 0x09,
];
const MAX_GPT_ENTRIES: u32 = 1024;
const MAX_LOGICAL: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartType {
    Mbr(u8),
    Gpt([u8; 16]),
}

impl std::fmt::Display for PartType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PartType::Mbr(t) => write!(f, "MBR type 0x{t:02x}"),
            PartType::Gpt(g) => write!(
                f,
                "GPT type {:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
                u32::from_le_bytes([g[0], g[1], g[2], g[3]]),
                u16::from_le_bytes([g[4], g[5]]),
                u16::from_le_bytes([g[6], g[7]]),
                g[8],
                g[9],
                g[10..]
                    .iter()
                    .map(|b| format!("{b:02X}"))
                    .collect::<String>()
            ),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Partition {
    /// 1-based, as Linux numbers them (logical MBR partitions start at 5).
    pub number: u32,
    pub start: u64,
    pub len: u64,
    pub kind: PartType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    None,
    Mbr,
    Gpt,
}

/// The partitions of `dev`, or `TableKind::None` when the disk has no partition table.
pub fn read_table(dev: &dyn BlockDev) -> Result<(TableKind, Vec<Partition>)> {
    if dev.size() < SECTOR {
        return Ok((TableKind::None, Vec::new()));
    }
    let mut mbr = [0u8; 512];
    read(dev, &mut mbr, 0, "the MBR")?;
    if mbr[510..512] != [0x55, 0xAA] {
        return Ok((TableKind::None, Vec::new()));
    }
    let entries: Vec<[u8; 16]> = (0..4)
        .map(|i| {
            mbr[446 + i * 16..462 + i * 16]
                .try_into()
                .unwrap_or([0; 16])
        })
        .collect();
    if entries.iter().any(|e| e[4] == 0xEE) {
        return Ok((TableKind::Gpt, read_gpt(dev)?));
    }
    // A FAT/ext boot sector also ends in 55 AA; an MBR's status bytes are 0x00 or 0x80.
    if entries.iter().any(|e| e[0] != 0 && e[0] != 0x80) {
        return Ok((TableKind::None, Vec::new()));
    }
    let mut parts = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let kind = e[4];
        let start = u32::from_le_bytes([e[8], e[9], e[10], e[11]]) as u64 * SECTOR;
        let len = u32::from_le_bytes([e[12], e[13], e[14], e[15]]) as u64 * SECTOR;
        if kind == 0 || len == 0 {
            continue;
        }
        if matches!(kind, 0x05 | 0x0F | 0x85) {
            read_logical(dev, start, &mut parts)?;
            continue;
        }
        parts.push(Partition {
            number: i as u32 + 1,
            start,
            len,
            kind: PartType::Mbr(kind),
        });
    }
    check_bounds(dev, &parts)?;
    Ok((TableKind::Mbr, parts))
}

/// Logical partitions: a chain of extended boot records, each relative to the extended
/// partition (the link) or to itself (the data).
fn read_logical(dev: &dyn BlockDev, ext_start: u64, parts: &mut Vec<Partition>) -> Result<()> {
    let mut ebr_at = ext_start;
    for n in 0..MAX_LOGICAL {
        let mut ebr = [0u8; 512];
        read(dev, &mut ebr, ebr_at, "an extended boot record")?;
        if ebr[510..512] != [0x55, 0xAA] {
            return Err(corrupt(
                "the MBR partition table",
                format!("extended boot record at byte {ebr_at} has no signature"),
            ));
        }
        let e = &ebr[446..462];
        let rel = u32::from_le_bytes([e[8], e[9], e[10], e[11]]) as u64 * SECTOR;
        let len = u32::from_le_bytes([e[12], e[13], e[14], e[15]]) as u64 * SECTOR;
        if e[4] != 0 && len != 0 {
            parts.push(Partition {
                number: 5 + n as u32,
                start: ebr_at + rel,
                len,
                kind: PartType::Mbr(e[4]),
            });
        }
        let next = &ebr[462..478];
        let next_rel = u32::from_le_bytes([next[8], next[9], next[10], next[11]]) as u64 * SECTOR;
        if next[4] == 0 || next_rel == 0 {
            return Ok(());
        }
        ebr_at = ext_start + next_rel;
    }
    Err(corrupt(
        "the MBR partition table",
        format!("more than {MAX_LOGICAL} logical partitions (a loop in the chain?)"),
    ))
}

fn read_gpt(dev: &dyn BlockDev) -> Result<Vec<Partition>> {
    let what = "the GPT header";
    let mut h = [0u8; 512];
    read(dev, &mut h, SECTOR, what)?;
    if &h[..8] != b"EFI PART" {
        return Err(corrupt(
            what,
            "no \"EFI PART\" signature at LBA 1 behind a protective MBR",
        ));
    }
    let hsize = le32(&h, 12) as usize;
    if !(92..=512).contains(&hsize) {
        return Err(corrupt(what, format!("header size {hsize}")));
    }
    let stored = le32(&h, 16);
    let mut hc = h[..hsize].to_vec();
    hc[16..20].fill(0);
    if crc32fast::hash(&hc) != stored {
        return Err(corrupt(what, "header CRC32 does not match"));
    }
    let entries_lba = le64(&h, 72);
    let count = le32(&h, 80);
    let esize = le32(&h, 84) as usize;
    if count > MAX_GPT_ENTRIES || !(128..=4096).contains(&esize) || !esize.is_multiple_of(8) {
        return Err(corrupt(what, format!("{count} entries of {esize} bytes")));
    }
    let mut table = vec![0u8; count as usize * esize];
    let table_at = entries_lba
        .checked_mul(SECTOR)
        .ok_or_else(|| corrupt(what, "entry table offset overflows"))?;
    read(dev, &mut table, table_at, "the GPT partition entries")?;
    if crc32fast::hash(&table) != le32(&h, 88) {
        return Err(corrupt("the GPT partition entries", "CRC32 does not match"));
    }
    let mut parts = Vec::new();
    for (i, e) in table.chunks_exact(esize).enumerate() {
        let kind: [u8; 16] = e[..16].try_into().unwrap_or([0; 16]);
        if kind == [0; 16] {
            continue;
        }
        let (first, last) = (le64(e, 32), le64(e, 40));
        if last < first {
            return Err(corrupt(
                "the GPT partition entries",
                format!("partition {} ends before it starts", i + 1),
            ));
        }
        parts.push(Partition {
            number: i as u32 + 1,
            start: first.saturating_mul(SECTOR),
            len: (last - first + 1).saturating_mul(SECTOR),
            kind: PartType::Gpt(kind),
        });
    }
    check_bounds(dev, &parts)?;
    Ok(parts)
}

fn check_bounds(dev: &dyn BlockDev, parts: &[Partition]) -> Result<()> {
    for p in parts {
        if p.start
            .checked_add(p.len)
            .is_none_or(|end| end > dev.size())
        {
            return Err(corrupt(
                "the partition table",
                format!(
                    "partition {} (bytes {}..+{}) runs past the end of the disk ({} bytes); the image is truncated?",
                    p.number, p.start, p.len, dev.size()
                ),
            ));
        }
    }
    Ok(())
}

/// Whether the bytes at `start` of `dev` begin an ext2/3/4 file system.
pub fn has_ext4_magic(dev: &dyn BlockDev, start: u64) -> bool {
    let mut m = [0u8; 2];
    dev.read_at(&mut m, start + 1024 + 56).is_ok() && m == [0x53, 0xEF]
}

/// Where the root file system is: the whole disk when it has no partition table; else
/// partition `choice`, or the partition typed "Linux root (x86-64)", or the largest one that
/// holds an ext file system.
pub fn root_filesystem(
    dev: Arc<dyn BlockDev>,
    choice: Option<u32>,
) -> Result<(Arc<dyn BlockDev>, Option<Partition>)> {
    if choice.is_none() && has_ext4_magic(&*dev, 0) {
        return Ok((dev, None));
    }
    let (kind, parts) = read_table(&*dev)?;
    if kind == TableKind::None {
        return match choice {
            Some(n) => Err(Error::Invalid {
                what: "--partition".into(),
                detail: format!("partition {n} was asked for, but the disk has no partition table"),
            }),
            None => Err(Error::NoFilesystem(
                "no partition table and no ext2/3/4 file system at the start of the disk".into(),
            )),
        };
    }
    let list = || {
        parts
            .iter()
            .map(|p| format!("{} ({}, {} MiB)", p.number, p.kind, p.len >> 20))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chosen = match choice {
        Some(n) => parts
            .iter()
            .find(|p| p.number == n)
            .cloned()
            .ok_or_else(|| Error::Invalid {
                what: "--partition".into(),
                detail: format!("there is no partition {n}; the disk has: {}", list()),
            })?,
        None => {
            let ext: Vec<&Partition> = parts
                .iter()
                .filter(|p| has_ext4_magic(&*dev, p.start))
                .collect();
            ext.iter()
                .find(|p| p.kind == PartType::Gpt(GPT_LINUX_ROOT_X86_64))
                .or_else(|| ext.iter().max_by_key(|p| p.len))
                .map(|p| (*p).clone())
                .ok_or_else(|| {
                    Error::NoFilesystem(format!(
                        "no partition holds an ext2/3/4 file system; partitions: {}",
                        if parts.is_empty() {
                            "none".into()
                        } else {
                            list()
                        }
                    ))
                })?
        }
    };
    let slice = Slice {
        dev,
        start: chosen.start,
        len: chosen.len,
    };
    Ok((Arc::new(slice), Some(chosen)))
}

fn read(dev: &dyn BlockDev, buf: &mut [u8], at: u64, what: &'static str) -> Result<()> {
    dev.read_at(buf, at).map_err(|source| Error::Read {
        what,
        offset: at,
        source,
    })
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn le64(b: &[u8], o: usize) -> u64 {
    le32(b, o) as u64 | (le32(b, o + 4) as u64) << 32
}
