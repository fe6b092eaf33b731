//! `image import docker://…` and `image export IMAGE docker://…`: OCI registries, through an
//! OCI layout in the store's temporary directory (removed when the command ends; one a killed
//! command leaves goes at the next `store gc`), so a registry image is imported and exported
//! by the same verified layout code as `oci:DIR`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use starling_registry::auth::Credentials;
use starling_registry::{Options, RegistryRef};
use starling_store::Store;

use crate::progress::showing;

/// How `image import`/`image export` log in to a registry.
#[derive(clap::Args)]
pub struct Login {
    /// Registry credentials for docker:// [default: what `docker login` stored for the
    /// registry, else none]
    #[arg(
        long,
        env = "STARLING_REGISTRY_CREDS",
        value_name = "USER:PASSWORD",
        hide_env_values = true
    )]
    pub creds: Option<String>,
}

/// The name the image has inside the temporary layout.
const REF: &str = "registry";

/// A pulled registry image, as a layout to import from; the layout goes with it. The store's
/// writer lock is held meanwhile: `store gc` empties `tmp/`, and must wait.
pub struct Pulled {
    _dir: tempfile::TempDir,
    _writer: starling_store::lock::StoreLock,
    /// `oci:DIR:REF`, what the importer reads.
    pub source: PathBuf,
}

fn options(r: &RegistryRef, creds: Option<&str>) -> Result<Options> {
    let auth = match creds {
        Some(c) => Credentials::parse(c)?,
        None => Credentials::stored_for(r.registry())?,
    };
    Ok(Options {
        auth,
        ..Options::default()
    })
}

fn temp_layout(store: &Store) -> Result<tempfile::TempDir> {
    let tmp = store.root().join("tmp");
    tempfile::Builder::new()
        .prefix("registry-")
        .tempdir_in(&tmp)
        .with_context(|| format!("a temporary directory in {}", tmp.display()))
}

/// Pulls `src` (`docker://…`) into a temporary layout of `store`, with progress.
pub fn pull(store: &Store, src: &str, creds: Option<&str>) -> Result<Pulled> {
    let r = RegistryRef::parse(src)?;
    let opts = options(&r, creds)?;
    let writer = store.lock_writer()?;
    let dir = temp_layout(store)?;
    let rt = starling_registry::runtime()?;
    let report = showing("pulling", "blobs", |p| {
        rt.block_on(starling_registry::pull::pull(&r, &opts, dir.path(), REF, p))
    })
    .with_context(|| format!("pulling {src}"))?;
    eprintln!(
        "pulled {src}: manifest {}, {} layers, {}",
        &report.manifest_digest,
        report.layers,
        crate::format::bytes(report.bytes)
    );
    let source = PathBuf::from(format!("oci:{}:{REF}", dir.path().display()));
    Ok(Pulled {
        _dir: dir,
        _writer: writer,
        source,
    })
}

/// Exports `resolved` as an OCI layout and pushes it to `dest` (`docker://…`).
pub fn push(
    store: &Store,
    resolved: &starling_image::versions::Resolved,
    dest: &str,
    creds: Option<&str>,
) -> Result<()> {
    let r = RegistryRef::parse(dest)?;
    let opts = options(&r, creds)?;
    let _writer = store.lock_writer()?;
    let dir = temp_layout(store)?;
    let layout = dir.path().join("layout");
    let as_oci = starling_image::export::ExportFormat::Oci {
        ref_name: REF.into(),
    };
    showing("exporting", "files", |p| {
        starling_image::export::export(store, resolved, &layout, as_oci, p)
    })
    .with_context(|| format!("exporting {} as an OCI image", resolved.display))?;
    let rt = starling_registry::runtime()?;
    let mut known = BlobPlaces::load(store);
    let elsewhere = known.of(r.registry());
    let report = showing("pushing", "blobs", |p| {
        rt.block_on(starling_registry::push::push(
            &layout, REF, &r, &opts, &elsewhere, p,
        ))
    })
    .with_context(|| format!("pushing {} to {dest}", resolved.display))?;
    known.record(r.registry(), r.inner.repository(), &report.blobs);
    known.save(store);
    println!("{}", report.manifest_digest);
    let mut extra = String::new();
    if report.mounted > 0 {
        extra.push_str(&format!(
            ", {} mounted from another repository",
            report.mounted
        ));
    }
    if report.resumed > 0 {
        extra.push_str(&format!(
            "; {} upload(s) resumed after a broken connection",
            report.resumed
        ));
    }
    if report.restarted > 0 {
        extra.push_str(&format!(
            "; {} upload(s) started again (the registry dropped the broken one)",
            report.restarted
        ));
    }
    eprintln!(
        "pushed {} to {dest}: {} blobs sent ({}), {} already there{extra}",
        resolved.display,
        report.sent,
        crate::format::bytes(report.bytes),
        report.skipped
    );
    Ok(())
}

/// Where this host pushed which blob (`STORE/registry-blobs.json`): a push to another
/// repository of the same registry mounts those blobs instead of sending them. Only a hint:
/// a registry that no longer has one just takes the upload.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct BlobPlaces {
    format: u32,
    /// registry → blob digest → repository.
    registries: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
}

/// Blobs remembered per registry; beyond this the record starts again.
const MAX_PLACES: usize = 100_000;

impl BlobPlaces {
    fn path(store: &Store) -> PathBuf {
        store.root().join("registry-blobs.json")
    }

    fn load(store: &Store) -> BlobPlaces {
        std::fs::read(Self::path(store))
            .ok()
            .and_then(|b| serde_json::from_slice::<BlobPlaces>(&b).ok())
            .filter(|p| p.format == 1)
            .unwrap_or_default()
    }

    fn of(&self, registry: &str) -> std::collections::HashMap<String, String> {
        self.registries
            .get(registry)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    fn record(&mut self, registry: &str, repository: &str, blobs: &[String]) {
        let m = self.registries.entry(registry.to_string()).or_default();
        if m.len() + blobs.len() > MAX_PLACES {
            m.clear();
        }
        for b in blobs {
            m.insert(b.clone(), repository.to_string());
        }
    }

    /// Written whole (a temporary file renamed); a failure only loses the hint.
    fn save(&mut self, store: &Store) {
        self.format = 1;
        let path = Self::path(store);
        let tmp = path.with_extension("json.tmp");
        let ok = serde_json::to_vec(self)
            .ok()
            .and_then(|b| std::fs::write(&tmp, b).ok())
            .and_then(|_| std::fs::rename(&tmp, &path).ok());
        if ok.is_none() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}
