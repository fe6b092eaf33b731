//! starlingd's configuration file (TOML; `/etc/starling/starlingd.toml` when it exists, or
//! `--config FILE`): where the daemon keeps its state and listens, the host cache's size, how
//! it reaches repositories (timeout, HTTP caching proxies), and the repositories it serves
//! with their pinned root metadata and mirrors (as CernVM-FS's `/etc/cvmfs`). Flags given on
//! the command line win over the file. docs/config.md documents every key; dist/ has an
//! example.
//!
//! When the file lists repositories, they are the only ones the daemon mounts and runs
//! images from, each trusted with the root metadata the file names (never with a root a
//! client brings); without any, a repository is trusted at its first contact as before.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use starling_repo::mirrors::Proxy;
use starling_repo::pull::Remote;

/// Read when there is no `--config` and the file exists.
pub const DEFAULT_CONFIG: &str = "/etc/starling/starlingd.toml";

/// The file as written: every key optional, unknown keys refused (a typo must not be a
/// silently ignored setting).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// State directory (host cache, mounts, VMs).
    pub state: Option<PathBuf>,
    /// The API socket.
    pub socket: Option<PathBuf>,
    /// Where `GET /metrics` is served over TCP too.
    pub metrics_listen: Option<String>,
    /// The host cache's size limit ("20G").
    pub cache_size: Option<String>,
    /// How long a request to a repository may take ("20s").
    pub timeout: Option<String>,
    /// HTTP caching proxies for every repository, in order ("DIRECT" for none).
    #[serde(default)]
    pub proxies: Vec<String>,
    #[serde(default, rename = "repository")]
    pub repositories: Vec<RepoEntry>,
    /// This host's labels, which groups select hosts by.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default, rename = "group")]
    pub groups: Vec<GroupEntry>,
    /// The API for other hosts: TCP with mutual TLS, reads only.
    pub remote_api: Option<RemoteApiEntry>,
    /// Other local users the API socket serves (read-only mounts onto directories they
    /// own): "all", or the members of one group ("GROUP"). Unset: nobody but the daemon's
    /// user and root.
    pub users: Option<String>,
}

/// Which local users, beside the daemon's own and root, may use the API socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Users {
    /// Nobody else (the socket is 0600).
    #[default]
    Nobody,
    /// Every local user (the socket is 0666).
    All,
    /// The members of one group (the socket is 0660 and that group's).
    Group { name: String, gid: u32 },
}

impl std::fmt::Display for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Users::Nobody => write!(f, "none (the daemon's user and root only)"),
            Users::All => write!(f, "all local users (read-only mounts of their own)"),
            Users::Group { name, gid } => write!(
                f,
                "members of group {name} ({gid}) (read-only mounts of their own)"
            ),
        }
    }
}

/// The id of group `name`, from /etc/group.
fn group_id(name: &str) -> Result<u32, String> {
    let groups = std::fs::read_to_string("/etc/group").map_err(|e| format!("/etc/group: {e}"))?;
    groups
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            Some((f.next()?, f.nth(1)?))
        })
        .find(|(n, _)| *n == name)
        .and_then(|(_, gid)| gid.parse().ok())
        .ok_or_else(|| format!("no group {name:?} in /etc/group (\"all\" lets every user in)"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteApiEntry {
    /// `ADDR:PORT` to listen on.
    pub listen: String,
    /// This host's certificate chain and private key (PEM; the key 0600).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA that signs the certificates callers must present (PEM).
    pub client_ca: PathBuf,
}

/// A group this host follows.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupEntry {
    pub name: String,
    /// The repository that publishes it: one of the file's `[[repository]]` (a group is
    /// trusted host-wide, so only with a pinned root).
    pub repository: String,
    /// How often to poll ("30s").
    pub poll: Option<String>,
}

/// A group to follow, checked.
#[derive(Debug, Clone)]
pub struct GroupFollow {
    pub name: String,
    /// The repository's URL, as its `[[repository]]` has it.
    pub repository: String,
    pub poll: std::time::Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoEntry {
    /// The repository's URL: its identity (what clients name, what its trust is kept under).
    pub url: String,
    /// Its root metadata, pinned: the daemon trusts the repository with this root only.
    pub root: PathBuf,
    /// Copies of it, tried in order after `url`.
    #[serde(default)]
    pub mirrors: Vec<String>,
    /// Proxies for this repository, instead of the file's.
    pub proxies: Option<Vec<String>>,
}

/// A repository the daemon serves, checked.
#[derive(Debug, Clone)]
pub struct Repository {
    /// The URL and the mirrors.
    pub remote: Remote,
    /// The pinned root metadata's path, and what it is.
    pub root: PathBuf,
    pub root_info: starling_repo::trust::RootInfo,
    /// Empty: the daemon's proxies (or the environment's).
    pub proxies: Vec<Proxy>,
}

/// The file checked: every value parsed, every root read and recognised as root metadata.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    /// Where it was read from (None: no file).
    pub path: Option<PathBuf>,
    pub state: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub cache_size: Option<u64>,
    pub timeout: Option<u64>,
    pub proxies: Vec<Proxy>,
    pub repositories: Vec<Repository>,
    pub labels: BTreeMap<String, String>,
    pub groups: Vec<GroupFollow>,
    pub remote_api: Option<crate::remote::RemoteApi>,
    pub users: Users,
}

/// What is wrong with a configuration file, naming the file and the key.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct ConfigError {
    pub path: PathBuf,
    pub reason: String,
}

/// Reads the file `given` names, or the default one when it exists (None when there is none).
pub fn load(given: Option<&Path>) -> Result<Checked, ConfigError> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => {
            let p = PathBuf::from(DEFAULT_CONFIG);
            if !p.exists() {
                return Ok(Checked::default());
            }
            p
        }
    };
    let err = |reason: String| ConfigError {
        path: path.clone(),
        reason,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
    let file: File =
        toml::from_str(&text).map_err(|e| err(starling_repo::error::toml_message(&e)))?;
    check(file, &path)
}

fn check(file: File, path: &Path) -> Result<Checked, ConfigError> {
    let err = |key: &str, reason: String| ConfigError {
        path: path.to_path_buf(),
        reason: format!("{key}: {reason}"),
    };
    let base = path.parent().unwrap_or(Path::new("/"));
    let metrics_listen = file
        .metrics_listen
        .as_deref()
        .map(|a| {
            a.parse().map_err(|e| {
                err(
                    "metrics_listen",
                    format!("{a:?}: {e} (e.g. 127.0.0.1:9464)"),
                )
            })
        })
        .transpose()?;
    let cache_size = file
        .cache_size
        .as_deref()
        .map(|s| crate::args::parse_size(s).map_err(|e| err("cache_size", e)))
        .transpose()?;
    let timeout = file
        .timeout
        .as_deref()
        .map(|s| crate::args::parse_duration(s).map_err(|e| err("timeout", e)))
        .transpose()?;
    let proxies = proxies(&file.proxies).map_err(|e| err("proxies", e))?;
    let mut repositories: Vec<Repository> = Vec::new();
    for (n, r) in file.repositories.into_iter().enumerate() {
        let key = format!("repository {} ({})", n + 1, r.url);
        let remote = Remote::parse(&r.url)
            .and_then(|m| m.with_mirrors(&r.mirrors))
            .map_err(|e| err(&key, e.to_string()))?;
        if let Some(other) = repositories.iter().find(|o| o.remote.base == remote.base) {
            return Err(err(
                &key,
                format!("listed twice (also as {})", other.remote.base),
            ));
        }
        // Relative to the file, as people write them beside it.
        let root = base.join(&r.root);
        let bytes =
            std::fs::read(&root).map_err(|e| err(&key, format!("root {}: {e}", root.display())))?;
        let root_info = starling_repo::trust::root_info(&bytes, &root.display().to_string())
            .map_err(|e| err(&key, e.to_string()))?;
        let proxies = match &r.proxies {
            Some(p) => self::proxies(p).map_err(|e| err(&format!("{key} proxies"), e))?,
            None => Vec::new(),
        };
        repositories.push(Repository {
            remote,
            root,
            root_info,
            proxies,
        });
    }
    let mut groups: Vec<GroupFollow> = Vec::new();
    for (n, g) in file.groups.into_iter().enumerate() {
        let key = format!("group {} ({})", n + 1, g.name);
        starling_repo::group::check_name(&g.name).map_err(|e| err(&key, e.to_string()))?;
        if groups.iter().any(|o| o.name == g.name) {
            return Err(err(&key, "listed twice".into()));
        }
        let base = Remote::parse(&g.repository)
            .map_err(|e| err(&key, e.to_string()))?
            .base;
        if !repositories.iter().any(|r| r.remote.base == base) {
            return Err(err(
                &key,
                format!(
                    "repository {base} is not a [[repository]] of this file: a group is \
                     followed only from a repository with a pinned root"
                ),
            ));
        }
        let poll = match &g.poll {
            Some(p) => {
                crate::args::parse_duration(p).map_err(|e| err(&format!("{key} poll"), e))?
            }
            None => 30,
        };
        groups.push(GroupFollow {
            name: g.name,
            repository: base.to_string(),
            poll: std::time::Duration::from_secs(poll),
        });
    }
    let remote_api = match file.remote_api {
        Some(r) => {
            let api = crate::remote::RemoteApi {
                listen: r.listen.parse().map_err(|e| {
                    err(
                        "remote_api listen",
                        format!("{:?}: {e} (e.g. 0.0.0.0:7443)", r.listen),
                    )
                })?,
                cert: base.join(r.cert),
                key: base.join(r.key),
                client_ca: base.join(r.client_ca),
            };
            // Read now: a file that will not do stops the daemon before it starts.
            api.tls().map_err(|e| err("remote_api", e))?;
            Some(api)
        }
        None => None,
    };
    let users = match file.users.as_deref() {
        None | Some("none") => Users::Nobody,
        Some("all") => Users::All,
        Some(name) => Users::Group {
            name: name.to_string(),
            gid: group_id(name).map_err(|e| err("users", e))?,
        },
    };
    if users != Users::Nobody && !rustix::process::geteuid().is_root() {
        return Err(err(
            "users",
            "serving other users needs starlingd to run as root (it opens what they name \
             with their rights)"
                .into(),
        ));
    }
    Ok(Checked {
        path: Some(path.to_path_buf()),
        state: file.state.map(|p| base.join(p)),
        socket: file.socket.map(|p| base.join(p)),
        metrics_listen,
        cache_size,
        timeout,
        proxies,
        repositories,
        labels: file.labels,
        groups,
        remote_api,
        users,
    })
}

fn proxies(list: &[String]) -> Result<Vec<Proxy>, String> {
    list.iter()
        .map(|p| Proxy::parse(p).map_err(|e| e.to_string()))
        .collect()
}

impl Checked {
    /// What `starlingd --check-config` prints: the settings that will be used.
    pub fn summary(&self, config: &crate::Config) -> String {
        let mut out = String::new();
        match &self.path {
            Some(p) => out.push_str(&format!("{}: valid\n", p.display())),
            None => out.push_str(&format!(
                "no configuration file ({DEFAULT_CONFIG} does not exist): flags and defaults\n"
            )),
        }
        out.push_str(&format!("state    {}\n", config.state.display()));
        out.push_str(&format!("socket   {}\n", config.socket.display()));
        out.push_str(&format!("cache    {} at most\n", size(config.quota)));
        out.push_str(&format!("timeout  {}s\n", config.timeout.as_secs()));
        if let Some(m) = config.metrics_listen {
            out.push_str(&format!("metrics  http://{m}/metrics\n"));
        }
        out.push_str(&format!("proxies  {}\n", shown(&config.proxies)));
        out.push_str(&format!("users    {}\n", config.users));
        if config.repositories.is_empty() {
            out.push_str("repositories: any, each trusted at its first contact (--root)\n");
        }
        if let Some(r) = &config.remote_api {
            out.push_str(&format!(
                "remote   https://{} (mutual TLS: callers need a certificate of {}; reads only)\n",
                r.listen,
                r.client_ca.display()
            ));
        }
        if !config.labels.is_empty() {
            let l: Vec<String> = config
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            out.push_str(&format!("labels   {}\n", l.join(", ")));
        }
        for g in &config.groups {
            out.push_str(&format!(
                "group {} from {}, polled every {}s\n",
                g.name,
                g.repository,
                g.poll.as_secs()
            ));
        }
        for r in &config.repositories {
            out.push_str(&format!(
                "repository {}\n    root {} ({})\n",
                r.remote.base,
                r.root.display(),
                r.root_info
            ));
            for m in &r.remote.mirrors {
                out.push_str(&format!("    mirror {m}\n"));
            }
            if !r.proxies.is_empty() {
                out.push_str(&format!("    proxies {}\n", shown(&r.proxies)));
            }
        }
        out
    }
}

/// A size as it would be written in the file.
fn size(n: u64) -> String {
    for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
        if n >= 1 << shift && n & ((1 << shift) - 1) == 0 {
            return format!("{}{unit}", n >> shift);
        }
    }
    format!("{n} bytes")
}

fn shown(p: &[Proxy]) -> String {
    if p.is_empty() {
        return "as the environment says (http_proxy, no_proxy)".into();
    }
    p.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_file(dir: &Path) -> PathBuf {
        let p = dir.join("root.json");
        std::fs::write(
            &p,
            br#"{"signed":{"_type":"root","version":3},"signatures":[]}"#,
        )
        .unwrap();
        p
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("starlingd.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    /// `users`: unset and "none" serve nobody else, "all" everyone, a group its members
    /// (the socket then that group's, 0660); an unknown group is refused by name.
    #[test]
    fn users_are_nobody_all_or_one_group_and_the_socket_follows() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIPPED: serving other users needs root (the check refuses it otherwise)");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let users = |v: &str| load(Some(&write(d.path(), v))).map(|c| c.users);
        assert_eq!(users("").unwrap(), Users::Nobody);
        assert_eq!(users("users = \"none\"").unwrap(), Users::Nobody);
        assert_eq!(users("users = \"all\"").unwrap(), Users::All);
        let e = users("users = \"no-such-group-here\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("users: no group \"no-such-group-here\" in /etc/group"),
            "{e}"
        );
        // A group that every Debian system has.
        let group = users("users = \"daemon\"").unwrap();
        assert_eq!(
            group,
            Users::Group {
                name: "daemon".into(),
                gid: 1
            }
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        for (u, mode, gid) in [
            (Users::Nobody, 0o600, 0),
            (Users::All, 0o666, 0),
            (group, 0o660, 1),
        ] {
            let sock = d.path().join("api.sock");
            let _ = std::fs::remove_file(&sock);
            let _l = crate::local::bind(&sock, &u).unwrap();
            let m = std::fs::metadata(&sock).unwrap();
            assert_eq!(
                (m.permissions().mode() & 0o777, m.gid()),
                (mode, gid),
                "{u}"
            );
        }
    }

    #[test]
    fn a_whole_file_is_read_with_paths_relative_to_it() {
        let d = tempfile::tempdir().unwrap();
        root_file(d.path());
        let p = write(
            d.path(),
            r#"
state = "state"
socket = "/run/x.sock"
cache_size = "2G"
timeout = "45s"
metrics_listen = "127.0.0.1:9464"
proxies = ["http://squid:3128", "DIRECT"]
labels = { role = "ci", site = "lab" }

[[repository]]
url = "http://origin.example/repo"
root = "root.json"
mirrors = ["http://m1.example/repo/", "http://m2.example/r"]
proxies = ["http://site:3128"]

[[group]]
name = "ci-farm"
repository = "http://origin.example/repo/"
poll = "10s"
"#,
        );
        let c = load(Some(&p)).unwrap();
        assert_eq!(c.state, Some(d.path().join("state")));
        assert_eq!(c.socket, Some(PathBuf::from("/run/x.sock")));
        assert_eq!(c.cache_size, Some(2 << 30));
        assert_eq!(c.timeout, Some(45));
        assert_eq!(c.proxies.len(), 2);
        let r = &c.repositories[0];
        assert_eq!(r.remote.base.as_str(), "http://origin.example/repo/");
        assert_eq!(r.remote.mirrors.len(), 2);
        assert_eq!(r.root_info.version, 3);
        assert_eq!(r.proxies, [Proxy::parse("http://site:3128").unwrap()]);
        assert_eq!(c.labels["role"], "ci");
        assert_eq!(c.groups[0].name, "ci-farm");
        assert_eq!(c.groups[0].poll.as_secs(), 10);
    }

    #[test]
    fn mistakes_are_named_with_the_file_and_the_key() {
        let d = tempfile::tempdir().unwrap();
        root_file(d.path());
        let cases = [
            ("cache_sise = \"2G\"\n", "unknown field `cache_sise`"),
            (
                "cache_size = \"2Q\"\n",
                "cache_size: \"2Q\": unknown size unit",
            ),
            (
                "timeout = \"soon\"\n",
                "timeout: \"soon\" is not a duration",
            ),
            (
                "proxies = [\"squid:3128\"]\n",
                "proxies: proxy \"squid:3128\"",
            ),
            ("metrics_listen = \"9464\"\n", "metrics_listen: \"9464\""),
            (
                "[[repository]]\nurl = \"http://o/\"\nroot = \"missing.json\"\n",
                "repository 1 (http://o/): root",
            ),
            (
                "[[repository]]\nurl = \"http://o/\"\nroot = \"starlingd.toml\"\n",
                "is not root metadata",
            ),
            (
                "[[repository]]\nurl = \"htp://o/\"\nroot = \"root.json\"\n",
                "unknown scheme",
            ),
            (
                "[[repository]]\nurl = \"http://o/\"\nroot = \"root.json\"\n\
                 [[repository]]\nurl = \"http://o\"\nroot = \"root.json\"\n",
                "listed twice",
            ),
            (
                "[[repository]]\nurl = \"http://o/\"\n",
                "missing field `root`",
            ),
            (
                "[[group]]\nname = \"ci\"\nrepository = \"http://o/\"\n",
                "group 1 (ci): repository http://o/ is not a [[repository]]",
            ),
            (
                "[[repository]]\nurl = \"http://o/\"\nroot = \"root.json\"\n\
                 [[group]]\nname = \"CI\"\nrepository = \"http://o/\"\n",
                "use 1 to 64",
            ),
            ("state = [\n", "TOML parse error"),
        ];
        for (text, want) in cases {
            let p = write(d.path(), text);
            let e = load(Some(&p)).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("{}: ", p.display())) && e.contains(want),
                "{text:?}: {e}"
            );
            assert!(!e.contains('\n'), "one line: {e}");
        }
        let e = load(Some(&d.path().join("nope.toml"))).unwrap_err();
        assert!(e.to_string().contains("No such file"), "{e}");
    }
}
