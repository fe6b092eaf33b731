//! Image references as users type them, the same grammar everywhere (docs/ARCHITECTURE.md,
//! "References"): `NAME:TAG`; `NAME@VERSION` (a unique prefix of a version id, 4 to 64 hex
//! digits); and a bare `NAME`, which means `NAME:latest`, else NAME's only tag, else (no image
//! has that name and it is 4+ hex digits) the one version whose id starts with it, as docker
//! and podman take an image id.

use std::fmt;

use crate::error::{Error, Result};

pub const DEFAULT_TAG: &str = "latest";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    Tag {
        name: String,
        tag: String,
    },
    Version {
        name: String,
        prefix: String,
    },
    /// A bare name: resolved against the store (`versions::concrete`).
    Name {
        name: String,
    },
}

impl ImageRef {
    pub fn parse(input: &str) -> Result<ImageRef> {
        let bad = |reason: &str| Error::BadRef {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        if let Some((name, ver)) = input.split_once('@') {
            check_name(name).map_err(|r| bad(&r))?;
            if ver.len() < 4
                || ver.len() > 64
                || !ver.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            {
                return Err(bad("a version is 4 to 64 lower-case hex digits of its id"));
            }
            return Ok(ImageRef::Version {
                name: name.to_string(),
                prefix: ver.to_string(),
            });
        }
        let Some((name, tag)) = input.rsplit_once(':') else {
            check_name(input).map_err(|r| bad(&r))?;
            return Ok(ImageRef::Name {
                name: input.to_string(),
            });
        };
        check_name(name).map_err(|r| bad(&r))?;
        check_tag(tag).map_err(|r| bad(&r))?;
        Ok(ImageRef::Tag {
            name: name.to_string(),
            tag: tag.to_string(),
        })
    }

    /// Parses a reference that must name a tag (the destination of import and tag; a bare
    /// name is `NAME:latest` there).
    pub fn parse_tag(input: &str) -> Result<(String, String)> {
        match ImageRef::parse(input)? {
            ImageRef::Tag { name, tag } => Ok((name, tag)),
            ImageRef::Name { name } => Ok((name, DEFAULT_TAG.to_string())),
            ImageRef::Version { .. } => Err(Error::BadRef {
                input: input.to_string(),
                reason: "expected NAME[:TAG], not a version".into(),
            }),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            ImageRef::Tag { name, .. }
            | ImageRef::Version { name, .. }
            | ImageRef::Name { name } => name,
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Tag { name, tag } => write!(f, "{name}:{tag}"),
            ImageRef::Version { name, prefix } => write!(f, "{name}@{prefix}"),
            ImageRef::Name { name } => write!(f, "{name}"),
        }
    }
}

/// The tag a bare `name` means among its `tags`: `latest`, else the only one; `None` when it
/// has none; an error listing them when it has several and no `latest`.
pub fn default_tag(name: &str, tags: &[String]) -> Result<Option<String>> {
    if tags.iter().any(|t| t == DEFAULT_TAG) {
        return Ok(Some(DEFAULT_TAG.to_string()));
    }
    match tags {
        [] => Ok(None),
        [only] => Ok(Some(only.clone())),
        many => {
            let mut sorted = many.to_vec();
            sorted.sort();
            Err(Error::NoDefaultTag {
                name: name.to_string(),
                tags: sorted.join(", "),
            })
        }
    }
}

/// The one version a bare id `prefix` names among `candidates` (image name, version id in
/// hex), each version counted once whatever names hold it; `None` when none starts with it, an
/// error listing them when several do. `place` says where they were looked for.
pub fn one_version(
    prefix: &str,
    place: &str,
    candidates: impl IntoIterator<Item = (String, String)>,
) -> Result<Option<(String, String)>> {
    let mut hits: Vec<(String, String)> = candidates
        .into_iter()
        .filter(|(_, v)| v.starts_with(prefix))
        .map(|(n, v)| (v, n))
        .collect();
    hits.sort();
    hits.dedup_by(|a, b| a.0 == b.0);
    match hits.len() {
        0 => Ok(None),
        1 => Ok(hits.pop().map(|(v, n)| (n, v))),
        _ => Err(Error::AmbiguousVersion {
            name: place.to_string(),
            prefix: prefix.to_string(),
            candidates: hits
                .iter()
                .map(|(v, n)| format!("{n}@{}", &v[..16.min(v.len())]))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Whether a bare name may also be read as a version id prefix (4 to 64 lower-case hex digits).
pub fn is_version_prefix(s: &str) -> bool {
    (4..=64).contains(&s.len()) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Names: lower-case letters, digits and `.`, `_`, `-`, in `/`-separated components that each
/// start with a letter or digit (as container registries do), at most 128 bytes.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the image name is empty".into());
    }
    if name.len() > 128 {
        return Err("the image name is longer than 128 bytes".into());
    }
    for comp in name.split('/') {
        let mut bytes = comp.bytes();
        match bytes.next() {
            Some(b'a'..=b'z' | b'0'..=b'9') => {}
            _ => {
                return Err(format!(
                    "name component {comp:?} must start with a lower-case letter or digit"
                ))
            }
        }
        if let Some(b) =
            bytes.find(|b| !matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
        {
            return Err(format!(
                "{:?} is not allowed in a name (use a-z, 0-9, '.', '_', '-', '/')",
                b as char
            ));
        }
    }
    Ok(())
}

/// Tags: letters, digits, `_`, `.`, `-`, not starting with `.` or `-`, at most 128 bytes.
pub fn check_tag(tag: &str) -> Result<(), String> {
    let mut bytes = tag.bytes();
    match bytes.next() {
        Some(b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_') => {}
        None => return Err("the tag is empty".into()),
        _ => return Err("a tag must start with a letter, digit or '_'".into()),
    }
    if tag.len() > 128 {
        return Err("the tag is longer than 128 bytes".into());
    }
    if let Some(b) = bytes.find(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')))
    {
        return Err(format!("{:?} is not allowed in a tag", b as char));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(
            ImageRef::parse("debian/bookworm").unwrap(),
            ImageRef::Name {
                name: "debian/bookworm".into(),
            }
        );
        assert_eq!(
            ImageRef::parse_tag("debian/bookworm").unwrap(),
            ("debian/bookworm".into(), "latest".into())
        );
        assert_eq!(ImageRef::parse("web:v1.2").unwrap().to_string(), "web:v1.2");
        assert!(matches!(
            ImageRef::parse("web@abcd12").unwrap(),
            ImageRef::Version { .. }
        ));
        for bad in [
            "", "Web", "web:", "web:-x", "a//b", "/a", "a/", "web@xyz", "web@abc", "a b",
            "web:a:b", "../etc", "web@ABCD",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} accepted");
        }
        let e = ImageRef::parse("Web:1").unwrap_err().to_string();
        assert!(e.contains("\"Web:1\""), "{e}");
    }
}
