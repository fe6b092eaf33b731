//! Fleet chores on manifests: inventory checked against dpkg-query, diff, search, and updates
//! with real Debian packages judged by dpkg itself inside the exported, chrooted image.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Real packages from Debian's archive (apt-get download), cached beside the rootfs fixtures.
fn debs(names: &[&str]) -> Option<Vec<PathBuf>> {
    let dir = PathBuf::from(
        std::env::var("STARLING_TEST_CACHE").unwrap_or_else(|_| "/var/cache/starling-test".into()),
    )
    .join("debs");
    fs::create_dir_all(&dir).ok()?;
    let mut out = Vec::new();
    for n in names {
        let found = |d: &Path| {
            fs::read_dir(d).ok()?.flatten().map(|e| e.path()).find(|p| {
                p.file_name()
                    .and_then(|f| f.to_str())
                    .is_some_and(|f| f.starts_with(&format!("{n}_")) && f.ends_with(".deb"))
            })
        };
        if found(&dir).is_none() {
            let ok = Command::new("apt-get")
                .args(["download", "-q", n])
                .current_dir(&dir)
                .output()
                .is_ok_and(|o| o.status.success());
            if !ok {
                skip(&format!(
                    "apt-get download {n} failed (no Debian archive reachable?)"
                ));
                return None;
            }
        }
        out.push(found(&dir)?);
    }
    Some(out)
}

fn sorted_lines(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text.lines().map(str::to_string).collect();
    v.sort();
    v
}

/// An inventory's packages as sorted tab-separated lines of the given fields.
fn package_lines(inventory: &serde_json::Value, fields: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = inventory["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            fields
                .iter()
                .map(|f| p[*f].as_str().unwrap())
                .collect::<Vec<_>>()
                .join("\t")
        })
        .collect();
    v.sort();
    v
}

fn chroot(root: &Path, args: &[&str]) -> String {
    let mut a = vec![s(root)];
    a.extend_from_slice(args);
    tool("chroot", &a)
}

#[test]
fn inventory_matches_dpkg_query() {
    let Some((a, b)) = debian_rootfs() else {
        return;
    };
    let env = Env::new();
    env.ok(&["image", "import", s(&a), "deb:a"]);
    env.ok(&["image", "import", s(&b), "deb:b"]);
    let inv = json(&env.ok(&["image", "inventory", "--json", "deb:a", "deb:b"]));
    for (i, tree) in [a, b].iter().enumerate() {
        let want = tool(
            "dpkg-query",
            &[
                "-W",
                "-f",
                "${Package}\\t${Version}\\t${Architecture}\\t${source:Package}\\n",
                &format!("--admindir={}", s(&tree.join("var/lib/dpkg"))),
            ],
        );
        let want = sorted_lines(&want);
        let got = package_lines(&inv[i], &["name", "version", "architecture", "source"]);
        assert_eq!(got, want, "inventory of variant {i}");
        assert!(want.len() > 80);
        assert_eq!(inv[i]["os_release"]["VERSION_CODENAME"], "bookworm");
        assert_eq!(inv[i]["db"], "dpkg");
    }
    // Diff: b adds packages to a; the files are added, nothing of a's base is reported as
    // content-changed, and the walk skips unchanged subtrees.
    let d = json(&env.ok(&["image", "diff", "--json", "deb:a", "deb:b"]));
    let added: Vec<&str> = d["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["change"] == "added")
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in ["less", "netbase", "python3-minimal"] {
        assert!(added.contains(&p), "{p} not in {added:?}");
    }
    assert!(d["files"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["path"] == "/usr/bin/python3.11" && f["change"] == "added"));
    diff_views(&env, &d);

    // The same, read from a repository in place: nothing is pulled, and only the objects
    // on the paths read (trees down to the package database, its chunks) are fetched.
    let repo = env.path("repo");
    env.ok(&["repo", "init", s(&repo)]);
    env.ok(&["push", "deb:a", s(&repo)]);
    env.ok(&["push", "deb:b", s(&repo)]);
    let server = Server::start(&env, &repo);
    let client = env.path("client-store");
    let root = repo.join("metadata/1.root.json");
    let run = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_starling"))
            .arg("--store")
            .arg(&client)
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let remote = json(&run(&[
        "image",
        "inventory",
        "--json",
        &server.url,
        "deb:a",
        "deb:b",
        "--root",
        s(&root),
    ]));
    assert_eq!(remote, inv, "a repository's inventory is the store's");
    let rd = json(&run(&[
        "image",
        "diff",
        "--json",
        &server.url,
        "deb:a",
        "deb:b",
    ]));
    assert_eq!(rd["packages"], d["packages"]);
    assert_eq!(rd["files"], d["files"]);
    let hits = json(&run(&[
        "image",
        "search",
        &server.url,
        "--package",
        "python3-minimal",
        "--json",
    ]));
    assert_eq!(hits.as_array().unwrap().len(), 1, "{hits}");
    assert!(hits[0]["tags"].to_string().contains("deb:b"), "{hits}");
    let listed = json(&run(&["image", "ls", "--json"]));
    assert_eq!(
        listed.as_array().map_or(0, Vec::len),
        0,
        "nothing pulled: {listed}"
    );
    let objects_in_repo = walk_count(&repo.join("objects"));
    let fetched = server
        .requests()
        .keys()
        .filter(|p| p.starts_with("/objects/"))
        .count();
    assert!(
        fetched * 10 < objects_in_repo,
        "fetched {fetched} of {objects_in_repo} objects"
    );
}

fn walk_count(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        n += if p.is_dir() { walk_count(&p) } else { 1 };
    }
    n
}

#[test]
fn updates_with_real_debs_pass_dpkg_checks() {
    if !is_root() {
        skip("chroot into the exported image needs root");
        return;
    }
    let Some((a, _)) = debian_rootfs() else {
        return;
    };
    let Some(pkgs) = debs(&["less", "netbase"]) else {
        return;
    };
    let (less, netbase) = (&pkgs[0], &pkgs[1]);
    let env = Env::new();
    env.ok(&["image", "import", s(&a), "deb:a"]);
    env.ok(&["image", "tag", "deb:a", "deb:other"]);
    let before = json(&env.ok(&["image", "inspect", "--json", "deb:a"]));

    // Dry run: shows the change, writes nothing.
    let dry = json(&env.ok(&[
        "image",
        "update",
        "--json",
        "--dry-run",
        "deb:a",
        "--apply-deb",
        s(less),
    ]));
    assert!(dry[0]["new"].is_null());
    assert!(dry[0]["diff"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["path"] == "/usr/bin/less"));
    assert!(dry[0]["warnings"][0]
        .as_str()
        .unwrap()
        .contains("maintainer scripts"));
    assert_eq!(
        json(&env.ok(&["image", "inspect", "--json", "deb:a"]))["version"],
        before["version"]
    );

    // Two images updated in one go; both tags move, history keeps the old versions.
    let out = env.ok(&[
        "image",
        "update",
        "deb:a",
        "deb:other",
        "--apply-deb",
        s(less),
        "--apply-deb",
        s(netbase),
    ]);
    assert_eq!(out.lines().count(), 2, "{out}");
    let hist = json(&env.ok(&["image", "history", "--json", "deb:other"]));
    assert_eq!(hist.as_array().unwrap().len(), 2);
    let root = env.path("root");
    env.ok(&["image", "export", "deb:a", s(&root)]);
    // The package's own version, as less reports it: upstream 590 of Debian's 590-2.
    let want_ver = tool("dpkg-deb", &["-f", s(less), "Version"]);
    let want_ver = want_ver.trim();
    let upstream = want_ver.rsplit_once('-').map_or(want_ver, |(u, _)| u);
    let version_out = chroot(&root, &["/usr/bin/less", "--version"]);
    assert!(
        version_out.starts_with(&format!("less {upstream} ")),
        "{version_out}"
    );
    let st = chroot(&root, &["dpkg", "-s", "less"]);
    assert!(
        st.contains("Status: install ok installed")
            && st.contains(&format!("Version: {want_ver}\n")),
        "{st}"
    );
    assert_eq!(chroot(&root, &["dpkg", "--audit"]).trim(), "");
    // dpkg --verify exits 0 whatever it finds; a file that differs from the package's md5sums
    // is a line of output.
    let verify = chroot(&root, &["dpkg", "--verify", "less", "netbase"]);
    assert_eq!(verify, "", "files differ from what the packages ship");
    assert!(chroot(&root, &["dpkg", "-s", "netbase"]).contains("/etc/services"));

    // An upgrade of netbase (repacked with dpkg-deb: version bumped, /etc/protocols changed,
    // one doc file dropped) over a locally edited /etc/services: the edit stays, the package's
    // version lands beside it, /etc/protocols is replaced, the dropped file goes.
    let work = env.path("nb");
    tool("dpkg-deb", &["-R", s(netbase), s(&work)]);
    let nb_ver = tool("dpkg-deb", &["-f", s(netbase), "Version"]);
    let nb_ver = nb_ver.trim();
    let nb_new = format!("{nb_ver}+starling1");
    let control = fs::read_to_string(work.join("DEBIAN/control")).unwrap();
    let bumped = control.replace(
        &format!("Version: {nb_ver}\n"),
        &format!("Version: {nb_new}\n"),
    );
    assert_ne!(bumped, control, "no Version line in {control}");
    fs::write(work.join("DEBIAN/control"), bumped).unwrap();
    let mut protocols = fs::read_to_string(work.join("etc/protocols")).unwrap();
    protocols.push_str("# added by the upgrade\n");
    fs::write(work.join("etc/protocols"), protocols).unwrap();
    let dropped = "usr/share/doc/netbase/copyright";
    fs::remove_file(work.join(dropped)).unwrap();
    let md5 = tool(
        "sh",
        &[
            "-c",
            &format!(
                "cd {} && find etc usr -type f ! -path 'etc/*' -exec md5sum {{}} + ",
                s(&work)
            ),
        ],
    );
    fs::write(work.join("DEBIAN/md5sums"), md5).unwrap();
    let nb2 = env.path("netbase2.deb");
    tool("dpkg-deb", &["--root-owner-group", "-b", s(&work), s(&nb2)]);
    let overlay = env.path("overlay");
    fs::create_dir_all(overlay.join("etc")).unwrap();
    let mut services = fs::read_to_string(root.join("etc/services")).unwrap();
    services.push_str("starling 9999/tcp\n");
    fs::write(overlay.join("etc/services"), &services).unwrap();
    env.ok(&["image", "update", "deb:a", "--overlay", s(&overlay)]);
    let e = env.run(&["image", "update", "deb:a", "--apply-deb", s(&nb2)]);
    assert!(e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("kept locally changed /etc/services"));
    let root2 = env.path("root2");
    env.ok(&["image", "export", "deb:a", s(&root2)]);
    assert_eq!(
        fs::read_to_string(root2.join("etc/services")).unwrap(),
        services
    );
    assert!(root2.join("etc/services.dpkg-dist").exists());
    assert!(fs::read_to_string(root2.join("etc/protocols"))
        .unwrap()
        .contains("added by the upgrade"));
    assert!(!root2.join(dropped).exists(), "obsolete file removed");
    assert!(chroot(&root2, &["dpkg", "-s", "netbase"]).contains(&format!("Version: {nb_new}\n")));
    assert_eq!(chroot(&root2, &["dpkg", "--audit"]).trim(), "");
    // The upgraded package's files are what its md5sums say, but the conffile kept locally.
    let verify = chroot(&root2, &["dpkg", "--verify", "netbase"]);
    assert_eq!(
        verify.lines().collect::<Vec<_>>(),
        ["??5?????? c /etc/services"],
        "{verify}"
    );

    // Search finds the updated versions by package and version range, path and content.
    let hits = json(&env.ok(&[
        "image",
        "search",
        "--json",
        "--package",
        "netbase",
        "--version",
        &format!(">> {nb_ver}"),
    ]));
    assert_eq!(hits.as_array().unwrap().len(), 1, "{hits}");
    let hits = json(&env.ok(&["image", "search", "--json", "--package", "less"]));
    assert_eq!(
        hits.as_array().unwrap().len(),
        4,
        "two tags' updates and the two later versions: {hits}"
    );
    let st = json(&env.ok(&["image", "stat", "--json", "deb:a", "/usr/bin/less"]));
    let hits = json(&env.ok(&[
        "image",
        "search",
        "--json",
        "--content-id",
        st["content_id"].as_str().unwrap(),
    ]));
    assert!(hits.as_array().unwrap().len() >= 3);
    let none = env.run(&["image", "search", "--path", "/no/such/*"]);
    assert_eq!(none.status.code(), Some(1));

    env.fsck_clean();
}

#[test]
fn derive_and_bad_input() {
    if !is_root() {
        skip("chroot into the exported image needs root");
        return;
    }
    let Some((a, _)) = debian_rootfs() else {
        return;
    };
    let env = Env::new();
    env.ok(&["image", "import", s(&a), "deb:a"]);
    let overlay = env.path("overlay");
    fs::create_dir_all(overlay.join("srv/www")).unwrap();
    fs::write(overlay.join("srv/www/index.html"), "hello").unwrap();
    env.ok(&[
        "image",
        "derive",
        "deb:a",
        "web:v1",
        "--overlay",
        s(&overlay),
        "--set-hostname",
        "web1",
        "--add-user",
        "alice",
    ]);
    let d = json(&env.ok(&["image", "diff", "--json", "deb:a", "web:v1"]));
    let paths: Vec<&str> = d["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    for p in [
        "/etc/hostname",
        "/etc/passwd",
        "/etc/shadow",
        "/etc/group",
        "/home/alice",
        "/srv/www/index.html",
    ] {
        assert!(paths.contains(&p), "{p} not in {paths:?}");
    }
    assert!(
        d["trees_read"].as_u64().unwrap() < 20,
        "diff walked {} trees",
        d["trees_read"]
    );
    let root = env.path("root");
    env.ok(&["image", "export", "web:v1", s(&root)]);
    assert_eq!(
        fs::read_to_string(root.join("etc/hostname")).unwrap(),
        "web1\n"
    );
    assert!(chroot(&root, &["id", "alice"]).contains("uid=1000(alice)"));
    let home = fs::metadata(root.join("home/alice")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&home), 1000);
    same_as_adduser(&env, &root, "alice");
    // The base is untouched.
    assert!(
        json(&env.ok(&["image", "history", "--json", "deb:a"]))
            .as_array()
            .unwrap()
            .len()
            == 1
    );

    // Bad input: clear errors, no version written (no tag moved, no history grown).
    let written = || {
        (
            env.ok(&["image", "ls", "--json"]),
            env.ok(&["image", "history", "--json", "deb:a"]),
        )
    };
    let before = written();
    let junk = env.path("junk.deb");
    fs::write(&junk, "not a package").unwrap();
    let e = env.fails(&["image", "update", "deb:a", "--apply-deb", s(&junk)]);
    assert!(e.contains("not a usable .deb"), "{e}");
    let e = env.fails(&["image", "search", "--package", "x", "--version", "~~ 1"]);
    assert!(e.contains("invalid version expression"), "{e}");
    let e = env.fails(&[
        "image",
        "derive",
        "deb:a",
        "x:y",
        "--set-hostname",
        "bad_name",
    ]);
    assert!(e.contains("invalid hostname"), "{e}");
    // An existing user is refused, as adduser refuses it.
    let e = env.fails(&["image", "derive", "deb:a", "x:y", "--add-user", "root"]);
    assert_eq!(
        e.trim_end(),
        "starling: image x:y: user root exists already (uid 0)"
    );
    // A hostname the image has already is no change: no version.
    let hn = fs::read_to_string(a.join("etc/hostname")).unwrap();
    let out = env.ok(&[
        "image",
        "derive",
        "deb:a",
        "deb:a",
        "--set-hostname",
        hn.trim(),
    ]);
    assert!(out.contains("no change"), "{out}");
    if let Some(p) = debs(&["python3-minimal"]) {
        let out = env.run(&[
            "image",
            "update",
            "deb:a",
            "--apply-deb",
            s(&p[0]),
            "--dry-run",
        ]);
        assert!(out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("unsatisfied dependency of python3-minimal")
                && err.contains("python3.11-minimal"),
            "{err}"
        );
        let e = env.fails(&[
            "image",
            "update",
            "deb:a",
            "--apply-deb",
            s(&p[0]),
            "--strict",
        ]);
        assert!(e.contains("--strict"), "{e}");
    }
    assert_eq!(written(), before, "a refused command wrote a version");
    let plain = env.path("plain");
    fs::create_dir_all(&plain).unwrap();
    fs::write(plain.join("f"), "x").unwrap();
    env.ok(&["image", "import", s(&plain), "plain:v1"]);
    let before2 = env.ok(&["image", "ls", "--json"]);
    if let Some(p) = debs(&["less"]) {
        let e = env.fails(&["image", "update", "plain:v1", "--apply-deb", s(&p[0])]);
        assert!(e.contains("no package database"), "{e}");
        let e = env.fails(&["image", "inventory", "plain:v1"]);
        assert!(e.contains("no package database"), "{e}");
    }
    assert_eq!(env.ok(&["image", "ls", "--json"]), before2);
    env.fsck_clean();
}

/// Builds an rpm database the real way: rpmbuild makes packages, rpm installs them (database
/// only) under a root. Returns the root, or `None` after a loud skip.
fn rpm_root(dir: &Path) -> Option<PathBuf> {
    let have = |t: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t}"))
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have("rpmbuild") || !have("rpm") {
        skip("rpm/rpmbuild not installed (Debian package rpm)");
        return None;
    }
    let top = dir.join("rpmbuild");
    let root = dir.join("rpmroot");
    fs::create_dir_all(root.join("var/lib/rpm")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(
        root.join("etc/os-release"),
        "ID=starlingtest\nPRETTY_NAME=\"rpm test\"\n",
    )
    .unwrap();
    let mut rpms = Vec::new();
    for (name, epoch, ver, rel) in [
        ("alpha", "", "1.0", "1.el9"),
        ("beta", "3", "2.10", "7.el9"),
        ("gamma", "", "0.9~rc1", "2"),
    ] {
        let spec = dir.join(format!("{name}.spec"));
        let epoch_line = if epoch.is_empty() {
            String::new()
        } else {
            format!("Epoch: {epoch}\n")
        };
        fs::write(
            &spec,
            format!(
                "Name: {name}\nVersion: {ver}\nRelease: {rel}\n{epoch_line}Summary: t\nLicense: MIT\nBuildArch: noarch\n%description\nt\n%install\nmkdir -p %{{buildroot}}/usr/share/{name}\necho {name} > %{{buildroot}}/usr/share/{name}/f\n%files\n/usr/share/{name}/f\n"
            ),
        )
        .unwrap();
        tool(
            "rpmbuild",
            &[
                "-bb",
                "--quiet",
                "--define",
                &format!("_topdir {}", s(&top)),
                s(&spec),
            ],
        );
    }
    for e in fs::read_dir(top.join("RPMS/noarch")).unwrap() {
        rpms.push(e.unwrap().path());
    }
    let mut args = vec![
        "--root",
        s(&root),
        "--dbpath",
        "/var/lib/rpm",
        "-i",
        "--nodeps",
        "--justdb",
    ];
    let names: Vec<String> = rpms.iter().map(|p| s(p).to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    tool(
        "rpm",
        &["--root", s(&root), "--dbpath", "/var/lib/rpm", "--initdb"],
    );
    tool("rpm", &args);
    Some(root)
}

#[test]
fn rpm_inventory_matches_rpm_and_orders_versions() {
    let env = Env::new();
    let Some(root) = rpm_root(&env.path("rpm")) else {
        return;
    };
    env.ok(&["image", "import", s(&root), "el:1"]);
    let want = tool(
        "rpm",
        &[
            "--root",
            s(&root),
            "--dbpath",
            "/var/lib/rpm",
            "-qa",
            "--qf",
            "%{NAME}\\t%{EVR}\\t%{ARCH}\\n",
        ],
    );
    let want = sorted_lines(&want);
    let inv = json(&env.ok(&["image", "inventory", "--json", "el:1"]));
    assert_eq!(inv[0]["db"], "rpm");
    let got = package_lines(&inv[0], &["name", "version", "architecture"]);
    assert_eq!(got, want);
    assert_eq!(want.len(), 3);
    // rpm's ordering: the epoch wins, and ~ sorts before the release it precedes.
    let hit = |args: &[&str]| json(&env.ok(args)).as_array().unwrap().len();
    assert_eq!(
        hit(&[
            "image",
            "search",
            "--json",
            "--package",
            "beta",
            "--version",
            ">= 3:2.9"
        ]),
        1
    );
    assert_eq!(
        hit(&[
            "image",
            "search",
            "--json",
            "--package",
            "beta",
            "--version",
            "<< 4:0"
        ]),
        1
    );
    assert_eq!(
        hit(&[
            "image",
            "search",
            "--json",
            "--package",
            "gamma",
            "--version",
            "< 0.9-1"
        ]),
        1
    );
    let none = env.run(&[
        "image",
        "search",
        "--json",
        "--package",
        "beta",
        "--version",
        "< 2.10",
    ]);
    assert_eq!(none.status.code(), Some(1), "3:2.10 is newer than 2.10");
}

/// `image diff` as text: the summary (counts equal to the JSON's) and the packages first, the
/// files only on request, one by one or per directory; mtimes left out on request.
fn diff_views(env: &Env, d: &serde_json::Value) {
    let sum = &d["summary"];
    let files = d["files"].as_array().unwrap();
    let n = |k: &str| sum[k].as_u64().unwrap();
    assert_eq!(
        n("files_added") + n("files_removed") + n("files_modified"),
        files.len() as u64
    );
    let text = env.ok(&["image", "diff", "deb:a", "deb:b"]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].contains(" → "), "{text}");
    let mtime = if n("files_mtime_only") > 0 {
        format!(" ({} only in mtime)", n("files_mtime_only"))
    } else {
        String::new()
    };
    assert_eq!(
        lines[1],
        format!(
            "files:    {} added, {} removed, {} changed{mtime}",
            n("files_added"),
            n("files_removed"),
            n("files_modified")
        )
    );
    assert!(
        lines[2].starts_with("packages: ") && lines[2].contains(" added"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("added      less ")),
        "{text}"
    );
    assert!(
        !text.contains("+ /usr/bin/python3.11"),
        "files only on request: {text}"
    );
    assert!(
        text.trim_end().ends_with("--ignore-times") || text.contains("--stat"),
        "{text}"
    );

    let listed = env.ok(&["image", "diff", "--files", "deb:a", "deb:b"]);
    assert!(
        listed.contains("\n+ /usr/bin/python3.11 (file)\n"),
        "{listed}"
    );
    let file_lines = listed
        .lines()
        .filter(|l| l.starts_with("+ /") || l.starts_with("- /") || l.starts_with("M /"))
        .count();
    assert_eq!(file_lines, files.len());

    let stat = env.ok(&["image", "diff", "--stat", "deb:a", "deb:b"]);
    let row = stat
        .lines()
        .find(|l| l.ends_with("  /usr/bin"))
        .unwrap_or_else(|| panic!("no /usr/bin row: {stat}"));
    let added: u64 = row.split_whitespace().next().unwrap().parse().unwrap();
    let want = files
        .iter()
        .filter(|f| {
            let p = f["path"].as_str().unwrap();
            f["change"] == "added" && p.starts_with("/usr/bin/") && !p[9..].contains('/')
        })
        .count() as u64;
    assert_eq!(added, want, "{row}");

    let pk = env.ok(&["image", "diff", "--packages", "deb:a", "deb:b"]);
    assert_eq!(
        pk.lines().count(),
        d["packages"].as_array().unwrap().len(),
        "{pk}"
    );

    let it = json(&env.ok(&[
        "image",
        "diff",
        "--json",
        "--ignore-times",
        "deb:a",
        "deb:b",
    ]));
    let it_files = it["files"].as_array().unwrap();
    assert!(it_files
        .iter()
        .all(|f| !f["details"].to_string().contains("mtime")));
    assert_eq!(
        it_files.len() as u64,
        files.len() as u64 - n("files_mtime_only")
    );
    assert_eq!(it["summary"]["files_mtime_only"], 0);
}

/// What `derive --add-user` wrote for `user` in the exported `root` is what the image's own
/// adduser writes in a copy of the base (account lines, home mode, skeleton copy), the day of
/// the last password change and the comment aside.
fn same_as_adduser(env: &Env, root: &Path, user: &str) {
    let judge = env.path("adduser-root");
    env.ok(&["image", "export", "deb:a", s(&judge)]);
    let o = Command::new("chroot")
        .arg(&judge)
        .args(["adduser", "--disabled-password", "--gecos", "", user])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "adduser in the base: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let line = |r: &Path, file: &str| -> Vec<String> {
        let text = fs::read_to_string(r.join("etc").join(file)).unwrap();
        let l = text
            .lines()
            .find(|l| l.split(':').next() == Some(user))
            .unwrap_or_else(|| panic!("{user} not in {file} of {}", r.display()))
            .to_string();
        l.split(':').map(String::from).collect()
    };
    let mut ours = line(root, "passwd");
    let mut theirs = line(&judge, "passwd");
    // The comment (GECOS) aside.
    ours[4].clear();
    theirs[4].clear();
    assert_eq!(ours, theirs, "passwd");
    assert_eq!(line(root, "group"), line(&judge, "group"), "group");
    assert_eq!(line(root, "gshadow"), line(&judge, "gshadow"), "gshadow");
    let (mut ours, mut theirs) = (line(root, "shadow"), line(&judge, "shadow"));
    // The day of the last change aside.
    ours[2].clear();
    theirs[2].clear();
    assert_eq!(ours, theirs, "shadow");
    // The home: mode, owner, and each file of the skeleton with its mode, owner and bytes.
    let listing = |r: &Path| -> Vec<String> {
        let home = r.join("home").join(user);
        let mut out = Vec::new();
        for p in std::iter::once(home.clone()).chain(walk(&home)) {
            let m = fs::symlink_metadata(&p).unwrap();
            use std::os::unix::fs::MetadataExt;
            let bytes = if m.is_file() {
                fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            out.push(format!(
                "{} {:o} {}:{} {:?}",
                p.strip_prefix(&home).unwrap().display(),
                m.mode(),
                m.uid(),
                m.gid(),
                bytes
            ));
        }
        out.sort();
        out
    };
    let ours = listing(root);
    assert!(ours.len() > 1, "the skeleton was copied: {ours:?}");
    assert_eq!(ours, listing(&judge), "home directory");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}
