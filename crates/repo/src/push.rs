//! Publishing an image version: the objects the repository lacks (verified on the way out),
//! then the tag's record, signed, under the repository lock.

use starling_image::reference::ImageRef;
use starling_image::{maint, versions};
use starling_store::{ObjectId, Store};
use tough::TargetName;

use crate::error::{invalid, tuf, IoContext, Result};
use crate::keys::KeyDir;
use crate::meta::{write_atomic, RepoDir};
use crate::record::{target_name, ImageRecord, Published, RECORD_FORMAT};

#[derive(Debug, serde::Serialize)]
pub struct PushReport {
    pub name: String,
    pub tag: String,
    pub version: String,
    pub objects: usize,
    pub uploaded: usize,
    pub uploaded_bytes: u64,
    /// Metadata version published (targets, snapshot and timestamp).
    pub metadata_version: u64,
}

/// Path of an object inside a repository (the store's own layout).
pub fn object_rel(id: &ObjectId) -> String {
    let h = id.to_hex();
    format!("objects/{}/{}", &h[..2], &h[2..])
}

pub async fn push(
    store: &Store,
    what: &ImageRef,
    repo: &RepoDir,
    keys: &KeyDir,
    as_name: Option<(String, String)>,
) -> Result<PushReport> {
    let resolved = versions::resolve(store, what)?;
    let (name, tag) = match (as_name, what) {
        (Some(nt), _) => nt,
        (None, ImageRef::Tag { name, tag }) => (name.clone(), tag.clone()),
        (None, ImageRef::Version { name, .. }) => (name.clone(), "latest".to_string()),
    };
    let ids = maint::objects_of(store, &resolved.id)?;
    // Objects first, each verified from the local store and written atomically; they are
    // content-addressed, so a half-done push leaves only harmless extra files.
    let mut uploaded = 0;
    let mut uploaded_bytes = 0;
    for id in &ids {
        let dest = repo.dir.join(object_rel(id));
        if dest.exists() {
            continue;
        }
        let env = store.get_envelope(id)?;
        store.verify(id)?;
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).at(parent)?;
        }
        write_atomic(&dest, &env)?;
        uploaded += 1;
        uploaded_bytes += env.len() as u64;
    }
    let policy = keys.policy()?;
    let _lock = repo.lock()?;
    let tuf_repo = repo.load().await?;
    let tname = target_name(&name, &tag);
    let existing: Option<ImageRecord> = match tuf_repo
        .read_target(&TargetName::new(tname.clone()).map_err(tuf(format!("target name {tname}")))?)
        .await
        .map_err(tuf(format!("reading {tname}")))?
    {
        Some(stream) => {
            use tough::IntoVec;
            let bytes = stream
                .into_vec()
                .await
                .map_err(tuf(format!("reading {tname}")))?;
            Some(ImageRecord::parse(&bytes, &tname)?)
        }
        None => None,
    };
    let c = &resolved.commit;
    let entry = Published {
        version: resolved.id.to_hex(),
        parent: c.parent.map(|p| p.to_hex()),
        created_unix_ns: c.created_unix_ns,
        pushed_unix_ns: starling_image::now_unix_ns(),
        files: c.stats.files,
        bytes: c.stats.bytes,
    };
    let mut history = existing.map(|r| r.history).unwrap_or_default();
    history.retain(|h| h.version != entry.version);
    history.insert(0, entry);
    let record = ImageRecord {
        format: RECORD_FORMAT,
        name: name.clone(),
        tag: tag.clone(),
        target: resolved.id.to_hex(),
        history,
    };
    let bytes = serde_json::to_vec_pretty(&record).map_err(|e| invalid("record", e.to_string()))?;
    drop(tuf_repo);
    let metadata_version = repo
        .publish_targets(keys, &policy, &[(tname, bytes)])
        .await?;
    Ok(PushReport {
        name,
        tag,
        version: resolved.id.to_hex(),
        objects: ids.len(),
        uploaded,
        uploaded_bytes,
        metadata_version,
    })
}
