//! Search across every version of every image (each tag's whole history): by installed
//! package and version range, by path glob, or by exact file content. Only manifests and
//! package databases are read; results for a subtree are cached by its id, so versions that
//! share subtrees cost little more than one.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use starling_store::{ObjectId, ObjectSource, Store};

use crate::error::{Error, Result};
use crate::manifest::{FileData, Node};
use crate::path;
use crate::pkg::{Inventories, PkgDb};
use crate::{tags, versions};

/// `OP VERSION` with OP one of `<`, `<=`, `=`, `>=`, `>`, `!=` (dpkg's `<<` and `>>` too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionExpr {
    pub op: Ordering,
    pub or_equal: bool,
    pub negate: bool,
    pub version: String,
}

impl VersionExpr {
    pub fn parse(s: &str) -> Result<VersionExpr> {
        let bad = |why: &str| Error::BadQuery {
            what: "version expression",
            input: s.to_string(),
            reason: format!("{why} (e.g. '< 2.36-9', '>= 1:2.0')"),
        };
        let t = s.trim();
        let ops = [
            ("<<", Ordering::Less, false, false),
            (">>", Ordering::Greater, false, false),
            ("<=", Ordering::Less, true, false),
            (">=", Ordering::Greater, true, false),
            ("!=", Ordering::Equal, false, true),
            ("==", Ordering::Equal, false, false),
            ("=", Ordering::Equal, false, false),
            ("<", Ordering::Less, false, false),
            (">", Ordering::Greater, false, false),
        ];
        let (op, or_equal, negate, rest) = ops
            .iter()
            .find_map(|(p, o, e, n)| t.strip_prefix(p).map(|r| (*o, *e, *n, r.trim())))
            .ok_or_else(|| bad("it must start with <, <=, =, >=, > or !="))?;
        if rest.is_empty() {
            return Err(bad("no version after the operator"));
        }
        // dpkg's rules are the strictest; rpm and apk versions need not start with a digit,
        // so only refuse what no package manager allows.
        if let Err(e) = crate::pkg::version::parse_deb(rest) {
            if !rest
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._+~^:-".contains(c))
            {
                return Err(bad(&e));
            }
        }
        Ok(VersionExpr {
            op,
            or_equal,
            negate,
            version: rest.to_string(),
        })
    }

    pub fn matches(&self, db: PkgDb, v: &str) -> bool {
        let o = db.cmp_versions(v, &self.version);
        let hit = o == self.op || (self.or_equal && o == Ordering::Equal);
        hit != self.negate
    }
}

#[derive(Debug, Clone)]
pub enum Query {
    Package {
        name: String,
        version: Option<VersionExpr>,
    },
    Path(globset::GlobMatcher),
    /// A file content id (see [`FileData::content_id`]) or a chunk's object id.
    Content(ObjectId),
}

#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    pub image: String,
    pub version: ObjectId,
    /// Tags whose history holds this version (`name:tag`), current ones marked with `*`.
    pub tags: Vec<String>,
    pub created_unix_ns: i64,
    /// What matched: `name version` for packages, image paths otherwise.
    pub matches: Vec<String>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    pub versions: usize,
    pub trees_read: usize,
}

pub fn glob(pattern: &str) -> Result<globset::GlobMatcher> {
    globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| Error::BadQuery {
            what: "path glob",
            input: pattern.to_string(),
            reason: e.to_string(),
        })
}

/// The versions to search: each with its image name and the tags that held it (`*` marks
/// the ones a tag points at now).
pub type VersionSet = BTreeMap<ObjectId, (String, BTreeSet<String>)>;

/// Every version any tag of the store has held.
pub fn store_versions(store: &Store) -> Result<VersionSet> {
    let mut versions = VersionSet::new();
    for rec in tags::all(store)? {
        for h in &rec.history {
            add_version(
                &mut versions,
                h.version,
                &rec.name,
                &rec.tag,
                h.version == rec.target,
            );
        }
    }
    Ok(versions)
}

/// Adds `version` of `name`, held by `tag` (now, when `current`).
pub fn add_version(set: &mut VersionSet, version: ObjectId, name: &str, tag: &str, current: bool) {
    let e = set
        .entry(version)
        .or_insert_with(|| (name.to_string(), BTreeSet::new()));
    let mark = if current { "*" } else { "" };
    e.1.insert(format!("{name}:{tag}{mark}"));
}

/// Searches every version any tag of the store has held.
pub fn search(store: &Store, q: &Query) -> Result<(Vec<Hit>, Stats)> {
    search_versions(store, store_versions(store)?, q)
}

/// Searches `versions`, reading from `source` (a store, or a repository through its
/// objects: nothing is pulled).
pub fn search_versions(
    source: &dyn ObjectSource,
    versions: VersionSet,
    q: &Query,
) -> Result<(Vec<Hit>, Stats)> {
    let mut inv = Inventories::new(source);
    let mut cache: HashMap<(ObjectId, Vec<u8>), std::rc::Rc<Vec<String>>> = HashMap::new();
    let mut hits = Vec::new();
    let mut stats = Stats::default();
    for (id, (name, tag_set)) in versions {
        stats.versions += 1;
        let commit = versions::load_commit(source, &id)?;
        let matches = match q {
            Query::Package { name: pkg, version } => match inv.of(&commit.root, &name) {
                Ok(i) => i
                    .packages
                    .iter()
                    .filter(|p| p.name == *pkg)
                    .filter(|p| version.as_ref().is_none_or(|v| v.matches(i.db, &p.version)))
                    .map(|p| format!("{} {} {}", p.name, p.version, p.architecture))
                    .collect(),
                Err(Error::PackageDb { .. }) => Vec::new(),
                Err(e) => return Err(e),
            },
            Query::Path(_) | Query::Content(_) => {
                let mut w = TreeSearch {
                    inv: &mut inv,
                    cache: &mut cache,
                    q,
                    trees_read: &mut stats.trees_read,
                };
                (*w.tree(&commit.root, b"")?).clone()
            }
        };
        if !matches.is_empty() {
            hits.push(Hit {
                image: format!("{name}@{}", id.short(12)),
                version: id,
                tags: tag_set.into_iter().collect(),
                created_unix_ns: commit.created_unix_ns,
                matches,
            });
        }
    }
    hits.sort_by(|a, b| {
        a.image
            .cmp(&b.image)
            .then(b.created_unix_ns.cmp(&a.created_unix_ns))
    });
    Ok((hits, stats))
}

struct TreeSearch<'a, 's> {
    inv: &'a mut Inventories<'s>,
    cache: &'a mut HashMap<(ObjectId, Vec<u8>), std::rc::Rc<Vec<String>>>,
    q: &'a Query,
    trees_read: &'a mut usize,
}

impl TreeSearch<'_, '_> {
    /// Matches below tree `id` mounted at `prefix` (the same tree at the same place in two
    /// versions gives the same answer, so it is cached on both).
    fn tree(&mut self, id: &ObjectId, prefix: &[u8]) -> Result<std::rc::Rc<Vec<String>>> {
        let key = (*id, prefix.to_vec());
        if let Some(r) = self.cache.get(&key) {
            return Ok(r.clone());
        }
        *self.trees_read += 1;
        let t = self.inv.browser.tree(id)?;
        let mut out = Vec::new();
        for e in &t.entries {
            let mut p = prefix.to_vec();
            p.push(b'/');
            p.extend_from_slice(&e.name);
            let hit = match (self.q, &e.node) {
                (Query::Path(g), _) => {
                    use std::os::unix::ffi::OsStrExt;
                    g.is_match(std::path::Path::new(std::ffi::OsStr::from_bytes(&p)))
                }
                (Query::Content(want), Node::File { data, .. }) => {
                    data.content_id() == *want
                        || matches!(data, FileData::Chunks(c) if c.iter().any(|c| c.id == *want))
                }
                _ => false,
            };
            if hit {
                out.push(path::display(&p));
            }
            if let Node::Dir { tree, .. } = &e.node {
                out.extend(self.tree(tree, &p)?.iter().cloned());
            }
        }
        let rc = std::rc::Rc::new(out);
        self.cache.insert(key, rc.clone());
        Ok(rc)
    }
}
