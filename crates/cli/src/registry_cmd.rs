//! `image import docker://…` and `image export IMAGE docker://…`: OCI registries, through an
//! OCI layout in the store's temporary directory (removed when the command ends; one a killed
//! command leaves goes at the next `store gc`), so a registry image is imported and exported
//! by the same verified layout code as `oci:DIR`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use starling_image::chunk::Progress;
use starling_registry::auth::Credentials;
use starling_registry::{Options, RegistryRef};
use starling_store::Store;

use crate::progress::Display;

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
    let progress = Arc::new(Progress::default());
    let display = Display::start("pulling", "blobs", progress.clone());
    let report = rt
        .block_on(starling_registry::pull::pull(
            &r,
            &opts,
            dir.path(),
            REF,
            &progress,
        ))
        .with_context(|| format!("pulling {src}"));
    drop(display);
    let report = report?;
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
    let progress = Arc::new(Progress::default());
    let display = Display::start("exporting", "files", progress.clone());
    let exported = starling_image::export::export(
        store,
        resolved,
        &layout,
        starling_image::export::ExportFormat::Oci {
            ref_name: REF.into(),
        },
        &progress,
    )
    .with_context(|| format!("exporting {} as an OCI image", resolved.display));
    drop(display);
    exported?;
    let rt = starling_registry::runtime()?;
    let progress = Arc::new(Progress::default());
    let display = Display::start("pushing", "blobs", progress.clone());
    let report = rt
        .block_on(starling_registry::push::push(
            &layout, REF, &r, &opts, &progress,
        ))
        .with_context(|| format!("pushing {} to {dest}", resolved.display));
    drop(display);
    let report = report?;
    println!("{}", report.manifest_digest);
    eprintln!(
        "pushed {} to {dest}: {} blobs sent ({}), {} already there",
        resolved.display,
        report.sent,
        crate::format::bytes(report.bytes),
        report.skipped
    );
    Ok(())
}
