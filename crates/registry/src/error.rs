use oci_client::errors::OciDistributionError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid registry reference {input:?}: {reason}")]
    Reference { input: String, reason: String },
    /// The registry refused the credentials, or wants some.
    #[error("registry {registry}: {reason}")]
    Unauthorized { registry: String, reason: String },
    /// The registry has no such image (or tag).
    #[error("registry {registry} has no image {image}")]
    NotFound { registry: String, image: String },
    /// What came did not match its digest or size, or is not what an image is made of.
    #[error("{what} from {registry}: {reason}")]
    BadContent {
        registry: String,
        what: String,
        reason: String,
    },
    /// The registry could not be reached (the OS error, or the timeout).
    #[error("registry {registry} is unreachable: {reason}")]
    Unreachable { registry: String, reason: String },
    /// The registry answered with an error of its own.
    #[error("registry {registry} refused {what}: {said}")]
    Refused {
        registry: String,
        what: String,
        said: String,
    },
    /// The request failed otherwise.
    #[error("registry {registry}: {what}: {source}")]
    Registry {
        registry: String,
        what: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("OCI layout {layout}: {reason}")]
    Layout { layout: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An oci-client error as ours: authentication and missing images named as such, a digest
/// that does not match as bad content, an unreachable registry by its OS error, the rest as
/// a registry failure with what the registry said.
pub(crate) fn from_oci(
    registry: &str,
    what: impl Into<String>,
) -> impl FnOnce(OciDistributionError) -> Error + '_ {
    let what = what.into();
    move |e| {
        use oci_client::errors::OciErrorCode as C;
        use OciDistributionError as O;
        let registry = registry.to_string();
        let unauthorized = |detail: String| unauthorized(&registry, &what, &detail);
        match e {
            O::AuthenticationFailure(m) => unauthorized(shown(&m)),
            O::UnauthorizedError { .. } => unauthorized("HTTP 401".into()),
            O::ServerError { code, .. } if code == 401 || code == 403 => {
                unauthorized(format!("HTTP {code}"))
            }
            O::ServerError { code, message, .. } if code != 404 => Error::Refused {
                registry,
                what,
                said: format!("HTTP {code}: {}", shown(&message)),
            },
            O::ImageManifestNotFoundError(_) | O::ServerError { code: 404, .. } => {
                Error::NotFound {
                    registry,
                    image: what,
                }
            }
            O::RegistryError { envelope, .. } => {
                let codes: Vec<&C> = envelope.errors.iter().map(|e| &e.code).collect();
                let said = shown(
                    &envelope
                        .errors
                        .iter()
                        .map(|e| {
                            if e.message.is_empty() {
                                format!("{:?}", e.code)
                            } else {
                                e.message.clone()
                            }
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                );
                if codes
                    .iter()
                    .any(|c| matches!(c, C::ManifestUnknown | C::NameUnknown | C::NotFound))
                {
                    Error::NotFound {
                        registry,
                        image: what,
                    }
                } else if codes
                    .iter()
                    .any(|c| matches!(c, C::Unauthorized | C::Denied))
                {
                    unauthorized(said)
                } else {
                    Error::Refused {
                        registry,
                        what,
                        said,
                    }
                }
            }
            O::DigestError(d) => Error::BadContent {
                registry,
                what,
                reason: d.to_string(),
            },
            O::RequestError(r)
                if r.status()
                    .is_some_and(|s| s.as_u16() == 401 || s.as_u16() == 403) =>
            {
                unauthorized(format!("HTTP {}", r.status().map_or(0, |s| s.as_u16())))
            }
            O::RequestError(r) if r.status().is_some_and(|s| s.as_u16() == 404) => {
                Error::NotFound {
                    registry,
                    image: what,
                }
            }
            O::RequestError(r) if r.is_connect() || r.is_timeout() => Error::Unreachable {
                registry,
                reason: innermost(&r),
            },
            // The body ended before the length the registry announced (a cut blob): what
            // came is wrong, though nothing failed on the network.
            O::RequestError(r) if r.is_body() || r.is_decode() => Error::BadContent {
                registry,
                what,
                reason: innermost(&r),
            },
            other => Error::Registry {
                registry,
                what,
                source: other,
            },
        }
    }
}

/// A refused login, with the next step.
pub(crate) fn unauthorized(registry: &str, what: &str, detail: &str) -> Error {
    Error::Unauthorized {
        registry: registry.to_string(),
        reason: format!(
            "{what}: not authorized ({detail}); give --creds USER:PASSWORD or log in with \
             `docker login {registry}`"
        ),
    }
}

pub(crate) use starling_store::innermost;

/// What a registry said, fit for one line of a terminal: control characters (escape
/// sequences included) replaced, at most 200 characters.
pub(crate) fn shown(text: &str) -> String {
    const MAX: usize = 200;
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX)
        .collect();
    if text.chars().count() > MAX {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_registry_says_is_cut_and_cleaned() {
        assert_eq!(shown("manifest unknown"), "manifest unknown");
        assert_eq!(shown("a\x1b[2Jb\nc"), "a [2Jb c");
        let long = "x".repeat(10_000);
        assert_eq!(shown(&long).chars().count(), 201);
        let e = from_oci("r:1", "pulling x")(OciDistributionError::ServerError {
            code: 500,
            url: "http://r:1/v2/".into(),
            message: format!("\x1b]0;pwned\x07{}", "y".repeat(5000)),
        });
        let text = e.to_string();
        assert!(text.len() < 300 && !text.contains('\x1b'), "{text}");
        let e = from_oci("r:1", "pulling x")(OciDistributionError::ServerError {
            code: 403,
            url: "http://r:1/v2/".into(),
            message: "denied".into(),
        });
        assert!(matches!(e, Error::Unauthorized { .. }), "{e}");
    }
}
