//! Export to an OCI image layout: one gzip layer holding the whole tree (PAX tar, as the tar
//! export writes it), a config that carries the run configuration kept in labels, and an
//! index entry named after the tag. An existing layout is added to, replacing the same name.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;

use sha2::{Digest, Sha256};
use starling_store::Store;

use crate::chunk::Progress;
use crate::error::{Error, IoContext, Result};
use crate::export::ExportReport;
use crate::oci::{self, Config, Descriptor, Index, Manifest, RootFs, RunConfig};
use crate::versions::Resolved;

pub(crate) fn export(
    store: &Store,
    image: &Resolved,
    dest: &Path,
    ref_name: &str,
    progress: &Progress,
) -> Result<ExportReport> {
    let existing = dest.join("oci-layout").is_file();
    if !existing && dest.exists() && fs::read_dir(dest).at(dest)?.next().is_some() {
        return Err(Error::DestinationNotEmpty(dest.to_path_buf()));
    }
    let blobs = dest.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).at(&blobs)?;
    let mut index = if existing {
        let layout = oci::Layout::open(dest)?;
        layout.index()?
    } else {
        write_atomic(
            &dest.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        Index {
            schema_version: 2,
            media_type: Some(oci::MT_INDEX.into()),
            manifests: Vec::new(),
        }
    };

    // The layer: tar → (diff_id hash) → gzip → (digest hash) → file.
    let tmp = blobs.join(format!(".layer-{}", std::process::id()));
    let result = (|| {
        let file = BufWriter::with_capacity(1 << 20, File::create(&tmp).at(&tmp)?);
        let gz = flate2::write::GzEncoder::new(Hashing::new(file), flate2::Compression::fast());
        let (report, diff) =
            crate::export::tar::write_archive(store, image, Hashing::new(gz), progress, &tmp)?;
        let diff_id = diff.digest();
        let compressed = diff.inner.finish().at(&tmp)?;
        let digest = compressed.digest();
        let size = compressed.len;
        compressed
            .inner
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .at(&tmp)?;
        Ok((report, diff_id, digest, size))
    })();
    let (report, diff_id, layer_digest, layer_size) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let layer_path = blobs.join(&layer_digest["sha256:".len()..]);
    fs::rename(&tmp, &layer_path).at(&layer_path)?;

    let labels = &image.commit.labels;
    let list = |k: &str| {
        labels
            .get(k)
            .and_then(|v| serde_json::from_str::<Vec<String>>(v).ok())
    };
    let created = image.commit.created_unix_ns;
    let mut other = BTreeMap::new();
    other.insert(
        "created".to_string(),
        serde_json::Value::String(rfc3339(created)),
    );
    let config = Config {
        architecture: "amd64".into(),
        os: "linux".into(),
        config: RunConfig {
            env: list(oci::LABEL_ENV),
            entrypoint: list(oci::LABEL_ENTRYPOINT),
            cmd: list(oci::LABEL_CMD),
            working_dir: labels.get(oci::LABEL_WORKDIR).cloned(),
            user: labels.get(oci::LABEL_USER).cloned(),
            other: BTreeMap::new(),
        },
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![diff_id],
        },
        other,
    };
    let config_desc = put_json(&blobs, oci::MT_CONFIG, &config)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(oci::MT_MANIFEST.into()),
        config: config_desc,
        layers: vec![Descriptor {
            media_type: oci::MT_LAYER_GZIP.into(),
            digest: layer_digest,
            size: layer_size,
            annotations: BTreeMap::new(),
            platform: None,
        }],
    };
    let mut mdesc = put_json(&blobs, oci::MT_MANIFEST, &manifest)?;
    mdesc
        .annotations
        .insert(oci::REF_NAME.into(), ref_name.to_string());
    mdesc.platform = Some(oci::Platform {
        architecture: "amd64".into(),
        os: "linux".into(),
    });
    index
        .manifests
        .retain(|m| m.annotations.get(oci::REF_NAME).map(String::as_str) != Some(ref_name));
    index.manifests.push(mdesc);
    let bytes = serde_json::to_vec(&index).map_err(|e| Error::Io {
        path: dest.join("index.json"),
        source: std::io::Error::other(e),
    })?;
    write_atomic(&dest.join("index.json"), &bytes)?;
    Ok(report)
}

fn put_json<T: serde::Serialize>(blobs: &Path, media_type: &str, v: &T) -> Result<Descriptor> {
    let bytes = serde_json::to_vec(v).map_err(|e| Error::Io {
        path: blobs.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    write_atomic(&blobs.join(&digest["sha256:".len()..]), &bytes)?;
    Ok(Descriptor {
        media_type: media_type.into(),
        digest,
        size: bytes.len() as u64,
        annotations: BTreeMap::new(),
        platform: None,
    })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = File::create(&tmp).at(&tmp)?;
    f.write_all(bytes).and_then(|_| f.sync_all()).at(&tmp)?;
    fs::rename(&tmp, path).at(path)
}

/// RFC 3339 UTC time from Unix nanoseconds (civil-from-days, no time zone database needed).
fn rfc3339(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A writer that hashes (SHA-256) and counts what passes through it.
pub(crate) struct Hashing<W> {
    pub inner: W,
    hasher: Sha256,
    pub len: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.clone().finalize()))
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            super::rfc3339(951_782_400_000_000_000),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            super::rfc3339(1_795_391_767_500_000_000),
            "2026-11-22T23:56:07Z"
        );
    }
}
