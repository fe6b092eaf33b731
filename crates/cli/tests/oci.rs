//! OCI image layouts in and out, judged by umoci (which unpacks layers with whiteouts and
//! opaque directories itself) and skopeo (which verifies every digest when it copies).

mod common;

use std::fs;
use std::path::Path;

use common::*;

/// umoci unpacks `layout:tag` and returns the rootfs path (inside `bundle`).
fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path) -> std::path::PathBuf {
    tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:{tag}", s(layout)),
            s(bundle),
        ],
    );
    bundle.join("rootfs")
}

fn sha256_file(p: &Path) -> String {
    tool("sha256sum", &[s(p)])
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn umoci_layers_with_whiteouts_in_and_out() {
    require_tool("umoci", "umoci");
    if !is_root() {
        skip("umoci unpack keeps owners and devices only as root");
        return;
    }
    let env = Env::new();
    let layout = env.path("layout");
    tool("umoci", &["init", "--layout", s(&layout)]);
    tool(
        "umoci",
        &["new", "--image", &format!("{}:base", s(&layout))],
    );
    let b1 = env.path("b1");
    let rootfs = umoci_unpack(&layout, "base", &b1);
    torture_tree(&rootfs, false);
    fs::create_dir_all(rootfs.join("etc/conf.d")).unwrap();
    fs::write(rootfs.join("etc/conf.d/old"), b"lower").unwrap();
    fs::write(rootfs.join("gone"), b"to be whited out").unwrap();
    tool(
        "umoci",
        &["repack", "--image", &format!("{}:base", s(&layout)), s(&b1)],
    );
    tool(
        "umoci",
        &[
            "config",
            "--image",
            &format!("{}:base", s(&layout)),
            "--config.env=FOO=bar",
            "--config.entrypoint=/bin/sh",
            "--config.cmd=-c",
            "--config.cmd=echo hi",
            "--config.workingdir=/srv",
        ],
    );

    // Layer 2 (umoci): a file and a directory removed, a file added: whiteouts.
    let b2 = env.path("b2");
    tool(
        "umoci",
        &["unpack", "--image", &format!("{}:base", s(&layout)), s(&b2)],
    );
    fs::remove_file(b2.join("rootfs/gone")).unwrap();
    fs::remove_dir_all(b2.join("rootfs/empty-dir")).unwrap();
    fs::write(b2.join("rootfs/added"), b"upper").unwrap();
    tool(
        "umoci",
        &["repack", "--image", &format!("{}:two", s(&layout)), s(&b2)],
    );

    env.ok(&[
        "image",
        "import",
        &format!("oci:{}:two", s(&layout)),
        "c:two",
    ]);
    let out = env.path("out");
    env.ok(&["image", "export", "c:two", s(&out)]);
    let want = umoci_unpack(&layout, "two", &env.path("want2"));
    assert!(!want.join("gone").exists() && want.join("added").exists());
    assert_same_tree(&want, &out);
    let j: serde_json::Value =
        serde_json::from_str(&env.ok(&["image", "inspect", "--json", "c:two"])).unwrap();
    assert_eq!(j["labels"]["oci.entrypoint"], r#"["/bin/sh"]"#);
    assert_eq!(j["labels"]["oci.cmd"], r#"["-c","echo hi"]"#);
    assert_eq!(j["labels"]["oci.workdir"], "/srv");
    assert!(j["labels"]["oci.env"].as_str().unwrap().contains("FOO=bar"));

    // Out again: umoci unpacks what Starling wrote to the same tree and config, skopeo copies
    // it (verifying every digest), and importing it back gives the same manifest.
    let outl = env.path("out-layout");
    env.ok(&[
        "image",
        "export",
        "c:two",
        &format!("oci:{}:again", s(&outl)),
    ]);
    let again = umoci_unpack(&outl, "again", &env.path("again"));
    assert_same_tree(&want, &again);
    let cfg = fs::read_to_string(env.path("again/config.json")).unwrap();
    assert!(cfg.contains("FOO=bar") && cfg.contains("/srv"), "{cfg}");
    let copy = env.path("copy");
    tool(
        "skopeo",
        &[
            "copy",
            &format!("oci:{}:again", s(&outl)),
            &format!("oci:{}:c", s(&copy)),
        ],
    );
    env.ok(&[
        "image",
        "import",
        &format!("oci:{}:again", s(&outl)),
        "c:back",
    ]);
    assert_eq!(root_tree(&env, "c:two"), root_tree(&env, "c:back"));
    // A second export into the same layout adds a name; the first stays readable.
    env.ok(&[
        "image",
        "export",
        "c:two",
        &format!("oci:{}:other", s(&outl)),
    ]);
    tool("skopeo", &["inspect", &format!("oci:{}:again", s(&outl))]);
    env.fsck_clean();
}

#[test]
fn debian_rootfs_through_umoci() {
    require_tool("umoci", "umoci");
    if !is_root() {
        skip("umoci unpack keeps owners and devices only as root");
        return;
    }
    let Some((rootfs_a, _)) = debian_rootfs() else {
        return;
    };
    let env = Env::new();
    let layout = env.path("layout");
    tool("umoci", &["init", "--layout", s(&layout)]);
    tool("umoci", &["new", "--image", &format!("{}:deb", s(&layout))]);
    let b = env.path("b");
    let rootfs = umoci_unpack(&layout, "deb", &b);
    sh(&format!("cp -a {}/. {}/", s(&rootfs_a), s(&rootfs)));
    tool(
        "umoci",
        &["repack", "--image", &format!("{}:deb", s(&layout)), s(&b)],
    );
    env.ok(&[
        "image",
        "import",
        &format!("oci:{}:deb", s(&layout)),
        "deb:oci",
    ]);
    let want = umoci_unpack(&layout, "deb", &env.path("want"));
    let out = env.path("out");
    env.ok(&["image", "export", "deb:oci", s(&out)]);
    assert_same_tree(&want, &out);
    // OCI → store → OCI: umoci unpacks Starling's layout to the same tree.
    let outl = env.path("outl");
    env.ok(&[
        "image",
        "export",
        "deb:oci",
        &format!("oci:{}:deb", s(&outl)),
    ]);
    let again = umoci_unpack(&outl, "deb", &env.path("again"));
    assert_same_tree(&want, &again);
}

#[test]
fn opaque_directory_hides_lower_layer() {
    require_tool("python3", "python3");
    let env = Env::new();
    let layout = env.path("layout");
    // Two hand-made layers: the second makes /etc opaque and adds /etc/new.
    let script = r#"
import hashlib, io, json, os, sys, tarfile, gzip
root = sys.argv[1]
os.makedirs(root + "/blobs/sha256")
def blob(data):
    d = hashlib.sha256(data).hexdigest()
    open(root + "/blobs/sha256/" + d, "wb").write(data)
    return {"digest": "sha256:" + d, "size": len(data)}
def layer(entries):
    raw = io.BytesIO()
    t = tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT)
    for name, data in entries:
        i = tarfile.TarInfo(name); i.mtime = 1700000000
        if data is None:
            i.type = tarfile.DIRTYPE; i.mode = 0o755; t.addfile(i)
        else:
            i.size = len(data); i.mode = 0o644; t.addfile(i, io.BytesIO(data))
    t.close()
    plain = raw.getvalue()
    d = blob(gzip.compress(plain, mtime=0))
    d["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
    return d, "sha256:" + hashlib.sha256(plain).hexdigest()
l1, id1 = layer([("etc", None), ("etc/a", b"a"), ("etc/sub", None), ("etc/sub/b", b"b"), ("keep", b"k")])
l2, id2 = layer([("etc", None), ("etc/.wh..wh..opq", b""), ("etc/new", b"n"), (".wh.keep", b"")])
cfg = blob(json.dumps({"architecture": "amd64", "os": "linux", "config": {},
    "rootfs": {"type": "layers", "diff_ids": [id1, id2]}}).encode())
cfg["mediaType"] = "application/vnd.oci.image.config.v1+json"
man = blob(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": cfg, "layers": [l1, l2]}).encode())
man["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
man["annotations"] = {"org.opencontainers.image.ref.name": "t"}
json.dump({"schemaVersion": 2, "manifests": [man]}, open(root + "/index.json", "w"))
json.dump({"imageLayoutVersion": "1.0.0"}, open(root + "/oci-layout", "w"))
"#;
    tool("python3", &["-c", script, s(&layout)]);
    // A directory holding oci-layout is recognised without the oci: prefix.
    env.ok(&["image", "import", s(&layout), "o:t"]);
    let out = env.path("out");
    env.ok(&["image", "export", "o:t", s(&out)]);
    let mut names: Vec<String> = walk(&out);
    names.sort();
    assert_eq!(
        names,
        vec!["etc", "etc/new"],
        "opaque /etc hides a and sub; keep is whited out"
    );
    if have("umoci") && is_root() {
        let want = umoci_unpack(&layout, "t", &env.path("u"));
        assert_same_tree(&want, &out);
    }
}

fn walk(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn rec(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            if p.is_dir() && !p.is_symlink() {
                rec(root, &p, out);
            }
        }
    }
    rec(root, root, &mut out);
    out
}

#[test]
fn bad_layouts_are_refused_and_store_untouched() {
    let env = Env::new();
    let src = env.path("src");
    torture_tree(&src, false);
    env.ok(&["image", "import", s(&src), "t:v1"]);
    let layout = env.path("layout");
    env.ok(&["image", "export", "t:v1", &format!("oci:{}:v1", s(&layout))]);
    let before = env.ok(&["image", "ls", "--json"]);

    let e = env.fails(&[
        "image",
        "import",
        &format!("oci:{}:nope", s(&layout)),
        "x:1",
    ]);
    assert!(
        e.contains("no image named \"nope\"") && e.contains("v1"),
        "{e}"
    );

    // Flip one byte of the layer blob: its digest no longer matches.
    let index: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(layout.join("index.json")).unwrap()).unwrap();
    let mdigest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .replace("sha256:", "");
    let manifest: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(layout.join("blobs/sha256").join(&mdigest)).unwrap(),
    )
    .unwrap();
    let ldigest = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .replace("sha256:", "");
    let lpath = layout.join("blobs/sha256").join(&ldigest);
    assert_eq!(sha256_file(&lpath), ldigest);
    let mut bytes = fs::read(&lpath).unwrap();
    let mid = bytes.len() - 20;
    bytes[mid] ^= 0x01;
    fs::write(&lpath, &bytes).unwrap();
    let e = env.fails(&["image", "import", &format!("oci:{}:v1", s(&layout)), "x:2"]);
    assert!(e.contains("does not match") || e.contains("corrupt"), "{e}");

    fs::remove_file(&lpath).unwrap();
    let e = env.fails(&["image", "import", &format!("oci:{}:v1", s(&layout)), "x:3"]);
    assert!(e.contains(&ldigest[..12]), "names the missing blob: {e}");

    fs::write(
        layout.join("oci-layout"),
        "{\"imageLayoutVersion\":\"9.0\"}",
    )
    .unwrap();
    let e = env.fails(&["image", "import", &format!("oci:{}:v1", s(&layout)), "x:4"]);
    assert!(e.contains("imageLayoutVersion"), "{e}");

    assert_eq!(env.ok(&["image", "ls", "--json"]), before);
    env.fsck_clean();
}
