//! Groups of hosts managed through the repository (Stork's groups): `starling group apply
//! SPEC.toml REPO` publishes a group's desired state as a signed TUF target, and every host
//! whose starlingd follows the group reads it through the same verification as an image
//! record and converges to it.
//!
//! The spec (TOML, written by people) names the hosts by labels and the images to keep in
//! their host caches by reference (`NAME:TAG`, `NAME@VERSION`); apply resolves each to the
//! version it names now, so every host converges to the same versions whatever the tags do
//! afterwards, and numbers the state (`generation`, one more than the published one).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use starling_image::reference::ImageRef;

use crate::error::{invalid, tuf, Error, Result};
use crate::keys::KeyDir;
use crate::meta::Repo;

/// The format of the published state.
pub const GROUP_FORMAT: u32 = 1;

/// What `group apply` reads.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    pub name: String,
    #[serde(default)]
    pub hosts: HostSelector,
    #[serde(default, rename = "image")]
    pub images: Vec<SpecImage>,
}

/// Which hosts follow: those whose labels include every one given (none: every host
/// following the group).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSelector {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl HostSelector {
    pub fn selects(&self, host: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| host.get(k) == Some(v))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecImage {
    /// `NAME:TAG`, `NAME` or `NAME@VERSION` in the repository.
    #[serde(rename = "ref")]
    pub reference: String,
}

/// The desired state of a group, as published (a TUF target).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    pub format: u32,
    pub name: String,
    /// One more with each apply: hosts converge to the highest they have verified.
    pub generation: u64,
    pub hosts: HostSelector,
    pub images: Vec<GroupImage>,
    /// When it was applied (RFC 3339).
    pub applied: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupImage {
    /// As the spec wrote it.
    #[serde(rename = "ref")]
    pub reference: String,
    /// The image's name and the version the reference named at apply.
    pub name: String,
    pub version: String,
}

/// A group name: what hosts' configurations and `group status` use.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            format!("group name {name:?}"),
            "use 1 to 64 of a-z, 0-9, - and _",
        ))
    }
}

/// The TUF target a group's state is published as (no `@`: not an image record).
pub fn target_name(group: &str) -> String {
    format!("group.{group}.json")
}

impl GroupSpec {
    pub fn parse(text: &str, shown: &str) -> Result<GroupSpec> {
        let spec: GroupSpec = toml::from_str(text)
            .map_err(|e| invalid(shown.to_string(), crate::error::toml_message(&e)))?;
        check_name(&spec.name).map_err(|e| invalid(shown.to_string(), e.to_string()))?;
        for i in &spec.images {
            ImageRef::parse(&i.reference)
                .map_err(|e| invalid(format!("{shown}: image {:?}", i.reference), e.to_string()))?;
        }
        Ok(spec)
    }
}

impl GroupState {
    pub fn parse(bytes: &[u8], shown: &str) -> Result<GroupState> {
        let s: GroupState = serde_json::from_slice(bytes)
            .map_err(|e| invalid(shown.to_string(), format!("not a group state: {e}")))?;
        if s.format != GROUP_FORMAT {
            return Err(invalid(
                shown.to_string(),
                format!(
                    "group state format {} (this build reads {GROUP_FORMAT})",
                    s.format
                ),
            ));
        }
        check_name(&s.name)?;
        for i in &s.images {
            i.version
                .parse::<starling_store::ObjectId>()
                .map_err(|_| invalid(shown.to_string(), format!("bad version {:?}", i.version)))?;
        }
        Ok(s)
    }
}

/// The group's published state in a verified repository, if it has one.
pub async fn read(repo: &tough::Repository, group: &str) -> Result<Option<GroupState>> {
    use tough::IntoVec;
    let name = target_name(group);
    let tn = tough::TargetName::new(name.clone()).map_err(tuf("target name"))?;
    let Some(stream) = repo
        .read_target(&tn)
        .await
        .map_err(tuf(format!("reading target {name}")))?
    else {
        return Ok(None);
    };
    let bytes = stream
        .into_vec()
        .await
        .map_err(tuf(format!("reading target {name}")))?;
    Ok(Some(GroupState::parse(&bytes, &name)?))
}

impl Repo {
    /// Resolves the spec's images in this repository and publishes the group's next state.
    pub async fn apply_group(&self, keys: &KeyDir, spec: &GroupSpec) -> Result<GroupState> {
        let _lock = self.backend.lock()?;
        let policy = keys.policy()?;
        let loaded = self.load().await?;
        let previous = read(&loaded.0, &spec.name).await?;
        let mut images = Vec::new();
        for i in &spec.images {
            let what = ImageRef::parse(&i.reference)?;
            let (rec, id) = crate::pull::resolve(&loaded.0, &what)
                .await
                .map_err(|e| match e {
                    Error::UnknownImage(_) => invalid(
                        format!("group {}", spec.name),
                        format!("image {} is not in {}", i.reference, self.describe()),
                    ),
                    other => other,
                })?;
            images.push(GroupImage {
                reference: i.reference.clone(),
                name: rec.name,
                version: id.to_hex(),
            });
        }
        let state = GroupState {
            format: GROUP_FORMAT,
            name: spec.name.clone(),
            generation: previous.map_or(1, |p| p.generation + 1),
            hosts: spec.hosts.clone(),
            images,
            applied: jiff::Timestamp::now().to_string(),
        };
        let bytes =
            serde_json::to_vec_pretty(&state).map_err(|e| invalid("group state", e.to_string()))?;
        self.publish_targets(keys, &policy, loaded, &[(target_name(&spec.name), bytes)])
            .await?;
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_mistakes_are_named() {
        let s = GroupSpec::parse(
            "name = \"ci\"\n[hosts]\nlabels = { role = \"ci\" }\n[[image]]\nref = \"t:v1\"\n",
            "ci.toml",
        )
        .unwrap();
        assert_eq!(s.images[0].reference, "t:v1");
        let mut host = BTreeMap::new();
        assert!(!s.hosts.selects(&host));
        host.insert("role".to_string(), "ci".to_string());
        host.insert("site".to_string(), "lab".to_string());
        assert!(s.hosts.selects(&host));
        for (text, want) in [
            ("name = \"CI\"\n", "use 1 to 64"),
            ("name = \"ci\"\n[[image]]\nref = \"T!\"\n", "image \"T!\""),
            ("name = \"ci\"\nimages = []\n", "unknown field"),
            ("[[image]]\nref = \"t\"\n", "missing field `name`"),
        ] {
            let e = GroupSpec::parse(text, "ci.toml").unwrap_err().to_string();
            assert!(
                e.starts_with("ci.toml") && e.contains(want),
                "{text:?}: {e}"
            );
        }
        assert!(!crate::record::is_record_target(&target_name("ci")));
    }

    #[test]
    fn states_of_another_format_or_with_bad_versions_are_refused() {
        let good = GroupState {
            format: GROUP_FORMAT,
            name: "ci".into(),
            generation: 2,
            hosts: HostSelector::default(),
            images: vec![GroupImage {
                reference: "t:v1".into(),
                name: "t".into(),
                version: "ab".repeat(32),
            }],
            applied: "2026-11-28T00:00:00Z".into(),
        };
        let b = serde_json::to_vec(&good).unwrap();
        assert_eq!(GroupState::parse(&b, "g").unwrap(), good);
        let mut v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        v["format"] = 9.into();
        let e = GroupState::parse(&serde_json::to_vec(&v).unwrap(), "g").unwrap_err();
        assert!(e.to_string().contains("format 9"), "{e}");
        v["format"] = 1.into();
        v["images"][0]["version"] = "zz".into();
        assert!(GroupState::parse(&serde_json::to_vec(&v).unwrap(), "g").is_err());
    }
}
