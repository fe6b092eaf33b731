//! The OCI image layout (image-spec v1): the JSON documents Starling reads and writes, and
//! digest-checked access to blobs. Every blob read is hashed and compared with its digest and
//! size before it is used.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Largest JSON document (index, manifest, config) read into memory.
const MAX_JSON: u64 = 16 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// The parts of an image config Starling keeps; the rest is carried through untouched.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: RunConfig,
    #[serde(default)]
    pub rootfs: RootFs,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunConfig {
    #[serde(rename = "Env", default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// Labels that carry the run configuration through the store (values are JSON).
pub const LABEL_ENV: &str = "oci.env";
pub const LABEL_ENTRYPOINT: &str = "oci.entrypoint";
pub const LABEL_CMD: &str = "oci.cmd";
pub const LABEL_WORKDIR: &str = "oci.workdir";
pub const LABEL_USER: &str = "oci.user";

/// An OCI image layout directory.
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn open(dir: &Path) -> Result<Layout> {
        let l = Layout {
            dir: dir.to_path_buf(),
        };
        let marker = dir.join("oci-layout");
        let text = std::fs::read_to_string(&marker)
            .map_err(|e| l.bad(format!("cannot read oci-layout: {e}")))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| l.bad(format!("oci-layout is not JSON: {e}")))?;
        match v.get("imageLayoutVersion").and_then(|v| v.as_str()) {
            Some(ver) if ver.starts_with("1.") => Ok(l),
            other => Err(l.bad(format!("unsupported imageLayoutVersion {other:?}"))),
        }
    }

    pub fn bad(&self, reason: impl Into<String>) -> Error {
        Error::BadOci {
            layout: self.dir.clone(),
            reason: reason.into(),
        }
    }

    pub fn index(&self) -> Result<Index> {
        let p = self.dir.join("index.json");
        let bytes =
            std::fs::read(&p).map_err(|e| self.bad(format!("cannot read index.json: {e}")))?;
        serde_json::from_slice(&bytes).map_err(|e| self.bad(format!("index.json: {e}")))
    }

    /// The path of a blob, after checking the digest's form (no path tricks).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        let (alg, hex) = digest
            .split_once(':')
            .ok_or_else(|| self.bad(format!("digest {digest:?} has no algorithm")))?;
        if alg != "sha256" {
            return Err(self.bad(format!(
                "digest algorithm {alg:?} is not supported (sha256 only)"
            )));
        }
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(self.bad(format!("digest {digest:?} is not 64 lower-case hex digits")));
        }
        Ok(self.dir.join("blobs").join(alg).join(hex))
    }

    /// A small blob (JSON), verified against `d`.
    pub fn read_small(&self, d: &Descriptor) -> Result<Vec<u8>> {
        if d.size > MAX_JSON {
            return Err(self.bad(format!(
                "{} is {} bytes, too large for a {}",
                d.digest, d.size, d.media_type
            )));
        }
        let mut r = self.open_blob(d)?;
        let mut buf = Vec::with_capacity(d.size as usize);
        r.read_to_end(&mut buf)
            .map_err(|e| self.bad(e.to_string()))?;
        r.verify()?;
        Ok(buf)
    }

    /// A streaming reader of a blob; call [`BlobReader::verify`] after reading to its end.
    pub fn open_blob(&self, d: &Descriptor) -> Result<BlobReader> {
        let p = self.blob_path(&d.digest)?;
        let f = File::open(&p).map_err(|e| self.bad(format!("blob {}: {e}", d.digest)))?;
        Ok(BlobReader {
            inner: f,
            hasher: Sha256::new(),
            read: 0,
            want: d.clone(),
            layout: self.dir.clone(),
        })
    }

    /// The image manifest for `reference` (a ref name annotation), or the only one.
    pub fn find_manifest(&self, reference: Option<&str>) -> Result<(Manifest, Descriptor)> {
        let index = self.index()?;
        let names = || {
            index
                .manifests
                .iter()
                .filter_map(|m| m.annotations.get(REF_NAME).cloned())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let desc = match reference {
            Some(r) => index
                .manifests
                .iter()
                .find(|m| m.annotations.get(REF_NAME).map(String::as_str) == Some(r))
                .ok_or_else(|| {
                    self.bad(format!("no image named {r:?}; the layout has: {}", names()))
                })?,
            None if index.manifests.len() == 1 => &index.manifests[0],
            None => {
                return Err(self.bad(format!(
                    "holds {} images; name one as oci:DIR:REF (refs: {})",
                    index.manifests.len(),
                    names()
                )))
            }
        };
        self.resolve(desc.clone(), 0)
    }

    /// Follows image indexes down to the linux/amd64 manifest.
    fn resolve(&self, desc: Descriptor, depth: u32) -> Result<(Manifest, Descriptor)> {
        if depth > 4 {
            return Err(self.bad("image indexes nest too deep"));
        }
        match desc.media_type.as_str() {
            MT_MANIFEST | DOCKER_MANIFEST => {
                let bytes = self.read_small(&desc)?;
                let m: Manifest = serde_json::from_slice(&bytes)
                    .map_err(|e| self.bad(format!("manifest {}: {e}", desc.digest)))?;
                Ok((m, desc))
            }
            MT_INDEX | DOCKER_LIST => {
                let bytes = self.read_small(&desc)?;
                let idx: Index = serde_json::from_slice(&bytes)
                    .map_err(|e| self.bad(format!("index {}: {e}", desc.digest)))?;
                let pick = idx
                    .manifests
                    .iter()
                    .find(|m| {
                        m.platform
                            .as_ref()
                            .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
                    })
                    .or_else(|| (idx.manifests.len() == 1).then(|| &idx.manifests[0]))
                    .ok_or_else(|| {
                        self.bad(format!("index {} has no linux/amd64 image", desc.digest))
                    })?;
                self.resolve(pick.clone(), depth + 1)
            }
            other => Err(self.bad(format!(
                "{} has media type {other:?}, not an image manifest or index",
                desc.digest
            ))),
        }
    }
}

/// How a layer is compressed, from its media type.
pub(crate) fn layer_compression(
    layout: &Layout,
    d: &Descriptor,
) -> Result<crate::import::Compression> {
    use crate::import::Compression;
    match d.media_type.as_str() {
        MT_LAYER_TAR | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
        MT_LAYER_GZIP | DOCKER_LAYER_GZIP => Ok(Compression::Gzip),
        MT_LAYER_ZSTD => Ok(Compression::Zstd),
        other => Err(layout.bad(format!(
            "layer {} has unsupported media type {other:?}",
            d.digest
        ))),
    }
}

/// Reads a blob while hashing it.
pub struct BlobReader {
    inner: File,
    hasher: Sha256,
    read: u64,
    want: Descriptor,
    layout: PathBuf,
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        if self.read > self.want.size {
            return Err(std::io::Error::other(format!(
                "blob {} is larger than its descriptor's {} bytes",
                self.want.digest, self.want.size
            )));
        }
        Ok(n)
    }
}

impl BlobReader {
    /// Reads what is left, then checks size and digest.
    pub fn verify(mut self) -> Result<()> {
        let layout = self.layout.clone();
        let bad = |reason: String| Error::BadOci {
            layout: layout.clone(),
            reason,
        };
        std::io::copy(&mut self, &mut std::io::sink()).map_err(|e| bad(e.to_string()))?;
        let got = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        if self.read != self.want.size {
            return Err(bad(format!(
                "blob {} is {} bytes, its descriptor says {}",
                self.want.digest, self.read, self.want.size
            )));
        }
        if got != self.want.digest {
            return Err(bad(format!(
                "blob {} has digest {got}: its content does not match",
                self.want.digest
            )));
        }
        Ok(())
    }
}
