//! What a repository says about an image tag: a small JSON file that is a TUF target, so it
//! is signed through targets/snapshot/timestamp. It names the current version and every
//! version the tag ever held; versions are verified from there by their content addresses
//! (commit → trees → chunks, all BLAKE3).

use serde::{Deserialize, Serialize};

pub const RECORD_FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    pub format: u32,
    pub name: String,
    pub tag: String,
    /// Current version (commit id, hex).
    pub target: String,
    /// Newest first.
    pub history: Vec<Published>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Published {
    pub version: String,
    pub parent: Option<String>,
    pub created_unix_ns: i64,
    pub pushed_unix_ns: i64,
    pub files: u64,
    pub bytes: u64,
}

impl ImageRecord {
    /// Parses a record's bytes; `what` names it in errors. A format this build does not know
    /// is refused rather than half-understood.
    pub fn parse(bytes: &[u8], what: &str) -> crate::Result<ImageRecord> {
        let rec: ImageRecord = serde_json::from_slice(bytes)
            .map_err(|e| crate::error::invalid(format!("record {what}"), e.to_string()))?;
        if rec.format != RECORD_FORMAT {
            return Err(crate::error::invalid(
                format!("record {what}"),
                format!(
                    "format {} is not supported (this build reads {RECORD_FORMAT})",
                    rec.format
                ),
            ));
        }
        Ok(rec)
    }
}

/// The TUF target name of `name:tag`: flat (no `/`, which TUF clients place differently under
/// consistent snapshots), `+` standing for `/` (not allowed in names or tags).
pub fn target_name(name: &str, tag: &str) -> String {
    format!("{}@{tag}.json", name.replace('/', "+"))
}

pub fn is_record_target(t: &str) -> bool {
    t.ends_with(".json") && t.contains('@')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_and_unknown_formats_are_refused() {
        let rec = ImageRecord {
            format: RECORD_FORMAT,
            name: "a/b".into(),
            tag: "v1".into(),
            target: "00".repeat(32),
            history: Vec::new(),
        };
        let bytes = serde_json::to_vec(&rec).unwrap();
        assert_eq!(ImageRecord::parse(&bytes, "x").unwrap(), rec);
        let future = String::from_utf8(bytes)
            .unwrap()
            .replace("\"format\":1", "\"format\":2");
        let e = ImageRecord::parse(future.as_bytes(), "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("format 2"), "{e}");
        assert!(ImageRecord::parse(b"{", "x").is_err());
        assert_eq!(target_name("a/b", "v1"), "a+b@v1.json");
    }
}
