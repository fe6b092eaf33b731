//! Groups: a desired state published with `group apply`, followed by four hosts' starlingds
//! (three selected by their labels): each converges (its host cache holds the image: a mount
//! reads nothing from the origin), a host that was off converges when it comes back, and
//! tampered group metadata is refused while the hosts stay where they were.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::*;

/// `group status --json` over these hosts: (exit code, per host the group's status or the error).
fn status(env: &Env, sockets: &[PathBuf]) -> (i32, Vec<serde_json::Value>) {
    let mut c = env.cmd();
    c.args(["group", "status", "ci", "--json"]);
    for s in sockets {
        c.arg("--host").arg(s);
    }
    let o = c.output().unwrap();
    let v = json(&String::from_utf8_lossy(&o.stdout));
    let rows = v
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            h.get("groups")
                .and_then(|g| g.get(0).cloned())
                .unwrap_or_else(|| h.clone())
        })
        .collect();
    (o.status.code().unwrap_or(-1), rows)
}

/// Waits until `ok` holds for the hosts' statuses.
fn until(
    env: &Env,
    sockets: &[PathBuf],
    what: &str,
    ok: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, rows) = status(env, sockets);
        if ok(&rows) {
            return rows;
        }
        assert!(Instant::now() < deadline, "{what}: {rows:#?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn converged_to(row: &serde_json::Value, generation: u64, version: &str) -> bool {
    row["converged"] == true
        && row["generation"] == generation
        && row["error"].is_null()
        && row["images"][0]["version"] == version
}

fn config(dir: &Path, i: usize, url: &str, root: &Path) -> PathBuf {
    let role = if i < 3 { "ci" } else { "web" };
    let p = dir.join(format!("host{i}.toml"));
    fs::write(
        &p,
        format!(
            "labels = {{ role = \"{role}\", host = \"h{i}\" }}\n\
             [[repository]]\nurl = \"{url}\"\nroot = \"{}\"\n\
             [[group]]\nname = \"ci\"\nrepository = \"{url}\"\npoll = \"1s\"\n",
            root.display()
        ),
    )
    .unwrap();
    p
}

#[test]
fn hosts_converge_to_a_group_s_signed_state_and_refuse_a_tampered_one() {
    if !Path::new("/dev/fuse").exists() {
        skip("/dev/fuse is missing: the mount that shows the prefetch needs it");
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..12u64 {
        fs::write(src.join(format!("f{i}")), pseudo_random(30_000, i + 1)).unwrap();
    }
    let v1 = json(&env.ok(&["image", "import", "--json", s(&src), "t:v1"]))["version"]
        .as_str()
        .unwrap()
        .to_string();
    let repo = env.path("repo");
    env.ok(&["repo", "init", s(&repo)]);
    env.ok(&["push", "t:v1", s(&repo)]);
    let origin = Server::start(&env, &repo);
    let root = repo.join("metadata/1.root.json");
    let etc = env.path("etc");
    fs::create_dir_all(&etc).unwrap();
    let confs: Vec<PathBuf> = (0..4)
        .map(|i| config(&etc, i, &origin.url, &root))
        .collect();
    let start = |i: usize| {
        Daemon::start(
            &env,
            &env.path(&format!("host{i}")),
            &["--config", s(&confs[i])],
        )
    };
    let mut hosts: Vec<Option<Daemon>> = (0..4).map(|i| Some(start(i))).collect();
    let sockets: Vec<PathBuf> = hosts
        .iter()
        .map(|d| d.as_ref().unwrap().socket.clone())
        .collect();

    // Nothing published yet: each host says so.
    let rows = until(&env, &sockets, "not published", |r| {
        r.iter().all(|h| {
            h["error"]
                .as_str()
                .is_some_and(|e| e.contains("not published"))
        })
    });
    assert_eq!(rows.len(), 4);

    // A spec with a mistake is refused before anything is published.
    let spec = etc.join("ci.toml");
    fs::write(&spec, "name = \"ci\"\n[[image]]\nref = \"nosuch:v1\"\n").unwrap();
    let e = env.fails(&["group", "apply", s(&spec), s(&repo)]);
    assert!(e.contains("nosuch:v1 is not in"), "{e}");

    fs::write(
        &spec,
        "name = \"ci\"\n[hosts]\nlabels = { role = \"ci\" }\n[[image]]\nref = \"t:v1\"\n",
    )
    .unwrap();
    let out = env.ok(&["group", "apply", s(&spec), s(&repo)]);
    assert!(out.starts_with("group ci generation 1\n"), "{out}");
    let rows = until(&env, &sockets, "generation 1", |r| {
        r[..3].iter().all(|h| converged_to(h, 1, &v1)) && r[3]["selected"] == false
    });
    // Every object of the version (all the repository holds so far) is held.
    let in_repo = fs::read_dir(repo.join("objects"))
        .unwrap()
        .map(|d| fs::read_dir(d.unwrap().path()).unwrap().count())
        .sum::<usize>();
    assert_eq!(rows[0]["images"][0]["objects"], in_repo, "{rows:#?}");
    // Host 3's labels are not selected: it holds nothing for the group.
    assert_eq!(rows[3]["images"], serde_json::json!([]));
    let (code, _) = status(&env, &sockets);
    assert_eq!(code, 0, "every host where the group wants it");
    // What a host converged to is kept, in a versioned file.
    let kept = json(&fs::read_to_string(env.path("host0").join("groups/ci.json")).unwrap());
    assert_eq!(kept["format"], 1, "{kept}");
    assert_eq!(kept["generation"], 1, "{kept}");

    // Converged means held, even through a cache gc (which evicts all it may): a mount on a
    // selected host reads nothing from the origin.
    let before = origin.object_requests();
    let d0 = hosts[0].as_ref().unwrap();
    d0.ok(&env, &["cache", "gc"]);
    assert!(d0.cache(&env)["pinned"].as_u64().unwrap() >= in_repo as u64);
    let mp = env.path("mp");
    fs::create_dir_all(&mp).unwrap();
    d0.ok(&env, &["mount", &origin.url, "t:v1", s(&mp)]);
    assert_same_tree(&src, &mp);
    d0.ok(&env, &["umount", s(&mp)]);
    assert_eq!(origin.object_requests(), before, "prefetched by the group");

    // Host 2 is off while generation 2 (a new version of the image) is applied.
    hosts[2].take().unwrap().stop();
    fs::write(src.join("f0"), b"second version").unwrap();
    let v2 = json(&env.ok(&["image", "import", "--json", s(&src), "t:v1"]))["version"]
        .as_str()
        .unwrap()
        .to_string();
    env.ok(&["push", "t:v1", s(&repo)]);
    let out = env.ok(&["group", "apply", s(&spec), s(&repo)]);
    assert!(out.starts_with("group ci generation 2\n"), "{out}");
    let rows = until(&env, &sockets, "generation 2 on the hosts up", |r| {
        r[..2].iter().all(|h| converged_to(h, 2, &v2))
    });
    assert!(
        rows[2]["error"].is_string(),
        "host 2 is unreachable: {:?}",
        rows[2]
    );
    let (code, _) = status(&env, &sockets);
    assert_eq!(code, 1, "a host unreachable is a problem");
    // Back, it converges to the newest generation.
    hosts[2] = Some(start(2));
    until(&env, &sockets, "host 2 back at generation 2", |r| {
        converged_to(&r[2], 2, &v2)
    });
    let text = env
        .cmd()
        .args([
            "group",
            "status",
            "ci",
            "--host",
            s(&sockets[0]),
            "--host",
            s(&sockets[3]),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("converged") && text.contains("not selected"),
        "{text}"
    );

    // Tampered group metadata (the target file changed behind TUF's back): refused, and the
    // hosts stay at generation 2.
    let target = fs::read_dir(repo.join("targets"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".group.ci.json"))
        .max_by_key(|p| fs::metadata(p).unwrap().modified().unwrap())
        .unwrap();
    let mut t = json(&fs::read_to_string(&target).unwrap());
    t["generation"] = serde_json::json!(99);
    fs::write(&target, serde_json::to_vec_pretty(&t).unwrap()).unwrap();
    let rows = until(&env, &sockets, "tampered state refused", |r| {
        r[..3].iter().all(|h| h["error"].is_string())
    });
    for h in &rows[..3] {
        assert_eq!(h["generation"], 2, "{h}");
        let e = h["error"].as_str().unwrap();
        assert!(e.contains("group.ci.json"), "{e}");
    }
}
