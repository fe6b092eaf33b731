//! A disk image as random-access bytes, whatever its container format.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::{DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder, PermissiveImplicitOpenGate};

use crate::error::{Error, Result};

/// Random reads from a disk. Implementations are shared across threads (reads take `&self`).
pub trait BlockDev: Send + Sync {
    /// Size of the virtual disk in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; reading past the end is an error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

/// The container format of a disk image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

impl ImageFormat {
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }
}

pub const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

/// Opens a disk image, raw or qcow2 (by content). A qcow2 image whose header names a backing
/// file or an external data file is refused unless `allow_backing`: the header is the image
/// maker's, and the name any file of this host (its bytes would become the image's). When
/// allowed, the chain is followed and a missing file is an error that names it.
pub fn open(path: &Path, allow_backing: bool) -> Result<(Arc<dyn BlockDev>, ImageFormat)> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(io)?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).map_err(io)?;
    if n == 4 && &magic == QCOW2_MAGIC {
        let what = || format!("qcow2 image {}", path.display());
        let names = qcow2_precheck(&f).map_err(|detail| Error::Corrupt {
            what: what(),
            detail,
        })?;
        if !allow_backing {
            if let Some(refused) = names.refused() {
                return Err(Error::Invalid {
                    what: what(),
                    detail: format!(
                        "its header names {refused}, a file of this host; read it only if \
                         you trust whoever made the image: --allow-backing"
                    ),
                });
            }
        }
        // Followed from the path (a relative backing name is the image's directory's); else
        // read from the descriptor checked above, imago's gate denying every other open
        // should the header name a file some other way.
        let q = if allow_backing {
            Qcow2::<ImagoFile>::builder_path(path).open(PermissiveImplicitOpenGate::default())
        } else {
            f.try_clone()
                .and_then(ImagoFile::try_from)
                .and_then(|file| {
                    Qcow2::<ImagoFile>::builder(file).open(DenyImplicitOpenGate::default())
                })
        }
        .map_err(|e| Error::Invalid {
            what: what(),
            detail: e.to_string(),
        })?;
        let access = FormatAccess::new(q);
        Ok((
            Arc::new(Qcow2Dev {
                size: access.size(),
                access,
                path: path.to_path_buf(),
            }),
            ImageFormat::Qcow2,
        ))
    } else {
        let size = f.metadata().map_err(io)?.len();
        Ok((Arc::new(RawDev { file: f, size }), ImageFormat::Raw))
    }
}

/// Files other than itself a qcow2 header names.
#[derive(Debug, Default)]
struct Qcow2Names {
    backing: Option<String>,
    external_data: bool,
}

impl Qcow2Names {
    /// What reading the image would open besides it, said for an error.
    fn refused(&self) -> Option<String> {
        match (&self.backing, self.external_data) {
            (Some(b), _) => Some(format!("the backing file {b:?}")),
            (None, true) => Some("an external data file".into()),
            (None, false) => None,
        }
    }
}

/// The longest backing file name qcow2 allows.
const QCOW2_BACKING_MAX: u64 = 1023;
/// Incompatible feature bit: the guest data lives in an external data file.
const QCOW2_EXTERNAL_DATA: u64 = 1 << 2;

/// Checks the qcow2 header and its extension list before imago parses them (imago 0.2.6
/// panics on a feature-name table whose length is not a multiple of 48, found by fuzzing),
/// and says which other files it names.
fn qcow2_precheck(f: &File) -> std::result::Result<Qcow2Names, String> {
    let mut h = [0u8; 104];
    let n = f.read_at(&mut h, 0).map_err(|e| e.to_string())?;
    if n < 72 {
        return Err("header is truncated".into());
    }
    let be32 = |o: usize| u32::from_be_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let version = be32(4);
    let cluster_bits = be32(20);
    if !(2..=3).contains(&version) {
        return Err(format!("version {version} (2 or 3 expected)"));
    }
    if !(9..=21).contains(&cluster_bits) {
        return Err(format!("cluster_bits {cluster_bits}"));
    }
    let cluster = 1u64 << cluster_bits;
    let mut at = if version == 2 {
        72u64
    } else {
        if n < 104 {
            return Err("version 3 header is truncated".into());
        }
        be32(100) as u64
    };
    if at < 72 || at > cluster {
        return Err(format!("header length {at}"));
    }
    for _ in 0..1024 {
        let mut e = [0u8; 8];
        if at + 8 > cluster || f.read_exact_at(&mut e, at).is_err() {
            return Err("header extensions run past the first cluster or the file".into());
        }
        let kind = u32::from_be_bytes([e[0], e[1], e[2], e[3]]);
        let len = u32::from_be_bytes([e[4], e[5], e[6], e[7]]) as u64;
        if kind == 0 {
            qcow2_clusters_in_file(f, &h, version, cluster_bits)?;
            return qcow2_names(f, &h, version);
        }
        if kind == 0x6803_f857 && !len.is_multiple_of(48) {
            return Err(format!(
                "feature name table of {len} bytes (not a multiple of 48)"
            ));
        }
        at += 8 + len.div_ceil(8) * 8;
    }
    Err("too many header extensions".into())
}

/// The backing file name (offset and length at bytes 8 and 16) and the external data file
/// feature (version 3's incompatible features at byte 72).
fn qcow2_names(f: &File, h: &[u8; 104], version: u32) -> std::result::Result<Qcow2Names, String> {
    let be64 = |o: usize| be64(h, o);
    let at = be64(8);
    let len = u64::from(u32::from_be_bytes([h[16], h[17], h[18], h[19]]));
    let backing = if at == 0 {
        None
    } else {
        if len == 0 || len > QCOW2_BACKING_MAX {
            return Err(format!("backing file name of {len} bytes"));
        }
        let mut name = vec![0u8; len as usize];
        f.read_exact_at(&mut name, at)
            .map_err(|_| format!("backing file name at byte {at} is past the end of the file"))?;
        Some(String::from_utf8_lossy(&name).into_owned())
    };
    let external_data = version == 3 && be64(72) & QCOW2_EXTERNAL_DATA != 0;
    Ok(Qcow2Names {
        backing,
        external_data,
    })
}

/// The big-endian u64 at `o` of a qcow2 header read whole.
fn be64(h: &[u8; 104], o: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[o..o + 8]);
    u64::from_be_bytes(b)
}

/// Every table and data cluster the image maps lies inside the file. imago reads a cluster
/// past the end of the file as zeros, so a qcow2 cut short would otherwise import as an image
/// with holes (an all-zero directory block reads as an empty directory).
fn qcow2_clusters_in_file(
    f: &File,
    h: &[u8; 104],
    version: u32,
    cluster_bits: u32,
) -> std::result::Result<(), String> {
    let be64 = |o: usize| be64(h, o);
    let file_len = f.metadata().map_err(|e| e.to_string())?.len();
    let cluster = 1u64 << cluster_bits;
    let truncated = |what: String, end: u64| {
        format!(
            "{what} ends at byte {end}, past the end of the file ({file_len} bytes): the image \
             is truncated"
        )
    };
    let l1_entries = u64::from(u32::from_be_bytes([h[36], h[37], h[38], h[39]]));
    let l1_at = be64(40);
    // qemu's own limit on the L1 table (32 MiB).
    if l1_entries > (32 << 20) / 8 {
        return Err(format!("L1 table of {l1_entries} entries"));
    }
    let l1_end = l1_at.saturating_add(l1_entries * 8);
    if l1_end > file_len {
        return Err(truncated("the L1 table".into(), l1_end));
    }
    let incompatible = if version >= 3 { be64(72) } else { 0 };
    // Data clusters of an external data file are not in this file.
    let external_data = incompatible & (1 << 2) != 0;
    let l2_entry = if incompatible & (1 << 4) != 0 { 16 } else { 8 };
    const OFFSET: u64 = 0x00ff_ffff_ffff_fe00;
    const COMPRESSED: u64 = 1 << 62;
    let mut l1 = vec![0u8; (l1_entries * 8) as usize];
    f.read_exact_at(&mut l1, l1_at).map_err(|e| e.to_string())?;
    let mut l2 = vec![0u8; cluster as usize];
    // Each distinct table is read once: L1 entries sharing one (hostile input) cost nothing
    // more, so the whole check reads at most the file.
    let mut seen = std::collections::HashSet::new();
    for (i, e) in l1.chunks_exact(8).enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(e);
        let l2_at = u64::from_be_bytes(b) & OFFSET;
        if l2_at == 0 {
            continue;
        }
        if l2_at.saturating_add(cluster) > file_len {
            return Err(truncated(
                format!("L2 table {i}"),
                l2_at.saturating_add(cluster),
            ));
        }
        if external_data || !seen.insert(l2_at) {
            continue;
        }
        f.read_exact_at(&mut l2, l2_at).map_err(|e| e.to_string())?;
        for (j, e) in l2.chunks_exact(l2_entry).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&e[..8]);
            let entry = u64::from_be_bytes(b);
            let guest = ((i as u64) * (cluster / l2_entry as u64) + j as u64) * cluster;
            if entry & COMPRESSED != 0 {
                // The compressed descriptor's offset field is 62 - (cluster_bits - 8) bits.
                let at = entry & ((1u64 << (62 - (cluster_bits - 8))) - 1);
                if at >= file_len {
                    return Err(truncated(
                        format!("the compressed cluster at guest offset {guest}"),
                        at,
                    ));
                }
                continue;
            }
            let at = entry & OFFSET;
            // Unallocated, or reading as zeros whatever it points at (v3 zero flag).
            if at == 0 || (version >= 3 && entry & 1 != 0) {
                continue;
            }
            if at.saturating_add(cluster) > file_len {
                return Err(truncated(
                    format!("the data cluster at guest offset {guest}"),
                    at.saturating_add(cluster),
                ));
            }
        }
    }
    Ok(())
}

pub struct RawDev {
    file: File,
    size: u64,
}

impl RawDev {
    pub fn new(file: File) -> std::io::Result<Self> {
        let size = file.metadata()?.len();
        Ok(RawDev { file, size })
    }
}

impl BlockDev for RawDev {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        check_range(self.size, buf.len(), offset)?;
        self.file.read_exact_at(buf, offset)
    }
}

struct Qcow2Dev {
    access: FormatAccess<ImagoFile>,
    size: u64,
    path: PathBuf,
}

impl BlockDev for Qcow2Dev {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        check_range(self.size, buf.len(), offset)?;
        self.access
            .read(buf, offset)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", self.path.display())))
    }
}

/// A window of another device: a partition.
pub struct Slice {
    pub dev: Arc<dyn BlockDev>,
    pub start: u64,
    pub len: u64,
}

impl BlockDev for Slice {
    fn size(&self) -> u64 {
        self.len
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        check_range(self.len, buf.len(), offset)?;
        self.dev.read_at(buf, self.start + offset)
    }
}

/// Bytes in memory: fuzzing and tests.
impl BlockDev for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        check_range(self.len() as u64, buf.len(), offset)?;
        let o = offset as usize;
        buf.copy_from_slice(&self[o..o + buf.len()]);
        Ok(())
    }
}

fn check_range(size: u64, len: usize, offset: u64) -> std::io::Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("read of {len} bytes at {offset} is past the end of the disk ({size} bytes); the image is truncated"),
        )),
    }
}

/// Copies the raw disk image `raw` into a new qcow2 image at `out` (64 KiB clusters), leaving
/// all-zero clusters unallocated so the qcow2 is as small as the data.
pub fn raw_to_qcow2(raw: &Path, out: &Path) -> Result<()> {
    use imago::{DenyImplicitOpenGate, FormatCreateBuilder, Storage, StorageCreateOptions};
    const CLUSTER: usize = 64 << 10;
    let io_in = |source| Error::Io {
        path: raw.to_path_buf(),
        source,
    };
    let io_out = |source| Error::Io {
        path: out.to_path_buf(),
        source,
    };
    let src = File::open(raw).map_err(io_in)?;
    let size = src.metadata().map_err(io_in)?.len();
    let storage = ImagoFile::create_open(StorageCreateOptions::new().filename(out).size(0))
        .map_err(io_out)?;
    let q = Qcow2::<ImagoFile>::create_builder(storage)
        .size(size)
        .cluster_size(CLUSTER)
        .create_open(DenyImplicitOpenGate::default(), |img| {
            Ok(Qcow2::<ImagoFile>::builder(img).write(true))
        })
        .map_err(io_out)?;
    let access = FormatAccess::new(q);
    let mut buf = vec![0u8; 16 * CLUSTER];
    let mut off = 0u64;
    while off < size {
        let n = (size - off).min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], off).map_err(io_in)?;
        for (k, c) in buf[..n].chunks(CLUSTER).enumerate() {
            if c.iter().any(|&b| b != 0) {
                access
                    .write(c, off + (k * CLUSTER) as u64)
                    .map_err(io_out)?;
            }
        }
        off += n as u64;
    }
    access.flush().map_err(io_out)?;
    Ok(())
}
