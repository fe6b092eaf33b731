//! The command line's behaviour: listings, history, tags, rm + gc, JSON output, store location.

mod common;

use std::fs;

use common::*;

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn tags_history_rm_and_gc() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), vec![1u8; 300_000]).unwrap();
    let v1 = env
        .ok(&[
            "image",
            "import",
            src.to_str().unwrap(),
            "app",
            "--label",
            "stage=one",
        ])
        .trim()
        .to_string();
    fs::write(src.join("f"), vec![2u8; 300_000]).unwrap();
    let v2 = env
        .ok(&["image", "import", src.to_str().unwrap(), "app"])
        .trim()
        .to_string();
    assert_ne!(v1, v2);

    let hist = json(&env.ok(&["image", "history", "app", "--json"]));
    let hist = hist.as_array().unwrap();
    assert_eq!(hist.len(), 2);
    assert_eq!(hist[0]["version"], v2.as_str());
    assert_eq!(hist[0]["parent"], v1.as_str());
    assert_eq!(hist[0]["current"], true);
    assert_eq!(hist[1]["version"], v1.as_str());
    let text = env.ok(&["image", "history", "app"]);
    assert!(
        text.contains(&v1[..12]) && text.contains(&v2[..12]),
        "{text}"
    );

    let inspect = json(&env.ok(&["image", "inspect", &format!("app@{}", &v1[..8]), "--json"]));
    assert_eq!(inspect["labels"]["stage"], "one");
    assert_eq!(inspect["stats"]["files"], 1);

    env.ok(&["image", "tag", &format!("app@{}", &v1[..6]), "app:stable"]);
    let ls = json(&env.ok(&["image", "ls", "--json"]));
    let rows: Vec<_> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["tag"].as_str().unwrap().to_string(),
                r["version"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![("latest".into(), v2.clone()), ("stable".into(), v1.clone())]
    );
    assert!(env.ok(&["image", "ls"]).contains("stable"));

    // An old version still reachable is exportable byte-exact.
    let out = env.path("old");
    env.ok(&[
        "image",
        "export",
        &format!("app@{}", &v1[..8]),
        out.to_str().unwrap(),
    ]);
    assert_eq!(fs::read(out.join("f")).unwrap(), vec![1u8; 300_000]);

    // A version a tag points at cannot be dropped; once untagged it can, and gc frees it.
    let e = env.fails(&["image", "rm", &format!("app@{}", &v1[..8])]);
    assert!(e.contains("app:stable"), "{e}");
    env.ok(&["image", "rm", "app:stable"]);
    let dry = json(&env.ok(&["store", "gc", "--dry-run", "--json"]));
    assert_eq!(
        dry["objects_removed"], 0,
        "v1 is still in app:latest's history"
    );
    env.ok(&["image", "rm", &format!("app@{}", &v1[..8])]);
    let before = json(&env.ok(&["store", "stats", "--json"]))["objects"]
        .as_u64()
        .unwrap();
    let gc = json(&env.ok(&["store", "gc", "--json"]));
    assert!(
        gc["objects_removed"].as_u64().unwrap() >= 2,
        "v1's commit and chunk: {gc}"
    );
    let after = json(&env.ok(&["store", "stats", "--json"]))["objects"]
        .as_u64()
        .unwrap();
    assert_eq!(after, before - gc["objects_removed"].as_u64().unwrap());
    env.fsck_clean();
    let e = env.fails(&[
        "image",
        "export",
        &format!("app@{}", &v1[..8]),
        env.path("gone").to_str().unwrap(),
    ]);
    assert!(e.contains("no version matching"), "{e}");
    let out = env.path("latest");
    env.ok(&["image", "export", "app", out.to_str().unwrap()]);
    assert_eq!(fs::read(out.join("f")).unwrap(), vec![2u8; 300_000]);

    // History survives v1's removal; the parent link of v2 dangles, and says so.
    let hist = json(&env.ok(&["image", "history", "app", "--json"]));
    assert_eq!(hist.as_array().unwrap().len(), 1);
}

/// References as docker and podman users expect: a bare NAME is NAME:latest or NAME's only tag
/// (several without latest: refused, listing them), a bare id prefix names a version, and
/// `image ls NAME[:TAG]` filters.
#[test]
fn bare_names_ids_and_listing_filters() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), "one").unwrap();
    let v1 = env
        .ok(&["image", "import", src.to_str().unwrap(), "web:v1"])
        .trim()
        .to_string();
    fs::write(src.join("f"), "two").unwrap();
    let v2 = env
        .ok(&["image", "import", src.to_str().unwrap(), "api:prod"])
        .trim()
        .to_string();

    // The only tag.
    let i = json(&env.ok(&["image", "inspect", "web", "--json"]));
    assert_eq!(i["version"], v1.as_str(), "{i}");
    assert_eq!(
        json(&env.ok(&["image", "history", "web", "--json"]))[0]["version"],
        v1.as_str()
    );
    // A bare id prefix, as docker takes an image id.
    let i = json(&env.ok(&["image", "inspect", &v2[..10], "--json"]));
    assert_eq!(i["version"], v2.as_str(), "{i}");
    let out = env.path("by-id");
    env.ok(&["image", "export", &v1[..8], out.to_str().unwrap()]);
    assert_eq!(fs::read_to_string(out.join("f")).unwrap(), "one");

    // Several tags and no latest: refused, naming them; with latest, latest.
    env.ok(&["image", "tag", "web:v1", "web:v2"]);
    let e = env.fails(&["image", "inspect", "web"]);
    assert!(e.contains("v1, v2") && e.contains("web:TAG"), "{e}");
    let e = env.fails(&["image", "history", "web"]);
    assert!(e.contains("v1, v2"), "{e}");
    env.ok(&["image", "tag", &format!("api@{}", &v2[..8]), "web:latest"]);
    assert_eq!(
        json(&env.ok(&["image", "inspect", "web", "--json"]))["version"],
        v2.as_str()
    );

    // Unknown names, tags and ids say so (a missing tag with the tags there are).
    for cmd in ["inspect", "history"] {
        let e = env.fails(&["image", cmd, "api:dev"]);
        assert!(
            e.contains("no image api:dev (api has tags prod)"),
            "{cmd}: {e}"
        );
    }
    let e = env.fails(&["image", "inspect", "nosuch"]);
    assert!(e.contains("no image nosuch"), "{e}");
    let e = env.fails(&["image", "inspect", "ffff0000"]);
    assert!(e.contains("no version"), "{e}");

    // Listing filters.
    let names = |filter: &[&str]| -> Vec<String> {
        let mut args = vec!["image", "ls", "--json"];
        args.extend_from_slice(filter);
        json(&env.ok(&args))
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                format!(
                    "{}:{}",
                    r["name"].as_str().unwrap(),
                    r["tag"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(names(&[]), ["api:prod", "web:latest", "web:v1", "web:v2"]);
    assert_eq!(names(&["web"]), ["web:latest", "web:v1", "web:v2"]);
    assert_eq!(names(&["web:v2"]), ["web:v2"]);
    assert!(names(&["nosuch"]).is_empty());
}

#[test]
fn store_location_from_env_and_listing_of_an_empty_store() {
    let dir = tempfile::tempdir_in(scratch_root()).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_starling"))
            .env("STARLING_HOME", dir.path().join("home-store"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["image", "ls", "--json"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    assert!(
        !dir.path().join("home-store").exists(),
        "ls must not create a store"
    );
    // Nor does a first contact with a repository that cannot go on without --root.
    for args in [
        &["repo", "ls", "http://127.0.0.1:9/"][..],
        &["pull", "http://127.0.0.1:9/", "web"][..],
        &["image", "inventory", "http://127.0.0.1:9/", "web"][..],
    ] {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("first contact") && err.contains("--root"),
            "{args:?}: {err}"
        );
        assert!(
            !dir.path().join("home-store").exists(),
            "{args:?} created a store"
        );
    }
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("x"), b"x").unwrap();
    assert!(run(&["image", "import", src.to_str().unwrap(), "e"])
        .status
        .success());
    assert!(dir.path().join("home-store/starling-store").exists());
    // Piped output carries no progress bar noise.
    let out = run(&["image", "import", src.to_str().unwrap(), "e"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains('\r') && !err.contains('\u{1b}'), "{err:?}");
}

#[test]
fn export_to_stdout_streams_a_tar() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("hello"), b"hello world\n").unwrap();
    env.ok(&["image", "import", src.to_str().unwrap(), "s"]);
    let out = env
        .cmd()
        .args(["image", "export", "s", "-"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let tarball = env.path("s.tar");
    fs::write(&tarball, &out.stdout).unwrap();
    let x = env.path("x");
    fs::create_dir(&x).unwrap();
    sh(&format!("tar -xf {} -C {}", tarball.display(), x.display()));
    assert_eq!(fs::read(x.join("hello")).unwrap(), b"hello world\n");
    let e = env.fails(&["image", "export", "s", "-", "--format", "dir"]);
    assert!(e.contains("stdout"), "{e}");
}

/// Without --store or STARLING_HOME (or with it empty) the store is
/// $XDG_DATA_HOME/starling, else ~/.local/share/starling; with neither HOME nor
/// XDG_DATA_HOME the command says what to set.
#[test]
fn default_store_location() {
    let dir = tempfile::tempdir_in(scratch_root()).unwrap();
    let home = dir.path().join("home");
    let xdg = dir.path().join("xdg");
    fs::create_dir_all(&home).unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("x"), b"x").unwrap();
    let import = |vars: &[(&str, &std::path::Path)], starling_home: Option<&str>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_starling"));
        c.env_remove("STARLING_HOME")
            .env_remove("XDG_DATA_HOME")
            .env_remove("HOME");
        if let Some(h) = starling_home {
            c.env("STARLING_HOME", h);
        }
        for (k, v) in vars {
            c.env(k, v);
        }
        c.args(["image", "import", src.to_str().unwrap(), "d:v1"])
            .output()
            .unwrap()
    };
    let marker = |store: &std::path::Path| store.join("starling-store").exists();
    let out = import(&[("HOME", home.as_path())], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(marker(&home.join(".local/share/starling")));
    let out = import(
        &[("HOME", home.as_path()), ("XDG_DATA_HOME", xdg.as_path())],
        Some(""),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        marker(&xdg.join("starling")),
        "an empty STARLING_HOME is unset"
    );
    let out = import(&[], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("STARLING_HOME") && err.contains("HOME"),
        "{err}"
    );
    assert!(!dir.path().join(".local").exists());
}

/// On a terminal an import shows its progress (files, bytes, rate) as it goes, redrawn in
/// place; piped, nothing of it (see store_location_from_env_and_listing_of_an_empty_store).
/// The terminal is a pseudo-terminal from script(1).
#[test]
fn progress_shows_on_a_terminal() {
    if !have("script") {
        skip("script(1) is missing (Debian package bsdutils)");
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    for d in 0..20 {
        let dir = src.join(format!("d{d}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..200 {
            fs::write(dir.join(format!("f{f}")), pseudo_random(4096, d * 1000 + f)).unwrap();
        }
    }
    let cmd = format!(
        "{} --store {} image import {} big:v1",
        env!("CARGO_BIN_EXE_starling"),
        env.store.display(),
        src.display()
    );
    let out = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .output()
        .unwrap();
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{tty}");
    // Every frame the bar drew: "... import N files, BYTES, RATE/s [ELAPSED]".
    let counts: Vec<u64> = tty
        .split(['\r', '\n', '\u{1b}'])
        .filter_map(|frame| {
            let (before, _) = frame.split_once(" files, ")?;
            before.rsplit(' ').next()?.parse().ok()
        })
        .collect();
    assert!(
        counts.iter().any(|&n| n > 0) && counts.windows(2).all(|w| w[0] <= w[1]),
        "no frame counted files as they were imported: {counts:?}\n{tty:?}"
    );
    assert!(tty.contains("/s"), "{tty:?}");
    assert!(
        tty.contains('\r') || tty.contains('\u{1b}'),
        "the bar redraws in place: {tty:?}"
    );
    // The version id is still printed.
    assert!(
        tty.split(|c: char| !c.is_ascii_hexdigit())
            .any(|w| w.len() == 64),
        "{tty:?}"
    );
}

/// `starling image ls | head`: the reader gone, starling ends as Unix tools do, killed by
/// SIGPIPE and saying nothing (and a broken network connection stays an error it handles:
/// SIGPIPE is not left at its default for that; see registry.rs's broken push).
#[test]
fn a_closed_stdout_ends_it_quietly_by_sigpipe() {
    use std::os::unix::process::ExitStatusExt;
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    env.ok(&["image", "import", s(&src), "a:v1"]);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = env
        .cmd()
        .args(["image", "ls"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(13),
        "{:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
