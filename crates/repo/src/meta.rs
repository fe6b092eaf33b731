//! A repository directory and its TUF metadata (via `tough`): creation, and publication of
//! new target records under a lock, written so that readers only ever see a complete state.
//!
//! Layout: `metadata/` (`N.root.json`, `N.targets.json`, `N.snapshot.json`, `timestamp.json`),
//! `targets/` (consistent-snapshot names `<sha256>.<name>`), `objects/` (store objects, the
//! same envelope files as a local store), `starling-repo` (format marker), `.lock`.
//! Publication writes every new file under a fresh name first and replaces `timestamp.json`
//! last, atomically: that rename is the commit point.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use sha2::{Digest, Sha256};
use tough::editor::signed::SignedRole;
use tough::editor::RepositoryEditor;
use tough::key_source::KeySource;
use tough::schema::{KeyHolder, RoleKeys, RoleType, Root, Target};
use tough::{ExpirationEnforcement, FilesystemTransport, RepositoryLoader, TargetName};

use crate::error::{invalid, tuf, IoContext, Result};
use crate::keys::{KeyDir, Policy};

pub const REPO_FORMAT: &str = "starling-repo 1";

pub struct RepoDir {
    pub dir: PathBuf,
}

fn nz(n: u64) -> NonZeroU64 {
    NonZeroU64::new(n.max(1)).unwrap_or(NonZeroU64::MIN)
}

/// Whole seconds: TUF clients (python-tuf among them) reject fractional expiry times.
fn expires_in(secs: u64) -> Result<Timestamp> {
    let t = Timestamp::now().as_second() + secs as i64;
    Timestamp::from_second(t).map_err(|e| invalid("expiry time", e.to_string()))
}

fn url(p: &Path) -> Result<url::Url> {
    let abs = std::fs::canonicalize(p).at(p)?;
    url::Url::from_directory_path(&abs)
        .map_err(|_| invalid(p.display().to_string(), "not an absolute directory path"))
}

impl RepoDir {
    pub fn metadata(&self) -> PathBuf {
        self.dir.join("metadata")
    }
    pub fn targets(&self) -> PathBuf {
        self.dir.join("targets")
    }
    pub fn objects(&self) -> PathBuf {
        self.dir.join("objects")
    }

    pub fn open(dir: &Path) -> Result<RepoDir> {
        let marker = dir.join("starling-repo");
        match std::fs::read_to_string(&marker) {
            Ok(t) if t.trim() == REPO_FORMAT => Ok(RepoDir {
                dir: dir.to_path_buf(),
            }),
            Ok(t) => Err(invalid(
                format!("repository {}", dir.display()),
                format!("format {:?} is not supported (this build writes {REPO_FORMAT:?})", t.trim()),
            )),
            Err(_) => Err(invalid(
                format!("repository {}", dir.display()),
                "not a Starling repository (no starling-repo file; create one with `starling repo init`)",
            )),
        }
    }

    /// Creates a repository: root metadata signed with the keys, and empty signed targets,
    /// snapshot and timestamp.
    pub async fn init(dir: &Path, keys: &KeyDir, policy: &Policy) -> Result<RepoDir> {
        if dir.join("starling-repo").exists() || dir.join("metadata").exists() {
            return Err(invalid(
                format!("repository {}", dir.display()),
                "already exists",
            ));
        }
        let repo = RepoDir {
            dir: dir.to_path_buf(),
        };
        for d in [repo.metadata(), repo.targets(), repo.objects()] {
            std::fs::create_dir_all(&d).at(&d)?;
        }
        let root = make_root(1, keys, policy).await?;
        let signed = SignedRole::new(
            root.clone(),
            &KeyHolder::Root(root),
            &[keys.source("root")],
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .await
        .map_err(tuf("signing root metadata"))?;
        signed
            .write(repo.metadata(), true)
            .await
            .map_err(tuf("writing root metadata"))?;
        let _lock = repo.lock()?;
        let ed = RepositoryEditor::new(repo.latest_root()?.1)
            .await
            .map_err(tuf("opening the new repository"))?;
        repo.sign_and_publish(ed, keys, policy, 1).await?;
        let marker = dir.join("starling-repo");
        std::fs::write(&marker, format!("{REPO_FORMAT}\n")).at(&marker)?;
        Ok(repo)
    }

    /// The newest root metadata: (version, path).
    pub fn latest_root(&self) -> Result<(u64, PathBuf)> {
        let mut best = None;
        for e in std::fs::read_dir(self.metadata()).at(self.metadata())? {
            let e = e.at(self.metadata())?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(n) = name
                .strip_suffix(".root.json")
                .and_then(|v| v.parse::<u64>().ok())
            {
                if best.as_ref().is_none_or(|(b, _)| n > *b) {
                    best = Some((n, e.path()));
                }
            }
        }
        best.ok_or_else(|| {
            invalid(
                format!("repository {}", self.dir.display()),
                "has no root metadata",
            )
        })
    }

    /// Exclusive publication lock (flock on `.lock`), waited for.
    pub fn lock(&self) -> Result<std::fs::File> {
        let p = self.dir.join(".lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .at(&p)?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
            crate::error::Error::Io {
                path: p.clone(),
                source: e.into(),
            }
        })?;
        Ok(f)
    }

    /// The repository as its publisher sees it (expiry not enforced, so an expired
    /// repository can be re-signed).
    pub async fn load(&self) -> Result<tough::Repository> {
        let root1 = self.metadata().join("1.root.json");
        let trusted = std::fs::read(&root1).at(&root1)?;
        RepositoryLoader::new(&trusted, url(&self.metadata())?, url(&self.targets())?)
            .transport(FilesystemTransport)
            .expiration_enforcement(ExpirationEnforcement::Unsafe)
            .load()
            .await
            .map_err(tuf(format!("loading repository {}", self.dir.display())))
    }

    /// Adds or replaces targets (name, bytes), re-signs targets, snapshot and timestamp with
    /// versions one above the current ones, and publishes. Call with the lock held.
    pub async fn publish_targets(
        &self,
        keys: &KeyDir,
        policy: &Policy,
        files: &[(String, Vec<u8>)],
    ) -> Result<u64> {
        let repo = self.load().await?;
        self.publish_on(repo, keys, policy, files).await
    }

    /// As [`Self::publish_targets`], on a repository state loaded beforehand (a key rotation
    /// loads it before the new root makes the old signatures invalid).
    async fn publish_on(
        &self,
        repo: tough::Repository,
        keys: &KeyDir,
        policy: &Policy,
        files: &[(String, Vec<u8>)],
    ) -> Result<u64> {
        let next = [
            repo.targets().signed.version.get(),
            repo.snapshot().signed.version.get(),
            repo.timestamp().signed.version.get(),
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
            + 1;
        let mut ed = RepositoryEditor::from_repo(self.latest_root()?.1, repo)
            .await
            .map_err(tuf("editing the repository"))?;
        let staging = self.dir.join(".staging");
        std::fs::create_dir_all(&staging).at(&staging)?;
        for (name, bytes) in files {
            let hash = sha2_hex(bytes);
            // Content-addressed target file: written once, atomically, before any metadata
            // refers to it.
            let dest = self.targets().join(format!("{hash}.{name}"));
            write_atomic(&dest, bytes)?;
            let tn = TargetName::new(name.clone()).map_err(tuf(format!("target name {name:?}")))?;
            let t = Target::from_path(&dest)
                .await
                .map_err(tuf(format!("target {name}")))?;
            ed.add_target(tn, t)
                .map_err(tuf(format!("adding target {name}")))?;
        }
        self.sign_and_publish(ed, keys, policy, next).await?;
        Ok(next)
    }

    async fn sign_and_publish(
        &self,
        mut ed: RepositoryEditor,
        keys: &KeyDir,
        policy: &Policy,
        version: u64,
    ) -> Result<()> {
        ed.targets_version(nz(version))
            .map_err(tuf("targets version"))?
            .targets_expires(expires_in(policy.targets_expires)?)
            .map_err(tuf("targets expiry"))?
            .snapshot_version(nz(version))
            .snapshot_expires(expires_in(policy.snapshot_expires)?)
            .timestamp_version(nz(version))
            .timestamp_expires(expires_in(policy.timestamp_expires)?);
        let signers: Vec<Box<dyn KeySource>> = vec![
            keys.source("targets"),
            keys.source("snapshot"),
            keys.source("timestamp"),
        ];
        let signed = ed
            .sign(&signers)
            .await
            .map_err(tuf("signing targets, snapshot and timestamp"))?;
        let staging = self
            .dir
            .join(format!(".staging/meta-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).at(&staging)?;
        signed
            .write(&staging)
            .await
            .map_err(tuf("writing metadata"))?;
        // Versioned files first (new names, nothing refers to them yet), timestamp last.
        let mut names: Vec<String> = std::fs::read_dir(&staging)
            .at(&staging)?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort_by_key(|n| n == "timestamp.json");
        for n in names {
            let from = staging.join(&n);
            let to = self.metadata().join(&n);
            sync_file(&from)?;
            std::fs::rename(&from, &to).at(&to)?;
        }
        sync_dir(&self.metadata())?;
        let _ = std::fs::remove_dir_all(&staging);
        Ok(())
    }
}

impl RepoDir {
    /// Replaces `role`'s key: a new root version naming the new key, signed by the old and the
    /// new root keys (so clients can follow the chain), then targets, snapshot and timestamp
    /// signed again. Returns the new root version.
    pub async fn rotate_key(&self, keys: &KeyDir, role: &str) -> Result<u64> {
        if !crate::keys::ROLES.contains(&role) {
            return Err(invalid(
                format!("role {role:?}"),
                "is not root, targets, snapshot or timestamp",
            ));
        }
        let _lock = self.lock()?;
        let policy = keys.policy()?;
        let current = self.load().await?;
        let (version, path) = self.latest_root()?;
        let old: tough::schema::Signed<Root> =
            serde_json::from_slice(&std::fs::read(&path).at(&path)?)
                .map_err(|e| invalid(path.display().to_string(), e.to_string()))?;
        keys.generate(role)?;
        let new_root = make_root(version + 1, keys, &policy).await?;
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let old_key = if role == "root" {
            keys.old_source("root")
                .ok_or_else(|| invalid("root key rotation", "the previous root key is missing"))?
        } else {
            keys.source("root")
        };
        let by_old = SignedRole::new(
            new_root.clone(),
            &KeyHolder::Root(old.signed.clone()),
            &[old_key],
            &rng,
        )
        .await
        .map_err(tuf("signing the new root with the old root key"))?;
        let signed = SignedRole::new(
            new_root.clone(),
            &KeyHolder::Root(new_root),
            &[keys.source("root")],
            &rng,
        )
        .await
        .map_err(tuf("signing the new root"))?
        .add_old_signatures(by_old.signed().signatures.clone())
        .map_err(tuf("combining root signatures"))?;
        let staging = self
            .dir
            .join(format!(".staging/root-{}", std::process::id()));
        std::fs::create_dir_all(&staging).at(&staging)?;
        signed
            .write(&staging, true)
            .await
            .map_err(tuf("writing root metadata"))?;
        let name = format!("{}.root.json", version + 1);
        std::fs::rename(staging.join(&name), self.metadata().join(&name))
            .at(self.metadata().join(&name))?;
        let _ = std::fs::remove_dir_all(&staging);
        self.publish_on(current, keys, &policy, &[]).await?;
        Ok(version + 1)
    }
}

async fn make_root(version: u64, keys: &KeyDir, policy: &Policy) -> Result<Root> {
    let mut all = HashMap::new();
    let mut roles = HashMap::new();
    for (role, rt) in [
        ("root", RoleType::Root),
        ("targets", RoleType::Targets),
        ("snapshot", RoleType::Snapshot),
        ("timestamp", RoleType::Timestamp),
    ] {
        let key = keys
            .source(role)
            .as_sign()
            .await
            .map_err(|e| {
                invalid(
                    format!("{role} key {}", keys.path(role).display()),
                    e.to_string(),
                )
            })?
            .tuf_key();
        let id = key
            .key_id()
            .map_err(|e| invalid(format!("{role} key"), e.to_string()))?;
        all.insert(id.clone(), key);
        roles.insert(
            rt,
            RoleKeys {
                keyids: vec![id],
                threshold: nz(policy.threshold.min(1)),
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

pub(crate) fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    if dest.exists() {
        return Ok(());
    }
    let tmp = dest.with_file_name(format!(
        ".{}.tmp-{}",
        dest.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp).at(&tmp)?;
    f.write_all(bytes).and_then(|_| f.sync_all()).at(&tmp)?;
    std::fs::rename(&tmp, dest).at(dest)
}

fn sync_file(p: &Path) -> Result<()> {
    std::fs::File::open(p).and_then(|f| f.sync_all()).at(p)
}

fn sync_dir(p: &Path) -> Result<()> {
    std::fs::File::open(p).and_then(|f| f.sync_all()).at(p)
}
