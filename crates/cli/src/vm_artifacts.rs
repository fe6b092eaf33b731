//! Where a VM's disk comes from the store: a stored image written as a raw ext4 file system
//! (the one piece of store glue the VM commands need; kernels and initramfs builds are in
//! `starling_guest::kernel`).

use std::path::Path;

use anyhow::{Context, Result};
use starling_image::chunk::Progress;
use starling_image::export::{self, ExportFormat};
use starling_image::reference::ImageRef;
use starling_image::versions;
use starling_store::Store;

/// Writes a stored image as a raw ext4 file system (a VM's disk).
pub fn export_ext4(store_dir: &Path, image: &str, dest: &Path) -> Result<()> {
    let store = Store::open(store_dir)?;
    let resolved = versions::resolve(&store, &ImageRef::parse(image)?)?;
    export::export(
        &store,
        &resolved,
        dest,
        ExportFormat::Ext4 { size: None },
        &Progress::default(),
    )
    .with_context(|| format!("exporting {image} to {}", dest.display()))?;
    Ok(())
}
