//! Image references as users type them: `NAME`, `NAME:TAG`, `NAME@VERSION` (a unique prefix of
//! a version id).

use std::fmt;

use crate::error::{Error, Result};

pub const DEFAULT_TAG: &str = "latest";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    Tag { name: String, tag: String },
    Version { name: String, prefix: String },
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
        let (name, tag) = match input.rsplit_once(':') {
            Some((n, t)) => (n, t),
            None => (input, DEFAULT_TAG),
        };
        check_name(name).map_err(|r| bad(&r))?;
        check_tag(tag).map_err(|r| bad(&r))?;
        Ok(ImageRef::Tag {
            name: name.to_string(),
            tag: tag.to_string(),
        })
    }

    /// Parses a reference that must name a tag (the destination of import and tag).
    pub fn parse_tag(input: &str) -> Result<(String, String)> {
        match ImageRef::parse(input)? {
            ImageRef::Tag { name, tag } => Ok((name, tag)),
            ImageRef::Version { .. } => Err(Error::BadRef {
                input: input.to_string(),
                reason: "expected NAME[:TAG], not a version".into(),
            }),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            ImageRef::Tag { name, .. } | ImageRef::Version { name, .. } => name,
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Tag { name, tag } => write!(f, "{name}:{tag}"),
            ImageRef::Version { name, prefix } => write!(f, "{name}@{prefix}"),
        }
    }
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
            ImageRef::Tag {
                name: "debian/bookworm".into(),
                tag: "latest".into()
            }
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
