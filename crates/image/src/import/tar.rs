//! Import of a tar archive (plain, gzip or zstd). Entries are read in one pass; file contents
//! are chunked and staged as they stream by. Paths are normalised and refused if absolute or
//! if they climb with `..`; nothing is ever written outside the store, so a hostile archive
//! cannot reach the host file system.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use serde_bytes::ByteBuf;
use starling_store::Txn;
use tar::EntryType;

use crate::chunk::{store_content, ChunkParams, Progress};
use crate::error::{Error, IoContext, Result};
use crate::import::Compression;
use crate::manifest::{Meta, Node, Xattr};
use crate::path;
use crate::stage::{StageDir, Staged};

pub(crate) fn stage(
    txn: &Txn<'_>,
    archive_path: &Path,
    compression: Compression,
    params: &ChunkParams,
    progress: &Progress,
) -> Result<StageDir> {
    let file = File::open(archive_path).at(archive_path)?;
    let reader = BufReader::with_capacity(1 << 20, file);
    let bad = |e: std::io::Error| Error::BadTar {
        archive: archive_path.to_path_buf(),
        reason: e.to_string(),
    };
    let reader = crate::import::decompress(Box::new(reader), compression).map_err(bad)?;
    let mut root = StageDir {
        meta: crate::stage::implicit_dir_meta(),
        children: Default::default(),
    };
    let saw_entry = apply(txn, reader, archive_path, &mut root, None, params, progress)?;
    if !saw_entry {
        return Err(Error::BadTar {
            archive: archive_path.to_path_buf(),
            reason: "no entries (empty or not a tar archive)".into(),
        });
    }
    root.canonicalize_hardlinks(archive_path)?;
    Ok(root)
}

/// An OCI layer being applied: what it added, and its whiteouts, which apply to the layers
/// below only and so are resolved when the layer ends.
#[derive(Default)]
pub(crate) struct Layer {
    added: std::collections::HashSet<Vec<Vec<u8>>>,
    whiteouts: Vec<Vec<Vec<u8>>>,
    opaque: Vec<Vec<Vec<u8>>>,
}

impl Layer {
    /// Applies the layer's whiteouts and opaque directories to `root`.
    pub(crate) fn finish(self, root: &mut StageDir) {
        for w in &self.whiteouts {
            if !self.added.contains(w) {
                root.remove(w);
            }
        }
        for dir in &self.opaque {
            root.prune_except(dir, &self.added);
        }
    }
}

/// Reads tar entries from `reader` into `root`. With `layer`, OCI whiteout files
/// (`.wh.NAME`, `.wh..wh..opq`) are recorded instead of staged. Returns whether there was
/// any entry. `archive_path` names the source in errors. Extension entries (long names, PAX
/// headers) larger than [`crate::tar_bound::MAX_EXTENSION`] are refused.
pub(crate) fn apply(
    txn: &Txn<'_>,
    reader: impl Read,
    archive_path: &Path,
    root: &mut StageDir,
    mut layer: Option<&mut Layer>,
    params: &ChunkParams,
    progress: &Progress,
) -> Result<bool> {
    let bad = |e: std::io::Error| Error::BadTar {
        archive: archive_path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut archive = crate::tar_bound::archive(reader);
    let mut saw_entry = false;
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        saw_entry = true;
        let raw_path = entry.path_bytes().into_owned();
        let shown = path::display(&raw_path);
        let unsafe_entry = |reason| Error::UnsafeEntry {
            archive: archive_path.to_path_buf(),
            entry: shown.clone(),
            reason,
        };
        let comps = normalise(&raw_path).map_err(unsafe_entry)?;
        if let (Some(layer), Some((last, parent))) = (layer.as_deref_mut(), comps.split_last()) {
            if last.as_slice() == b".wh..wh..opq" {
                layer.opaque.push(parent.to_vec());
                continue;
            }
            if let Some(hidden) = last.strip_prefix(b".wh.") {
                let mut target = parent.to_vec();
                target.push(hidden.to_vec());
                layer.whiteouts.push(target);
                continue;
            }
        }
        let etype = entry.header().entry_type();
        if matches!(etype, EntryType::XGlobalHeader) {
            continue;
        }
        // A hard link's header repeats its target's metadata, which the target already holds.
        let meta = if etype == EntryType::Link {
            Meta::default()
        } else {
            entry_meta(&mut entry).map_err(bad)?
        };
        let item = match etype {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let what = |e: std::io::Error| Error::BadTar {
                    archive: archive_path.to_path_buf(),
                    reason: format!("entry {shown:?}: {e}"),
                };
                let (size, data) = store_content(txn, params, &mut entry, progress, &what)?;
                progress
                    .files
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Staged::Node(Node::File { meta, size, data })
            }
            EntryType::Directory => Staged::Dir(StageDir {
                meta,
                children: Default::default(),
            }),
            EntryType::Symlink => Staged::Node(Node::Symlink {
                meta,
                target: ByteBuf::from(
                    link_name(&entry).ok_or_else(|| unsafe_entry("symlink without a target"))?,
                ),
            }),
            EntryType::Link => {
                let target =
                    link_name(&entry).ok_or_else(|| unsafe_entry("hard link without a target"))?;
                let target = normalise(&target).map_err(unsafe_entry)?;
                if target.is_empty() {
                    return Err(unsafe_entry("hard link to the archive root"));
                }
                Staged::Node(Node::Hardlink {
                    target: ByteBuf::from(path::join(&target)),
                })
            }
            EntryType::Char | EntryType::Block => {
                let h = entry.header();
                let major = h.device_major().map_err(bad)?.unwrap_or(0);
                let minor = h.device_minor().map_err(bad)?.unwrap_or(0);
                let rdev = rustix::fs::makedev(major, minor);
                if etype == EntryType::Char {
                    Staged::Node(Node::CharDevice { meta, rdev })
                } else {
                    Staged::Node(Node::BlockDevice { meta, rdev })
                }
            }
            EntryType::Fifo => Staged::Node(Node::Fifo { meta }),
            other => {
                return Err(Error::UnsupportedEntry {
                    source_path: archive_path.to_path_buf(),
                    path: shown,
                    kind: format!("tar type {:?}", other.as_byte() as char),
                })
            }
        };
        if comps.is_empty() {
            match item {
                Staged::Dir(d) => root.meta = d.meta,
                _ => return Err(unsafe_entry("the archive root is not a directory")),
            }
            continue;
        }
        if let Some(layer) = layer.as_deref_mut() {
            for n in 1..=comps.len() {
                layer.added.insert(comps[..n].to_vec());
            }
        }
        root.insert(&comps, item, archive_path)?;
    }
    Ok(saw_entry)
}

fn link_name<R: Read>(entry: &tar::Entry<'_, R>) -> Option<Vec<u8>> {
    entry.link_name_bytes().map(|c| c.into_owned())
}

/// Archive path → image path components; `Err` names why the entry is refused.
fn normalise(raw: &[u8]) -> Result<Vec<Vec<u8>>, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("absolute path");
    }
    if raw.split(|&b| b == b'/').any(|c| c == b"..") {
        return Err("path climbs out of the archive with '..'");
    }
    if raw.contains(&0) {
        return Err("NUL byte in path");
    }
    path::split(raw).ok_or("invalid path")
}

/// Header fields with PAX overrides (nanosecond mtime, large ids, xattrs).
fn entry_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> std::io::Result<Meta> {
    let h = entry.header();
    let mut meta = Meta {
        mode: h.mode()? & 0o7777,
        uid: u32::try_from(h.uid()?).map_err(|_| std::io::Error::other("uid out of range"))?,
        gid: u32::try_from(h.gid()?).map_err(|_| std::io::Error::other("gid out of range"))?,
        mtime_sec: i64::try_from(h.mtime()?).unwrap_or(i64::MAX),
        mtime_nsec: 0,
        xattrs: Vec::new(),
    };
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            let key = ext.key_bytes();
            let value = ext.value_bytes();
            let text = || std::str::from_utf8(value).map_err(std::io::Error::other);
            match key {
                b"mtime" => (meta.mtime_sec, meta.mtime_nsec) = parse_pax_time(text()?)?,
                b"uid" => meta.uid = text()?.parse().map_err(std::io::Error::other)?,
                b"gid" => meta.gid = text()?.parse().map_err(std::io::Error::other)?,
                k if k.starts_with(b"SCHILY.xattr.") => meta.xattrs.push(Xattr {
                    name: ByteBuf::from(k[b"SCHILY.xattr.".len()..].to_vec()),
                    value: ByteBuf::from(value.to_vec()),
                }),
                _ => {}
            }
        }
    }
    meta.xattrs.sort();
    meta.xattrs.dedup_by(|a, b| a.name == b.name);
    Ok(meta)
}

/// PAX times are decimal seconds with an optional fraction, possibly negative.
fn parse_pax_time(s: &str) -> std::io::Result<(i64, u32)> {
    let bad = || std::io::Error::other(format!("bad PAX time {s:?}"));
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let sec: i64 = int.parse().map_err(|_| bad())?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let mut ns_text: String = frac.chars().take(9).collect();
    while ns_text.len() < 9 {
        ns_text.push('0');
    }
    let ns: u32 = ns_text.parse().map_err(|_| bad())?;
    if !neg {
        Ok((sec, ns))
    } else if ns == 0 {
        Ok((-sec, 0))
    } else {
        Ok((-sec - 1, 1_000_000_000 - ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time("12.5").unwrap(), (12, 500_000_000));
        assert_eq!(parse_pax_time("12").unwrap(), (12, 0));
        assert_eq!(parse_pax_time("-1.25").unwrap(), (-2, 750_000_000));
        assert_eq!(parse_pax_time("1.1234567891").unwrap(), (1, 123_456_789));
        assert!(parse_pax_time("x").is_err());
        assert!(parse_pax_time("1.2e3").is_err());
    }

    /// `path` (`/`-separated) in `root`.
    fn staged<'a>(root: &'a StageDir, path: &str) -> &'a Staged {
        let (dirs, last) = path.rsplit_once('/').unwrap_or(("", path));
        let mut d = root;
        for c in dirs.split('/').filter(|c| !c.is_empty()) {
            match d.children.get(c.as_bytes()) {
                Some(Staged::Dir(sub)) => d = sub,
                _ => panic!("no directory {c:?} in {path:?}"),
            }
        }
        d.children.get(last.as_bytes()).expect(path)
    }

    #[test]
    fn an_archive_declaring_an_8_gib_extension_entry_is_refused() {
        use crate::tar_bound::tests::{bomb_prefix, header, Endless, GIB8};
        let dir = tempfile::tempdir().unwrap();
        let store = starling_store::Store::open_or_init(dir.path().join("store")).unwrap();
        let txn = store.begin().unwrap();
        for (kind, what) in [
            (EntryType::GNULongName, "GNU long name"),
            (EntryType::GNULongLink, "GNU long link name"),
            (EntryType::XHeader, "PAX extended header"),
        ] {
            let bytes = bomb_prefix(&header(kind, "././@LongLink", GIB8));
            let len = bytes.len() as u64;
            let mut src = Endless::new(bytes);
            let err = apply(
                &txn,
                &mut src,
                Path::new("bomb.tar"),
                &mut StageDir::default(),
                None,
                &ChunkParams::default(),
                &Progress::default(),
            )
            .err()
            .unwrap();
            assert_eq!(
                err.to_string(),
                format!(
                    "bomb.tar: corrupt or truncated tar archive: \
                     tar entry: a {what} of 8589934592 bytes (more than 1048576)"
                )
            );
            assert!(
                src.consumed <= len + 4 * 512,
                "{what}: {} read",
                src.consumed
            );
        }
        drop(txn);

        // The same in a .tar.gz of 8 MiB of zeros after the header, imported.
        let bytes = bomb_prefix(&header(EntryType::GNULongName, "././@LongLink", GIB8));
        let gz = dir.path().join("bomb.tar.gz");
        let mut enc =
            flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, &bytes).unwrap();
        std::io::Write::write_all(&mut enc, &vec![0; 8 << 20]).unwrap();
        enc.finish().unwrap();
        let opts = crate::import::ImportOptions {
            source: &gz,
            format: None,
            name: "bomb",
            tag: "v1",
            labels: Default::default(),
            chunking: Default::default(),
            partition: None,
            allow_backing: false,
        };
        let err = crate::import::import(&store, &opts, &Progress::default())
            .err()
            .unwrap();
        assert!(matches!(err, Error::BadTar { .. }), "{err}");
        assert!(
            err.to_string().ends_with(
                "bomb.tar.gz: corrupt or truncated tar archive: \
                 tar entry: a GNU long name of 8589934592 bytes (more than 1048576)"
            ),
            "{err}"
        );
    }

    #[test]
    fn long_names_links_and_pax_headers_import_through_the_bound() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(150));
        let target = format!("/{}", "t".repeat(200));
        let bytes = crate::tar_bound::tests::with_extensions(&long, &target)
            .into_inner()
            .unwrap();

        let dir = tempfile::tempdir().unwrap();
        let store = starling_store::Store::open_or_init(dir.path().join("store")).unwrap();
        let txn = store.begin().unwrap();
        let mut root = StageDir::default();
        let saw = apply(
            &txn,
            &bytes[..],
            Path::new("ok.tar"),
            &mut root,
            None,
            &ChunkParams::default(),
            &Progress::default(),
        )
        .unwrap();
        assert!(saw);
        match staged(&root, &long) {
            Staged::Node(Node::File { size: 5, data, .. }) => {
                assert_eq!(
                    data,
                    &crate::manifest::FileData::Inline(ByteBuf::from(*b"hello"))
                )
            }
            _ => panic!("{long} is not a 5-byte file"),
        }
        match staged(&root, "link") {
            Staged::Node(Node::Symlink { target: t, .. }) => {
                assert_eq!(t.as_slice(), target.as_bytes())
            }
            _ => panic!("link is not a symlink"),
        }
        match staged(&root, "with-pax") {
            Staged::Node(Node::File { meta, .. }) => {
                assert_eq!((meta.mtime_sec, meta.mtime_nsec), (12, 500_000_000));
                assert_eq!(meta.xattrs.len(), 1);
                assert_eq!(meta.xattrs[0].name.as_slice(), b"user.a");
            }
            _ => panic!("with-pax is not a file"),
        }
    }

    #[test]
    fn refuses_escapes() {
        assert!(normalise(b"/etc/passwd").is_err());
        assert!(normalise(b"a/../../x").is_err());
        assert_eq!(normalise(b"./a/b/").unwrap().len(), 2);
        assert!(normalise(b"./").unwrap().is_empty());
    }
}
