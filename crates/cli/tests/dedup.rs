//! Dedup: content is stored once per chunk across images and versions; manifests are Merkle
//! trees, so an unchanged directory is the same object.

mod common;

use std::fs;

use common::*;
use starling_image::manifest::{Node, Tree};
use starling_image::reference::ImageRef;
use starling_image::versions;
use starling_store::{ObjectId, Store};

fn objects(env: &Env) -> usize {
    let s: serde_json::Value =
        serde_json::from_str(&env.ok(&["store", "stats", "--json"])).unwrap();
    s["objects"].as_u64().unwrap() as usize
}

/// The tree object of directory `name` directly under the image root.
fn subtree(store: &Store, image: &str, name: &str) -> ObjectId {
    let r = versions::resolve(store, &ImageRef::parse(image).unwrap()).unwrap();
    let root = Tree::decode(&r.commit.root, &store.get(&r.commit.root).unwrap()).unwrap();
    root.entries
        .iter()
        .find_map(|e| match &e.node {
            Node::Dir { tree, .. } if e.name.as_slice() == name.as_bytes() => Some(*tree),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{name} not in {image}"))
}

#[test]
fn reimport_adds_only_a_commit_and_unchanged_dirs_are_one_object() {
    let env = Env::new();
    let src = env.path("src");
    torture_tree(&src, true);
    let first: serde_json::Value =
        serde_json::from_str(&env.ok(&["image", "import", src.to_str().unwrap(), "t", "--json"]))
            .unwrap();
    assert!(first["new_objects"].as_u64().unwrap() > 10);
    let before = objects(&env);
    let again: serde_json::Value =
        serde_json::from_str(&env.ok(&["image", "import", src.to_str().unwrap(), "t", "--json"]))
            .unwrap();
    assert_eq!(
        again["new_objects"], 1,
        "re-import must add only its commit: {again}"
    );
    assert_eq!(objects(&env), before + 1);
    assert_eq!(
        again["parent"], first["version"],
        "parent is the tag's previous version"
    );

    // Change one file under hl/: hl's tree changes, sticky/ and a/ stay the same objects.
    fs::write(src.join("hl/new-file"), b"new").unwrap();
    let third: serde_json::Value = serde_json::from_str(&env.ok(&[
        "image",
        "import",
        src.to_str().unwrap(),
        "t:v3",
        "--json",
    ]))
    .unwrap();
    // New objects: the changed directory's tree, the root tree, the commit, and the new
    // file's chunks (none if it is small enough to live in its tree entry).
    let st: serde_json::Value =
        serde_json::from_str(&env.ok(&["image", "stat", "--json", "t:v3", "/hl/new-file"]))
            .unwrap();
    let chunks = st["chunks"].as_array().map_or(0, Vec::len) as u64;
    assert_eq!(
        third["new_objects"].as_u64().unwrap(),
        3 + chunks,
        "hl's tree, the root tree, the commit and {chunks} chunks: {third}"
    );
    let store = Store::open(&env.store).unwrap();
    assert_eq!(
        subtree(&store, "t:latest", "sticky"),
        subtree(&store, "t:v3", "sticky")
    );
    assert_ne!(
        subtree(&store, "t:latest", "hl"),
        subtree(&store, "t:v3", "hl")
    );
}

#[test]
fn debian_variants_share_nearly_all_chunks() {
    let Some((a, b)) = debian_rootfs() else {
        return;
    };
    let env = Env::new();
    let ra: serde_json::Value = serde_json::from_str(&env.ok(&[
        "image",
        "import",
        a.to_str().unwrap(),
        "debian:a",
        "--json",
    ]))
    .unwrap();
    let rb: serde_json::Value = serde_json::from_str(&env.ok(&[
        "image",
        "import",
        b.to_str().unwrap(),
        "debian:b",
        "--json",
    ]))
    .unwrap();
    let bytes_a = ra["stats"]["bytes"].as_u64().unwrap();
    let bytes_b = rb["stats"]["bytes"].as_u64().unwrap();
    let stored_a = ra["new_stored_bytes"].as_u64().unwrap();
    let stored_b = rb["new_stored_bytes"].as_u64().unwrap();
    eprintln!("a: {bytes_a} bytes → {stored_a} stored; b: {bytes_b} bytes → {stored_b} new stored");
    // b = a + a few packages: it may add about what those packages add, not a second copy.
    let extra = bytes_b.saturating_sub(bytes_a);
    assert!(
        stored_b < stored_a / 4,
        "variant b added {stored_b} bytes, a alone took {stored_a}"
    );
    assert!(
        stored_b <= extra + (4 << 20),
        "variant b added {stored_b}, more than its {extra} extra bytes + 4 MiB"
    );
}
