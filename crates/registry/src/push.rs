//! An OCI layout's image into a registry: the blobs the registry lacks (asked first, so a
//! second push of a shared base sends only what changed), streamed in chunks from the
//! layout, then the manifest under the tag.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{OciDescriptor, OciImageManifest, OCI_IMAGE_MEDIA_TYPE};
use oci_client::RegistryOperation;
use sha2::{Digest, Sha256};

use crate::error::{from_oci, Error, Result};
use crate::pull::{blob_path, check_digest, hex, io, MAX_MANIFEST, REF_NAME};
use crate::{Options, Progress, RegistryRef};

#[derive(Debug, serde::Serialize)]
pub struct PushReport {
    pub manifest_digest: String,
    /// Blobs (config and layers) sent, and those the registry had already.
    pub sent: usize,
    pub skipped: usize,
    pub bytes: u64,
}

/// Pushes the image `ref_name` of the OCI layout at `dir` to `r` (its tag, `latest` if none).
pub async fn push(
    dir: &Path,
    ref_name: &str,
    r: &RegistryRef,
    opts: &Options,
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
    if body.len() > MAX_MANIFEST || format!("sha256:{}", hex(&Sha256::digest(&body))) != digest {
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
    client
        .auth(&target, &auth, RegistryOperation::Push)
        .await
        .map_err(from_oci(&registry, format!("pushing to {r}")))?;

    let mut blobs: Vec<OciDescriptor> = vec![manifest.config.clone()];
    blobs.extend(manifest.layers.iter().cloned());
    for d in &blobs {
        check_digest(&d.digest).map_err(layout)?;
    }
    let results: Vec<(bool, u64)> = futures::stream::iter(blobs.iter().map(|d| {
        let (client, target, registry) = (&client, &target, &registry);
        async move {
            let what = format!("blob {}", d.digest);
            if client
                .blob_exists(target, &d.digest)
                .await
                .map_err(from_oci(registry, what.clone()))?
            {
                progress.files.fetch_add(1, Ordering::Relaxed);
                return Ok((false, 0));
            }
            let path = blob_path(dir, &d.digest);
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(io(format!("reading {}", path.display())))?;
            let size = file
                .metadata()
                .await
                .map_err(io(format!("reading {}", path.display())))?
                .len();
            client
                .push_blob_stream(
                    target,
                    chunks(file, progress.clone()),
                    &d.digest,
                    Some(size),
                )
                .await
                .map_err(from_oci(registry, what))?;
            progress.files.fetch_add(1, Ordering::Relaxed);
            Ok::<(bool, u64), Error>((true, size))
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
    Ok(PushReport {
        manifest_digest: digest,
        sent: results.iter().filter(|(s, _)| *s).count(),
        skipped: results.iter().filter(|(s, _)| !*s).count(),
        bytes: results.iter().map(|(_, n)| n).sum(),
    })
}

/// A file as a stream of 1 MiB pieces, counted as they go.
fn chunks(
    file: tokio::fs::File,
    progress: Arc<Progress>,
) -> impl futures::Stream<Item = std::result::Result<bytes::Bytes, OciDistributionError>> + Send + 'static
{
    futures::stream::unfold((file, progress), |(mut f, progress)| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 1 << 20];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                progress.bytes.fetch_add(n as u64, Ordering::Relaxed);
                Some((Ok(bytes::Bytes::from(buf)), (f, progress)))
            }
            Err(e) => Some((Err(OciDistributionError::IoError(e)), (f, progress))),
        }
    })
    .boxed()
}

fn reqwest_header(v: &str) -> std::result::Result<http::HeaderValue, String> {
    http::HeaderValue::from_str(v).map_err(|e| format!("media type {v:?}: {e}"))
}
