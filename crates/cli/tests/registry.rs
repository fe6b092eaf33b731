//! OCI registries: Debian's `docker-registry` (the CNCF distribution registry) on loopback,
//! with skopeo and umoci as the independent judges. What skopeo copies in is what Starling
//! pulls; what Starling pushes, skopeo copies out and umoci unpacks to the same tree; a
//! tampered or truncated blob and a missing login are refused, with nothing stored.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;

/// How a test registry wants its clients to log in.
enum Login<'a> {
    None,
    /// HTTP basic authentication against an htpasswd file.
    Basic(&'a str, &'a str),
    /// The distribution spec's token authentication: the registry sends clients to a token
    /// server (tests/fixtures/registry-token-server.py) and takes the JWTs it signs.
    Token(&'a str, &'a str),
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `docker-registry serve` on a free loopback port, its storage in the test's directory,
/// asking for the login given (and its token server running). Killed on drop.
struct Registry {
    child: Child,
    token_server: Option<Child>,
    addr: String,
    storage: PathBuf,
}

impl Registry {
    fn start(env: &Env, name: &str, htpasswd: Option<(&str, &str)>) -> Registry {
        match htpasswd {
            Some((u, p)) => Registry::with_login(env, name, Login::Basic(u, p)),
            None => Registry::with_login(env, name, Login::None),
        }
    }

    fn with_login(env: &Env, name: &str, login: Login) -> Registry {
        let dir = env.path(name);
        fs::create_dir_all(&dir).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let storage = dir.join("data");
        let mut token_server = None;
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\n",
            storage.display()
        );
        match login {
            Login::None => {}
            Login::Basic(user, password) => {
                let file = dir.join("htpasswd");
                let line = tool("htpasswd", &["-Bbn", user, password]);
                fs::write(&file, line.trim()).unwrap();
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                    file.display()
                ));
            }
            Login::Token(user, password) => {
                let (key, cert) = (dir.join("token-key.pem"), dir.join("token-cert.pem"));
                tool(
                    "openssl",
                    &[
                        "req",
                        "-x509",
                        "-newkey",
                        "rsa:2048",
                        "-nodes",
                        "-days",
                        "1",
                        "-subj",
                        "/CN=starling-test-token",
                        "-keyout",
                        s(&key),
                        "-out",
                        s(&cert),
                    ],
                );
                let tport = free_port();
                let script = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../tests/fixtures/registry-token-server.py");
                let mut child = Command::new("/usr/bin/python3")
                    .arg(&script)
                    .args([&tport.to_string(), s(&key), s(&cert), user, password])
                    .arg("starling-test-issuer")
                    .stdout(Stdio::piped())
                    .stderr(fs::File::create(dir.join("token-server.log")).unwrap())
                    .spawn()
                    .expect("token server");
                let mut line = String::new();
                std::io::BufRead::read_line(
                    &mut std::io::BufReader::new(child.stdout.take().unwrap()),
                    &mut line,
                )
                .unwrap();
                assert_eq!(line.trim(), "ready", "token server: {line}");
                token_server = Some(child);
                config.push_str(&format!(
                    "auth:\n  token:\n    realm: http://127.0.0.1:{tport}/token\n    \
                     service: starling-test\n    issuer: starling-test-issuer\n    \
                     rootcertbundle: {}\n",
                    cert.display()
                ));
            }
        }
        let cfg = dir.join("config.yml");
        fs::write(&cfg, config).unwrap();
        let child = Command::new("docker-registry")
            .args(["serve", s(&cfg)])
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("registry.log")).unwrap())
            .spawn()
            .expect("docker-registry");
        let r = Registry {
            child,
            token_server,
            addr,
            storage,
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(&r.addr).is_ok() {
                return r;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("docker-registry did not listen on {}", r.addr);
    }

    fn image(&self, name: &str) -> String {
        format!("docker://{}/{name}", self.addr)
    }

    /// The file the registry keeps a blob in.
    fn blob(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Registry {
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(t) = self.token_server.as_mut() {
            let _ = t.kill();
            let _ = t.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn require_registry_tools() -> bool {
    require_tool("skopeo", "skopeo");
    require_tool("umoci", "umoci");
    require_tool("docker-registry", "docker-registry");
    require_tool("htpasswd", "apache2-utils");
    if !is_root() {
        skip("umoci keeps owners and devices only as root");
        return false;
    }
    true
}

/// A layout made by umoci alone (a tree repacked into an image named `v1`).
fn umoci_layout(env: &Env, src: &Path) -> PathBuf {
    let layout = env.path("umoci-layout");
    tool("umoci", &["init", "--layout", s(&layout)]);
    tool("umoci", &["new", "--image", &format!("{}:v1", s(&layout))]);
    let bundle = env.path("umoci-bundle");
    tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:v1", s(&layout)),
            s(&bundle),
        ],
    );
    tool(
        "cp",
        &["-a", &format!("{}/.", s(src)), s(&bundle.join("rootfs"))],
    );
    tool(
        "umoci",
        &[
            "repack",
            "--image",
            &format!("{}:v1", s(&layout)),
            s(&bundle),
        ],
    );
    layout
}

fn skopeo(args: &[&str]) -> String {
    tool("skopeo", args)
}

/// `root_tree` of an image in a store other than the test's.
fn root_tree_in(store: &Path, image: &str) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_starling"))
        .arg("--store")
        .arg(store)
        .args(["image", "inspect", "--json", image])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    json(&String::from_utf8_lossy(&o.stdout))["root_tree"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `starling --store STORE ARGS…` with `envs`: its status and standard error.
fn starling_in(store: &Path, args: &[&str], envs: &[(&str, &Path)]) -> (Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_starling"))
        .arg("--store")
        .arg(store)
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).trim().to_string(),
    )
}

#[test]
fn skopeo_and_starling_agree_through_a_registry() {
    if !require_registry_tools() {
        return;
    }
    let env = Env::new();
    let reg = Registry::start(&env, "reg", None);
    let src = env.path("src");
    torture_tree(&src, false);
    let layout = umoci_layout(&env, &src);

    // In: skopeo copies umoci's image to the registry; Starling pulls it: the same tree as
    // Starling reading umoci's layout directly (which oci.rs holds to umoci's own unpack).
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", s(&layout)),
        &format!("{}:v1", reg.image("team/app")),
    ]);
    let out = env.run(&[
        "image",
        "import",
        &format!("{}:v1", reg.image("team/app")),
        "app:v1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("pulled docker://") && err.contains("1 layers"),
        "{err}"
    );
    env.ok(&[
        "image",
        "import",
        &format!("oci:{}:v1", s(&layout)),
        "app:direct",
    ]);
    assert_eq!(root_tree(&env, "app:v1"), root_tree(&env, "app:direct"));
    // The temporary layout is gone.
    let tmp = env.store.join("tmp");
    assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0, "{tmp:?}");

    // Out: Starling pushes a changed version; skopeo copies it out (checking every digest)
    // and umoci unpacks it to the changed tree.
    fs::write(src.join("tiny"), b"changed").unwrap();
    fs::write(src.join("added"), pseudo_random(200_000, 9)).unwrap();
    env.ok(&["image", "import", s(&src), "app:v2"]);
    let pushed = env.run(&[
        "image",
        "export",
        "app:v2",
        &format!("{}:v2", reg.image("team/app")),
    ]);
    let err = String::from_utf8_lossy(&pushed.stderr);
    assert!(pushed.status.success(), "{err}");
    let digest = String::from_utf8_lossy(&pushed.stdout).trim().to_string();
    assert!(digest.starts_with("sha256:"), "{digest}");
    let copied = env.path("copied");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("{}:v2", reg.image("team/app")),
        &format!("oci:{}:v2", s(&copied)),
    ]);
    let inspect = skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("{}:v2", reg.image("team/app")),
    ]);
    assert!(inspect.contains(&digest), "{inspect}");
    tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:v2", s(&copied)),
            s(&env.path("unpacked")),
        ],
    );
    // The tree umoci unpacks from the registry is the one it unpacks from Starling's own
    // layout export (oci.rs holds that to the source), and it imports back to the same tree.
    let direct = env.path("direct");
    env.ok(&[
        "image",
        "export",
        "app:v2",
        &format!("oci:{}:v2", s(&direct)),
    ]);
    tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:v2", s(&direct)),
            s(&env.path("direct-unpacked")),
        ],
    );
    assert_same_tree(
        &env.path("direct-unpacked/rootfs"),
        &env.path("unpacked/rootfs"),
    );
    assert_eq!(
        fs::read_to_string(env.path("unpacked/rootfs/tiny")).unwrap(),
        "changed"
    );
    env.ok(&[
        "image",
        "import",
        &format!("{}:v2", reg.image("team/app")),
        "app:back",
    ]);
    assert_eq!(root_tree(&env, "app:v2"), root_tree(&env, "app:back"));
    // To another repository of the same registry: the blobs this host pushed are mounted
    // from where they are, not sent again.
    let other = env.run(&[
        "image",
        "export",
        "app:v2",
        &format!("{}:v2", reg.image("team/other")),
    ]);
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(
        other.status.success()
            && err.contains("0 blobs sent")
            && err.contains("2 mounted from another repository"),
        "{err}"
    );
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("{}:v2", reg.image("team/other")),
        &format!("oci:{}:other", s(&copied)),
    ]);
    // A second push of the same image sends nothing new.
    let again = env.run(&[
        "image",
        "export",
        "app:v2",
        &format!("{}:again", reg.image("team/app")),
    ]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        again.status.success() && err.contains("0 blobs sent") && err.contains("2 already there"),
        "{err}"
    );
    env.fsck_clean();
}

#[test]
fn bad_registry_content_and_missing_logins_are_refused_and_nothing_is_stored() {
    if !require_registry_tools() {
        return;
    }
    let env = Env::new();
    let mut reg = Registry::start(&env, "reg", None);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("big"), pseudo_random(300_000, 3)).unwrap();
    env.ok(&["image", "import", s(&src), "seed:v1"]);
    env.ok(&[
        "image",
        "export",
        "seed:v1",
        &format!("{}:v1", reg.image("seed")),
    ]);
    let manifest: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("{}:v1", reg.image("seed")),
    ]))
    .unwrap();
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = reg.blob(&layer);
    let good = fs::read(&blob).unwrap();
    let client = env.path("client-store");
    let seed_v1 = format!("{}:v1", reg.image("seed"));
    let import = |store: &Path| starling_in(store, &["image", "import", &seed_v1, "got:v1"], &[]);
    let nothing_stored = |store: &Path| {
        let o = Command::new(env!("CARGO_BIN_EXE_starling"))
            .arg("--store")
            .arg(store)
            .args(["image", "ls", "--json"])
            .output()
            .unwrap();
        let ls = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success() && ls.trim() == "[]", "{ls}");
        if store.join("tmp").exists() {
            assert_eq!(fs::read_dir(store.join("tmp")).unwrap().count(), 0);
        }
    };

    // A blob whose bytes are not its digest's: refused (4).
    let mut bad = good.clone();
    let n = bad.len();
    bad[n / 2] ^= 0x40;
    fs::write(&blob, &bad).unwrap();
    let (code, e) = import(&client);
    assert_eq!(code, Some(4), "{e}");
    assert!(
        e.contains(&format!("blob {layer}")) && e.contains("digest"),
        "{e}"
    );
    nothing_stored(&client);

    // Cut short, or longer than the manifest says: refused the same way.
    fs::write(&blob, &good[..n / 3]).unwrap();
    let (code, e) = import(&client);
    assert_eq!(code, Some(4), "{e}");
    nothing_stored(&client);
    let mut long = good.clone();
    long.extend_from_slice(&pseudo_random(100_000, 5));
    fs::write(&blob, &long).unwrap();
    let (code, e) = import(&client);
    assert_eq!(code, Some(4), "{e}");
    assert!(e.contains("more than the"), "{e}");
    nothing_stored(&client);
    fs::write(&blob, &good).unwrap();
    assert_eq!(import(&client).0, Some(0));

    // Not there: 3, naming the image.
    let o = env.run(&[
        "image",
        "import",
        &format!("{}:nosuch", reg.image("seed")),
        "x:y",
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{e}");
    assert!(
        e.trim_end()
            .ends_with(&format!("has no image {}:nosuch", reg.image("seed"))),
        "{e}"
    );

    // A registry that wants a login: refused without one (4, saying how), taken with one,
    // and a push without one refused before anything is sent.
    let locked = Registry::start(&env, "locked", Some(("alice", "s3cret")));
    let o = env.run(&[
        "image",
        "export",
        "seed:v1",
        &format!("{}:v1", locked.image("seed")),
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{e}");
    assert!(e.contains("not authorized") && e.contains("--creds"), "{e}");
    // Refused before a blob was sent.
    assert!(
        !locked.storage.join("docker/registry/v2/blobs").exists(),
        "a blob reached the registry without a login"
    );
    env.ok(&[
        "image",
        "export",
        "seed:v1",
        &format!("{}:v1", locked.image("seed")),
        "--creds",
        "alice:s3cret",
    ]);
    let other = env.path("other-store");
    let locked_v1 = format!("{}:v1", locked.image("seed"));
    let (code, e) = starling_in(&other, &["image", "import", &locked_v1, "got:v1"], &[]);
    assert_eq!(code, Some(4), "{e}");
    assert!(e.contains("not authorized"), "{e}");
    nothing_stored(&other);
    // The login `docker login` would have stored is used.
    let auth = env.path("auth.json");
    fs::write(
        &auth,
        format!(
            r#"{{"auths": {{"{}": {{"auth": "{}"}}}}}}"#,
            locked.addr,
            base64("alice:s3cret")
        ),
    )
    .unwrap();
    let (code, e) = starling_in(
        &other,
        &["image", "import", &locked_v1, "got:v1"],
        &[("REGISTRY_AUTH_FILE", &auth)],
    );
    assert_eq!(code, Some(0), "{e}");
    assert_eq!(root_tree(&env, "seed:v1"), root_tree_in(&other, "got:v1"));

    // Unreachable: 5, with the OS's reason.
    reg.stop();
    let (code, e) = import(&env.path("third"));
    assert_eq!(code, Some(5), "{e}");
    assert!(e.ends_with("Connection refused (os error 111)"), "{e}");
}

fn base64(s: &str) -> String {
    let out = Command::new("base64")
        .arg("-w0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(s.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Where the flaky proxy cuts its one connection.
#[derive(Clone, Copy)]
enum Cut {
    /// At the start of the `n`th chunk (`PATCH`), before a byte of it reaches the registry:
    /// the registry's session stands where the last chunk left it.
    BeforeChunk(usize),
    /// After `n` bytes of a chunk have gone through: the registry holds part of it.
    InChunk(usize),
}

/// A TCP proxy to `to` that cuts, once, the connection carrying a blob upload's chunk: a
/// network that breaks in the middle of a push.
struct Flaky {
    addr: String,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

fn flaky_proxy(to: String, how: Cut) -> Flaky {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let cut = Arc::new(AtomicBool::new(false));
    let patches = Arc::new(AtomicUsize::new(0));
    let flag = cut.clone();
    std::thread::spawn(move || {
        for client in l.incoming() {
            let Ok(client) = client else { continue };
            let Ok(upstream) = TcpStream::connect(&to) else {
                continue;
            };
            let (mut c_read, mut u_write) =
                (client.try_clone().unwrap(), upstream.try_clone().unwrap());
            let (mut u_read, mut c_write) = (upstream, client);
            let (c_kill, u_kill) = (c_write.try_clone().unwrap(), u_write.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut u_read, &mut c_write);
            });
            let (flag, patches) = (flag.clone(), patches.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                let mut counting: Option<usize> = None;
                loop {
                    let n = match c_read.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let piece = &buf[..n];
                    let mut kill = |forward: &[u8]| {
                        flag.store(true, Ordering::SeqCst);
                        let _ = u_write.write_all(forward);
                        let _ = u_kill.shutdown(Shutdown::Both);
                        let _ = c_kill.shutdown(Shutdown::Both);
                    };
                    if !flag.load(Ordering::SeqCst) {
                        let starts_chunk = piece.starts_with(b"PATCH /");
                        if starts_chunk {
                            let nth = patches.fetch_add(1, Ordering::SeqCst) + 1;
                            counting = Some(0);
                            if matches!(how, Cut::BeforeChunk(k) if k == nth) {
                                kill(&[]);
                                break;
                            }
                        }
                        if let (Cut::InChunk(after), Some(c)) = (how, counting.as_mut()) {
                            *c += n;
                            if *c >= after {
                                kill(&piece[..n / 2]);
                                break;
                            }
                        }
                    }
                    if u_write.write_all(piece).is_err() {
                        break;
                    }
                }
                let _ = u_kill.shutdown(Shutdown::Write);
            });
        }
    });
    Flaky { addr, cut }
}

/// A push through a network that breaks once, in two ways. Cut between two chunks, the upload
/// goes on from where the registry is (its session says so). Cut inside a chunk, the
/// distribution registry has part of it and cancels the session (it checks the bytes it holds
/// against the offset its session token carries), so the blob is sent again from its start,
/// as docker does. Either way the push completes and what the registry holds is whole.
#[test]
fn a_push_broken_in_the_middle_of_a_blob_goes_on_and_completes() {
    if !require_registry_tools() {
        return;
    }
    let env = Env::new();
    let reg = Registry::start(&env, "reg", None);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    // Incompressible: the layer is ~12 MB, three chunks.
    fs::write(src.join("big"), pseudo_random(12 << 20, 11)).unwrap();
    env.ok(&["image", "import", s(&src), "big:v1"]);
    for (how, name, said) in [
        (
            Cut::BeforeChunk(2),
            "resumed",
            "1 upload(s) resumed after a broken connection",
        ),
        (
            Cut::InChunk(1 << 20),
            "restarted",
            "1 upload(s) started again (the registry dropped the broken one)",
        ),
    ] {
        let proxy = flaky_proxy(reg.addr.clone(), how);
        let dest = format!("docker://{}/{name}:v1", proxy.addr);
        let o = env.run(&["image", "export", "big:v1", &dest]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{name}: {:?} {err}", o.status);
        assert!(
            proxy.cut.load(std::sync::atomic::Ordering::SeqCst),
            "{name}: the proxy never cut a chunk"
        );
        assert!(err.contains(said), "{name}: {err}");
        // What the registry holds is whole: skopeo copies it (checking every digest) and
        // umoci unpacks the file byte for byte.
        let copied = env.path(&format!("copied-{name}"));
        skopeo(&[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{}/{name}:v1", reg.addr),
            &format!("oci:{}:v1", s(&copied)),
        ]);
        let unpacked = env.path(&format!("u-{name}"));
        tool(
            "umoci",
            &[
                "unpack",
                "--image",
                &format!("{}:v1", s(&copied)),
                s(&unpacked),
            ],
        );
        assert!(
            fs::read(unpacked.join("rootfs/big")).unwrap() == fs::read(src.join("big")).unwrap(),
            "{name}"
        );
    }
}

/// Token authentication as Docker Hub, ghcr.io and Harbor do it: the registry answers 401
/// with a Bearer challenge naming a token server; without a login the token server refuses,
/// with one it signs a token that the registry takes, for the push (chunked uploads
/// included) and the pull.
#[test]
fn token_authentication_as_public_registries_do_it() {
    if !require_registry_tools() {
        return;
    }
    require_tool("openssl", "openssl");
    let env = Env::new();
    let reg = Registry::with_login(&env, "reg", Login::Token("bob", "t0ken-pw"));
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("big"), pseudo_random(6 << 20, 21)).unwrap();
    env.ok(&["image", "import", s(&src), "tok:v1"]);
    let dest = format!("{}:v1", reg.image("team/tok"));
    let o = env.run(&["image", "export", "tok:v1", &dest]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{e}");
    assert!(e.contains("not authorized"), "{e}");
    let o = env.run(&[
        "image",
        "export",
        "tok:v1",
        &dest,
        "--creds",
        "bob:t0ken-pw",
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{e}");
    assert!(e.contains("2 blobs sent"), "{e}");
    // skopeo, logged in, sees what was pushed.
    let inspect = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        "bob:t0ken-pw",
        &dest,
    ]);
    let digest = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(inspect.contains(&digest), "{inspect}");
    // Pulled back with the login (and refused without): the same tree.
    let other = env.path("other");
    let (code, e) = starling_in(&other, &["image", "import", &dest, "tok:v1"], &[]);
    assert_eq!(code, Some(4), "{e}");
    let (code, e) = starling_in(
        &other,
        &[
            "image",
            "import",
            &dest,
            "tok:v1",
            "--creds",
            "bob:t0ken-pw",
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{e}");
    assert_eq!(root_tree_in(&other, "tok:v1"), root_tree(&env, "tok:v1"));
}
