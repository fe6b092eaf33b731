//! A repository directory and its TUF metadata (via `tough`): creation, and publication of
//! new target records under a lock, written so that readers only ever see a complete state.
//!
//! Layout: `metadata/` (`N.root.json`, `N.targets.json`, `N.snapshot.json`, `timestamp.json`),
//! `targets/` (consistent-snapshot names `<sha256>.<name>`), `objects/` (store objects, the
//! same envelope files as a local store), `starling-repo` (format marker), `.lock`.
//! Publication writes every new file under a fresh name first and replaces `timestamp.json`
//! last, atomically: that rename is the commit point.

use std::collections::{BTreeSet, HashMap};
use std::num::NonZeroU64;

use jiff::Timestamp;
use sha2::{Digest, Sha256};
use tough::editor::signed::SignedRole;
use tough::editor::RepositoryEditor;
use tough::schema::{Hashes, KeyHolder, RoleKeys, RoleType, Root, Target};
use tough::{ExpirationEnforcement, RepositoryLoader, TargetName};

use crate::backend::{Backend, FileVersion};
use crate::error::{invalid, tuf, IoContext, Result};
use crate::keys::{KeyDir, Policy};

pub const REPO_FORMAT: &str = "starling-repo 1";
const TIMESTAMP: &str = "metadata/timestamp.json";

/// A repository as its publisher sees it, on any [`Backend`].
pub struct Repo {
    pub backend: Backend,
}

fn nz(n: u64) -> NonZeroU64 {
    NonZeroU64::new(n.max(1)).unwrap_or(NonZeroU64::MIN)
}

/// Whole seconds: TUF clients (python-tuf among them) reject fractional expiry times.
fn expires_in(secs: u64) -> Result<Timestamp> {
    let t = Timestamp::now().as_second() + secs as i64;
    Timestamp::from_second(t).map_err(|e| invalid("expiry time", e.to_string()))
}

/// The highest version any versioned targets or snapshot file in a listing of `metadata/`
/// carries, published or left behind by a publication that was killed (its numbers are
/// never reused).
fn highest_version(names: &BTreeSet<String>) -> u64 {
    names
        .iter()
        .filter_map(|n| metadata_version(n, "targets").or_else(|| metadata_version(n, "snapshot")))
        .max()
        .unwrap_or(0)
}

/// `N` of a versioned metadata file name `N.ROLE.json`.
fn metadata_version(rel: &str, role: &str) -> Option<u64> {
    rel.strip_prefix("metadata/")?
        .strip_suffix(&format!(".{role}.json"))?
        .parse()
        .ok()
}

impl Repo {
    pub async fn open(backend: Backend) -> Result<Repo> {
        let what = || format!("repository {}", backend.describe());
        match backend.get("starling-repo").await? {
            Some((t, _)) if String::from_utf8_lossy(&t).trim() == REPO_FORMAT => {
                Ok(Repo { backend })
            }
            Some((t, _)) => Err(invalid(
                what(),
                format!(
                    "format {:?} is not supported (this build writes {REPO_FORMAT:?})",
                    String::from_utf8_lossy(&t).trim()
                ),
            )),
            None => Err(invalid(
                what(),
                "not a Starling repository (no starling-repo file; create one with `starling repo init`)",
            )),
        }
    }

    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// Creates a repository: root metadata signed with the keys, and empty signed targets,
    /// snapshot and timestamp.
    pub async fn init(backend: Backend, keys: &KeyDir, policy: &Policy) -> Result<Repo> {
        let what = format!("repository {}", backend.describe());
        if backend.get("starling-repo").await?.is_some()
            || !backend.list("metadata/").await?.is_empty()
        {
            return Err(invalid(what, "already exists"));
        }
        if let Some(d) = backend.dir() {
            for sub in ["metadata", "targets", "objects"] {
                let p = d.join(sub);
                std::fs::create_dir_all(&p).at(&p)?;
            }
        }
        let repo = Repo { backend };
        let root = make_root(1, keys, policy, None).await?;
        let signed = SignedRole::new(
            root.clone(),
            &KeyHolder::Root(root.clone()),
            &keys.sources("root")?,
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .await
        .map_err(tuf("signing root metadata"))?;
        if !repo
            .backend
            .create("metadata/1.root.json", signed.buffer())
            .await?
        {
            return Err(invalid(what, "already exists"));
        }
        let _lock = repo.backend.lock()?;
        let ed = editor(signed.buffer(), None).await?;
        repo.sign_and_publish(ed, keys, policy, 1, None).await?;
        repo.backend
            .create("starling-repo", format!("{REPO_FORMAT}\n").as_bytes())
            .await?;
        Ok(repo)
    }

    /// The newest root metadata: (version, bytes).
    pub async fn latest_root(&self) -> Result<(u64, Vec<u8>)> {
        let names = self.backend.list("metadata/").await?;
        self.root_in(&names).await
    }

    /// The newest root metadata a listing of `metadata/` names, read: (version, bytes).
    async fn root_in(&self, names: &BTreeSet<String>) -> Result<(u64, Vec<u8>)> {
        let newest = names
            .iter()
            .filter_map(|n| metadata_version(n, "root").map(|v| (v, n)))
            .max();
        let none = || {
            invalid(
                format!("repository {}", self.describe()),
                "has no root metadata",
            )
        };
        let (v, rel) = newest.ok_or_else(none)?;
        let (bytes, _) = self.backend.get(rel).await?.ok_or_else(none)?;
        Ok((v, bytes))
    }

    /// The repository as its publisher sees it (expiry not enforced, so an expired
    /// repository can be re-signed), with the version of `timestamp.json` it was read at.
    pub async fn load(&self) -> Result<(tough::Repository, FileVersion)> {
        let (_, ts_version) = self.backend.get(TIMESTAMP).await?.ok_or_else(|| {
            invalid(
                format!("repository {}", self.describe()),
                "has no timestamp metadata",
            )
        })?;
        let (trusted, _) = self
            .backend
            .get("metadata/1.root.json")
            .await?
            .ok_or_else(|| {
                invalid(
                    format!("repository {}", self.describe()),
                    "has no metadata/1.root.json",
                )
            })?;
        let repo = RepositoryLoader::new(
            &trusted,
            self.backend.url("metadata/")?,
            self.backend.url("targets/")?,
        )
        .transport(self.backend.transport())
        .expiration_enforcement(ExpirationEnforcement::Unsafe)
        .load()
        .await
        .map_err(tuf(format!("loading repository {}", self.describe())))?;
        Ok((repo, ts_version))
    }

    /// Adds or replaces targets (name, bytes), re-signs targets, snapshot and timestamp with
    /// versions above every existing one, and publishes. On object storage this fails with
    /// [`crate::Error::Conflict`] if another publisher committed since `loaded` was read.
    pub async fn publish_targets(
        &self,
        keys: &KeyDir,
        policy: &Policy,
        loaded: (tough::Repository, FileVersion),
        files: &[(String, Vec<u8>)],
    ) -> Result<u64> {
        let (repo, ts_version) = loaded;
        // One listing serves both the version numbering and the root (a round trip each on
        // object storage).
        let names = self.backend.list("metadata/").await?;
        let next = [
            repo.targets().signed.version.get(),
            repo.snapshot().signed.version.get(),
            repo.timestamp().signed.version.get(),
            highest_version(&names),
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
            + 1;
        let (_, root) = self.root_in(&names).await?;
        let mut ed = editor(&root, Some(repo)).await?;
        for (name, bytes) in files {
            let hash = sha2_hex(bytes);
            // Content-addressed target file: written once, before any metadata refers to it.
            self.backend
                .create(&format!("targets/{hash}.{name}"), bytes)
                .await?;
            let tn = TargetName::new(name.clone()).map_err(tuf(format!("target name {name:?}")))?;
            ed.add_target(tn, target_of(bytes))
                .map_err(tuf(format!("adding target {name}")))?;
        }
        self.sign_and_publish(ed, keys, policy, next, Some(&ts_version))
            .await?;
        Ok(next)
    }

    async fn sign_and_publish(
        &self,
        mut ed: RepositoryEditor,
        keys: &KeyDir,
        policy: &Policy,
        version: u64,
        ts_version: Option<&FileVersion>,
    ) -> Result<()> {
        ed.targets_version(nz(version))
            .map_err(tuf("targets version"))?
            .targets_expires(expires_in(policy.targets_expires)?)
            .map_err(tuf("targets expiry"))?
            .snapshot_version(nz(version))
            .snapshot_expires(expires_in(policy.snapshot_expires)?)
            .timestamp_version(nz(version))
            .timestamp_expires(expires_in(policy.timestamp_expires)?);
        let mut signers = Vec::new();
        for role in ["targets", "snapshot", "timestamp"] {
            signers.extend(keys.sources(role)?);
        }
        let signed = ed
            .sign(&signers)
            .await
            .map_err(tuf("signing targets, snapshot and timestamp (are enough keys present for each role's threshold?)"))?;
        let staging = tempfile::tempdir().map_err(|e| crate::Error::Io {
            path: std::env::temp_dir(),
            source: e,
        })?;
        signed
            .write(staging.path())
            .await
            .map_err(tuf("writing metadata"))?;
        // Versioned files first (new names, nothing refers to them yet), timestamp last: its
        // replacement is the commit point.
        let mut names: Vec<String> = std::fs::read_dir(staging.path())
            .at(staging.path())?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            // Root versions are published on their own (init, key rotation).
            .filter(|n| n != "timestamp.json" && !n.ends_with(".root.json"))
            .collect();
        names.sort();
        for n in names {
            let from = staging.path().join(&n);
            let bytes = std::fs::read(&from).at(&from)?;
            let rel = format!("metadata/{n}");
            if !self.backend.create(&rel, &bytes).await? {
                return Err(crate::Error::Conflict(format!("{}/{rel}", self.describe())));
            }
        }
        let from = staging.path().join("timestamp.json");
        let bytes = std::fs::read(&from).at(&from)?;
        self.backend.replace(TIMESTAMP, &bytes, ts_version).await
    }
}

impl Repo {
    /// Replaces `role`'s keys: a new root version naming the new keys, signed by the old and
    /// the new root keys (so clients can follow the chain), then targets, snapshot and
    /// timestamp signed again. Returns the new root version.
    pub async fn rotate_key(&self, keys: &KeyDir, role: &str) -> Result<u64> {
        if !crate::keys::ROLES.contains(&role) {
            return Err(invalid(
                format!("role {role:?}"),
                "is not root, targets, snapshot or timestamp",
            ));
        }
        let _lock = self.backend.lock()?;
        let policy = keys.policy()?;
        let current = self.load().await?;
        let (version, old) = self.latest_root().await?;
        let old: tough::schema::Signed<Root> = serde_json::from_slice(&old)
            .map_err(|e| invalid(format!("{version}.root.json"), e.to_string()))?;
        // The current root keys sign the new root (clients follow the chain): without
        // them (kept offline and not given) nothing is generated.
        let old_keys = keys.sources("root")?;
        // The new keys wait beside the current ones until the new root that lists them is
        // published; anything failing before that takes them away again.
        keys.stage(role, &policy)?;
        let signed = match sign_root(keys, &policy, role, version, &old, &old_keys).await {
            Ok(b) => b,
            Err(e) => {
                keys.discard_staged(role);
                return Err(e);
            }
        };
        let name = format!("metadata/{}.root.json", version + 1);
        // A failed upload may still have stored the root (the staged keys then stay, and
        // the next rotation names them); a conflict stored nothing of ours.
        if !self.backend.create(&name, &signed).await? {
            keys.discard_staged(role);
            return Err(crate::Error::Conflict(format!(
                "{}/{name}",
                self.describe()
            )));
        }
        keys.replace(role)?;
        self.publish_targets(keys, &policy, current, &[]).await?;
        Ok(version + 1)
    }
}

/// Root version `version + 1` naming `role`'s staged keys, signed by the current root keys
/// and the new ones.
async fn sign_root(
    keys: &KeyDir,
    policy: &Policy,
    role: &str,
    version: u64,
    old: &tough::schema::Signed<Root>,
    old_keys: &[Box<dyn tough::key_source::KeySource>],
) -> Result<Vec<u8>> {
    let new_root = make_root(version + 1, keys, policy, Some(role)).await?;
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let new_root_keys = if role == "root" {
        keys.sources_at("root", keys.staged_paths("root"))?
    } else {
        keys.sources("root")?
    };
    let by_old = SignedRole::new(
        new_root.clone(),
        &KeyHolder::Root(old.signed.clone()),
        old_keys,
        &rng,
    )
    .await
    .map_err(tuf("signing the new root with the old root keys"))?;
    let signed = SignedRole::new(
        new_root.clone(),
        &KeyHolder::Root(new_root),
        &new_root_keys,
        &rng,
    )
    .await
    .map_err(tuf("signing the new root"))?
    .add_old_signatures(by_old.signed().signatures.clone())
    .map_err(tuf("combining root signatures"))?;
    Ok(signed.buffer().clone())
}

/// An editor over the given root metadata (tough reads it from a file), with the targets,
/// snapshot and timestamp of `repo` if given.
async fn editor(root: &[u8], repo: Option<tough::Repository>) -> Result<RepositoryEditor> {
    let dir = tempfile::tempdir().map_err(|e| crate::Error::Io {
        path: std::env::temp_dir(),
        source: e,
    })?;
    let p = dir.path().join("root.json");
    std::fs::write(&p, root).at(&p)?;
    match repo {
        Some(r) => RepositoryEditor::from_repo(&p, r).await,
        None => RepositoryEditor::new(&p).await,
    }
    .map_err(tuf("editing the repository"))
}

fn target_of(bytes: &[u8]) -> Target {
    Target {
        length: bytes.len() as u64,
        hashes: Hashes {
            sha256: Sha256::digest(bytes).to_vec().into(),
            _extra: HashMap::new(),
        },
        custom: HashMap::new(),
        _extra: HashMap::new(),
    }
}

/// Root metadata naming every role's keys; `staged`'s are those of its rotation.
async fn make_root(
    version: u64,
    keys: &KeyDir,
    policy: &Policy,
    staged: Option<&str>,
) -> Result<Root> {
    let mut all = HashMap::new();
    let mut roles = HashMap::new();
    for (role, rt) in [
        ("root", RoleType::Root),
        ("targets", RoleType::Targets),
        ("snapshot", RoleType::Snapshot),
        ("timestamp", RoleType::Timestamp),
    ] {
        let threshold = policy.threshold(role);
        let mut ids = Vec::new();
        let paths = if staged == Some(role) {
            keys.staged_paths(role)
        } else {
            keys.paths(role)
        };
        for (source, path) in keys.sources_at(role, paths.clone())?.into_iter().zip(paths) {
            let key = source
                .as_sign()
                .await
                .map_err(|e| invalid(format!("{role} key {}", path.display()), e.to_string()))?
                .tuf_key();
            let id = key
                .key_id()
                .map_err(|e| invalid(format!("{role} key"), e.to_string()))?;
            all.insert(id.clone(), key);
            ids.push(id);
        }
        if (ids.len() as u64) < threshold {
            return Err(invalid(
                format!("key directory {}", keys.dir.display()),
                format!(
                    "has {} {role} keys, fewer than the role's threshold {threshold}",
                    ids.len()
                ),
            ));
        }
        roles.insert(
            rt,
            RoleKeys {
                keyids: ids,
                threshold: nz(threshold),
                _extra: HashMap::new(),
            },
        );
    }
    Ok(Root {
        spec_version: "1.0.0".into(),
        consistent_snapshot: true,
        version: nz(version),
        expires: expires_in(policy.root_expires)?,
        keys: all,
        roles,
        _extra: HashMap::new(),
    })
}

pub fn sha2_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}
