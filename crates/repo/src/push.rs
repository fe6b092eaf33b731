//! Publishing an image version: the objects the repository lacks (verified on the way out),
//! then the tag's record, signed, under the repository lock.

use std::sync::atomic::Ordering;

use futures::{StreamExt, TryStreamExt};
use starling_image::chunk::Progress;
use starling_image::reference::ImageRef;
use starling_image::{maint, versions};
use starling_store::{ObjectId, Store};
use tough::TargetName;

use crate::error::{invalid, tuf, Result};
use crate::keys::KeyDir;
use crate::meta::Repo;
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
    /// Publications redone because another publisher committed first (object storage).
    pub retries: u32,
}

/// Path of an object inside a repository (the store's own layout).
pub fn object_rel(id: &ObjectId) -> String {
    let h = id.to_hex();
    format!("objects/{}/{}", &h[..2], &h[2..])
}

/// Parallel uploads to object storage (each a round trip).
const UPLOADS: usize = 16;
/// Publication attempts when other publishers keep winning the compare-and-swap.
const ATTEMPTS: u32 = 30;

pub async fn push(
    store: &Store,
    what: &ImageRef,
    repo: &Repo,
    keys: &KeyDir,
    as_name: Option<(String, String)>,
    progress: &Progress,
) -> Result<PushReport> {
    let what = &versions::concrete(store, what)?;
    let resolved = versions::resolve(store, what)?;
    let (name, tag) = match (as_name, what) {
        (Some(nt), _) => nt,
        (None, ImageRef::Tag { name, tag }) => (name.clone(), tag.clone()),
        (None, ImageRef::Version { name, .. } | ImageRef::Name { name }) => {
            (name.clone(), "latest".to_string())
        }
    };
    let policy = keys.policy()?;
    // Fail on missing keys before uploading anything.
    keys.check(&policy)?;
    let ids = maint::objects_of(store, &resolved.id)?;
    // Objects first, each verified from the local store and created atomically; they are
    // content-addressed, so a half-done push leaves only harmless extra files.
    let present = repo.backend.list("objects/").await?;
    let missing: Vec<&ObjectId> = ids
        .iter()
        .filter(|id| !present.contains(&object_rel(id)))
        .collect();
    let sizes: Vec<u64> = futures::stream::iter(missing.into_iter().map(|id| async move {
        let env = store.get_envelope(id)?;
        store.verify(id)?;
        let created = repo.backend.create(&object_rel(id), &env).await?;
        progress.files.fetch_add(1, Ordering::Relaxed);
        progress
            .bytes
            .fetch_add(env.len() as u64, Ordering::Relaxed);
        Ok::<_, crate::Error>(if created { env.len() as u64 } else { 0 })
    }))
    .buffer_unordered(UPLOADS)
    .try_collect()
    .await?;
    let uploaded = sizes.iter().filter(|&&n| n > 0).count();
    let uploaded_bytes = sizes.iter().sum();

    let c = &resolved.commit;
    let entry = Published {
        version: resolved.id.to_hex(),
        parent: c.parent.map(|p| p.to_hex()),
        created_unix_ns: c.created_unix_ns,
        pushed_unix_ns: starling_image::now_unix_ns(),
        files: c.stats.files,
        bytes: c.stats.bytes,
    };
    let tname = target_name(&name, &tag);
    let mut attempt = 0;
    let metadata_version = loop {
        attempt += 1;
        match publish_record(repo, keys, &policy, &tname, &name, &tag, &entry).await {
            Err(crate::Error::Conflict(_)) if attempt < ATTEMPTS => {
                // Another publisher won; back off a little (jittered) and redo on its state.
                let jitter = u64::from(std::process::id() % 7) + u64::from(attempt) * 13;
                tokio::time::sleep(std::time::Duration::from_millis(20 + jitter * 3)).await;
            }
            r => break r?,
        }
    };
    Ok(PushReport {
        name,
        tag,
        version: resolved.id.to_hex(),
        objects: ids.len(),
        uploaded,
        uploaded_bytes,
        metadata_version,
        retries: attempt - 1,
    })
}

/// One attempt: the tag's record (with its history) read, extended and signed on the state
/// the repository has now.
async fn publish_record(
    repo: &Repo,
    keys: &KeyDir,
    policy: &crate::keys::Policy,
    tname: &str,
    name: &str,
    tag: &str,
    entry: &Published,
) -> Result<u64> {
    let _lock = repo.backend.lock()?;
    let loaded = repo.load().await?;
    let tn = TargetName::new(tname.to_string()).map_err(tuf(format!("target name {tname}")))?;
    let existing = match loaded
        .0
        .read_target(&tn)
        .await
        .map_err(tuf(format!("reading {tname}")))?
    {
        Some(stream) => {
            use tough::IntoVec;
            let bytes = stream
                .into_vec()
                .await
                .map_err(tuf(format!("reading {tname}")))?;
            Some(ImageRecord::parse(&bytes, tname)?)
        }
        None => None,
    };
    let mut history = existing.map(|r| r.history).unwrap_or_default();
    history.retain(|h| h.version != entry.version);
    history.insert(0, entry.clone());
    let record = ImageRecord {
        format: RECORD_FORMAT,
        name: name.to_string(),
        tag: tag.to_string(),
        target: entry.version.clone(),
        history,
    };
    let bytes = serde_json::to_vec_pretty(&record).map_err(|e| invalid("record", e.to_string()))?;
    repo.publish_targets(keys, policy, loaded, &[(tname.to_string(), bytes)])
        .await
}
