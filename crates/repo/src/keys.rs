//! The publisher's signing keys: one ed25519 key per TUF role, PKCS#8 DER files in a key
//! directory kept outside the repository (0600), with the expiry policy beside them.

use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use serde::{Deserialize, Serialize};
use tough::key_source::{KeySource, LocalKeySource};

use crate::error::{invalid, IoContext, Result};

pub const ROLES: [&str; 4] = ["root", "targets", "snapshot", "timestamp"];
/// The most keys a role may have (thresholds go up to 16).
const MAX_KEYS: u64 = 64;
const POLICY: &str = "policy.json";

/// How long each role's metadata stays valid, in seconds, and how many keys must sign.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Policy {
    pub format: u32,
    pub root_expires: u64,
    pub targets_expires: u64,
    pub snapshot_expires: u64,
    pub timestamp_expires: u64,
    /// Signatures each role needs (and keys it has), unless `thresholds` names the role.
    pub threshold: u64,
    /// Per-role thresholds, e.g. {"root": 2}.
    #[serde(default)]
    pub thresholds: std::collections::BTreeMap<String, u64>,
}

impl Policy {
    pub fn threshold(&self, role: &str) -> u64 {
        self.thresholds
            .get(role)
            .copied()
            .unwrap_or(self.threshold)
            .max(1)
    }
}

impl Default for Policy {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        Policy {
            format: 1,
            root_expires: 365 * DAY,
            targets_expires: 90 * DAY,
            snapshot_expires: 30 * DAY,
            timestamp_expires: DAY,
            threshold: 1,
            thresholds: Default::default(),
        }
    }
}

/// The online key directory, and where the root keys are when they are kept offline
/// (`repo init --offline-root DIR`: a removable disk, only present for a rotation).
pub struct KeyDir {
    pub dir: PathBuf,
    pub root_dir: Option<PathBuf>,
}

impl KeyDir {
    fn dir_of(&self, role: &str) -> &Path {
        match (&self.root_dir, role) {
            (Some(d), "root") => d,
            _ => &self.dir,
        }
    }

    /// Key file `n` (1-based) of a role: `ROLE.pk8`, `ROLE.2.pk8`, ...
    pub fn path_n(&self, role: &str, n: u64) -> PathBuf {
        if n <= 1 {
            self.dir_of(role).join(format!("{role}.pk8"))
        } else {
            self.dir_of(role).join(format!("{role}.{n}.pk8"))
        }
    }

    pub fn path(&self, role: &str) -> PathBuf {
        self.path_n(role, 1)
    }

    /// Every key file the role has, in order.
    pub fn paths(&self, role: &str) -> Vec<PathBuf> {
        (1..)
            .map(|n| self.path_n(role, n))
            .take_while(|p| p.exists())
            .collect()
    }

    /// Creates the directory with a fresh key for every role (the root keys in `root_dir`
    /// when given, never in `dir`). Refuses to overwrite keys.
    pub fn create(dir: &Path, policy: &Policy, root_dir: Option<&Path>) -> Result<KeyDir> {
        for d in std::iter::once(dir).chain(root_dir) {
            std::fs::create_dir_all(d).at(d)?;
            rustix::fs::chmod(d, rustix::fs::Mode::from_raw_mode(0o700)).map_err(|e| {
                crate::error::Error::Io {
                    path: d.to_path_buf(),
                    source: e.into(),
                }
            })?;
        }
        let kd = KeyDir {
            dir: dir.to_path_buf(),
            root_dir: root_dir.map(Path::to_path_buf),
        };
        for role in ROLES {
            if kd.path(role).exists() {
                return Err(invalid(
                    format!("key directory {}", kd.dir_of(role).display()),
                    format!("already holds a {role} key; give another directory"),
                ));
            }
        }
        for role in ROLES {
            kd.generate(role, policy, "pk8")?;
        }
        let p = dir.join(POLICY);
        let text =
            serde_json::to_vec_pretty(policy).map_err(|e| invalid("policy", e.to_string()))?;
        std::fs::write(&p, text).at(&p)?;
        Ok(kd)
    }

    /// Opens the online key directory; `root_dir` names the offline root keys' directory
    /// (a rotation needs them). Without it, root keys are looked for in `dir` and may be
    /// absent there: publishing needs none.
    pub fn open(dir: &Path, root_dir: Option<&Path>) -> Result<KeyDir> {
        let kd = KeyDir {
            dir: dir.to_path_buf(),
            root_dir: root_dir.map(Path::to_path_buf),
        };
        for role in ROLES {
            if role == "root" && root_dir.is_none() {
                continue;
            }
            if !kd.path(role).exists() {
                return Err(invalid(
                    format!("key directory {}", dir.display()),
                    format!("has no {role} key ({} is missing)", kd.path(role).display()),
                ));
            }
        }
        Ok(kd)
    }

    /// As many fresh keys for `role` as its threshold, named with `ext`: `pk8`, or
    /// `pk8.new` while a rotation waits for its root to be published.
    fn generate(&self, role: &str, policy: &Policy, ext: &str) -> Result<()> {
        for n in 1..=policy.threshold(role) {
            self.generate_one(&self.path_n(role, n).with_extension(ext))?;
        }
        Ok(())
    }

    /// Makes the names of `role`'s key files durable.
    fn sync_dir(&self, role: &str) -> Result<()> {
        let dir = self.dir_of(role);
        std::fs::File::open(dir).and_then(|d| d.sync_all()).at(dir)
    }

    /// A rotation's new keys for `role` (`ROLE*.pk8.new`), beside the current ones, which
    /// sign the new root before [`KeyDir::replace`] puts the new ones in their place.
    pub fn stage(&self, role: &str, policy: &Policy) -> Result<()> {
        let left = self.staged_paths(role);
        if let Some(p) = left.first() {
            return Err(invalid(
                format!("key directory {}", self.dir_of(role).display()),
                format!(
                    "holds {} from a {role} key rotation that was cut short: if the \
                     repository's newest root lists it, rename each ROLE*.pk8.new over its \
                     ROLE*.pk8; if not, delete them; then rotate again",
                    p.display()
                ),
            ));
        }
        self.generate(role, policy, "pk8.new")?;
        // Their names on disk before the root that lists them is uploaded: a power cut
        // after the upload must not lose them.
        self.sync_dir(role)
    }

    /// Removes the staged keys of a rotation that published nothing.
    pub fn discard_staged(&self, role: &str) {
        for p in self.staged_paths(role) {
            let _ = std::fs::remove_file(p);
        }
    }

    /// The keys [`KeyDir::stage`] made, in order: every number is looked at (not only up
    /// to the first gap), so what a `replace` cut short between two renames left is found.
    pub fn staged_paths(&self, role: &str) -> Vec<PathBuf> {
        self.staged(role).into_iter().map(|(_, p)| p).collect()
    }

    fn staged(&self, role: &str) -> Vec<(u64, PathBuf)> {
        (1..=MAX_KEYS)
            .map(|n| (n, self.path_n(role, n).with_extension("pk8.new")))
            .filter(|(_, p)| p.exists())
            .collect()
    }

    /// Puts the staged keys of `role` in place of the current ones, which are gone after
    /// (a rotated-out key is deleted, not kept: whoever finds it later cannot sign with it).
    pub fn replace(&self, role: &str) -> Result<()> {
        let old = self.paths(role);
        let staged = self.staged(role);
        for (n, p) in &staged {
            let to = self.path_n(role, *n);
            std::fs::rename(p, &to).at(&to)?;
        }
        for p in old.iter().skip(staged.len()) {
            std::fs::remove_file(p).at(p)?;
        }
        // What earlier versions kept of rotated keys.
        for n in 1.. {
            let o = self.path_n(role, n).with_extension("pk8.old");
            if std::fs::remove_file(&o).is_err() {
                break;
            }
        }
        self.sync_dir(role)
    }

    fn generate_one(&self, p: &Path) -> Result<()> {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| invalid("key generation", "failed"))?;
        let tmp = p.with_extension("tmp");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .at(&tmp)?;
            f.write_all(pkcs8.as_ref())
                .and_then(|_| f.sync_all())
                .at(&tmp)?;
        }
        std::fs::rename(&tmp, p).at(p)
    }

    /// Signing keys of a role (all of them; tough signs with each the role lists).
    pub fn sources(&self, role: &str) -> Result<Vec<Box<dyn KeySource>>> {
        self.sources_at(role, self.paths(role))
    }

    /// The keys at `paths`, each refused when others than its owner may read or write it
    /// (as ssh refuses such a private key).
    pub fn sources_at(&self, role: &str, paths: Vec<PathBuf>) -> Result<Vec<Box<dyn KeySource>>> {
        for p in &paths {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(p).at(p)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(invalid(
                    format!("{role} key {}", p.display()),
                    format!(
                        "is open to others (mode {:04o}): a signing key must be its owner's \
                         alone; chmod 600 {} (and consider the key exposed)",
                        mode & 0o7777,
                        p.display()
                    ),
                ));
            }
        }
        if paths.is_empty() && role == "root" && self.root_dir.is_none() {
            return Err(invalid(
                format!("key directory {}", self.dir.display()),
                "has no root key: if this repository's root keys are kept offline, give \
                 their directory with --root-keys DIR",
            ));
        }
        if paths.is_empty() {
            return Err(invalid(
                format!("key directory {}", self.dir_of(role).display()),
                format!(
                    "has no {role} key ({} is missing)",
                    self.path(role).display()
                ),
            ));
        }
        Ok(paths
            .into_iter()
            .map(|path| Box::new(LocalKeySource { path }) as Box<dyn KeySource>)
            .collect())
    }

    /// Refuses a key directory that cannot sign under `policy` (fewer keys than a role's
    /// threshold), before anything is uploaded.
    pub fn check(&self, policy: &Policy) -> Result<()> {
        // Publishing signs every role but root (which may be offline).
        for role in ROLES.iter().filter(|r| **r != "root") {
            let have = self.paths(role).len() as u64;
            let need = policy.threshold(role);
            if have < need {
                return Err(invalid(
                    format!("key directory {}", self.dir.display()),
                    format!("has {have} {role} keys, fewer than the role's threshold {need}"),
                ));
            }
        }
        Ok(())
    }

    pub fn policy(&self) -> Result<Policy> {
        let p = self.dir.join(POLICY);
        match std::fs::read(&p) {
            Ok(b) => {
                let policy: Policy = serde_json::from_slice(&b)
                    .map_err(|e| invalid(p.display().to_string(), e.to_string()))?;
                if policy.format != 1 {
                    return Err(invalid(
                        p.display().to_string(),
                        format!(
                            "policy format {} is not supported (this build reads 1)",
                            policy.format
                        ),
                    ));
                }
                Ok(policy)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Policy::default()),
            Err(e) => Err(e).at(&p),
        }
    }
}
