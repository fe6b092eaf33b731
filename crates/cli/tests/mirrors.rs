//! A repository served by mirrors (copies of its directory) and reached through them: a
//! mirror that dies in the middle of a pull, one serving tampered or stale metadata, one
//! serving a damaged object; each passed over for the next with everything verified by the
//! one root. And starlingd's configuration file: repositories with pinned roots and mirrors,
//! the only ones it serves.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::daemon::Daemon;
use common::*;

/// A repository whose image `t:v1` has `files` files of distinct random content (an object
/// each, so a pull makes that many requests).
fn published(env: &Env, files: usize) -> (PathBuf, PathBuf) {
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..files {
        fs::write(
            src.join(format!("f{i:04}")),
            pseudo_random(20_000 + i, i as u64 + 1),
        )
        .unwrap();
    }
    env.ok(&["image", "import", s(&src), "t:v1"]);
    let repo = env.path("repo");
    env.ok(&["repo", "init", s(&repo)]);
    env.ok(&["push", "t:v1", s(&repo)]);
    (repo, src)
}

/// What a mirror holds: a copy of the repository directory (as rsync would make it).
fn sync(repo: &Path, mirror: &Path) {
    fs::create_dir_all(mirror).unwrap();
    let ok = Command::new("cp")
        .args(["-a", &format!("{}/.", repo.display()), s(mirror)])
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a {} {}", repo.display(), mirror.display());
}

fn root_of(repo: &Path) -> String {
    s(&repo.join("metadata/1.root.json")).to_string()
}

fn pull(_env: &Env, store: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_starling"))
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .unwrap()
}

fn pulled(env: &Env, store: &Path, args: &[&str]) -> (serde_json::Value, String) {
    let o = pull(env, store, args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{args:?}: {err}");
    (json(&String::from_utf8_lossy(&o.stdout)), err)
}

/// A web server on the repository that dies, as a mirror whose host goes down does (its
/// connections reset, nothing listening after), once it has served `objects` objects.
struct Dying {
    child: Child,
    url: String,
}

impl Dying {
    fn start(dir: &Path, objects: usize) -> Dying {
        let script = r#"
import functools, http.server, os, sys, threading
dir, limit = sys.argv[1], int(sys.argv[2])
served, lock = 0, threading.Lock()
class H(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        global served
        if self.path.startswith('/objects/'):
            with lock:
                served += 1
                if served > limit:
                    os._exit(1)
        super().do_GET()
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(H, directory=dir))
print('http://127.0.0.1:%d/' % srv.server_address[1], flush=True)
srv.serve_forever()
"#;
        let mut child = Command::new("python3")
            .args(["-c", script, s(dir), &objects.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut url = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut url)
            .unwrap();
        Dying {
            child,
            url: url.trim().to_string(),
        }
    }

    fn is_dead(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }
}

impl Drop for Dying {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_pull_goes_on_from_the_next_mirror_when_one_dies_half_way() {
    let env = Env::new();
    let (repo, src) = published(&env, 300);
    let (a, b) = (env.path("mirror-a"), env.path("mirror-b"));
    sync(&repo, &a);
    sync(&repo, &b);
    let mut first = Dying::start(&a, 40);
    let second = Server::start(&env, &b);
    let cs = env.path("client");
    let (r, err) = pulled(
        &env,
        &cs,
        &[
            "pull",
            "--json",
            &first.url,
            "t:v1",
            "--root",
            &root_of(&repo),
            "--mirror",
            &second.url,
        ],
    );
    assert!(first.is_dead(), "the first mirror died half-way");
    assert_eq!(r["fetched"], r["objects"], "{r}");
    let served = second.object_requests();
    let total = r["objects"].as_u64().unwrap() as usize;
    assert!(
        served > 0 && served < total,
        "the second mirror served what the first did not: {served} of {total}"
    );
    // Said, once per failure, in a line naming the route that failed.
    assert!(
        err.contains(&format!("starling: {}", first.url))
            && err.contains(&format!("{} serves instead", second.url)),
        "{err}"
    );
    // Every object verified: the store checks clean and the image is the one pushed.
    let o = pull(&env, &cs, &["store", "fsck"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = env.path("out");
    let o = pull(&env, &cs, &["image", "export", "t:v1", s(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_tree(&src, &out);
}

#[test]
fn mirrors_with_tampered_or_stale_metadata_or_a_damaged_object_are_passed_over() {
    let env = Env::new();
    let (repo, src) = published(&env, 20);
    let (a, b) = (env.path("mirror-a"), env.path("mirror-b"));
    sync(&repo, &a);
    sync(&repo, &b);
    let root = root_of(&repo);

    // Tampered: mirror A's timestamp no longer matches its signature.
    let ts = a.join("metadata/timestamp.json");
    let good_ts = fs::read(&ts).unwrap();
    let mut t = json(&String::from_utf8_lossy(&good_ts));
    t["signed"]["expires"] = serde_json::json!("2099-01-01T00:00:00Z");
    fs::write(&ts, serde_json::to_vec(&t).unwrap()).unwrap();
    let sa = Server::start(&env, &a);
    let sb = Server::start(&env, &b);
    let cs = env.path("client");
    let (_, err) = pulled(
        &env,
        &cs,
        &[
            "pull", "--json", &sa.url, "t:v1", "--root", &root, "--mirror", &sb.url,
        ],
    );
    assert!(
        err.contains(&sa.url) && err.to_lowercase().contains("signature"),
        "{err}"
    );
    fs::write(&ts, &good_ts).unwrap();

    // Every mirror tampered: refused (a trust failure, 4), each mirror's reason named once.
    let tb = b.join("metadata/timestamp.json");
    let good_tb = fs::read(&tb).unwrap();
    fs::write(&ts, serde_json::to_vec(&t).unwrap()).unwrap();
    fs::write(&tb, serde_json::to_vec(&t).unwrap()).unwrap();
    let cs2 = env.path("client2");
    let o = pull(
        &env,
        &cs2,
        &[
            "pull", &sa.url, "t:v1", "--root", &root, "--mirror", &sb.url,
        ],
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{e}");
    let last = e.lines().last().unwrap_or_default();
    assert!(
        last.contains("no route serves metadata that verifies")
            && last.contains(&sa.url)
            && last.contains(&sb.url),
        "{e}"
    );
    fs::write(&ts, &good_ts).unwrap();
    fs::write(&tb, &good_tb).unwrap();

    // Stale: a second version reaches mirror B only. The client learns it while A is down;
    // then A comes back serving the old metadata, which is a rollback: B is used.
    fs::write(src.join("f0000"), b"second version").unwrap();
    env.ok(&["image", "import", s(&src), "t:v1"]);
    let v2 = json(&env.ok(&["push", "--json", "t:v1", s(&repo)]))["version"]
        .as_str()
        .unwrap()
        .to_string();
    sync(&repo, &b);
    let addr = sa.addr.clone();
    drop(sa);
    let (ls, _) = pulled(
        &env,
        &cs,
        &[
            "repo",
            "ls",
            "--json",
            &format!("http://{addr}/"),
            "--mirror",
            &sb.url,
        ],
    );
    assert_eq!(ls[0]["target"], v2.as_str(), "{ls}");
    let sa = Server::start_on(&env, &a, &addr);
    let (r, err) = pulled(
        &env,
        &cs,
        &["pull", "--json", &sa.url, "t:v1", "--mirror", &sb.url],
    );
    assert_eq!(r["version"], v2.as_str(), "{r}");
    assert!(err.contains(&sa.url), "A's refusal is said: {err}");

    // A damaged object on the mirror tried first: the next one's copy is taken.
    sync(&repo, &a);
    let c = env.path("client3");
    let victim = fs::read_dir(a.join("objects"))
        .unwrap()
        .flat_map(|d| fs::read_dir(d.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = fs::read(&victim).unwrap();
    let n = bytes.len();
    bytes[n - 2] ^= 1;
    fs::write(&victim, bytes).unwrap();
    let (r, err) = pulled(
        &env,
        &c,
        &[
            "pull", "--json", &sa.url, "t:v1", "--root", &root, "--mirror", &sb.url,
        ],
    );
    assert_eq!(r["version"], v2.as_str());
    assert!(err.contains(&sa.url), "{err}");
    let o = pull(&env, &c, &["store", "fsck"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // A bomb on the mirror tried first: a few KiB declaring 64 MiB for a chunk of less. It is
    // refused by its declared length, before anything is decompressed; the next mirror's copy
    // is taken.
    fs::write(
        &victim,
        starling_store::encode_envelope(&vec![0u8; 64 << 20], 3),
    )
    .unwrap();
    assert!(fs::metadata(&victim).unwrap().len() < 64 << 10);
    let c = env.path("client4");
    let (r, err) = pulled(
        &env,
        &c,
        &[
            "pull", "--json", &sa.url, "t:v1", "--root", &root, "--mirror", &sb.url,
        ],
    );
    assert_eq!(r["version"], v2.as_str());
    assert!(err.contains("declares 67108864 bytes"), "{err}");
}

#[test]
fn the_daemon_serves_the_repositories_its_configuration_pins_through_their_mirrors() {
    if !std::path::Path::new("/dev/fuse").exists() {
        skip("/dev/fuse is missing: the daemon's mounts need it");
        return;
    }
    let env = Env::new();
    let (repo, src) = published(&env, 8);
    let b = env.path("mirror-b");
    sync(&repo, &b);
    let mirror = Server::start(&env, &b);
    // The repository's own URL answers nothing: every byte comes through the mirror.
    let origin = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}/", l.local_addr().unwrap().port())
    };
    let conf_dir = env.path("etc");
    fs::create_dir_all(&conf_dir).unwrap();
    fs::copy(
        repo.join("metadata/1.root.json"),
        conf_dir.join("t.root.json"),
    )
    .unwrap();
    let conf = conf_dir.join("starlingd.toml");
    fs::write(
        &conf,
        format!(
            "cache_size = \"1G\"\ntimeout = \"5s\"\n\n[[repository]]\nurl = \"{origin}\"\n\
             root = \"t.root.json\"\nmirrors = [\"{}\"]\n",
            mirror.url
        ),
    )
    .unwrap();

    // --check-config says what would be used; a mistake is one line naming file and key.
    let o = env
        .cmd()
        .args(["daemon", "--check-config", "--config", s(&conf)])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains(&format!("repository {origin}"))
            && out.contains(&format!("mirror {}", mirror.url))
            && out.contains("root version 1"),
        "{out}"
    );
    let bad = conf_dir.join("bad.toml");
    fs::write(&bad, "cache_size = \"lots\"\n").unwrap();
    let o = env
        .cmd()
        .args(["daemon", "--check-config", "--config", s(&bad)])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains(s(&bad)) && e.contains("cache_size"), "{e}");

    let d = Daemon::start(&env, &env.path("state"), &["--config", s(&conf)]);
    // No --root: the configuration pins it.
    let mp = env.path("mp");
    fs::create_dir_all(&mp).unwrap();
    d.ok(&env, &["mount", &origin, "t:v1", s(&mp)]);
    assert_same_tree(&src, &mp);
    assert!(mirror.object_requests() > 0);
    d.ok(&env, &["umount", s(&mp)]);

    // A root other than the pinned one is refused, naming both.
    let other = env.path("other-repo");
    env.ok(&["repo", "init", s(&other)]);
    let e = d.fails(
        &env,
        &["mount", &origin, "t:v1", s(&mp), "--root", &root_of(&other)],
    );
    assert!(
        e.contains("is trusted on this host with") && e.contains("t.root.json"),
        "{e}"
    );
    // A repository the configuration does not list is not served, whatever root comes.
    env.ok(&["push", "t:v1", s(&other)]);
    let served = Server::start(&env, &other);
    let e = d.fails(
        &env,
        &[
            "mount",
            &served.url,
            "t:v1",
            s(&mp),
            "--root",
            &root_of(&other),
        ],
    );
    assert!(
        e.contains("is not one this host serves") && e.contains(s(&conf)),
        "{e}"
    );
    assert_eq!(served.object_requests(), 0);
}
