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
    pub threshold: u64,
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
        }
    }
}

pub struct KeyDir {
    pub dir: PathBuf,
}

impl KeyDir {
    pub fn path(&self, role: &str) -> PathBuf {
        self.dir.join(format!("{role}.pk8"))
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
            kd.generate(role)?;
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

    /// A new key for `role`, replacing the old one (which is kept as `ROLE.pk8.old`).
    pub fn generate(&self, role: &str) -> Result<()> {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| invalid("key generation", "failed"))?;
        let p = self.path(role);
        if p.exists() {
            let old = p.with_extension("pk8.old");
            std::fs::rename(&p, &old).at(&old)?;
        }
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
        std::fs::rename(&tmp, &p).at(&p)
    }

    pub fn source(&self, role: &str) -> Box<dyn KeySource> {
        Box::new(LocalKeySource {
            path: self.path(role),
        })
    }

    pub fn old_source(&self, role: &str) -> Option<Box<dyn KeySource>> {
        let p = self.path(role).with_extension("pk8.old");
        p.exists()
            .then(|| Box::new(LocalKeySource { path: p }) as Box<dyn KeySource>)
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
