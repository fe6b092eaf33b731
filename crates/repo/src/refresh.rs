//! `starling repo refresh`: keeps a published repository mountable while nothing is pushed.
//! TUF metadata expires (timestamp after a day by default, snapshot after 30 days, targets
//! after 90, root after a year); a repository whose timestamp expired is refused by every
//! client, a production outage. Refresh re-signs what is due with the online keys, meant for
//! a timer (dist/systemd/starling-repo-refresh.timer runs it hourly):
//!
//! - a role is due when less than half its validity is left, or when it would expire before
//!   the timestamp signed now does;
//! - a due timestamp alone is re-signed on its own (clients fetch only it);
//! - a due snapshot or targets re-signs targets, snapshot and timestamp together;
//! - root cannot be re-signed online (its keys may be offline): when it is due, the report
//!   says so, for `repo key rotate root` before it expires.

use std::num::NonZeroU64;

use jiff::Timestamp;
use tough::editor::signed::SignedRole;
use tough::schema::KeyHolder;

use crate::error::{invalid, tuf, Result};
use crate::keys::{KeyDir, Policy};
use crate::meta::Repo;

/// What a refresh did, and when each role now expires.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RefreshReport {
    /// The roles re-signed (none when nothing was due).
    pub resigned: Vec<String>,
    pub timestamp_version: u64,
    pub timestamp_expires: String,
    pub snapshot_expires: String,
    pub targets_expires: String,
    pub root_expires: String,
    /// Root metadata is due and needs its (possibly offline) keys.
    pub root_due: bool,
    /// A policy that makes every refresh re-sign everything, said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// Whether metadata expiring at `expires`, valid `validity` seconds when signed, has less than
/// half of it left at `now`.
fn half_gone(expires: Timestamp, validity: u64, now: Timestamp) -> bool {
    2 * (expires.as_second() - now.as_second()) < validity as i64
}

/// Whether a role other than the timestamp is due: half gone, or expiring before a timestamp
/// signed now (which lasts until `ts_until`) would.
fn due(expires: Timestamp, validity: u64, now: Timestamp, ts_until: Timestamp) -> bool {
    half_gone(expires, validity, now) || expires < ts_until
}

impl Repo {
    /// Re-signs the metadata that is due (everything with `force`), with the online keys.
    pub async fn refresh(&self, keys: &KeyDir, force: bool) -> Result<RefreshReport> {
        let _lock = self.backend.lock()?;
        let policy: Policy = keys.policy()?;
        let (repo, ts_version) = self.load().await?;
        let now = Timestamp::now();
        let ts_until = Timestamp::from_second(now.as_second() + policy.timestamp_expires as i64)
            .map_err(|e| invalid("expiry time", e.to_string()))?;
        let ts = repo.timestamp().signed.clone();
        let snapshot_expires = repo.snapshot().signed.expires;
        let targets_expires = repo.targets().signed.expires;
        let root = repo.root().signed.clone();
        let root_due = due(root.expires, policy.root_expires, now, ts_until);
        let warning = (policy.snapshot_expires < policy.timestamp_expires
            || policy.targets_expires < policy.timestamp_expires)
            .then(|| {
                "the snapshot or targets validity is shorter than the timestamp's: every \
                 refresh signs all three again (give them longer validities at `repo init`)"
                    .to_string()
            });
        let whole = force
            || due(snapshot_expires, policy.snapshot_expires, now, ts_until)
            || due(targets_expires, policy.targets_expires, now, ts_until);
        let mut resigned = Vec::new();
        if whole {
            // The same targets, signed again with new versions and expiries.
            let v = self
                .publish_targets(keys, &policy, (repo, ts_version), &[])
                .await?;
            resigned.extend(["targets", "snapshot", "timestamp"].map(String::from));
            let (repo, _) = self.load().await?;
            return Ok(RefreshReport {
                resigned,
                timestamp_version: v,
                timestamp_expires: repo.timestamp().signed.expires.to_string(),
                snapshot_expires: repo.snapshot().signed.expires.to_string(),
                targets_expires: repo.targets().signed.expires.to_string(),
                root_expires: root.expires.to_string(),
                root_due,
                warning,
            });
        }
        let mut new_ts = ts.clone();
        if half_gone(ts.expires, policy.timestamp_expires, now) {
            new_ts.version = NonZeroU64::new(ts.version.get() + 1).unwrap_or(NonZeroU64::MIN);
            new_ts.expires = ts_until;
            let signed = SignedRole::new(
                new_ts.clone(),
                &KeyHolder::Root(root.clone()),
                &keys.sources("timestamp")?,
                &aws_lc_rs::rand::SystemRandom::new(),
            )
            .await
            .map_err(tuf("signing the timestamp"))?;
            self.backend
                .replace(
                    "metadata/timestamp.json",
                    signed.buffer(),
                    Some(&ts_version),
                )
                .await?;
            resigned.push("timestamp".into());
        }
        Ok(RefreshReport {
            resigned,
            timestamp_version: new_ts.version.get(),
            timestamp_expires: new_ts.expires.to_string(),
            snapshot_expires: snapshot_expires.to_string(),
            targets_expires: targets_expires.to_string(),
            root_expires: root.expires.to_string(),
            root_due,
            warning,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_is_due_past_half_its_life_or_before_the_next_timestamp_ends() {
        let t = |s: i64| Timestamp::from_second(1_800_000_000 + s).unwrap();
        let day = 86_400;
        let now = t(0);
        let ts_until = t(day);
        // A timestamp signed 13 h ago for a day: due; signed 11 h ago: not yet.
        assert!(half_gone(t(day - 13 * 3600), day as u64, now));
        assert!(!half_gone(t(day - 11 * 3600), day as u64, now));
        // A snapshot with 20 of 30 days left is not due; with 2 h left it is (it would expire
        // before a timestamp signed now).
        assert!(!due(t(20 * day), 30 * day as u64, now, ts_until));
        assert!(due(t(2 * 3600), 30 * day as u64, now, ts_until));
        // Expired already: due.
        assert!(due(t(-5), 30 * day as u64, now, ts_until));
        assert!(half_gone(t(-5), day as u64, now));
    }
}
