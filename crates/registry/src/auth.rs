//! Credentials for a registry: given (`--creds USER:PASSWORD`), else what `docker login` (or
//! podman, skopeo) stored for that registry in the auth file, else none.

use std::path::PathBuf;

use base64::Engine;
use oci_client::secrets::RegistryAuth;

use crate::error::{Error, Result};

#[derive(Clone, Default)]
pub enum Credentials {
    #[default]
    Anonymous,
    Basic {
        user: String,
        password: String,
    },
}

impl std::fmt::Debug for Credentials {
    // Never the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { user, .. } => write!(f, "Basic({user})"),
        }
    }
}

impl Credentials {
    /// `USER:PASSWORD` as skopeo's `--creds` takes it.
    pub fn parse(s: &str) -> Result<Credentials> {
        match s.split_once(':') {
            Some((u, p)) if !u.is_empty() => Ok(Credentials::Basic {
                user: u.to_string(),
                password: p.to_string(),
            }),
            _ => Err(Error::Reference {
                input: "--creds".into(),
                reason: "give USER:PASSWORD".into(),
            }),
        }
    }

    /// What the auth file holds for `registry` (its `auths` entry's base64 `user:password`),
    /// else anonymous. The file is `$REGISTRY_AUTH_FILE`, else `$DOCKER_CONFIG/config.json`,
    /// else `~/.docker/config.json`. Credential helpers are not run.
    pub fn stored_for(registry: &str) -> Result<Credentials> {
        match auth_file() {
            Some(path) => Credentials::stored_in(&path, registry),
            None => Ok(Credentials::Anonymous),
        }
    }

    /// What the auth file at `path` holds for `registry`.
    pub fn stored_in(path: &std::path::Path, registry: &str) -> Result<Credentials> {
        let Ok(text) = std::fs::read(path) else {
            return Ok(Credentials::Anonymous);
        };
        let bad = |reason: String| Error::Reference {
            input: path.display().to_string(),
            reason,
        };
        let v: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let auths = v.get("auths").and_then(|a| a.as_object());
        let entry = auths.and_then(|a| {
            a.iter()
                .find(|(k, _)| {
                    let k = k
                        .trim_start_matches("https://")
                        .trim_start_matches("http://");
                    k == registry || k.split('/').next() == Some(registry)
                })
                .map(|(_, e)| e)
        });
        let Some(b64) = entry.and_then(|e| e.get("auth")).and_then(|a| a.as_str()) else {
            return Ok(Credentials::Anonymous);
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| bad(format!("the auth of {registry} is not base64: {e}")))?;
        let s = String::from_utf8(raw)
            .map_err(|_| bad(format!("the auth of {registry} is not text")))?;
        Credentials::parse(&s)
            .map_err(|_| bad(format!("the auth of {registry} is not user:password")))
    }

    /// The `Authorization` header of requests made outside oci-client: its Bearer `token`
    /// when the registry gave one, else these credentials as basic authentication.
    pub(crate) fn authorization(&self, token: Option<&str>) -> Option<http::HeaderValue> {
        let value = match (token, self) {
            (Some(t), _) => format!("Bearer {t}"),
            (None, Credentials::Basic { user, password }) => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            ),
            (None, Credentials::Anonymous) => return None,
        };
        http::HeaderValue::from_str(&value).ok()
    }

    pub(crate) fn registry_auth(&self) -> RegistryAuth {
        match self {
            Credentials::Anonymous => RegistryAuth::Anonymous,
            Credentials::Basic { user, password } => {
                RegistryAuth::Basic(user.clone(), password.clone())
            }
        }
    }
}

fn auth_file() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
        return Some(PathBuf::from(p));
    }
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creds_and_the_auth_file() {
        assert!(matches!(
            Credentials::parse("alice:s3cr:et").unwrap(),
            Credentials::Basic { ref user, ref password } if user == "alice" && password == "s3cr:et"
        ));
        assert!(Credentials::parse("nopassword").is_err());
        assert_eq!(
            format!("{:?}", Credentials::parse("alice:secret").unwrap()),
            "Basic(alice)"
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("auth.json");
        let b64 = base64::engine::general_purpose::STANDARD.encode("bob:pw");
        std::fs::write(
            &f,
            format!(r#"{{"auths": {{"127.0.0.1:5000": {{"auth": "{b64}"}}}}}}"#),
        )
        .unwrap();
        let c = Credentials::stored_in(&f, "127.0.0.1:5000").unwrap();
        assert!(matches!(c, Credentials::Basic { ref user, .. } if user == "bob"));
        assert!(matches!(
            Credentials::stored_in(&f, "other:5000").unwrap(),
            Credentials::Anonymous
        ));
        std::fs::write(&f, "not json").unwrap();
        let e = Credentials::stored_in(&f, "x").unwrap_err().to_string();
        assert!(e.contains("auth.json") && e.contains("not JSON"), "{e}");
    }
}
