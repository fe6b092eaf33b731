//! The publisher's signing keys: one ed25519 key per TUF role, PKCS#8 DER files in a key
//! directory kept outside the repository (0600), with the expiry policy beside them.

use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use serde::{Deserialize, Serialize};
use tough::key_source::{KeySource, LocalKeySource};

use crate::error::{invalid, IoContext, Result};

pub const ROLES: [&str; 4] = ["root", "targets", "snapshot", "timestamp"];
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

pub struct KeyDir {
    pub dir: PathBuf,
}

impl KeyDir {
    /// Key file `n` (1-based) of a role: `ROLE.pk8`, `ROLE.2.pk8`, ...
    pub fn path_n(&self, role: &str, n: u64) -> PathBuf {
        if n <= 1 {
            self.dir.join(format!("{role}.pk8"))
        } else {
            self.dir.join(format!("{role}.{n}.pk8"))
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

    /// Creates the directory with a fresh key for every role. Refuses to overwrite keys.
    pub fn create(dir: &Path, policy: &Policy) -> Result<KeyDir> {
        std::fs::create_dir_all(dir).at(dir)?;
        rustix::fs::chmod(dir, rustix::fs::Mode::from_raw_mode(0o700)).map_err(|e| {
            crate::error::Error::Io {
                path: dir.to_path_buf(),
                source: e.into(),
            }
        })?;
        let kd = KeyDir {
            dir: dir.to_path_buf(),
        };
        for role in ROLES {
            if kd.path(role).exists() {
                return Err(invalid(
                    format!("key directory {}", dir.display()),
                    format!("already holds a {role} key; give another --keys directory"),
                ));
            }
        }
        for role in ROLES {
            kd.generate(role, policy)?;
        }
        let p = dir.join(POLICY);
        let text =
            serde_json::to_vec_pretty(policy).map_err(|e| invalid("policy", e.to_string()))?;
        std::fs::write(&p, text).at(&p)?;
        Ok(kd)
    }

    pub fn open(dir: &Path) -> Result<KeyDir> {
        let kd = KeyDir {
            dir: dir.to_path_buf(),
        };
        for role in ROLES {
            if !kd.path(role).exists() {
                return Err(invalid(
                    format!("key directory {}", dir.display()),
                    format!("has no {role} key ({} is missing)", kd.path(role).display()),
                ));
            }
        }
        Ok(kd)
    }

    /// New keys for `role` (as many as its threshold), replacing the old ones (kept as
    /// `*.pk8.old` for signing the next root during a rotation).
    pub fn generate(&self, role: &str, policy: &Policy) -> Result<()> {
        let old = self.paths(role);
        for p in &old {
            let o = p.with_extension("pk8.old");
            std::fs::rename(p, &o).at(&o)?;
        }
        // Older leftovers beyond the current set would otherwise pass for old keys.
        for n in (old.len() as u64 + 1).. {
            let o = self.path_n(role, n).with_extension("pk8.old");
            if std::fs::remove_file(&o).is_err() {
                break;
            }
        }
        for n in 1..=policy.threshold(role) {
            self.generate_one(&self.path_n(role, n))?;
        }
        Ok(())
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
        let paths = self.paths(role);
        if paths.is_empty() {
            return Err(invalid(
                format!("key directory {}", self.dir.display()),
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
        for role in ROLES {
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

    /// The keys a role had before its last rotation.
    pub fn old_sources(&self, role: &str) -> Result<Vec<Box<dyn KeySource>>> {
        let v: Vec<Box<dyn KeySource>> = (1..)
            .map(|n| self.path_n(role, n).with_extension("pk8.old"))
            .take_while(|p| p.exists())
            .map(|path| Box::new(LocalKeySource { path }) as Box<dyn KeySource>)
            .collect();
        if v.is_empty() {
            return Err(invalid(
                format!("{role} key rotation"),
                "the previous keys are missing",
            ));
        }
        Ok(v)
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
