//! Import of an image from an OCI image layout: layers applied in order, with whiteouts and
//! opaque directories, every blob checked against its digest; the run configuration
//! (env, entrypoint, cmd, working dir, user) kept as labels.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::Path;

use starling_store::Txn;

use crate::chunk::{ChunkParams, Progress};
use crate::error::{Error, Result};
use crate::import::tar::{apply, Layer};
use crate::import::Compression;
use crate::oci::{self, Config, Layout};
use crate::stage::StageDir;

pub(crate) struct OciImage {
    pub root: StageDir,
    pub labels: BTreeMap<String, String>,
    pub manifest_digest: String,
}

pub(crate) fn stage(
    txn: &Txn<'_>,
    dir: &Path,
    reference: Option<&str>,
    params: &ChunkParams,
    progress: &Progress,
) -> Result<OciImage> {
    let layout = Layout::open(dir)?;
    let (manifest, desc) = layout.find_manifest(reference)?;
    let config_bytes = layout.read_small(&manifest.config)?;
    let config: Config = serde_json::from_slice(&config_bytes)
        .map_err(|e| layout.bad(format!("config {}: {e}", manifest.config.digest)))?;
    if !config.rootfs.diff_ids.is_empty() && config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(layout.bad(format!(
            "config lists {} diff_ids for {} layers",
            config.rootfs.diff_ids.len(),
            manifest.layers.len()
        )));
    }
    let mut root = StageDir {
        meta: crate::stage::implicit_dir_meta(),
        children: Default::default(),
    };
    for (i, d) in manifest.layers.iter().enumerate() {
        let compression = oci::layer_compression(&layout, d)?;
        let blob = layout.open_blob(d)?;
        let label = dir.join("blobs").join(d.digest.replace(':', "/"));
        let mut layer = Layer::default();
        let applied = (|| {
            let mut diff = DiffId::new(decompress(
                BufReader::with_capacity(1 << 20, blob),
                compression,
                &label,
            )?);
            apply(
                txn,
                &mut diff,
                &label,
                &mut root,
                Some(&mut layer),
                params,
                progress,
            )?;
            // The tar reader stops at the end-of-archive blocks; hash and verify to the end.
            let (blob, diff_id) = diff
                .finish()
                .map_err(|e| layout.bad(format!("layer {}: {e}", d.digest)))?;
            blob.verify()?;
            Ok(diff_id)
        })();
        // A layer that fails to decompress or parse is most often a damaged blob: say so.
        let diff_id = match applied {
            Ok(id) => id,
            Err(e) => {
                layout.open_blob(d)?.verify()?;
                return Err(e);
            }
        };
        if let Some(want) = config.rootfs.diff_ids.get(i) {
            if *want != diff_id {
                return Err(layout.bad(format!(
                    "layer {} uncompresses to {diff_id}, the config's diff_id is {want}",
                    d.digest
                )));
            }
        }
        layer.finish(&mut root);
    }
    root.canonicalize_hardlinks(dir)?;
    let mut labels = BTreeMap::new();
    let rc = &config.config;
    let json = |v: &Vec<String>| serde_json::to_string(v).unwrap_or_default();
    if let Some(v) = &rc.env {
        labels.insert(oci::LABEL_ENV.to_string(), json(v));
    }
    if let Some(v) = &rc.entrypoint {
        labels.insert(oci::LABEL_ENTRYPOINT.to_string(), json(v));
    }
    if let Some(v) = &rc.cmd {
        labels.insert(oci::LABEL_CMD.to_string(), json(v));
    }
    if let Some(v) = &rc.working_dir {
        labels.insert(oci::LABEL_WORKDIR.to_string(), v.clone());
    }
    if let Some(v) = &rc.user {
        labels.insert(oci::LABEL_USER.to_string(), v.clone());
    }
    Ok(OciImage {
        root,
        labels,
        manifest_digest: desc.digest,
    })
}

fn decompress(r: BufReader<oci::BlobReader>, c: Compression, label: &Path) -> Result<DecodedBlob> {
    let bad = |e: std::io::Error| Error::BadTar {
        archive: label.to_path_buf(),
        reason: e.to_string(),
    };
    Ok(match c {
        Compression::None => DecodedBlob::Plain(r),
        Compression::Gzip => DecodedBlob::Gzip(flate2::read::GzDecoder::new(r)),
        Compression::Xz => {
            return Err(Error::BadTar {
                archive: label.to_path_buf(),
                reason: "xz is not an OCI layer compression".into(),
            })
        }
        Compression::Zstd => {
            DecodedBlob::Zstd(zstd::stream::read::Decoder::with_buffer(r).map_err(bad)?)
        }
    })
}

/// A layer's uncompressed stream, keeping hold of the blob underneath to verify it.
enum DecodedBlob {
    Plain(BufReader<oci::BlobReader>),
    Gzip(flate2::read::GzDecoder<BufReader<oci::BlobReader>>),
    Zstd(zstd::stream::read::Decoder<'static, BufReader<oci::BlobReader>>),
}

impl Read for DecodedBlob {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            DecodedBlob::Plain(r) => r.read(buf),
            DecodedBlob::Gzip(r) => r.read(buf),
            DecodedBlob::Zstd(r) => r.read(buf),
        }
    }
}

/// Hashes the uncompressed layer (its diff_id) as the tar reader consumes it.
struct DiffId {
    inner: DecodedBlob,
    hasher: sha2::Sha256,
}

impl DiffId {
    fn new(inner: DecodedBlob) -> Self {
        use sha2::Digest;
        DiffId {
            inner,
            hasher: sha2::Sha256::new(),
        }
    }

    fn finish(mut self) -> std::io::Result<(oci::BlobReader, String)> {
        use sha2::Digest;
        std::io::copy(&mut self, &mut std::io::sink())?;
        let id = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        let blob = match self.inner {
            DecodedBlob::Plain(r) => r.into_inner(),
            DecodedBlob::Gzip(r) => r.into_inner().into_inner(),
            DecodedBlob::Zstd(r) => r.finish().into_inner(),
        };
        Ok((blob, id))
    }
}

impl Read for DiffId {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use sha2::Digest;
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}
