//! starlingd's API for other hosts: TCP with mutual TLS (`[remote_api]`). An operator with a
//! certificate of the fleet's CA reads a host's groups with `group status --host https://…`;
//! a caller without a certificate, or with another CA's, is refused in the handshake; what
//! changes a host is not served over TCP; idle connections that never handshake hold up
//! nobody; a key others may read stops the daemon before it starts.

mod common;

use std::fs;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::*;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn status(env: &Env, url: &str, tls: &Path, who: &str) -> (i32, serde_json::Value) {
    let o = env
        .cmd()
        .args(["group", "status", "ci", "--json", "--host", url])
        .arg("--tls-cert")
        .arg(tls.join(format!("{who}.pem")))
        .arg("--tls-key")
        .arg(tls.join(format!("{who}.key")))
        .arg("--tls-ca")
        .arg(tls.join("ca.pem"))
        .output()
        .unwrap();
    let v = json(&String::from_utf8_lossy(&o.stdout));
    (o.status.code().unwrap_or(-1), v[0].clone())
}

#[test]
fn a_fleet_reads_hosts_over_mutual_tls_and_nobody_else_does() {
    if !have("openssl") || !have("curl") {
        skip("openssl and curl are needed (scripts/deps.sh installs them)");
        return;
    }
    let env = Env::new();
    let tls = env.path("tls");
    fs::create_dir_all(&tls).unwrap();
    starling_testkit::tls_certs(&tls);
    // A repository (a directory) publishing group ci, which the host follows.
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), pseudo_random(50_000, 3)).unwrap();
    env.ok(&["image", "import", s(&src), "t:v1"]);
    let repo = env.path("repo");
    env.ok(&["repo", "init", s(&repo)]);
    env.ok(&["push", "t:v1", s(&repo)]);
    let spec = env.path("ci.toml");
    fs::write(&spec, "name = \"ci\"\n[[image]]\nref = \"t:v1\"\n").unwrap();
    env.ok(&["group", "apply", s(&spec), s(&repo)]);
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let conf = env.path("starlingd.toml");
    let write_conf = |key: &str| {
        fs::write(
            &conf,
            format!(
                "[[repository]]\nurl = \"{repo}\"\nroot = \"{repo}/metadata/1.root.json\"\n\
                 [[group]]\nname = \"ci\"\nrepository = \"{repo}\"\npoll = \"1s\"\n\
                 [remote_api]\nlisten = \"127.0.0.1:{port}\"\ncert = \"{t}/host.pem\"\n\
                 key = \"{t}/{key}\"\nclient_ca = \"{t}/ca.pem\"\n",
                repo = repo.display(),
                t = tls.display()
            ),
        )
        .unwrap();
    };

    // A key others may read: the daemon refuses to start, saying so in one line.
    fs::copy(tls.join("host.key"), tls.join("open.key")).unwrap();
    fs::set_permissions(tls.join("open.key"), fs::Permissions::from_mode(0o644)).unwrap();
    write_conf("open.key");
    let o = env
        .cmd()
        .args(["daemon", "--check-config", "--config", s(&conf)])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("open.key") && e.contains("chmod 600"), "{e}");

    write_conf("host.key");
    let d = Daemon::start(&env, &env.path("state"), &["--config", s(&conf)]);

    // Connections that never make a handshake, more than may be pending at once: each is
    // closed within the handshake's few seconds, and holds up nobody after.
    let idle: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    assert!(idle.len() > 64, "{} connections made", idle.len());
    for mut c in &idle {
        use std::io::Read;
        c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut b = [0u8; 16];
        let n = c.read(&mut b).unwrap_or(0);
        assert_eq!(n, 0, "an idle connection got an answer");
    }

    // The fleet's operator reads the host's groups.
    let deadline = Instant::now() + Duration::from_secs(30);
    let row = loop {
        let (code, row) = status(&env, &url, &tls, "client");
        if code == 0 && row["groups"][0]["converged"] == true {
            break row;
        }
        assert!(Instant::now() < deadline, "{row}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(row["groups"][0]["generation"], 1, "{row}");
    drop(idle);

    // Another CA's certificate: refused in the handshake, said as the host's error.
    let (code, row) = status(&env, &url, &tls, "stranger");
    assert_eq!(code, 1, "{row}");
    assert!(row["error"].is_string(), "{row}");
    // No certificate at all (curl trusting the host's CA): refused.
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(tls.join("ca.pem"))
        .arg(format!("{url}/v1/status"))
        .output()
        .unwrap();
    assert!(!o.status.success(), "served without a client certificate");
    // With the certificate, a change is not served over TCP, and the daemon lives on.
    let curl = |method: &str, path: &str| {
        let o = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "5",
                "-X",
                method,
                "-w",
                "\n%{http_code}",
            ])
            .arg("--cert")
            .arg(tls.join("client.pem"))
            .arg("--key")
            .arg(tls.join("client.key"))
            .arg("--cacert")
            .arg(tls.join("ca.pem"))
            .arg(format!("{url}{path}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let out = curl("POST", "/v1/shutdown");
    assert!(
        out.ends_with("\n403") && out.contains("unix socket"),
        "{out}"
    );
    let out = curl("POST", "/v1/mounts");
    assert!(out.ends_with("\n403"), "{out}");
    let out = curl("GET", "/v1/status");
    assert!(out.ends_with("\n200"), "{out}");
    assert!(d.socket.exists(), "the daemon lives on");
}
