//! An OCI layout's image into a registry: the blobs the registry lacks (asked first, so a
//! second push of a shared base sends only what changed; mounted from another repository of
//! the registry where this host pushed them before; else uploaded in chunks that survive a
//! broken connection, see `upload`), then the manifest under the tag.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use oci_client::manifest::{OciDescriptor, OciImageManifest, OCI_IMAGE_MEDIA_TYPE};
use oci_client::RegistryOperation;

use crate::error::{from_oci, Error, Result};
use crate::pull::{blob_path, check_digest, io, sha256_digest, MAX_MANIFEST, REF_NAME};
use crate::upload::{Sent, Uploader};
use crate::{Options, Progress, RegistryRef};

#[derive(Debug, serde::Serialize)]
pub struct PushReport {
    pub manifest_digest: String,
    /// Blobs (config and layers) sent, those the registry had already in the repository,
    /// and those mounted from another repository of it.
    pub sent: usize,
    pub skipped: usize,
    pub mounted: usize,
    /// Uploads that went on after a broken chunk from where the registry was, and those
    /// that had to start again.
    pub resumed: u32,
    pub restarted: u32,
    pub bytes: u64,
    /// Every blob of the image, now in the repository (for the caller's record of where
    /// blobs are, so a later push to another repository mounts them).
    pub blobs: Vec<String>,
}

/// Pushes the image `ref_name` of the OCI layout at `dir` to `r` (its tag, `latest` if none).
pub async fn push(
    dir: &Path,
    ref_name: &str,
    r: &RegistryRef,
    opts: &Options,
    elsewhere: &HashMap<String, String>,
    progress: &Arc<Progress>,
) -> Result<PushReport> {
    let layout = |reason: String| Error::Layout {
        layout: dir.display().to_string(),
        reason,
    };
    let index: serde_json::Value = serde_json::from_slice(
        &tokio::fs::read(dir.join("index.json"))
            .await
            .map_err(io(format!("reading {}/index.json", dir.display())))?,
    )
    .map_err(|e| layout(format!("index.json: {e}")))?;
    let entry = index
        .get("manifests")
        .and_then(|m| m.as_array())
        .and_then(|ms| {
            ms.iter().find(|m| {
                m.get("annotations")
                    .and_then(|a| a.get(REF_NAME))
                    .and_then(|n| n.as_str())
                    == Some(ref_name)
            })
        })
        .ok_or_else(|| layout(format!("no image named {ref_name:?}")))?;
    let digest = entry
        .get("digest")
        .and_then(|d| d.as_str())
        .ok_or_else(|| layout("an index entry without a digest".into()))?
        .to_string();
    check_digest(&digest).map_err(layout)?;
    let media_type = entry
        .get("mediaType")
        .and_then(|d| d.as_str())
        .unwrap_or(OCI_IMAGE_MEDIA_TYPE)
        .to_string();
    let body = tokio::fs::read(blob_path(dir, &digest))
        .await
        .map_err(io(format!("reading manifest {digest}")))?;
    if body.len() > MAX_MANIFEST || sha256_digest(&body) != digest {
        return Err(layout(format!(
            "manifest {digest} does not match its digest"
        )));
    }
    let manifest: OciImageManifest =
        serde_json::from_slice(&body).map_err(|e| layout(format!("manifest {digest}: {e}")))?;

    let registry = r.registry().to_string();
    let client = crate::client(r, opts);
    let auth = opts.auth.registry_auth();
    let mut target = r.inner.clone();
    if target.tag().is_none() && target.digest().is_none() {
        target = oci_client::Reference::with_tag(
            target.registry().to_string(),
            target.repository().to_string(),
            "latest".into(),
        );
    }
    // Asked before anything is sent: a refusal says so at once.
    let token = client
        .auth(&target, &auth, RegistryOperation::Push)
        .await
        .map_err(from_oci(&registry, format!("pushing to {r}")))?;
    let uploader = Uploader {
        http: reqwest::Client::builder()
            .read_timeout(opts.timeout)
            .connect_timeout(crate::CONNECT_TIMEOUT)
            .build()
            .map_err(|e| Error::Refused {
                registry: registry.clone(),
                what: "an HTTP client".into(),
                said: e.to_string(),
            })?,
        base: format!(
            "{}://{registry}",
            if r.is_loopback() { "http" } else { "https" }
        ),
        registry: registry.clone(),
        repository: target.repository().to_string(),
        auth: opts.auth.authorization(token.as_deref()),
    };

    let mut blobs: Vec<OciDescriptor> = vec![manifest.config.clone()];
    blobs.extend(manifest.layers.iter().cloned());
    for d in &blobs {
        check_digest(&d.digest).map_err(layout)?;
    }
    let results: Vec<(Option<Sent>, u64)> = futures::stream::iter(blobs.iter().map(|d| {
        let (client, target, registry, uploader) = (&client, &target, &registry, &uploader);
        async move {
            let what = format!("blob {}", d.digest);
            if client
                .blob_exists(target, &d.digest)
                .await
                .map_err(from_oci(registry, what.clone()))?
            {
                progress.files.fetch_add(1, Ordering::Relaxed);
                return Ok((None, 0));
            }
            let path = blob_path(dir, &d.digest);
            let mut file = tokio::fs::File::open(&path)
                .await
                .map_err(io(format!("reading {}", path.display())))?;
            let size = file
                .metadata()
                .await
                .map_err(io(format!("reading {}", path.display())))?
                .len();
            let from = elsewhere
                .get(&d.digest)
                .filter(|repo| **repo != uploader.repository)
                .map(String::as_str);
            let sent = uploader
                .send(&mut file, size, &d.digest, from, progress)
                .await?;
            progress.files.fetch_add(1, Ordering::Relaxed);
            let bytes = if sent == Sent::Mounted { 0 } else { size };
            Ok::<(Option<Sent>, u64), Error>((Some(sent), bytes))
        }
    }))
    .buffer_unordered(opts.parallel.max(1))
    .try_collect()
    .await?;

    let content_type = reqwest_header(&media_type).map_err(layout)?;
    client
        .push_manifest_raw(&target, body, content_type)
        .await
        .map_err(from_oci(&registry, format!("manifest for {r}")))?;
    let count = |f: fn(&Option<Sent>) -> bool| results.iter().filter(|(s, _)| f(s)).count();
    Ok(PushReport {
        manifest_digest: digest,
        sent: count(|s| matches!(s, Some(Sent::Uploaded { .. }))),
        skipped: count(Option::is_none),
        mounted: count(|s| *s == Some(Sent::Mounted)),
        resumed: results
            .iter()
            .map(|(s, _)| match s {
                Some(Sent::Uploaded { resumed, .. }) => *resumed,
                _ => 0,
            })
            .sum(),
        restarted: results
            .iter()
            .map(|(s, _)| match s {
                Some(Sent::Uploaded { restarted, .. }) => *restarted,
                _ => 0,
            })
            .sum(),
        bytes: results.iter().map(|(_, n)| n).sum(),
        blobs: blobs.iter().map(|d| d.digest.clone()).collect(),
    })
}

fn reqwest_header(v: &str) -> std::result::Result<http::HeaderValue, String> {
    http::HeaderValue::from_str(v).map_err(|e| format!("media type {v:?}: {e}"))
}
