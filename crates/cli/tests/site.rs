//! A site of hosts behind HTTP caches, as a fleet runs (Stork, CernVM-FS): each "host" is a
//! network namespace with its own starlingd, cache and address on a bridge, and it cannot
//! reach the origin at all (the origin listens on this machine's loopback, which no host's
//! namespace has): every byte it reads comes through the site's cache — Debian's squid as a
//! forward proxy, or nginx's proxy_cache in front of the origin. The origin's access log shows
//! how often each object crossed to it.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::*;

fn ip(args: &[&str]) {
    let o = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        o.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A bridge with an address on this machine, and `hosts` network namespaces each with an
/// address on it; all removed on drop.
struct Site {
    bridge: String,
    /// `10.A.B`: the site's /24.
    net: String,
    hosts: Vec<String>,
}

impl Site {
    fn new(hosts: usize) -> Site {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:x}{n}", std::process::id() % 0xfff);
        let pid = std::process::id();
        let net = format!("10.{}.{}", 200 + (pid / 250 % 50), (pid % 250) as u32 + n);
        let site = Site {
            bridge: format!("stb{id}"),
            net: net.clone(),
            hosts: (0..hosts).map(|i| format!("st{id}h{i}")).collect(),
        };
        ip(&["link", "add", &site.bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("{net}.1/24"), "dev", &site.bridge]);
        ip(&["link", "set", &site.bridge, "up"]);
        for (i, h) in site.hosts.iter().enumerate() {
            let veth = format!("stv{id}{i}");
            ip(&["netns", "add", h]);
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", h,
            ]);
            ip(&["link", "set", &veth, "master", &site.bridge, "up"]);
            let addr = format!("{net}.{}/24", 10 + i);
            ip(&["-n", h, "addr", "add", &addr, "dev", "eth0"]);
            ip(&["-n", h, "link", "set", "eth0", "up"]);
            ip(&["-n", h, "link", "set", "lo", "up"]);
        }
        site
    }

    /// The site's address on this machine (where its cache listens).
    fn gateway(&self) -> String {
        format!("{}.1", self.net)
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", h]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

fn wait_listening(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A caching server run for the test: its process and its scratch directory (squid drops to
/// the `proxy` user, which must reach its logs: not under the test's private directory).
struct Cache {
    child: Child,
    dir: PathBuf,
}

impl Cache {
    /// Debian's squid, a forward proxy for the site on `listen`, memory cache only,
    /// concurrent misses for one URL collapsed into one origin request.
    fn squid(listen: &str, site_net: &str, parent: Option<&str>) -> Cache {
        let dir = scratch("squid");
        let conf = dir.join("squid.conf");
        // A site proxy under a regional one asks it for everything (never the origin).
        let upstream = parent.map_or(String::new(), |p| {
            let (host, port) = p.split_once(':').expect("HOST:PORT");
            format!(
                "cache_peer {host} parent {port} 0 no-query no-digest default\n\
                 never_direct allow all\n"
            )
        });
        fs::write(
            &conf,
            format!(
                "{upstream}http_port {listen}\n\
                 acl site src {site_net}.0/24\n\
                 http_access allow site\n\
                 http_access deny all\n\
                 cache_mem 512 MB\n\
                 maximum_object_size_in_memory 64 MB\n\
                 maximum_object_size 64 MB\n\
                 collapsed_forwarding on\n\
                 access_log stdio:{d}/access.log\n\
                 cache_log {d}/cache.log\n\
                 pid_filename {d}/squid.pid\n\
                 coredump_dir {d}\n\
                 cache_effective_user proxy\n\
                 shutdown_lifetime 0 seconds\n\
                 visible_hostname starling-test-{name}\n",
                d = dir.display(),
                // Unique: squid refuses a request whose Via names itself (a loop).
                name = listen.replace([':', '.'], "-"),
            ),
        )
        .unwrap();
        let child = Command::new("squid")
            .args(["-N", "-f", s(&conf)])
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("stderr")).unwrap())
            .spawn()
            .expect("squid");
        wait_listening(listen);
        Cache { child, dir }
    }

    /// nginx as the site's caching reverse proxy in front of `origin` (proxy_cache, with
    /// concurrent misses locked into one origin request).
    fn nginx(listen: &str, origin: &str) -> Cache {
        let dir = scratch("nginx");
        let conf = dir.join("nginx.conf");
        fs::write(
            &conf,
            format!(
                "daemon off;\nuser proxy proxy;\nworker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n\
                   access_log {d}/access.log;\n\
                   client_body_temp_path {d}/body; proxy_temp_path {d}/ptemp;\n\
                   fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n\
                   proxy_cache_path {d}/cache levels=1:2 keys_zone=site:10m max_size=1g inactive=1h use_temp_path=off;\n\
                   server {{\n\
                     listen {listen};\n\
                     location / {{\n\
                       proxy_pass {origin};\n\
                       proxy_cache site;\n\
                       proxy_cache_lock on;\n\
                       proxy_cache_lock_timeout 30s;\n\
                       proxy_cache_valid 404 1s;\n\
                     }}\n\
                   }}\n\
                 }}\n",
                d = dir.display(),
                origin = origin.trim_end_matches('/'),
            ),
        )
        .unwrap();
        let child = Command::new("nginx")
            .args(["-c", s(&conf), "-p", s(&dir)])
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("stderr")).unwrap())
            .spawn()
            .expect("nginx");
        wait_listening(listen);
        Cache { child, dir }
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        // SIGTERM: nginx's master stops its workers (SIGKILL would leave them running).
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A directory the `proxy` user can write (squid's logs), removed with its cache.
fn scratch(kind: &str) -> PathBuf {
    let dir = tempfile::Builder::new()
        .prefix(&format!("starling-{kind}-"))
        .tempdir_in("/tmp")
        .unwrap()
        .keep();
    let ok = Command::new("chown")
        .args(["proxy:proxy", s(&dir)])
        .status()
        .is_ok_and(|st| st.success());
    assert!(ok, "chown proxy {}", dir.display());
    dir
}

/// What the site's hosts need here; a loud skip otherwise.
fn site_possible(tools: &[&str]) -> bool {
    if !is_root() {
        skip("a test site needs root (network namespaces, a bridge)");
        return false;
    }
    if !Path::new("/dev/fuse").exists() {
        skip("/dev/fuse is missing: the hosts' mounts need it");
        return false;
    }
    for t in tools {
        if !have(t) {
            skip(&format!("{t} is missing (scripts/deps.sh installs it)"));
            return false;
        }
    }
    true
}

/// An image of `files` files of distinct content, pushed to a new repository.
fn published(env: &Env, files: usize) -> (PathBuf, PathBuf) {
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..files {
        fs::write(
            src.join(format!("f{i:03}")),
            pseudo_random(40_000 + 997 * i, i as u64 + 7),
        )
        .unwrap();
    }
    env.ok(&["image", "import", s(&src), "t:v1"]);
    let repo = env.path("repo");
    env.ok(&["repo", "init", s(&repo)]);
    env.ok(&["push", "t:v1", s(&repo)]);
    (repo, src)
}

/// Every object file of the repository, as the origin's access log names it.
fn repo_objects(repo: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for d in fs::read_dir(repo.join("objects")).unwrap() {
        let d = d.unwrap();
        for f in fs::read_dir(d.path()).unwrap() {
            let f = f.unwrap();
            out.push(format!(
                "/objects/{}/{}",
                d.file_name().to_string_lossy(),
                f.file_name().to_string_lossy()
            ));
        }
    }
    out.sort();
    out
}

fn object_counts(origin: &Server) -> BTreeMap<String, usize> {
    origin
        .requests()
        .into_iter()
        .filter(|(p, _)| p.starts_with("/objects/"))
        .collect()
}

/// Every host mounts `image` of the repository its configuration names and reads every file
/// at once (a thread per host), each compared with `src`.
fn every_host_reads(env: &Env, daemons: &[Daemon], url: &str, image: &str, src: &Path, tag: &str) {
    let mps: Vec<PathBuf> = (0..daemons.len())
        .map(|i| {
            let mp = env.path(&format!("mp-{tag}-{i}"));
            fs::create_dir_all(&mp).unwrap();
            mp
        })
        .collect();
    for (d, mp) in daemons.iter().zip(&mps) {
        d.ok(env, &["mount", url, image, s(mp)]);
    }
    std::thread::scope(|sc| {
        for mp in &mps {
            sc.spawn(move || assert_same_tree(src, mp));
        }
    });
    for (d, mp) in daemons.iter().zip(&mps) {
        d.ok(env, &["umount", s(mp)]);
    }
}

/// Each host's daemon in its namespace, configured with the site's repository.
fn hosts(env: &Env, site: &Site, config: &str) -> Vec<Daemon> {
    hosts_each(env, site, |_| config.to_string())
}

/// As [`hosts`], host `i` configured with `config(i)`.
fn hosts_each(env: &Env, site: &Site, config: impl Fn(usize) -> String) -> Vec<Daemon> {
    site.hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let conf = env.path(&format!("starlingd-{i}.toml"));
            fs::write(&conf, config(i)).unwrap();
            Daemon::start_in_netns(
                env,
                &env.path(&format!("host{i}")),
                h,
                &["--config", s(&conf)],
            )
        })
        .collect()
}

fn config(url: &str, root: &Path, proxy: Option<&str>) -> String {
    let mut c = "timeout = \"20s\"\n".to_string();
    if let Some(p) = proxy {
        c.push_str(&format!("proxies = [\"{p}\"]\n"));
    }
    c + &format!(
        "[[repository]]\nurl = \"{url}\"\nroot = \"{}\"\n",
        root.display()
    )
}

#[test]
fn eight_hosts_behind_one_squid_fetch_each_object_from_the_origin_once() {
    if !site_possible(&["squid", "ip", "nsenter"]) {
        return;
    }
    let env = Env::new();
    let (repo, src) = published(&env, 40);
    let origin = Server::start(&env, &repo);
    let site = Site::new(8);
    let proxy_addr = format!("{}:3128", site.gateway());
    let _squid = Cache::squid(&proxy_addr, &site.net, None);
    let root = repo.join("metadata/1.root.json");
    let daemons = hosts(
        &env,
        &site,
        &config(&origin.url, &root, Some(&format!("http://{proxy_addr}"))),
    );
    // No host reaches the origin but through the proxy.
    let direct = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", site.hosts[0]))
        .args(["--", "curl", "-sS", "--max-time", "2", &origin.url])
        .output()
        .unwrap();
    assert!(
        !direct.status.success(),
        "a host reached the origin directly"
    );

    every_host_reads(&env, &daemons, &origin.url, "t:v1", &src, "v1");
    let counts = object_counts(&origin);
    let again: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        again.is_empty(),
        "objects the origin served twice: {again:?}"
    );
    assert_eq!(
        counts.keys().cloned().collect::<Vec<_>>(),
        repo_objects(&repo),
        "every object of the image crossed to the origin once"
    );

    // A second version: only its new objects reach the origin, once each. (The timestamp is
    // cached by the proxy for its max-age, 10 s: a host sees the new version after that.)
    for i in 0..3 {
        fs::write(src.join(format!("f{i:03}")), pseudo_random(50_000, 100 + i)).unwrap();
    }
    env.ok(&["image", "import", s(&src), "t:v1"]);
    env.ok(&["push", "t:v1", s(&repo)]);
    std::thread::sleep(Duration::from_secs(11));
    every_host_reads(&env, &daemons, &origin.url, "t:v1", &src, "v2");
    let counts2 = object_counts(&origin);
    let again: Vec<_> = counts2.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        again.is_empty(),
        "objects the origin served twice: {again:?}"
    );
    assert_eq!(
        counts2.keys().cloned().collect::<Vec<_>>(),
        repo_objects(&repo)
    );
    let new = counts2.len() - counts.len();
    assert!(new > 0 && new < counts.len() / 2, "{new} new objects");
    let mut f = std::io::stderr();
    let _ = writeln!(
        f,
        "site: 8 hosts, {} objects of v1 and {new} new of v2, each from the origin once",
        counts.len()
    );
}

#[test]
fn eight_hosts_behind_nginx_proxy_cache_fetch_each_object_from_the_origin_once() {
    if !site_possible(&["nginx", "ip", "nsenter"]) {
        return;
    }
    let env = Env::new();
    let (repo, src) = published(&env, 30);
    let origin = Server::start(&env, &repo);
    let site = Site::new(8);
    let front = format!("{}:8080", site.gateway());
    let _nginx = Cache::nginx(&front, &origin.url);
    // The site's cache is the repository's URL for its hosts (a reverse proxy, as a CDN).
    let url = format!("http://{front}/");
    let root = repo.join("metadata/1.root.json");
    let daemons = hosts(&env, &site, &config(&url, &root, Some("DIRECT")));
    every_host_reads(&env, &daemons, &url, "t:v1", &src, "v1");
    let counts = object_counts(&origin);
    let again: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        again.is_empty(),
        "objects the origin served twice: {again:?}"
    );
    assert_eq!(
        counts.keys().cloned().collect::<Vec<_>>(),
        repo_objects(&repo)
    );
}

#[test]
fn two_sites_under_one_regional_squid_fetch_each_object_from_the_origin_once() {
    if !site_possible(&["squid", "ip", "nsenter"]) {
        return;
    }
    let env = Env::new();
    let (repo, src) = published(&env, 30);
    let origin = Server::start(&env, &repo);
    let site = Site::new(8);
    let gw = site.gateway();
    let region = format!("{gw}:3129");
    let _region = Cache::squid(&region, &site.net, None);
    // Hosts 0-3 behind site proxy A, hosts 4-7 behind B; A and B ask the regional proxy.
    let (a, b) = (format!("{gw}:3130"), format!("{gw}:3131"));
    let _a = Cache::squid(&a, &site.net, Some(&region));
    let _b = Cache::squid(&b, &site.net, Some(&region));
    let root = repo.join("metadata/1.root.json");
    let daemons = hosts_each(&env, &site, |i| {
        let proxy = if i < 4 { &a } else { &b };
        config(&origin.url, &root, Some(&format!("http://{proxy}")))
    });
    every_host_reads(&env, &daemons, &origin.url, "t:v1", &src, "v1");
    let counts = object_counts(&origin);
    let again: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        again.is_empty(),
        "objects the origin served twice: {again:?}"
    );
    assert_eq!(
        counts.keys().cloned().collect::<Vec<_>>(),
        repo_objects(&repo)
    );
}
