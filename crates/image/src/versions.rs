//! Finding, listing, tagging and removing image versions. All of it reads tags and commits
//! only, never file content.

use serde::Serialize;
use starling_store::{ObjectId, ObjectSource, Store, MAX_MANIFEST};

use crate::error::{Error, Result};
use crate::manifest::Commit;
use crate::reference::{default_tag, is_version_prefix, one_version, ImageRef};
use crate::tags;

/// A version found by a reference.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub id: ObjectId,
    pub commit: Commit,
    /// How to show it: `name:tag@short` or `name@short`.
    pub display: String,
}

pub fn load_commit(source: &dyn ObjectSource, id: &ObjectId) -> Result<Commit> {
    Commit::decode(id, &source.get(id, MAX_MANIFEST)?)
}

/// Every version a name's tags have ever held, newest first, without duplicates.
pub fn versions_of(store: &Store, name: &str) -> Result<Vec<ObjectId>> {
    Ok(versions_by_name(store)?.remove(name).unwrap_or_default())
}

/// For every image name, the versions its tags have held, newest first, without duplicates.
fn versions_by_name(store: &Store) -> Result<std::collections::HashMap<String, Vec<ObjectId>>> {
    let mut seen = std::collections::HashSet::new();
    let mut all: Vec<(String, i64, ObjectId)> = Vec::new();
    for rec in tags::all(store)? {
        for h in rec.history {
            if seen.insert((rec.name.clone(), h.version)) {
                all.push((rec.name.clone(), h.time_unix_ns, h.version));
            }
        }
    }
    all.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)));
    let mut by_name: std::collections::HashMap<String, Vec<ObjectId>> = Default::default();
    for (n, _, v) in all {
        by_name.entry(n).or_default().push(v);
    }
    Ok(by_name)
}

/// Resolves many references, reading the tag records once (for fleet commands that name
/// hundreds of versions).
pub fn resolve_many(store: &Store, refs: &[ImageRef]) -> Result<Vec<Resolved>> {
    let refs: Vec<ImageRef> = if refs.iter().any(|r| matches!(r, ImageRef::Name { .. })) {
        let all = tags::all(store)?;
        refs.iter()
            .map(|r| concrete_among(store, r, &all))
            .collect::<Result<_>>()?
    } else {
        refs.to_vec()
    };
    let by_name = if refs.iter().any(|r| matches!(r, ImageRef::Version { .. })) {
        versions_by_name(store)?
    } else {
        Default::default()
    };
    refs.iter()
        .map(|r| match r {
            ImageRef::Tag { .. } | ImageRef::Name { .. } => resolve(store, r),
            ImageRef::Version { name, prefix } => pick(
                store,
                name,
                prefix,
                by_name.get(name).map(Vec::as_slice).unwrap_or(&[]),
            ),
        })
        .collect()
}

fn pick(store: &Store, name: &str, prefix: &str, versions: &[ObjectId]) -> Result<Resolved> {
    if versions.is_empty() {
        return Err(Error::UnknownImage(name.to_string()));
    }
    let hits: Vec<_> = versions
        .iter()
        .filter(|v| v.to_hex().starts_with(prefix))
        .collect();
    match hits.as_slice() {
        [] => Err(Error::UnknownVersion {
            name: name.to_string(),
            prefix: prefix.to_string(),
        }),
        [id] => Ok(Resolved {
            id: **id,
            commit: load_commit(store, id)?,
            display: format!("{name}@{}", id.short(12)),
        }),
        many => Err(Error::AmbiguousVersion {
            name: name.to_string(),
            prefix: prefix.to_string(),
            candidates: many
                .iter()
                .map(|v| v.short(16))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// What a bare name means here (see [`ImageRef`]): `NAME:latest`, else NAME's only tag, else
/// (no image has that name and it is 4+ hex digits) the version whose id starts with it. Other
/// references are returned as they are.
pub fn concrete(store: &Store, r: &ImageRef) -> Result<ImageRef> {
    match r {
        ImageRef::Name { .. } => concrete_among(store, r, &tags::all(store)?),
        _ => Ok(r.clone()),
    }
}

/// [`concrete`] given every tag record (read once for many references).
fn concrete_among(store: &Store, r: &ImageRef, all: &[tags::TagRecord]) -> Result<ImageRef> {
    let ImageRef::Name { name } = r else {
        return Ok(r.clone());
    };
    if let Some(tag) = default_tag(name, &tags_of(all, name))? {
        return Ok(ImageRef::Tag {
            name: name.clone(),
            tag,
        });
    }
    if !is_version_prefix(name) {
        return Err(Error::UnknownImage(name.clone()));
    }
    let candidates = versions_by_name(store)?
        .into_iter()
        .flat_map(|(n, vs)| vs.into_iter().map(move |v| (n.clone(), v.to_hex())));
    match one_version(name, "the store", candidates)? {
        Some((owner, id)) => Ok(ImageRef::Version {
            name: owner,
            prefix: id,
        }),
        None => Err(Error::UnknownImage(format!(
            "{name} (no image has that name, and no version's id starts with it)"
        ))),
    }
}

/// NAME's tags, sorted.
fn tags_of(all: &[tags::TagRecord], name: &str) -> Vec<String> {
    let mut mine: Vec<String> = all
        .iter()
        .filter(|t| t.name == name)
        .map(|t| t.tag.clone())
        .collect();
    mine.sort();
    mine
}

/// "no image NAME:TAG", with the tags NAME has when it has some.
fn unknown_tag(store: &Store, name: &str, tag: &str) -> Result<Error> {
    let others = tags_of(&tags::all(store)?, name);
    Ok(Error::UnknownImage(if others.is_empty() {
        format!("{name}:{tag}")
    } else {
        format!("{name}:{tag} ({name} has tags {})", others.join(", "))
    }))
}

pub fn resolve(store: &Store, r: &ImageRef) -> Result<Resolved> {
    let r = &concrete(store, r)?;
    match r {
        ImageRef::Name { .. } => unreachable!("concrete() resolves bare names"),
        ImageRef::Tag { name, tag } => {
            let Some(rec) = tags::read(store, name, tag)? else {
                return Err(unknown_tag(store, name, tag)?);
            };
            Ok(Resolved {
                id: rec.target,
                commit: load_commit(store, &rec.target)?,
                display: format!("{name}:{tag}@{}", rec.target.short(12)),
            })
        }
        ImageRef::Version { name, prefix } => pick(store, name, prefix, &versions_of(store, name)?),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageRow {
    pub name: String,
    pub tag: String,
    pub version: ObjectId,
    pub created_unix_ns: i64,
    pub files: u64,
    pub bytes: u64,
    pub versions: usize,
}

/// One row per tag.
pub fn list(store: &Store) -> Result<Vec<ImageRow>> {
    let mut rows = Vec::new();
    for rec in tags::all(store)? {
        let c = load_commit(store, &rec.target)?;
        rows.push(ImageRow {
            name: rec.name,
            tag: rec.tag,
            version: rec.target,
            created_unix_ns: c.created_unix_ns,
            files: c.stats.files,
            bytes: c.stats.bytes,
            versions: rec.history.len(),
        });
    }
    Ok(rows)
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryRow {
    pub version: ObjectId,
    pub parent: Option<ObjectId>,
    pub tagged_unix_ns: i64,
    pub created_unix_ns: i64,
    pub op: String,
    pub files: u64,
    pub bytes: u64,
    pub current: bool,
}

/// The versions a tag has held, newest first.
pub fn history(store: &Store, name: &str, tag: &str) -> Result<Vec<HistoryRow>> {
    let Some(rec) = tags::read(store, name, tag)? else {
        return Err(unknown_tag(store, name, tag)?);
    };
    let mut rows = Vec::new();
    for h in rec.history.iter().rev() {
        let c = load_commit(store, &h.version)?;
        rows.push(HistoryRow {
            version: h.version,
            parent: c.parent,
            tagged_unix_ns: h.time_unix_ns,
            created_unix_ns: c.created_unix_ns,
            op: h.op.clone(),
            files: c.stats.files,
            bytes: c.stats.bytes,
            current: h.version == rec.target && rows.is_empty(),
        });
    }
    Ok(rows)
}

/// Points `name:tag` at the version `source` names.
pub fn tag(store: &Store, source: &ImageRef, name: &str, tag: &str) -> Result<ObjectId> {
    crate::reference::check_name(name).map_err(|reason| Error::BadRef {
        input: name.to_string(),
        reason,
    })?;
    crate::reference::check_tag(tag).map_err(|reason| Error::BadRef {
        input: tag.to_string(),
        reason,
    })?;
    let _w = store.lock_writer()?;
    let _r = store.lock_refs()?;
    let src = resolve(store, source)?;
    tags::point(store, name, tag, src.id, "tag")?;
    Ok(src.id)
}

/// `NAME:TAG` removes the tag with its history; `NAME@VERSION` drops one version from the
/// histories of NAME's tags (refused while a tag points at it). `gc` reclaims the content.
pub fn remove(store: &Store, r: &ImageRef) -> Result<String> {
    let _w = store.lock_writer()?;
    let _r = store.lock_refs()?;
    let r = &concrete(store, r)?;
    match r {
        ImageRef::Name { .. } => unreachable!("concrete() resolves bare names"),
        ImageRef::Tag { name, tag } => {
            if tags::remove(store, name, tag)? {
                Ok(format!("removed tag {name}:{tag}"))
            } else {
                Err(Error::UnknownImage(r.to_string()))
            }
        }
        ImageRef::Version { name, .. } => {
            let v = resolve(store, r)?.id;
            let recs: Vec<_> = tags::all(store)?
                .into_iter()
                .filter(|t| &t.name == name)
                .collect();
            if let Some(t) = recs.iter().find(|t| t.target == v) {
                return Err(Error::VersionInUse {
                    name: name.clone(),
                    version: v.short(12),
                    tag: format!("{}:{}", t.name, t.tag),
                });
            }
            for mut rec in recs {
                let before = rec.history.len();
                rec.history.retain(|h| h.version != v);
                if rec.history.len() != before {
                    tags::write(store, &rec)?;
                }
            }
            Ok(format!("removed version {} of {name}", v.short(12)))
        }
    }
}
