//! `docker://[HOST[:PORT]/]NAME[:TAG][@sha256:DIGEST]`, as skopeo writes a registry image.

use std::str::FromStr;

use oci_client::Reference;

use crate::error::{Error, Result};

/// The prefix that names a registry image on the command line.
pub const SCHEME: &str = "docker://";

#[derive(Debug, Clone)]
pub struct RegistryRef {
    pub inner: Reference,
    /// As the user wrote it, for messages.
    pub shown: String,
}

impl RegistryRef {
    /// Whether `s` names a registry image at all (`docker://…`).
    pub fn is_registry(s: &str) -> bool {
        s.starts_with(SCHEME)
    }

    pub fn parse(s: &str) -> Result<RegistryRef> {
        let bad = |reason: &str| Error::Reference {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad("a registry image is docker://[HOST/]NAME[:TAG]"))?;
        if rest.is_empty() {
            return Err(bad("names no image"));
        }
        let inner = Reference::from_str(rest).map_err(|e| bad(&e.to_string()))?;
        Ok(RegistryRef {
            inner,
            shown: s.to_string(),
        })
    }

    /// The registry's host and port, as requests go to it.
    pub fn registry(&self) -> &str {
        self.inner.resolve_registry()
    }

    /// A registry on this machine's loopback, which docker too speaks to over plain HTTP.
    pub fn is_loopback(&self) -> bool {
        let r = self.inner.registry();
        let host = if let Some(v6) = r.strip_prefix('[') {
            v6.split(']').next().unwrap_or("")
        } else {
            r.rsplit_once(':').map_or(r, |(h, _)| h)
        };
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// The tag, or `latest` when neither a tag nor a digest was given.
    pub fn tag_or_latest(&self) -> &str {
        self.inner.tag().unwrap_or("latest")
    }
}

impl std::fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_as_skopeo_writes_them() {
        let r = RegistryRef::parse("docker://127.0.0.1:5000/team/app:v1").unwrap();
        assert_eq!(
            (r.registry(), r.inner.repository(), r.inner.tag()),
            ("127.0.0.1:5000", "team/app", Some("v1"))
        );
        assert!(r.is_loopback());
        let r = RegistryRef::parse("docker://debian:bookworm").unwrap();
        assert_eq!(r.inner.repository(), "library/debian");
        assert!(!r.is_loopback());
        let r = RegistryRef::parse("docker://localhost:5000/a").unwrap();
        assert!(r.is_loopback());
        assert_eq!(r.tag_or_latest(), "latest");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = RegistryRef::parse(&format!("docker://127.0.0.2:5000/a@{d}")).unwrap();
        assert!(r.is_loopback());
        assert_eq!(r.inner.digest(), Some(d.as_str()));
        assert!(!RegistryRef::parse("docker://ghcr.io/a/b:1")
            .unwrap()
            .is_loopback());
        for bad in ["docker://", "docker://UPPER/x::y", "oci:x"] {
            let e = RegistryRef::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid registry reference"), "{bad}: {e}");
        }
    }
}
