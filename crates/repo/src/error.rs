use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] starling_store::Error),
    #[error(transparent)]
    Image(#[from] starling_image::error::Error),
    /// TUF verification or signing failed; `what` says which step.
    #[error("{what}: {source}")]
    Tuf {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    /// A fetched object failed verification (hash, size, format).
    #[error("object {id} from {url}: {reason}")]
    BadObject {
        id: String,
        url: String,
        reason: String,
    },
    #[error("fetching {url}: {reason}")]
    Fetch { url: String, reason: String },
    /// Another publisher changed the repository first (object storage compare-and-swap).
    #[error("{0} changed during publication (another push won); try again")]
    Conflict(String),
    #[error("no image {0} in the repository")]
    UnknownImage(String),
    #[error("repository {0} is not trusted here (`starling repo trust ls` lists those that are)")]
    NotTrusted(String),
    /// A `--root` that is not the root the repository is trusted with.
    #[error("repository {repo} {reason}")]
    OtherRoot { repo: String, reason: String },
    /// The repository could not be reached and nothing verified before can stand in.
    #[error("repository {repo} is unreachable ({reason}); {fallback}")]
    Unreachable {
        repo: String,
        reason: String,
        fallback: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.into(),
            source,
        })
    }
}

pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Invalid {
        what: what.into(),
        reason: reason.into(),
    }
}

/// Maps a tough error (of any of its error types) to ours, saying which step failed. A
/// repository that could not be reached becomes a [`Error::Fetch`] naming the URL and the OS
/// error, once: tough's own text repeats the URL at each of its layers.
pub(crate) fn tuf<E: std::error::Error + Send + Sync + 'static>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> Error {
    let what = what.into();
    move |source| match network_failure(&source) {
        Some(NetworkFailure {
            url: Some(url),
            reason,
        }) => Error::Fetch { url, reason },
        _ => Error::Tuf {
            what,
            source: Box::new(source),
        },
    }
}

/// Why a request never got an answer.
#[derive(Debug, PartialEq)]
pub struct NetworkFailure {
    /// What was being fetched, where a layer of the chain says it.
    pub url: Option<String>,
    /// The innermost cause: the OS error, or the client's timeout.
    pub reason: String,
}

/// The network failure under `e`, if it is one: a refused or reset connection, a timeout, an
/// unreachable host or name. A server that answered wrongly (an HTTP error status, too many
/// bytes, a bad signature) is not one, although tough reports those as transport errors too.
pub fn network_failure(e: &(dyn std::error::Error + 'static)) -> Option<NetworkFailure> {
    use std::io::ErrorKind as K;
    let (mut url, mut network) = (None, false);
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(r) = c.downcast_ref::<reqwest::Error>() {
            network |= r.is_connect() || r.is_timeout();
            if url.is_none() {
                url = r.url().map(|u| u.to_string());
            }
        }
        if let Some(t) = c.downcast_ref::<tough::TransportError>() {
            url.get_or_insert_with(|| t.url().to_string());
        }
        if let Some(n) = c.downcast_ref::<crate::mirrors::NoRoute>() {
            network |= n.network;
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            network |= matches!(
                io.kind(),
                K::ConnectionRefused
                    | K::ConnectionReset
                    | K::ConnectionAborted
                    | K::NotConnected
                    | K::TimedOut
                    | K::HostUnreachable
                    | K::NetworkUnreachable
                    | K::AddrNotAvailable
            );
        }
        cause = c.source();
    }
    network.then(|| NetworkFailure {
        url,
        reason: innermost(e),
    })
}

pub(crate) use starling_store::innermost;

/// A TOML parse error in one line: toml's message spans lines (a snippet of the file); the
/// first says where, the last what.
pub fn toml_message(e: &toml::de::Error) -> String {
    let msg = e.to_string();
    let lines: Vec<&str> = msg.lines().map(str::trim).collect();
    let first = lines.first().copied().unwrap_or("not valid TOML");
    match lines
        .iter()
        .rev()
        .find(|l| !l.is_empty() && !l.starts_with('|'))
    {
        Some(last) if *last != first => format!("{first}: {last}"),
        _ => first.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real request to a port nothing listens on: the URL and the OS error, nothing else.
    #[test]
    fn a_refused_connection_is_a_network_failure_said_once() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("http://127.0.0.1:{port}/metadata/timestamp.json");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt
            .block_on(reqwest::Client::new().get(&url).send())
            .unwrap_err();
        let f = network_failure(&e).expect("a refused connection is a network failure");
        assert_eq!(f.url.as_deref(), Some(url.as_str()));
        assert_eq!(f.reason, "Connection refused (os error 111)");
        assert_eq!(innermost(&e), "Connection refused (os error 111)");
        // Wrapped as tough wraps it, it becomes a fetch error naming the URL once.
        let wrapped = tough::TransportError::new_with_cause(
            tough::TransportErrorKind::Other,
            url.as_str(),
            e,
        );
        let mapped = tuf("verifying the metadata")(wrapped);
        assert_eq!(
            mapped.to_string(),
            format!("fetching {url}: Connection refused (os error 111)")
        );
    }

    #[test]
    fn a_wrong_answer_is_not_a_network_failure() {
        let e = tough::TransportError::new_with_cause(
            tough::TransportErrorKind::Other,
            "http://h/1.root.json",
            std::io::Error::other("max size 1024 exceeded"),
        );
        assert_eq!(network_failure(&e), None);
        assert!(matches!(tuf("root")(e), Error::Tuf { .. }));
    }
}
