//! rpm's package database (rpm ≥ 4.16, `rpmdb.sqlite`): each row of table `Packages` holds a
//! package header blob; the fields an inventory needs are read from it directly.

use super::Package;

const TAG_NAME: u32 = 1000;
const TAG_VERSION: u32 = 1001;
const TAG_RELEASE: u32 = 1002;
const TAG_EPOCH: u32 = 1003;
const TAG_ARCH: u32 = 1022;
const TAG_SOURCERPM: u32 = 1044;
const TYPE_INT32: u32 = 4;
const TYPE_STRING: u32 = 6;
const TYPE_STRING_ARRAY: u32 = 8;
const TYPE_I18NSTRING: u32 = 9;

/// Packages in an rpmdb.sqlite file's bytes.
pub fn parse_rpmdb_sqlite(bytes: &[u8]) -> Result<Vec<Package>, String> {
    // SQLite reads files; the bytes go to a private scratch file, opened read-only.
    let dir = tempfile::tempdir().map_err(|e| format!("scratch directory: {e}"))?;
    let path = dir.path().join("rpmdb.sqlite");
    std::fs::write(&path, bytes).map_err(|e| format!("scratch copy: {e}"))?;
    let db = rusqlite::Connection::open_with_flags(
        &path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("not an SQLite database: {e}"))?;
    let mut stmt = db
        .prepare("SELECT hnum, blob FROM Packages")
        .map_err(|e| format!("no Packages table: {e}"))?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for row in rows {
        let (hnum, blob) = row.map_err(|e| e.to_string())?;
        out.push(parse_header(&blob).map_err(|e| format!("package header {hnum}: {e}"))?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name).then(a.version.cmp(&b.version)));
    Ok(out)
}

/// A header blob as rpmdb stores it (no lead magic): index count, data size, index entries
/// (tag, type, offset, count; big-endian), then the data store.
pub fn parse_header(b: &[u8]) -> Result<Package, String> {
    let be32 = |o: usize| -> Result<u32, String> {
        b.get(o..o + 4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
            .ok_or_else(|| "truncated".to_string())
    };
    let il = be32(0)? as usize;
    let dl = be32(4)? as usize;
    if il > 0x10000 || dl > 256 << 20 {
        return Err(format!("implausible sizes ({il} entries, {dl} data bytes)"));
    }
    let data_start = 8 + il * 16;
    if data_start + dl > b.len() {
        return Err("truncated".into());
    }
    let data = &b[data_start..data_start + dl];
    let find = |tag: u32| -> Result<Option<(u32, usize)>, String> {
        for i in 0..il {
            let e = 8 + i * 16;
            if be32(e)? == tag {
                return Ok(Some((be32(e + 4)?, be32(e + 8)? as usize)));
            }
        }
        Ok(None)
    };
    let string = |tag: u32| -> Result<Option<String>, String> {
        match find(tag)? {
            Some((TYPE_STRING | TYPE_STRING_ARRAY | TYPE_I18NSTRING, off)) => {
                let rest = data.get(off..).ok_or("string offset out of range")?;
                let end = rest
                    .iter()
                    .position(|&c| c == 0)
                    .ok_or("unterminated string")?;
                Ok(Some(String::from_utf8_lossy(&rest[..end]).into_owned()))
            }
            Some((t, _)) => Err(format!("tag {tag} has type {t}, not a string")),
            None => Ok(None),
        }
    };
    let name = string(TAG_NAME)?.ok_or("no name")?;
    let version = string(TAG_VERSION)?.ok_or("no version")?;
    let release = string(TAG_RELEASE)?.unwrap_or_default();
    let epoch = match find(TAG_EPOCH)? {
        Some((TYPE_INT32, off)) => Some(
            data.get(off..off + 4)
                .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
                .ok_or("epoch offset out of range")?,
        ),
        _ => None,
    };
    let mut evr = match epoch {
        Some(e) => format!("{e}:{version}"),
        None => version,
    };
    if !release.is_empty() {
        evr = format!("{evr}-{release}");
    }
    let source = string(TAG_SOURCERPM)?
        .and_then(|s| {
            let s = s
                .strip_suffix(".src.rpm")
                .or_else(|| s.strip_suffix(".nosrc.rpm"))?;
            let (rest, _rel) = s.rsplit_once('-')?;
            let (n, _ver) = rest.rsplit_once('-')?;
            Some(n.to_string())
        })
        .unwrap_or_else(|| name.clone());
    Ok(Package {
        name,
        version: evr,
        architecture: string(TAG_ARCH)?.unwrap_or_default(),
        source,
    })
}
