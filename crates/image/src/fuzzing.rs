//! Entry point for the OCI fuzz target and its corpus replay test: arbitrary bytes as the
//! documents of an OCI layout. Must never panic.

use crate::oci::{Config, Index, Layout, Manifest};

/// `data` is used as index.json of a scratch layout (and parsed as every document type);
/// the manifest lookup then runs over it, reading blobs the index names if they exist.
pub fn oci(data: &[u8]) {
    let _ = serde_json::from_slice::<Index>(data);
    let _ = serde_json::from_slice::<Manifest>(data);
    let _ = serde_json::from_slice::<Config>(data);
    let Ok(dir) = tempfile_dir() else { return };
    let ok = std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).is_ok()
        && std::fs::write(dir.join("index.json"), data).is_ok();
    if ok {
        if let Ok(layout) = Layout::open(&dir) {
            let _ = layout.find_manifest(None);
            let _ = layout.find_manifest(Some("latest"));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("starling-fuzz-oci-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
