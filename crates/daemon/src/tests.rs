//! The daemon's pieces without a daemon: the object socket over a real store and a
//! repository directory through the host cache, copying a version between sources, and
//! the mount list a restarted daemon reads.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use starling_repo::pull::ClientOptions;
use starling_store::wire::SocketSource;
use starling_store::{ObjectId, ObjectSource, Origin, Store};

use crate::objects::{ObjectServer, MAX_CONNECTIONS};
use crate::sources::HostObjects;

fn put(store: &Store, items: &[Vec<u8>]) -> Vec<ObjectId> {
    let t = store.begin().unwrap();
    let ids = items.iter().map(|d| t.put(d).unwrap().id).collect();
    t.commit().unwrap();
    ids
}

/// A repository directory holding these objects as a push lays them out.
fn repo_dir(dir: &Path, store: &Store, ids: &[ObjectId]) {
    for id in ids {
        let p = dir.join(starling_repo::push::object_rel(id));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, store.get_envelope(id).unwrap()).unwrap();
    }
}

fn host(dir: &Path, rt: &tokio::runtime::Runtime) -> Arc<HostObjects> {
    Arc::new(
        HostObjects::open(
            &dir.join("cache"),
            64 << 20,
            ClientOptions::default(),
            rt.handle().clone(),
        )
        .unwrap(),
    )
}

#[test]
fn object_socket_serves_stores_and_repositories_through_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_or_init(dir.path().join("store")).unwrap();
    let data: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 70_000]).collect();
    let ids = put(&store, &data);
    repo_dir(&dir.path().join("repo"), &store, &ids);
    let rt = starling_repo::runtime().unwrap();
    let host = host(dir.path(), &rt);
    let server = ObjectServer::new(host.clone());
    let sock = dir.path().join("objects.sock");
    server.listen(&sock).unwrap();
    let mode = std::fs::metadata(&sock).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600,
        "the socket is its owner's alone"
    );
    let t = Duration::from_secs(10);

    let local = SocketSource::new(&sock, &format!("store:{}", store.root().display()), t).unwrap();
    assert_eq!(
        local.read(&ids[0], 70_000).unwrap(),
        (data[0].clone(), Origin::Local)
    );

    let url = url::Url::from_directory_path(dir.path().join("repo")).unwrap();
    let remote = SocketSource::new(&sock, &format!("repo:{url}"), t).unwrap();
    assert_eq!(remote.read(&ids[1], 70_000).unwrap().1, Origin::Remote);
    assert_eq!(
        remote.read(&ids[1], 70_000).unwrap(),
        (data[1].clone(), Origin::Cache)
    );
    assert_eq!(host.cache.stats().misses, 1);
    assert!(host.cache.contains(&ids[1]));

    // Damage in the repository is refused by the cache and reported to the reader.
    let p = dir
        .path()
        .join("repo")
        .join(starling_repo::push::object_rel(&ids[2]));
    let mut b = std::fs::read(&p).unwrap();
    let n = b.len();
    b[n - 1] ^= 1;
    std::fs::write(&p, b).unwrap();
    assert!(remote.read(&ids[2], 70_000).is_err());
    assert!(!host.cache.contains(&ids[2]));

    let junk = SocketSource::new(&sock, "ftp:somewhere", t).unwrap();
    let e = junk.read(&ids[0], 70_000).unwrap_err().to_string();
    assert!(e.contains("neither repo:URL nor store:PATH"), "{e}");

    // Connections beyond the limit are closed unanswered; the ones held still work.
    let held: Vec<UnixStream> = (0..MAX_CONNECTIONS)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let over = SocketSource::new(&sock, "store:/nowhere", Duration::from_secs(2)).unwrap();
    assert!(over.read(&ids[0], 70_000).is_err());
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    assert!(local.read(&ids[0], 70_000).is_ok());
}

#[test]
fn a_second_daemon_cannot_take_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let rt = starling_repo::runtime().unwrap();
    let _first = host(dir.path(), &rt);
    let e = HostObjects::open(
        &dir.path().join("cache"),
        64 << 20,
        ClientOptions::default(),
        rt.handle().clone(),
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(e.contains("starlingd"), "{e}");
}

#[test]
fn a_mount_list_of_another_format_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mounts.json"),
        br#"{"format": 7, "detach": ["/"]}"#,
    )
    .unwrap();
    let m = crate::mounts::Mounts::new(dir.path());
    assert!(m.clean_stale().is_empty());
    // The host's root mount, recorded as if it were one of ours: its id at its path, but
    // not of our type; and our type at a path where that id is not.
    let (root_id, _) = starling_fs::mountpoint::mount_at(std::path::Path::new("/")).unwrap();
    let list = serde_json::json!({"format": 2, "detach": [
        {"path": "/", "id": root_id, "kind": "fuse.starling"},
        {"path": "/definitely/not/mounted", "id": root_id, "kind": "overlay"},
    ]});
    std::fs::write(dir.path().join("mounts.json"), list.to_string()).unwrap();
    assert!(
        m.clean_stale().is_empty(),
        "only Starling's own mounts are detached"
    );
    assert!(!dir.path().join("mounts.json").exists());
}
