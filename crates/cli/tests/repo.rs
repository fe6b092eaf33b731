//! TUF repositories: push, serve over HTTP on loopback, pull with verification; an
//! independent TUF client (python-tuf) reads what Starling signed; attacks are refused with
//! nothing written to the local store.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;

/// A second store (the pulling host) sharing nothing with `env`'s.
fn client_store(env: &Env) -> PathBuf {
    env.path("client-store")
}

fn client(_env: &Env, store: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_starling"))
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .unwrap()
}

fn client_ok(env: &Env, store: &Path, args: &[&str]) -> String {
    let o = client(env, store, args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn client_fails(env: &Env, store: &Path, args: &[&str]) -> String {
    let o = client(env, store, args);
    assert!(!o.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A repository with one pushed torture-tree image `t:v1`.
fn published(env: &Env) -> (PathBuf, PathBuf) {
    let src = env.path("src");
    torture_tree(&src, false);
    env.ok(&["image", "import", s(&src), "t:v1"]);
    let repo = env.path("repo");
    env.ok(&["repo", "init", s(&repo)]);
    env.ok(&["push", "t:v1", s(&repo)]);
    (repo, src)
}

fn root_of(repo: &Path) -> String {
    s(&repo.join("metadata/1.root.json")).to_string()
}

#[test]
fn push_serve_pull_over_http() {
    let env = Env::new();
    let (repo, src) = published(&env);
    let server = Server::start(&env, &repo);
    let cs = client_store(&env);
    let e = client_fails(&env, &cs, &["pull", &server.url, "t:v1"]);
    assert!(
        e.contains("--root"),
        "first contact needs a trusted root: {e}"
    );
    let r = json(&client_ok(
        &env,
        &cs,
        &[
            "pull",
            "--json",
            &server.url,
            "t:v1",
            "--root",
            &root_of(&repo),
        ],
    ));
    assert_eq!(r["fetched"], r["objects"]);
    let out = env.path("out");
    client_ok(&env, &cs, &["image", "export", "t:v1", s(&out)]);
    assert_same_tree(&src, &out);

    // A second version: only what changed is pushed and fetched; the old one stays pullable.
    let mut f = fs::read(src.join("tiny")).unwrap();
    f.extend_from_slice(b" changed");
    fs::write(src.join("tiny"), f).unwrap();
    fs::write(src.join("new-file"), vec![7u8; 300_000]).unwrap();
    let imported = json(&env.ok(&["image", "import", "--json", s(&src), "t:v1"]));
    // The store held only the first version: what the import added is what is new.
    let new = imported["new_objects"].as_u64().unwrap();
    let p = json(&env.ok(&["push", "--json", "t:v1", s(&repo)]));
    assert_eq!(
        p["uploaded"].as_u64().unwrap(),
        new,
        "a push uploads exactly the objects new since the version the repository has: {p}"
    );
    let r = json(&client_ok(
        &env,
        &cs,
        &["pull", "--json", &server.url, "t:v1"],
    ));
    assert_eq!(
        r["fetched"].as_u64().unwrap(),
        new,
        "a pull fetches exactly the objects the client lacks: {r}"
    );
    let ls = json(&client_ok(
        &env,
        &cs,
        &["repo", "ls", "--json", &server.url],
    ));
    let hist = ls[0]["history"].as_array().unwrap();
    assert_eq!(hist.len(), 2);
    assert_eq!(hist[0]["parent"], hist[1]["version"]);
    let old = hist[1]["version"].as_str().unwrap();
    let cs2 = env.path("client2");
    client_ok(
        &env,
        &cs2,
        &[
            "pull",
            &server.url,
            &format!("t@{}", &old[..12]),
            "--root",
            &root_of(&repo),
        ],
    );
    let v = json(&client_ok(
        &env,
        &cs2,
        &["image", "inspect", "--json", "t:v1"],
    ));
    assert_eq!(v["version"], old);
    client_ok(&env, &cs, &["store", "fsck"]);

    // HTTP details: Range, immutable caching of objects, short caching of the timestamp.
    let obj = fs::read_dir(repo.join("objects"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let obj = fs::read_dir(obj).unwrap().next().unwrap().unwrap().path();
    let rel = obj
        .strip_prefix(&repo)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let head = tool(
        "curl",
        &[
            "-sS",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-r",
            "0-9",
            &format!("{}{rel}", server.url),
        ],
    );
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert!(
        head.to_lowercase().contains("immutable") && head.to_lowercase().contains("etag"),
        "{head}"
    );
    let head = tool(
        "curl",
        &[
            "-sS",
            "-D",
            "-",
            "-o",
            "/dev/null",
            &format!("{}metadata/timestamp.json", server.url),
        ],
    );
    assert!(head.contains("max-age=10"), "{head}");
    let head = tool(
        "curl",
        &[
            "-sS",
            "-D",
            "-",
            "-o",
            "/dev/null",
            &format!("{}.lock", server.url),
        ],
    );
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}

/// A Python venv (cached beside the other test inputs) with `package` installed, or `None`
/// after a loud skip.
fn venv(name: &str, package: &str, check: &str) -> Option<PathBuf> {
    let cache = PathBuf::from(
        std::env::var("STARLING_TEST_CACHE").unwrap_or_else(|_| "/var/cache/starling-test".into()),
    );
    let venv = cache.join(name);
    let py = venv.join("bin/python");
    let ok = |p: &Path| {
        Command::new(p)
            .args(["-c", check])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !ok(&py) {
        let _ = fs::create_dir_all(&cache);
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .output()
            .is_ok_and(|o| o.status.success())
            && Command::new(venv.join("bin/pip"))
                .args(["install", "-q", package])
                .output()
                .is_ok_and(|o| o.status.success());
        if !made || !ok(&py) {
            skip(&format!(
                "{package} could not be installed (python3-venv, PyPI)"
            ));
            return None;
        }
    }
    Some(venv)
}

fn python_tuf() -> Option<PathBuf> {
    venv("venv-tuf", "tuf==7.0.1", "import tuf.ngclient").map(|v| v.join("bin/python"))
}

#[test]
fn independent_tuf_client_verifies_and_downloads_every_target() {
    let Some(py) = python_tuf() else { return };
    let env = Env::new();
    let (repo, _) = published(&env);
    env.ok(&["image", "tag", "t:v1", "t:other"]);
    env.ok(&["push", "t:other", s(&repo)]);
    let server = Server::start(&env, &repo);
    let script = r#"
import sys, os, json
from tuf.ngclient import Updater
base, root, work = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(work + "/meta", exist_ok=True); os.makedirs(work + "/dl", exist_ok=True)
u = Updater(work + "/meta", base + "metadata/", work + "/dl", base + "targets/", bootstrap=open(root, "rb").read())
u.refresh()
names = sorted(u._trusted_set.targets.targets.keys())
for n in names:
    info = u.get_targetinfo(n)
    path = u.download_target(info)
    rec = json.load(open(path))
    print(n, rec["name"], rec["tag"], rec["target"])
"#;
    let out = tool(
        s(&py),
        &[
            "-c",
            script,
            &server.url,
            &root_of(&repo),
            s(&env.path("pytuf")),
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let v = json(&env.ok(&["image", "inspect", "--json", "t:v1"]));
    for l in &lines {
        assert!(l.ends_with(v["version"].as_str().unwrap()), "{l}");
    }
    assert!(lines[0].starts_with("t@other.json t other"), "{out}");
}

/// Pulls `t:v1` from `url` into a fresh client store, which must fail and leave that store
/// without the image; returns the error text.
/// A pull the attack must make fail, with the status of a verification failure (4).
fn refused_pull(env: &Env, url: &str, repo: &Path) -> String {
    let cs = client_store(env);
    let o = client(env, &cs, &["pull", url, "t:v1", "--root", &root_of(repo)]);
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(4), "{e}");
    assert_not_pulled(env, &cs);
    e
}

#[test]
fn exit_statuses_say_what_went_wrong() {
    let env = Env::new();
    let (repo, _) = published(&env);
    let cs = client_store(&env);
    let status = |args: &[&str]| {
        let o = client(&env, &cs, args);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let root = root_of(&repo);
    // Not found (3): an image the repository does not publish, one the store does not have.
    let (code, e) = status(&["pull", s(&repo), "nosuch:v1", "--root", &root]);
    assert_eq!(code, Some(3), "{e}");
    client_ok(&env, &cs, &["pull", s(&repo), "t:v1"]);
    let (code, e) = status(&["image", "inspect", "nosuch:v1"]);
    assert_eq!(code, Some(3), "{e}");
    let (code, e) = status(&["image", "export", "t:v9", s(&env.path("out"))]);
    assert_eq!(code, Some(3), "{e}");
    // Unreachable (5): nothing listens there.
    let (code, e) = status(&["pull", "http://127.0.0.1:9/", "t:v1", "--root", &root]);
    assert_eq!(code, Some(5), "{e}");
    // Said once, in one line: what was pulled, the URL fetched and the OS error.
    assert_eq!(
        e.trim_end(),
        "starling: pulling t:v1 from http://127.0.0.1:9/: fetching \
         http://127.0.0.1:9/metadata/2.root.json: Connection refused (os error 111)"
    );
    // A mistyped scheme is not a directory name.
    let (code, e) = status(&["pull", "htp://host/", "t:v1", "--root", &root]);
    assert_eq!(code, Some(2), "{e}");
    assert_eq!(
        e.trim_end(),
        "starling: repository \"htp://host/\": unknown scheme \"htp\": give http://, https://, \
         file:// or a directory"
    );
    // Usage (2): clap's, and a reference that is not one.
    let (code, e) = status(&["image", "inspect", "--no-such-flag", "t:v1"]);
    assert_eq!(code, Some(2), "{e}");
    let (code, e) = status(&["image", "inspect", "T:V1!"]);
    assert_eq!(code, Some(2), "{e}");
}

/// Every attack leaves the pulling store without the image.
fn assert_not_pulled(env: &Env, store: &Path) {
    let o = client(env, store, &["image", "ls", "--json"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success() || text.trim() == "[]", "{text}");
    // Not a single object either: what was fetched before the refusal stays staged.
    let o = client(env, store, &["store", "stats", "--json"]);
    if o.status.success() {
        let st = json(&String::from_utf8_lossy(&o.stdout));
        assert_eq!(st["objects"], 0, "{st}");
    }
}

#[test]
fn attack_tampered_object() {
    let env = Env::new();
    let (repo, _) = published(&env);
    let v = json(&env.ok(&["image", "inspect", "--json", "t:v1"]));
    // Damage one chunk (not the commit): find the largest object file.
    let mut objs = Vec::new();
    for d in fs::read_dir(repo.join("objects")).unwrap() {
        for f in fs::read_dir(d.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            objs.push((fs::metadata(&p).unwrap().len(), p));
        }
    }
    objs.sort();
    let victim = &objs.last().unwrap().1;
    let good = fs::read(victim).unwrap();
    let mut b = good.clone();
    let n = b.len();
    b[n - 3] ^= 0x40;
    fs::write(victim, b).unwrap();
    let e = refused_pull(&env, s(&repo), &repo);
    assert!(
        e.contains("object")
            && (e.contains("hash") || e.contains("corrupt") || e.contains("match")),
        "{e}"
    );
    // Repaired, the pull resumes: what was verified before the refusal is not fetched again.
    fs::write(victim, good).unwrap();
    let cs = client_store(&env);
    let r = json(&client_ok(&env, &cs, &["pull", "--json", s(&repo), "t:v1"]));
    let fetched = r["fetched"].as_u64().unwrap();
    assert!(
        fetched >= 1 && fetched < r["objects"].as_u64().unwrap(),
        "{r}"
    );
    let got = json(&client_ok(
        &env,
        &cs,
        &["image", "inspect", "--json", "t:v1"],
    ));
    assert_eq!(got["version"], v["version"]);
    client_ok(&env, &cs, &["store", "fsck"]);
}

#[test]
fn attack_tampered_metadata() {
    let env = Env::new();
    let (repo, _) = published(&env);
    let ts = repo.join("metadata/timestamp.json");
    let mut t = json(&fs::read_to_string(&ts).unwrap());
    t["signed"]["expires"] = serde_json::json!("2099-01-01T00:00:00Z");
    fs::write(&ts, serde_json::to_vec(&t).unwrap()).unwrap();
    let e = refused_pull(&env, s(&repo), &repo);
    assert!(e.to_lowercase().contains("signature"), "{e}");
}

#[test]
fn attack_rollback_to_older_metadata() {
    let env = Env::new();
    let (repo, src) = published(&env);
    let old_ts = fs::read(repo.join("metadata/timestamp.json")).unwrap();
    fs::write(src.join("extra"), b"v2").unwrap();
    env.ok(&["image", "import", s(&src), "t:v1"]);
    env.ok(&["push", "t:v1", s(&repo)]);
    let cs = client_store(&env);
    client_ok(
        &env,
        &cs,
        &["repo", "ls", s(&repo), "--root", &root_of(&repo)],
    );
    // A mirror now serves the old (validly signed) timestamp.
    fs::write(repo.join("metadata/timestamp.json"), old_ts).unwrap();
    let e = client_fails(&env, &cs, &["pull", s(&repo), "t:v1"]);
    assert!(
        e.contains("version")
            && (e.contains("older") || e.contains("Older") || e.contains("previously")),
        "{e}"
    );
    assert_not_pulled(&env, &cs);
}

/// `t:v1` in the store: one file.
fn one_file_image(env: &Env) {
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    env.ok(&["image", "import", s(&src), "t:v1"]);
}

#[test]
fn attack_freeze_with_expired_timestamp() {
    let env = Env::new();
    one_file_image(&env);
    let repo = env.path("repo");
    env.ok(&["repo", "init", s(&repo), "--timestamp-expires", "1"]);
    env.ok(&["push", "t:v1", s(&repo)]);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let e = refused_pull(&env, s(&repo), &repo);
    assert!(e.contains("expired"), "{e}");
}

#[test]
fn attack_endless_object() {
    let env = Env::new();
    let (repo, _) = published(&env);
    let server = Server::start(&env, &repo);
    let mut objs = Vec::new();
    for d in fs::read_dir(repo.join("objects")).unwrap() {
        for f in fs::read_dir(d.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            objs.push((fs::metadata(&p).unwrap().len(), p));
        }
    }
    objs.sort();
    // The smallest object is a tiny chunk or tree; serve 200 MiB in its place.
    let victim = &objs[objs.len() / 2].1;
    let f = fs::File::create(victim).unwrap();
    f.set_len(200 << 20).unwrap();
    let e = refused_pull(&env, &server.url, &repo);
    assert!(e.contains("more than"), "{e}");
}

#[test]
fn attack_wrong_key() {
    let env = Env::new();
    let (repo, _) = published(&env);
    let other = env.path("other");
    env.ok(&["repo", "init", s(&other)]);
    // A timestamp signed by a key the root does not name.
    fs::copy(
        other.join("metadata/timestamp.json"),
        repo.join("metadata/timestamp.json"),
    )
    .unwrap();
    let e = refused_pull(&env, s(&repo), &repo);
    assert!(
        e.contains("threshold") || e.to_lowercase().contains("signature"),
        "{e}"
    );
}

#[test]
fn attack_mix_and_match_metadata() {
    let env = Env::new();
    let (repo, src) = published(&env);
    fs::write(src.join("extra"), b"v2").unwrap();
    env.ok(&["image", "import", s(&src), "t:v1"]);
    env.ok(&["push", "t:v1", s(&repo)]);
    // The newest snapshot replaced by an older, validly signed one: the timestamp's hash and
    // version for it no longer match.
    fs::copy(
        repo.join("metadata/2.snapshot.json"),
        repo.join("metadata/3.snapshot.json"),
    )
    .unwrap();
    let e = refused_pull(&env, s(&repo), &repo);
    assert!(e.contains("snapshot"), "{e}");
}

#[test]
fn attack_targets_version_not_in_snapshot() {
    let env = Env::new();
    let (repo, src) = published(&env);
    fs::write(src.join("extra"), b"v2").unwrap();
    env.ok(&["image", "import", s(&src), "t:v1"]);
    env.ok(&["push", "t:v1", s(&repo)]);
    // targets version 3 swapped for version 2 (which points at the older record).
    fs::copy(
        repo.join("metadata/2.targets.json"),
        repo.join("metadata/3.targets.json"),
    )
    .unwrap();
    let e = refused_pull(&env, s(&repo), &repo);
    assert!(e.contains("targets"), "{e}");
}

#[test]
fn attack_endless_metadata() {
    let env = Env::new();
    let (repo, _) = published(&env);
    let ts = repo.join("metadata/timestamp.json");
    let mut b = fs::read(&ts).unwrap();
    b.resize(b.len() + (8 << 20), b' ');
    fs::write(&ts, b).unwrap();
    let e = refused_pull(&env, s(&repo), &repo);
    assert!(
        e.to_lowercase().contains("size") || e.contains("exceed"),
        "{e}"
    );
}

#[test]
fn attack_slow_retrieval_times_out() {
    let env = Env::new();
    let (repo, _) = published(&env);
    // A server that accepts and then never answers.
    let script = "import socket,time,sys\ns=socket.socket();s.bind(('127.0.0.1',0));s.listen(64)\nprint(s.getsockname()[1],flush=True)\nconns=[]\nwhile True:\n    c,_=s.accept();conns.append(c)\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = format!("http://127.0.0.1:{}/", line.trim());
    let cs = client_store(&env);
    let t = std::time::Instant::now();
    let e = client_fails(
        &env,
        &cs,
        &[
            "pull",
            &url,
            "t:v1",
            "--root",
            &root_of(&repo),
            "--timeout",
            "2",
        ],
    );
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        t.elapsed().as_secs() < 30,
        "gave up after {:?}",
        t.elapsed()
    );
    assert!(
        e.to_lowercase().contains("timed out") || e.to_lowercase().contains("timeout"),
        "{e}"
    );
    assert_not_pulled(&env, &cs);
}

#[test]
fn concurrent_and_killed_pushes_never_half_publish() {
    let env = Env::new();
    let (repo, src) = published(&env);
    pushes_never_half_publish(&env, &src, s(&repo), &[], s(&repo), &root_of(&repo));
}

/// Several pushes at once to different tags all land with the metadata chain valid; pushes
/// killed at random points leave the previous state valid and the next push completes it.
/// `dest` already holds `t:v1` (from `src`); `pull_from` reads the same repository.
fn pushes_never_half_publish(
    env: &Env,
    src: &Path,
    dest: &str,
    vars: &[(&str, String)],
    pull_from: &str,
    root: &str,
) {
    let push = |tag: &str| {
        let mut c = env.cmd();
        c.args(["push", tag, dest]).envs(vars.iter().cloned());
        c
    };
    for i in 0..4 {
        env.ok(&["image", "tag", "t:v1", &format!("t:c{i}")]);
    }
    let kids: Vec<_> = (0..4)
        .map(|i| {
            push(&format!("t:c{i}"))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for k in kids {
        let o = k.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let cs = client_store(env);
    let ls = json(&client_ok(
        env,
        &cs,
        &["repo", "ls", "--json", pull_from, "--root", root],
    ));
    let tags: Vec<&str> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["tag"].as_str().unwrap())
        .collect();
    assert_eq!(tags.len(), 5, "every concurrent push landed: {ls}");
    // Each round has 4 MiB of new, incompressible content, so that a push has work to be
    // killed in the middle of, and the kills are spread over the time a whole push takes here
    // (timed first, the kills in its first half); a kill that came after the push had finished proves nothing and is not
    // counted (the status says whether SIGKILL ended it).
    fs::write(src.join("big"), pseudo_random(4 << 20, 99)).unwrap();
    env.ok(&["image", "import", s(src), "t:v1"]);
    let started = std::time::Instant::now();
    let o = push("t:v1").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let whole = started.elapsed();
    let rounds = 8u64;
    let mut killed = 0;
    for i in 0..rounds {
        fs::write(src.join("big"), pseudo_random(4 << 20, 100 + i)).unwrap();
        env.ok(&["image", "import", s(src), "t:v1"]);
        let mut k = push("t:v1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Within the first half of the time the timed push took: later pushes can be quicker
        // than the first (warm caches), and a kill after the end proves nothing.
        std::thread::sleep(whole * (i as u32 + 1) / (2 * (rounds as u32 + 1)));
        let _ = k.kill();
        let status = k.wait().unwrap();
        // A push that ended before the kill landed keeps its own status.
        use std::os::unix::process::ExitStatusExt;
        if status.signal() == Some(9) {
            killed += 1;
        } else {
            assert!(
                status.success(),
                "a push that was not killed failed: {status}"
            );
        }
        client_ok(env, &cs, &["repo", "ls", pull_from]);
    }
    eprintln!("{killed} of {rounds} pushes were killed before they finished");
    assert!(
        killed >= rounds / 2,
        "only {killed} of {rounds} pushes were killed mid-way: the test no longer tests killed pushes"
    );
    let o = push("t:v1").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = json(&env.ok(&["image", "inspect", "--json", "t:v1"]));
    client_ok(env, &cs, &["pull", pull_from, "t:v1"]);
    let got = json(&client_ok(
        env,
        &cs,
        &["image", "inspect", "--json", "t:v1"],
    ));
    assert_eq!(got["version"], want["version"]);
    client_ok(env, &cs, &["store", "fsck"]);
}

#[test]
fn nginx_serves_the_same_repository() {
    if !have("nginx") {
        skip("nginx not installed (Debian package nginx)");
        return;
    }
    if !is_root() {
        skip("nginx test runs nginx as root so it can read the test directories");
        return;
    }
    let env = Env::new();
    let (repo, src) = published(&env);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let prefix = env.path("nginx");
    fs::create_dir_all(prefix.join("logs")).unwrap();
    let conf = prefix.join("nginx.conf");
    fs::write(
        &conf,
        format!(
            "user root;\ndaemon off;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log;\nevents {{}}\nhttp {{\n  access_log {p}/logs/access.log;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n  fastcgi_temp_path {p}/fcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n  server {{\n    listen 127.0.0.1:{port};\n    root {r};\n    location ~ /\\. {{ deny all; }}\n  }}\n}}\n",
            p = s(&prefix),
            r = s(&repo)
        ),
    )
    .unwrap();
    let mut nginx = Command::new("nginx")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(&prefix)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let cs = client_store(&env);
    let pulled = client(
        &env,
        &cs,
        &["pull", &url, "t:v1", "--root", &root_of(&repo)],
    );
    let head = Command::new("curl")
        .args(["-sS", "-D", "-", "-o", "/dev/null", "-r", "0-9"])
        .arg(format!("{url}metadata/1.root.json"))
        .output();
    // Stop master and workers (killing the master alone leaves the workers behind).
    let _ = Command::new("nginx")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(&prefix)
        .args(["-s", "stop"])
        .status();
    let _ = nginx.wait();
    assert!(
        pulled.status.success(),
        "{}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    assert!(String::from_utf8_lossy(&head.unwrap().stdout).starts_with("HTTP/1.1 206"));
    let out = env.path("out");
    client_ok(&env, &cs, &["image", "export", "t:v1", s(&out)]);
    assert_same_tree(&src, &out);
}

#[test]
fn key_rotation_is_followed_by_clients() {
    let env = Env::new();
    let (repo, src) = published(&env);
    let cs = client_store(&env);
    client_ok(
        &env,
        &cs,
        &["pull", s(&repo), "t:v1", "--root", &root_of(&repo)],
    );
    let old_timestamp_key = fs::read(env.path("repo.keys/timestamp.pk8")).unwrap();
    env.ok(&["repo", "key", "rotate", "timestamp", s(&repo)]);
    env.ok(&["repo", "key", "rotate", "root", s(&repo)]);
    assert!(repo.join("metadata/3.root.json").exists());
    assert_ne!(
        fs::read(env.path("repo.keys/timestamp.pk8")).unwrap(),
        old_timestamp_key
    );
    // Rotated-out keys are gone, not kept beside the new ones.
    let mut left: Vec<String> = fs::read_dir(env.path("repo.keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "1.root.json",
            "policy.json",
            "root.pk8",
            "snapshot.pk8",
            "targets.pk8",
            "timestamp.pk8"
        ]
    );
    // A key others may read is refused (as ssh refuses one), before anything is signed.
    let ts_key = env.path("repo.keys/timestamp.pk8");
    fs::set_permissions(&ts_key, fs::Permissions::from_mode(0o644)).unwrap();
    let before = fs::read(repo.join("metadata/timestamp.json")).unwrap();
    let e = env.fails(&["push", "t:v1", s(&repo)]);
    assert!(
        e.contains("timestamp.pk8") && e.contains("mode 0644") && e.contains("chmod 600"),
        "{e}"
    );
    assert_eq!(
        fs::read(repo.join("metadata/timestamp.json")).unwrap(),
        before
    );
    fs::set_permissions(&ts_key, fs::Permissions::from_mode(0o600)).unwrap();
    // What a rotation cut short left is named, not overwritten: here the second key of a
    // replace stopped between its renames (the first went into place).
    let stray = env.path("repo.keys/targets.2.pk8.new");
    fs::write(&stray, b"x").unwrap();
    let e = env.fails(&["repo", "key", "rotate", "targets", s(&repo)]);
    assert!(
        e.contains("targets.2.pk8.new") && e.contains("cut short"),
        "{e}"
    );
    fs::remove_file(&stray).unwrap();
    fs::write(src.join("after-rotation"), b"x").unwrap();
    env.ok(&["image", "import", s(&src), "t:v1"]);
    env.ok(&["push", "t:v1", s(&repo)]);
    let want = json(&env.ok(&["image", "inspect", "--json", "t:v1"]));
    // A client that trusted root 1 earlier, and a new one given only root 1, both follow.
    for store in [cs, env.path("fresh")] {
        client_ok(
            &env,
            &store,
            &["pull", s(&repo), "t:v1", "--root", &root_of(&repo)],
        );
        let got = json(&client_ok(
            &env,
            &store,
            &["image", "inspect", "--json", "t:v1"],
        ));
        assert_eq!(got["version"], want["version"]);
    }
    // An unknown role is refused by name.
    let e = env.fails(&["repo", "key", "rotate", "nosuchrole", s(&repo)]);
    assert!(e.contains("nosuchrole"), "{e}");
}

/// `repo init --offline-root DIR` keeps the root keys out of the online key directory:
/// publishing goes on without them, a rotation asks for them, and clients follow it.
#[test]
fn root_keys_kept_offline() {
    let env = Env::new();
    let src = env.path("src");
    torture_tree(&src, false);
    env.ok(&["image", "import", s(&src), "t:v1"]);
    let repo = env.path("repo");
    let keys = env.path("repo.keys");
    let offline = env.path("usb-stick");
    let e = env.fails(&["repo", "init", s(&repo), "--offline-root", s(&keys)]);
    assert!(e.contains("key directory itself"), "{e}");
    env.ok(&["repo", "init", s(&repo), "--offline-root", s(&offline)]);
    assert!(!keys.join("root.pk8").exists(), "the root key went online");
    let mode = fs::metadata(offline.join("root.pk8"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Publishing needs no root key.
    env.ok(&["push", "t:v1", s(&repo)]);
    let cs = client_store(&env);
    client_ok(
        &env,
        &cs,
        &["pull", s(&repo), "t:v1", "--root", &root_of(&repo)],
    );
    // A rotation does, and says where to give it.
    let e = env.fails(&["repo", "key", "rotate", "targets", s(&repo)]);
    assert!(e.contains("--root-keys"), "{e}");
    assert!(!repo.join("metadata/2.root.json").exists());
    assert!(
        !keys.join("targets.pk8.new").exists(),
        "a failed rotation left keys"
    );
    for role in ["targets", "root"] {
        env.ok(&[
            "repo",
            "key",
            "rotate",
            role,
            s(&repo),
            "--root-keys",
            s(&offline),
        ]);
    }
    assert!(repo.join("metadata/3.root.json").exists());
    assert!(
        !keys.join("root.pk8").exists(),
        "the new root key went online"
    );
    fs::write(src.join("after-rotation"), b"x").unwrap();
    env.ok(&["image", "import", s(&src), "t:v1"]);
    env.ok(&["push", "t:v1", s(&repo)]);
    let want = json(&env.ok(&["image", "inspect", "--json", "t:v1"]));
    client_ok(&env, &cs, &["pull", s(&repo), "t:v1"]);
    let got = json(&client_ok(
        &env,
        &cs,
        &["image", "inspect", "--json", "t:v1"],
    ));
    assert_eq!(got["version"], want["version"]);
}

/// An S3-compatible server (moto, from PyPI) on a free loopback port; killed on drop.
struct S3Server {
    child: Child,
    port: u16,
}

impl S3Server {
    fn start(env: &Env) -> Option<S3Server> {
        let venv = venv("venv-moto", "moto[server]==5.2.5", "import moto.server")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = fs::File::create(env.path("s3.log")).unwrap();
        let child = Command::new(venv.join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("moto_server");
        let server = S3Server { child, port };
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed().as_secs() < 60,
                "S3 server did not start: {}",
                fs::read_to_string(env.path("s3.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Some(server)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A bucket whose objects anyone may read (as a repository behind a CDN would be).
    fn public_bucket(&self, name: &str) {
        // The server checks that requests carry credentials, not the signature.
        let auth = "Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0";
        let url = format!("{}/{name}", self.url());
        tool(
            "curl",
            &[
                "-sf",
                "-X",
                "PUT",
                "-H",
                auth,
                "-H",
                "Content-Length: 0",
                &url,
            ],
        );
        let policy = format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::{name}/*"}}]}}"#
        );
        tool(
            "curl",
            &[
                "-sf",
                "-X",
                "PUT",
                "-H",
                auth,
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &policy,
                &format!("{url}?policy"),
            ],
        );
    }

    /// What `starling` needs in its environment to reach the server.
    fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.url()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn with_vars(env: &Env, vars: &[(&str, String)], args: &[&str]) -> std::process::Output {
    env.cmd()
        .args(args)
        .envs(vars.iter().cloned())
        .output()
        .unwrap()
}

fn ok_with(env: &Env, vars: &[(&str, String)], args: &[&str]) -> String {
    let o = with_vars(env, vars, args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn s3_push_is_pulled_over_http_and_survives_concurrent_and_killed_pushes() {
    let env = Env::new();
    let Some(s3) = S3Server::start(&env) else {
        return;
    };
    s3.public_bucket("images");
    let vars = s3.vars();
    let src = env.path("src");
    torture_tree(&src, false);
    env.ok(&["image", "import", s(&src), "t:v1"]);
    let keys = env.path("keys");
    let dest = "s3://images/prod/repo";

    // Object storage has no place for keys: --keys is required.
    let o = with_vars(&env, &vars, &["repo", "init", dest]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--keys"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let root = ok_with(&env, &vars, &["repo", "init", dest, "--keys", s(&keys)]);
    let root = root.trim().to_string();
    assert!(Path::new(&root).exists(), "{root}");
    // A second init of the same place is refused.
    let o = with_vars(
        &env,
        &vars,
        &["repo", "init", dest, "--keys", s(&env.path("k2"))],
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let p = json(&ok_with(
        &env,
        &vars,
        &["push", "--json", "t:v1", dest, "--keys", s(&keys)],
    ));
    assert_eq!(p["uploaded"], p["objects"], "{p}");
    // The bucket is a repository any HTTP client reads: pull it over plain HTTP.
    let http = format!("{}/images/prod/repo", s3.url());
    let cs = client_store(&env);
    client_ok(&env, &cs, &["pull", &http, "t:v1", "--root", &root]);
    let out = env.path("out");
    client_ok(&env, &cs, &["image", "export", "t:v1", s(&out)]);
    assert_same_tree(&src, &out);

    // A second version uploads only what changed.
    fs::write(src.join("new-file"), vec![9u8; 100_000]).unwrap();
    let imported = json(&env.ok(&["image", "import", "--json", s(&src), "t:v1"]));
    let new = imported["new_objects"].as_u64().unwrap();
    let p = json(&ok_with(
        &env,
        &vars,
        &["push", "--json", "t:v1", dest, "--keys", s(&keys)],
    ));
    assert_eq!(
        p["uploaded"].as_u64().unwrap(),
        new,
        "uploads are the objects new since the previous version: {p}"
    );
    let r = json(&client_ok(&env, &cs, &["pull", "--json", &http, "t:v1"]));
    assert_eq!(r["fetched"].as_u64().unwrap(), new, "{r}");

    // Wrong bucket: a clear error naming it.
    let o = with_vars(
        &env,
        &vars,
        &["push", "t:v1", "s3://no-such-bucket/x", "--keys", s(&keys)],
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("no-such-bucket"), "{e}");

    // The key directory through the environment this time.
    let mut v = vars.clone();
    v.push(("STARLING_KEYS", s(&keys).to_string()));
    pushes_never_half_publish(&env, &src, dest, &v, &http, &root);
}

#[test]
fn thresholds_need_every_role_key() {
    let env = Env::new();
    let src = env.path("src");
    torture_tree(&src, false);
    env.ok(&["image", "import", s(&src), "t:v1"]);
    let repo = env.path("repo");
    env.ok(&[
        "repo",
        "init",
        s(&repo),
        "--threshold",
        "2",
        "--root-threshold",
        "3",
    ]);
    let root: serde_json::Value =
        serde_json::from_slice(&fs::read(repo.join("metadata/1.root.json")).unwrap()).unwrap();
    for (role, want) in [
        ("root", 3),
        ("targets", 2),
        ("snapshot", 2),
        ("timestamp", 2),
    ] {
        let r = &root["signed"]["roles"][role];
        assert_eq!(r["threshold"], want, "{role}: {r}");
        assert_eq!(
            r["keyids"].as_array().unwrap().len(),
            want as usize,
            "{role}"
        );
    }
    assert_eq!(root["signatures"].as_array().unwrap().len(), 3);
    env.ok(&["push", "t:v1", s(&repo)]);
    let ts: serde_json::Value =
        serde_json::from_slice(&fs::read(repo.join("metadata/timestamp.json")).unwrap()).unwrap();
    assert_eq!(ts["signatures"].as_array().unwrap().len(), 2);
    let cs = env.path("client0");
    client_ok(
        &env,
        &cs,
        &["pull", s(&repo), "t:v1", "--root", &root_of(&repo)],
    );

    // One signature short: a client refuses it.
    let mut bad = ts.clone();
    bad["signatures"].as_array_mut().unwrap().pop();
    let good = fs::read(repo.join("metadata/timestamp.json")).unwrap();
    fs::write(
        repo.join("metadata/timestamp.json"),
        serde_json::to_vec(&bad).unwrap(),
    )
    .unwrap();
    let e = refused_pull(&env, s(&repo), &repo);
    assert!(e.contains("threshold") || e.contains("signature"), "{e}");
    fs::write(repo.join("metadata/timestamp.json"), good).unwrap();

    // A publisher missing one of a role's keys cannot sign: refused before anything changes.
    fs::write(src.join("more"), b"more").unwrap();
    env.ok(&["image", "import", s(&src), "t:v1"]);
    let keys = env.path("repo.keys");
    fs::rename(keys.join("snapshot.2.pk8"), env.path("aside.pk8")).unwrap();
    let before = fs::read(repo.join("metadata/timestamp.json")).unwrap();
    let e = env.fails(&["push", "t:v1", s(&repo)]);
    assert!(e.contains("threshold"), "{e}");
    assert_eq!(
        fs::read(repo.join("metadata/timestamp.json")).unwrap(),
        before
    );
    fs::rename(env.path("aside.pk8"), keys.join("snapshot.2.pk8")).unwrap();
    env.ok(&["push", "t:v1", s(&repo)]);

    // Rotation replaces every key of the role, and clients follow the new root.
    env.ok(&["repo", "key", "rotate", "root", s(&repo)]);
    let r2: serde_json::Value =
        serde_json::from_slice(&fs::read(repo.join("metadata/2.root.json")).unwrap()).unwrap();
    // Signed by the 3 old and the 3 new root keys.
    assert_eq!(r2["signatures"].as_array().unwrap().len(), 6, "{r2}");
    let cs2 = env.path("client2");
    client_ok(
        &env,
        &cs2,
        &["repo", "ls", s(&repo), "--root", &root_of(&repo)],
    );
}

/// On a terminal, push and pull say what they are doing as they go (objects, bytes, rate);
/// piped, nothing of it. The terminal is a pseudo-terminal from script(1).
#[test]
fn push_and_pull_show_progress_on_a_terminal() {
    if !have("script") {
        skip("script(1) is missing (Debian package bsdutils)");
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    for d in 0..10 {
        let dir = src.join(format!("d{d}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..200 {
            fs::write(dir.join(format!("f{f}")), pseudo_random(4096, d * 1000 + f)).unwrap();
        }
    }
    env.ok(&["image", "import", s(&src), "big:v1"]);
    let repo = env.path("repo");
    env.ok(&["repo", "init", s(&repo)]);
    let on_tty = |store: &Path, args: &str| {
        let cmd = format!(
            "{} --store {} {args}",
            env!("CARGO_BIN_EXE_starling"),
            store.display()
        );
        let out = Command::new("script")
            .args(["-q", "-e", "-c", &cmd, "/dev/null"])
            .output()
            .unwrap();
        let tty = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{args}: {tty}");
        tty
    };
    let frames = |tty: &str, verb: &str| -> Vec<u64> {
        tty.split(['\r', '\n', '\u{1b}'])
            .filter_map(|frame| {
                let (before, _) = frame.split_once(" objects, ")?;
                let (_, n) = before.split_once(verb)?;
                n.trim().parse().ok()
            })
            .collect()
    };
    let tty = on_tty(&env.store, &format!("push big:v1 {}", repo.display()));
    assert!(!frames(&tty, "pushing").is_empty(), "{tty:?}");
    assert!(tty.contains("pushed "), "{tty:?}");
    let cs = client_store(&env);
    let tty = on_tty(
        &cs,
        &format!("pull {} big:v1 --root {}", repo.display(), root_of(&repo)),
    );
    let counts = frames(&tty, "pulling");
    assert!(
        !counts.is_empty() && counts.windows(2).all(|w| w[0] <= w[1]),
        "{counts:?} {tty:?}"
    );
    // Human units in the summary.
    assert!(tty.contains(" MiB)"), "{tty:?}");
    // Piped: the summary only.
    let cs2 = env.path("client2");
    let o = client(
        &env,
        &cs2,
        &["pull", s(&repo), "big:v1", "--root", &root_of(&repo)],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        !err.contains('\r') && !err.contains('\u{1b}') && !err.contains("pulling"),
        "{err:?}"
    );
}

/// A `--root` given again must be the root the repository is trusted with: another
/// repository's root, or a file that is not root metadata, is refused naming both, never
/// ignored. `repo trust ls|rm` shows and drops trust.
#[test]
fn another_root_is_refused_and_trust_is_listed_and_dropped() {
    let env = Env::new();
    let (repo, _) = published(&env);
    let root = root_of(&repo);
    let cs = client_store(&env);
    let url = format!("{}/", repo.canonicalize().unwrap().display());
    // Not root metadata, on first contact: refused before anything is trusted.
    let targets = repo.join("metadata/timestamp.json");
    let o = client(
        &env,
        &cs,
        &["pull", s(&repo), "t:v1", "--root", s(&targets)],
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("is not root metadata (its signed._type is \"timestamp\")"),
        "{e}"
    );
    client_ok(&env, &cs, &["pull", s(&repo), "t:v1", "--root", &root]);
    // The same root again is fine.
    client_ok(&env, &cs, &["pull", s(&repo), "t:v1", "--root", &root]);
    // Another repository's root: refused, both named, the way out said.
    let other = env.path("other-repo");
    env.ok(&["repo", "init", s(&other)]);
    let o = client(
        &env,
        &cs,
        &["pull", s(&repo), "t:v1", "--root", &root_of(&other)],
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{e}");
    assert!(
        e.contains("is trusted with root version 1 (sha256 ")
            && e.contains(&format!("--root {} is root version 1", root_of(&other)))
            && e.contains("repo trust rm"),
        "{e}"
    );
    let ls = json(&client_ok(&env, &cs, &["repo", "trust", "ls", "--json"]));
    let urls: Vec<&str> = ls
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["url"].as_str())
        .collect();
    assert_eq!(urls, [format!("file://{url}").as_str()], "{ls}");
    assert_eq!(ls[0]["root_version"], 1);
    client_ok(&env, &cs, &["repo", "trust", "rm", s(&repo)]);
    let e = client_fails(&env, &cs, &["pull", s(&repo), "t:v1"]);
    assert!(e.contains("first contact"), "{e}");
    let o = client(&env, &cs, &["repo", "trust", "rm", s(&repo)]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Dropped, the other root may be trusted (and then this repository's metadata fails
    // its verification, as it must).
    let o = client(
        &env,
        &cs,
        &["pull", s(&repo), "t:v1", "--root", &root_of(&other)],
    );
    assert_eq!(o.status.code(), Some(4));
}

#[test]
fn a_repository_nobody_pushes_to_stays_mountable_through_refresh() {
    let env = Env::new();
    one_file_image(&env);
    let repo = env.path("repo");
    env.ok(&[
        "repo",
        "init",
        s(&repo),
        "--timestamp-expires",
        "3",
        "--snapshot-expires",
        "1h",
    ]);
    env.ok(&["push", "t:v1", s(&repo)]);
    let cs = client_store(&env);
    let root = root_of(&repo);
    client_ok(&env, &cs, &["repo", "ls", s(&repo), "--root", &root]);
    // Nothing due yet: nothing is signed.
    let r = json(&env.ok(&["repo", "refresh", "--json", s(&repo)]));
    assert_eq!(r["resigned"], serde_json::json!([]), "{r}");
    let ts_before = r["timestamp_version"].as_u64().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(3100));
    // Expired: every client refuses the repository (a freeze looks the same).
    let o = client(&env, &cs, &["repo", "ls", s(&repo)]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("expired"));
    // Refreshed: the timestamp alone is signed again, and clients read the repository again.
    let r = json(&env.ok(&["repo", "refresh", "--json", s(&repo)]));
    assert_eq!(r["resigned"], serde_json::json!(["timestamp"]), "{r}");
    assert_eq!(r["timestamp_version"].as_u64().unwrap(), ts_before + 1);
    let ls = json(&client_ok(&env, &cs, &["repo", "ls", "--json", s(&repo)]));
    assert_eq!(ls[0]["name"], "t");
    // --force signs targets, snapshot and timestamp anew: a client follows, and pulls.
    let out = env.ok(&["repo", "refresh", "--force", s(&repo)]);
    assert!(
        out.starts_with("re-signed targets, snapshot, timestamp; timestamp "),
        "{out}"
    );
    client_ok(&env, &cs, &["pull", s(&repo), "t:v1"]);
    let r = json(&env.ok(&["repo", "refresh", "--json", s(&repo)]));
    assert_eq!(r["resigned"], serde_json::json!([]), "{r}");
    // A snapshot that would expire before a timestamp signed now is due, and with it targets
    // and timestamp.
    let short = env.path("short");
    env.ok(&[
        "repo",
        "init",
        s(&short),
        "--timestamp-expires",
        "1h",
        "--snapshot-expires",
        "30m",
    ]);
    let r = json(&env.ok(&["repo", "refresh", "--json", s(&short)]));
    assert_eq!(
        r["resigned"],
        serde_json::json!(["targets", "snapshot", "timestamp"]),
        "{r}"
    );
    // Such a policy re-signs everything each time: said.
    assert!(
        r["warning"]
            .as_str()
            .is_some_and(|w| w.contains("shorter than the timestamp")),
        "{r}"
    );
    let e = env.fails(&["repo", "refresh", s(&env.path("nothing-here"))]);
    assert!(e.contains("nothing-here"), "{e}");
}

/// dist/systemd's refresh timer and service, judged by systemd-analyze, and the service's
/// command run as systemd would run it (PID 1 here is not systemd): with the instance's
/// environment file's REPO and KEYS, it re-signs an expired repository's timestamp.
#[test]
fn the_refresh_timer_verifies_and_its_service_refreshes_the_repository() {
    if !have("systemd-analyze") {
        skip("systemd-analyze is missing (Debian package systemd)");
        return;
    }
    let env = Env::new();
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/systemd");
    let units = env.path("units");
    fs::create_dir_all(&units).unwrap();
    let service = fs::read_to_string(dist.join("starling-repo-refresh@.service")).unwrap();
    let timer = fs::read_to_string(dist.join("starling-repo-refresh@.timer")).unwrap();
    let binary = env!("CARGO_BIN_EXE_starling");
    let env_dir = env.path("env");
    let service = service
        .replace("/usr/local/bin/starling", binary)
        .replace("/etc/starling/repo-refresh", s(&env_dir));
    let checked = [
        (units.join("starling-repo-refresh@t.service"), &service),
        (units.join("starling-repo-refresh@t.timer"), &timer),
    ];
    for (p, text) in &checked {
        fs::write(p, text).unwrap();
    }
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .args(checked.iter().map(|(p, _)| p))
        .env("SYSTEMD_UNIT_PATH", format!("{}:", units.display()))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stderr).to_string()
        + &String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );

    // The instance's environment file, and an expired repository.
    one_file_image(&env);
    let repo = env.path("repo");
    env.ok(&["repo", "init", s(&repo), "--timestamp-expires", "1"]);
    env.ok(&["push", "t:v1", s(&repo)]);
    fs::create_dir_all(&env_dir).unwrap();
    let keys = env.path("repo.keys");
    fs::write(
        env_dir.join("t.env"),
        format!("REPO={}\nKEYS={}\n", repo.display(), keys.display()),
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let exec = service
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap()
        .replace("$REPO", s(&repo))
        .replace("$KEYS", s(&keys));
    // With the unit's UMask, as systemd would run it.
    let umask = service
        .lines()
        .find_map(|l| l.strip_prefix("UMask="))
        .unwrap_or("0022");
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("umask {umask}; exec {exec}"))
        .env("STARLING_STORE", &env.store)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.starts_with("re-signed timestamp; timestamp "), "{out}");
    // The web server serving the repository (another user) can still read what was signed.
    let mode = fs::metadata(repo.join("metadata/timestamp.json"))
        .unwrap()
        .permissions()
        .mode();
    assert!(
        mode & 0o004 != 0,
        "timestamp.json is {mode:o} after a refresh"
    );
    let cs = client_store(&env);
    client_ok(
        &env,
        &cs,
        &["pull", s(&repo), "t:v1", "--root", &root_of(&repo)],
    );
}

/// Many clients of one trust state at once (as a daemon's mounts and group polls, or pulls
/// run side by side) while the repository moves on: every one verifies, none reads the
/// state another is rewriting.
#[test]
fn concurrent_clients_of_one_trust_state_all_verify_while_the_repository_moves_on() {
    let env = Env::new();
    let (repo, src) = published(&env);
    let server = Server::start(&env, &repo);
    let cs = client_store(&env);
    client_ok(
        &env,
        &cs,
        &["repo", "ls", &server.url, "--root", &root_of(&repo)],
    );
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|sc| {
        sc.spawn(|| {
            for i in 0..6 {
                fs::write(src.join("moving"), format!("version {i}")).unwrap();
                env.ok(&["image", "import", s(&src), "t:v1"]);
                env.ok(&["push", "t:v1", s(&repo)]);
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        for _ in 0..6 {
            sc.spawn(|| {
                let mut runs = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || runs < 3 {
                    let o = client(&env, &cs, &["repo", "ls", "--json", &server.url]);
                    assert!(
                        o.status.success(),
                        "run {runs}: {}",
                        String::from_utf8_lossy(&o.stderr)
                    );
                    runs += 1;
                }
            });
        }
    });
    client_ok(&env, &cs, &["pull", &server.url, "t:v1"]);
    client_ok(&env, &cs, &["store", "fsck"]);
}
