//! Tags: named, movable pointers to versions that remember every version they ever named.
//!
//! A tag is stored as one store ref (namespace `tags`, file `NAME:TAG` with `/` in NAME written
//! as `%2F`) holding a JSON record. Replacing that file atomically is what publishes a version.

use serde::{Deserialize, Serialize};
use starling_store::{ObjectId, Store};

use crate::error::{Error, Result};

const NAMESPACE: &str = "tags";
pub const TAG_FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub version: ObjectId,
    pub time_unix_ns: i64,
    /// What moved the tag: "import", "tag", ...
    pub op: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    pub format: u32,
    pub name: String,
    pub tag: String,
    pub target: ObjectId,
    /// Oldest first; the last entry is the current target.
    pub history: Vec<HistoryEntry>,
}

fn ref_name(name: &str, tag: &str) -> String {
    format!("{}:{}", name.replace('/', "%2F"), tag)
}

fn parse_ref_name(r: &str) -> Option<(String, String)> {
    let (n, t) = r.rsplit_once(':')?;
    Some((n.replace("%2F", "/"), t.to_string()))
}

pub fn read(store: &Store, name: &str, tag: &str) -> Result<Option<TagRecord>> {
    let r = ref_name(name, tag);
    let Some(bytes) = store.read_ref(NAMESPACE, &r)? else {
        return Ok(None);
    };
    let rec: TagRecord = serde_json::from_slice(&bytes)
        .map_err(|e| Error::BadTagRecord(format!("{name}:{tag}"), e.to_string()))?;
    if rec.format != TAG_FORMAT_VERSION {
        return Err(Error::BadTagRecord(
            format!("{name}:{tag}"),
            format!(
                "format version {} is not supported (this build reads {TAG_FORMAT_VERSION})",
                rec.format
            ),
        ));
    }
    Ok(Some(rec))
}

pub fn write(store: &Store, rec: &TagRecord) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(rec).unwrap_or_default();
    bytes.push(b'\n');
    store.write_ref(NAMESPACE, &ref_name(&rec.name, &rec.tag), &bytes)?;
    Ok(())
}

pub fn remove(store: &Store, name: &str, tag: &str) -> Result<bool> {
    Ok(store.remove_ref(NAMESPACE, &ref_name(name, tag))?)
}

/// All tags as (name, tag), sorted.
pub fn list(store: &Store) -> Result<Vec<(String, String)>> {
    Ok(store
        .list_refs(NAMESPACE)?
        .iter()
        .filter_map(|r| parse_ref_name(r))
        .collect())
}

/// Every tag record in the store.
pub fn all(store: &Store) -> Result<Vec<TagRecord>> {
    let mut out = Vec::new();
    for (name, tag) in list(store)? {
        if let Some(rec) = read(store, &name, &tag)? {
            out.push(rec);
        }
    }
    Ok(out)
}

/// Moves (or creates) a tag to `version`, appending to its history. Call under
/// [`Store::lock_refs`].
pub fn point(store: &Store, name: &str, tag: &str, version: ObjectId, op: &str) -> Result<()> {
    let mut rec = read(store, name, tag)?.unwrap_or(TagRecord {
        format: TAG_FORMAT_VERSION,
        name: name.to_string(),
        tag: tag.to_string(),
        target: version,
        history: Vec::new(),
    });
    rec.target = version;
    rec.history.push(HistoryEntry {
        version,
        time_unix_ns: crate::now_unix_ns(),
        op: op.to_string(),
    });
    write(store, &rec)
}
