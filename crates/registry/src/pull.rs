//! A registry image into an OCI image layout: its manifest (the linux/amd64 one of an index),
//! its config and layers, each checked against its digest and its declared size as it
//! arrives, then `index.json` naming it. Nothing is left in the layout of a refused pull but
//! what was already verified.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use futures::{StreamExt, TryStreamExt};
use oci_client::manifest::{
    OciDescriptor, OciImageManifest, IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWrite;

use crate::error::{from_oci, Error, Result};
use crate::{Options, Progress, RegistryRef};

/// Manifests and indexes are small JSON documents; more than this is refused.
pub const MAX_MANIFEST: usize = 4 << 20;
/// The whole of a manifest request, authentication included.
const MANIFEST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);
/// Image indexes pointing at indexes: followed this deep.
const MAX_DEPTH: u32 = 2;
/// The annotation an OCI layout names its images by.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

const ACCEPTED: [&str; 4] = [
    OCI_IMAGE_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

#[derive(Debug, serde::Serialize)]
pub struct PullReport {
    /// The image manifest pulled (for an index, the platform's).
    pub manifest_digest: String,
    pub layers: usize,
    /// Bytes of the config and layers, as the registry stores them (compressed).
    pub bytes: u64,
}

/// Pulls `r` into a new OCI layout at `dir`, its manifest named `ref_name` there.
pub async fn pull(
    r: &RegistryRef,
    opts: &Options,
    dir: &Path,
    ref_name: &str,
    progress: &Progress,
) -> Result<PullReport> {
    let registry = r.registry().to_string();
    let client = crate::client(r, opts);
    let auth = opts.auth.registry_auth();
    let bad = |what: &str, reason: String| Error::BadContent {
        registry: registry.clone(),
        what: what.to_string(),
        reason,
    };
    let mut reference = r.inner.clone();
    let mut depth = 0;
    let (body, digest) = loop {
        // oci-client reads a manifest response whole: a deadline on the whole request bounds
        // what a registry that keeps sending can make it hold.
        let (body, digest) = tokio::time::timeout(
            MANIFEST_DEADLINE,
            client.pull_manifest_raw(&reference, &auth, &ACCEPTED),
        )
        .await
        .map_err(|_| Error::Unreachable {
            registry: registry.clone(),
            reason: format!(
                "the manifest of {r} did not arrive within {} s",
                MANIFEST_DEADLINE.as_secs()
            ),
        })?
        .map_err(from_oci(&registry, r.shown.clone()))?;
        if body.len() > MAX_MANIFEST {
            return Err(bad(
                "manifest",
                format!(
                    "{} bytes, more than the {MAX_MANIFEST} a manifest may have",
                    body.len()
                ),
            ));
        }
        let have = sha256_digest(&body);
        if have != digest {
            return Err(bad("manifest", format!("has digest {have}, not {digest}")));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| bad("manifest", format!("not JSON: {e}")))?;
        let Some(entries) = v.get("manifests").and_then(|m| m.as_array()) else {
            break (body, digest);
        };
        // An index: the linux/amd64 image, as the layout importer picks it.
        depth += 1;
        if depth > MAX_DEPTH {
            return Err(bad("index", "indexes nest too deep".into()));
        }
        let platform = |e: &serde_json::Value, k: &str| {
            e.get("platform")
                .and_then(|p| p.get(k))
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        let pick = entries
            .iter()
            .find(|e| platform(e, "os") == "linux" && platform(e, "architecture") == "amd64")
            .or_else(|| (entries.len() == 1).then(|| &entries[0]))
            .ok_or_else(|| {
                let have: Vec<String> = entries
                    .iter()
                    .map(|e| format!("{}/{}", platform(e, "os"), platform(e, "architecture")))
                    .collect();
                bad(
                    "index",
                    format!("has no linux/amd64 image (it has {})", have.join(", ")),
                )
            })?;
        let d = pick
            .get("digest")
            .and_then(|d| d.as_str())
            .ok_or_else(|| bad("index", "an entry without a digest".into()))?;
        check_digest(d).map_err(|reason| bad("index", reason))?;
        reference = r.inner.clone_with_digest(d.to_string());
    };
    let manifest: OciImageManifest = serde_json::from_slice(&body)
        .map_err(|e| bad("manifest", format!("not an image manifest: {e}")))?;
    let media_type = manifest
        .media_type
        .clone()
        .unwrap_or_else(|| OCI_IMAGE_MEDIA_TYPE.to_string());

    let blobs = dir.join("blobs/sha256");
    tokio::fs::create_dir_all(&blobs)
        .await
        .map_err(io(format!("creating {}", blobs.display())))?;
    write(&blob_path(dir, &digest), &body).await?;
    let mut wanted: Vec<OciDescriptor> = vec![manifest.config.clone()];
    wanted.extend(manifest.layers.iter().cloned());
    // A digest listed twice (images repeat empty layers) is fetched once.
    let mut seen = std::collections::HashSet::new();
    wanted.retain(|d| seen.insert(d.digest.clone()));
    for d in &wanted {
        check_digest(&d.digest).map_err(|reason| bad("manifest", reason))?;
        if d.size < 0 {
            return Err(bad(
                "manifest",
                format!("blob {} has a negative size", d.digest),
            ));
        }
    }
    let bytes: u64 = futures::stream::iter(wanted.iter().map(|d| {
        let (client, reference) = (&client, &reference);
        let registry = registry.clone();
        async move {
            let path = blob_path(dir, &d.digest);
            let partial = path.with_extension("partial");
            let file = tokio::fs::File::create(&partial)
                .await
                .map_err(io(format!("creating {}", partial.display())))?;
            let mut out = Bounded {
                inner: file,
                written: 0,
                max: d.size as u64,
                overflow: false,
                progress,
            };
            let got = client
                .pull_blob(reference, d.digest.as_str(), &mut out)
                .await;
            if let Err(e) = got {
                let _ = tokio::fs::remove_file(&partial).await;
                if out.overflow {
                    return Err(Error::BadContent {
                        registry: registry.clone(),
                        what: format!("blob {}", d.digest),
                        reason: format!("more than the {} bytes the manifest says", d.size),
                    });
                }
                return Err(from_oci(&registry, format!("blob {}", d.digest))(e));
            }
            if out.written != d.size as u64 {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(Error::BadContent {
                    registry: registry.clone(),
                    what: format!("blob {}", d.digest),
                    reason: format!(
                        "{} bytes, not the {} the manifest says",
                        out.written, d.size
                    ),
                });
            }
            tokio::fs::rename(&partial, &path)
                .await
                .map_err(io(format!("renaming {}", partial.display())))?;
            progress.files.fetch_add(1, Ordering::Relaxed);
            Ok::<u64, Error>(out.written)
        }
    }))
    .buffer_unordered(opts.parallel.max(1))
    .try_fold(0u64, |acc, n| async move { Ok(acc + n) })
    .await?;

    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_IMAGE_INDEX_MEDIA_TYPE,
        "manifests": [{
            "mediaType": media_type,
            "digest": digest,
            "size": body.len(),
            "annotations": { REF_NAME: ref_name },
        }],
    });
    write(
        &dir.join("index.json"),
        &serde_json::to_vec_pretty(&index).unwrap_or_default(),
    )
    .await?;
    write(
        &dir.join("oci-layout"),
        br#"{"imageLayoutVersion": "1.0.0"}"#,
    )
    .await?;
    Ok(PullReport {
        manifest_digest: digest,
        layers: manifest.layers.len(),
        bytes,
    })
}

/// A writer that refuses more bytes than the blob's declared size (and counts them).
struct Bounded<'a> {
    inner: tokio::fs::File,
    written: u64,
    max: u64,
    /// Set when the registry sent more than `max`.
    overflow: bool,
    progress: &'a Progress,
}

impl AsyncWrite for Bounded<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.written + buf.len() as u64 > self.max {
            self.overflow = true;
            return Poll::Ready(Err(std::io::Error::other(format!(
                "more than the {} bytes the manifest says",
                self.max
            ))));
        }
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.written += *n as u64;
            self.progress.bytes.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A sha256 digest in the only form a layout's path may be made of.
pub(crate) fn check_digest(d: &str) -> std::result::Result<(), String> {
    let ok = d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "digest {d:?} is not sha256:<64 lower-case hex digits>"
        ))
    }
}

pub(crate) fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    dir.join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// `sha256:<hex>`, as OCI names content.
pub(crate) fn sha256_digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

pub(crate) fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

async fn write(p: &Path, b: &[u8]) -> Result<()> {
    tokio::fs::write(p, b)
        .await
        .map_err(io(format!("writing {}", p.display())))
}
