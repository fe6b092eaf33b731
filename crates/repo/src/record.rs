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

/// The TUF target name of `name:tag`: flat (no `/`, which TUF clients place differently under
/// consistent snapshots), `+` standing for `/` (not allowed in names or tags).
pub fn target_name(name: &str, tag: &str) -> String {
    format!("{}@{tag}.json", name.replace('/', "+"))
}

pub fn is_record_target(t: &str) -> bool {
    t.ends_with(".json") && t.contains('@')
}
