//! Inventory, search and diff read manifests and package databases only. Proof: every chunk
//! of every other file is deleted from the store, and they still give the same answers.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use starling_image::browse::Browser;
use starling_image::chunk::Progress;
use starling_image::import::{import, ImportOptions};
use starling_image::manifest::{FileData, Node};
use starling_image::pkg::Inventories;
use starling_image::search::{self, Query};
use starling_image::versions;
use starling_store::{ObjectId, Store};

fn rootfs() -> Option<(PathBuf, PathBuf)> {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/debian-rootfs.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .expect("run the fixture script");
    if !out.status.success() {
        starling_testkit::skip(&format!(
            "Debian rootfs could not be built: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
        return None;
    }
    let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Some((d.join("rootfs-a"), d.join("rootfs-b")))
}

fn chunks(b: &mut Browser<'_>, tree: &ObjectId, out: &mut Vec<ObjectId>) {
    let t = b.tree(tree).unwrap();
    for e in &t.entries {
        match &e.node {
            Node::Dir { tree, .. } => chunks(b, tree, out),
            Node::File {
                data: FileData::Chunks(c),
                ..
            } => out.extend(c.iter().map(|c| c.id)),
            _ => {}
        }
    }
}

fn file_chunks(b: &mut Browser<'_>, root: &ObjectId, path: &str) -> Vec<ObjectId> {
    match b.lookup(root, path.as_bytes(), true).unwrap() {
        Some(Node::File {
            data: FileData::Chunks(c),
            ..
        }) => c.iter().map(|c| c.id).collect(),
        _ => Vec::new(),
    }
}

#[test]
fn inventory_search_and_diff_survive_without_file_content() {
    let Some((a, b)) = rootfs() else { return };
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = Store::open_or_init(dir.path().join("store")).unwrap();
    for (src, tag) in [(&a, "a"), (&b, "b")] {
        let opts = ImportOptions {
            source: src,
            format: None,
            name: "deb",
            tag,
            labels: Default::default(),
            chunking: Default::default(),
            partition: None,
            allow_backing: false,
        };
        import(&store, &opts, &Progress::default()).unwrap();
    }
    let va = versions::resolve(
        &store,
        &starling_image::reference::ImageRef::parse("deb:a").unwrap(),
    )
    .unwrap();
    let vb = versions::resolve(
        &store,
        &starling_image::reference::ImageRef::parse("deb:b").unwrap(),
    )
    .unwrap();
    let mut br = Browser::new(&store);
    let mut keep = HashSet::new();
    let mut all = Vec::new();
    for v in [&va, &vb] {
        for p in ["/var/lib/dpkg/status", "/etc/os-release"] {
            keep.extend(file_chunks(&mut br, &v.commit.root, p));
        }
        chunks(&mut br, &v.commit.root, &mut all);
    }
    let before = {
        let mut inv = Inventories::new(&store);
        (
            inv.of(&va.commit.root, "a").unwrap().packages,
            inv.of(&vb.commit.root, "b").unwrap().packages,
        )
    };
    let doomed: Vec<_> = all
        .iter()
        .collect::<HashSet<_>>()
        .into_iter()
        .filter(|id| !keep.contains(id))
        .copied()
        .collect();
    let removed = store.remove_objects(&doomed).unwrap();
    assert_eq!(removed, doomed.len());
    assert!(removed > 3000, "only {removed} chunks removed");
    let reads_before = store
        .counters()
        .objects_read
        .load(std::sync::atomic::Ordering::Relaxed);

    let mut inv = Inventories::new(&store);
    assert_eq!(inv.of(&va.commit.root, "a").unwrap().packages, before.0);
    assert_eq!(inv.of(&vb.commit.root, "b").unwrap().packages, before.1);
    let q = Query::Package {
        name: "less".into(),
        version: None,
    };
    assert_eq!(search::search(&store, &q).unwrap().0.len(), 1);
    let q = Query::Path(search::glob("/usr/bin/python3*").unwrap());
    assert_eq!(search::search(&store, &q).unwrap().0.len(), 1);
    let mut inv = Inventories::new(&store);
    let d = starling_image::diff::diff(
        &mut inv,
        (&va.commit.root, &va.commit.root_meta),
        (&vb.commit.root, &vb.commit.root_meta),
    )
    .unwrap();
    assert!(d
        .packages
        .unwrap()
        .iter()
        .any(|p| p.name == "python3-minimal"));
    let reads = store
        .counters()
        .objects_read
        .load(std::sync::atomic::Ordering::Relaxed)
        - reads_before;
    eprintln!("objects read by inventory x2, search x2, diff: {reads}");
}
