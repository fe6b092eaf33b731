//! Integrity: fsck re-hashes every object and names each bad one with the image paths that
//! use it; a flipped byte anywhere in any object is found.

mod common;

use std::fs;

use common::*;
use starling_image::manifest::{FileData, Node, Tree};
use starling_image::reference::ImageRef;
use starling_image::versions;
use starling_store::{ObjectId, Store};

fn fsck_json(env: &Env) -> (bool, serde_json::Value) {
    let out = env.run(&["store", "fsck", "--json"]);
    (
        out.status.success(),
        serde_json::from_slice(&out.stdout).expect("fsck --json"),
    )
}

/// Flips one byte of the object's stored envelope (inside its pack segment); returns the
/// segment file's path and original bytes, to put back.
fn flip(store: &Store, id: &ObjectId, at: usize) -> (std::path::PathBuf, Vec<u8>) {
    let loc = store
        .object_location(id)
        .unwrap()
        .expect("object is stored");
    let orig = fs::read(&loc.path).unwrap();
    let mut bad = orig.clone();
    let i = loc.offset as usize + at % loc.len as usize;
    bad[i] ^= 0x40;
    fs::write(&loc.path, bad).unwrap();
    (loc.path, orig)
}

fn restore((path, orig): (std::path::PathBuf, Vec<u8>)) {
    fs::write(path, orig).unwrap();
}

#[test]
fn flipped_bytes_in_chunk_tree_and_commit_are_reported_with_paths() {
    let env = Env::new();
    let src = env.path("src");
    torture_tree(&src, false);
    env.ok(&["image", "import", src.to_str().unwrap(), "img:v1"]);
    env.fsck_clean();
    let store = Store::open(&env.store).unwrap();
    let r = versions::resolve(&store, &ImageRef::parse("img:v1").unwrap()).unwrap();
    let root = Tree::decode(&r.commit.root, &store.get(&r.commit.root).unwrap()).unwrap();
    let chunk = root
        .entries
        .iter()
        .find_map(|e| match &e.node {
            Node::File {
                data: FileData::Chunks(c),
                ..
            } if e.name.as_slice() == b"random-100k" => Some(c[0].id),
            _ => None,
        })
        .expect("random-100k is chunked");
    let hl_tree = root
        .entries
        .iter()
        .find_map(|e| match &e.node {
            Node::Dir { tree, .. } if e.name.as_slice() == b"hl" => Some(*tree),
            _ => None,
        })
        .unwrap();

    // Every byte position of a chunk's envelope, sampled, plus header bytes.
    for at in [0usize, 4, 5, 6, 9, 16, 17, 100, 1000, usize::MAX / 2] {
        let orig = flip(&store, &chunk, at);
        let (ok, report) = fsck_json(&env);
        assert!(!ok, "flip at {at} not found");
        let problems = report["problems"].as_array().unwrap();
        assert_eq!(problems.len(), 1, "{report}");
        assert_eq!(problems[0]["object"], chunk.to_hex());
        let used = problems[0]["used_by"].to_string();
        assert!(
            used.contains("img:v1") && used.contains("/random-100k"),
            "{used}"
        );
        restore(orig);
    }
    env.fsck_clean();

    let orig = flip(&store, &hl_tree, 20);
    let (ok, report) = fsck_json(&env);
    assert!(!ok);
    assert!(report["problems"].to_string().contains("/hl"), "{report}");
    // gc refuses to run while a reachable tree is unreadable: it would lose what it hides.
    let e = env.fails(&["store", "gc"]);
    assert!(e.contains("fsck"), "{e}");
    restore(orig);

    let orig = flip(&store, &r.id, 8);
    let (ok, report) = fsck_json(&env);
    assert!(!ok);
    assert!(
        report["problems"][0]["used_by"]
            .to_string()
            .contains("img:v1"),
        "{report}"
    );
    restore(orig);

    // A truncated segment is reported too (cut in the middle of the chunk's record), and a
    // missing chunk.
    let loc = store.object_location(&chunk).unwrap().unwrap();
    let orig = fs::read(&loc.path).unwrap();
    fs::write(&loc.path, &orig[..(loc.offset + loc.len / 2) as usize]).unwrap();
    assert!(!fsck_json(&env).0);
    fs::write(&loc.path, &orig).unwrap();
    let chunk_bytes = store.get(&chunk).unwrap();
    assert_eq!(store.remove_objects(&[chunk]).unwrap(), 1);
    let (ok, report) = fsck_json(&env);
    assert!(!ok);
    assert!(
        report["problems"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("missing"),
        "{report}"
    );
    let t = store.begin().unwrap();
    t.put(&chunk_bytes).unwrap();
    t.commit().unwrap();
    env.fsck_clean();

    // Export refuses corrupt content instead of writing it.
    flip(&store, &chunk, 50);
    let e = env.fails(&[
        "image",
        "export",
        "img:v1",
        env.path("out").to_str().unwrap(),
    ]);
    assert!(e.contains("corrupt"), "{e}");
}
