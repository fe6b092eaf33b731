//! Installing .deb packages into an image the way dpkg unpacks them: files placed, files the
//! old version shipped and the new one does not removed, conffiles changed locally kept (the
//! package's version beside them as `.dpkg-dist`, as `--force-confold` does), and the dpkg
//! database written: `info/PKG.list`, the control files, the status paragraph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use md5::{Digest, Md5};
use starling_store::Txn;

use super::relations::Provided;
use super::{default_dir, merge_edits, stage_edits, Maker};
use crate::chunk::{ChunkParams, Progress};
use crate::deb::{self, Deb};
use crate::edit::{Edit, Edits};
use crate::error::{Error, Result};
use crate::manifest::{Commit, Meta, Node};
use crate::path;
use crate::pkg::control::{self, Paragraph};
use crate::pkg::{Inventories, PkgDb, DPKG_STATUS};
use crate::stage::{StageDir, Staged};

const INFO_DIR: &str = "/var/lib/dpkg/info";

/// A package ready to install: its metadata, its files staged in the transaction.
pub(super) struct Prepared {
    pub deb: Deb,
    tree: StageDir,
    /// Every path the package ships (directories too), `/`-rooted, sorted.
    paths: Vec<String>,
    /// md5 of each conffile as shipped.
    conffile_md5: BTreeMap<String, String>,
}

/// Reads a .deb and stages its files.
pub(super) fn prepare(
    txn: &Txn<'_>,
    path: &Path,
    params: &ChunkParams,
    progress: &Progress,
) -> Result<Prepared> {
    let deb = Deb::open(path)?;
    let mut tree = StageDir {
        meta: default_dir(),
        children: Default::default(),
    };
    crate::import::tar::apply(txn, deb.data()?, path, &mut tree, None, params, progress)?;
    tree.canonicalize_hardlinks(path)?;
    let mut paths = Vec::new();
    list_paths(&tree, &mut Vec::new(), &mut paths);
    // The conffiles as shipped, hashed from the data member.
    let conffiles: BTreeSet<String> = deb.conffiles().into_iter().collect();
    let mut conffile_md5 = BTreeMap::new();
    if !conffiles.is_empty() {
        let mut ar = crate::tar_bound::archive(deb.data()?);
        for e in ar.entries().map_err(|e| bad_deb(path, e))? {
            let mut e = e.map_err(|e| bad_deb(path, e))?;
            let p = format!(
                "/{}",
                String::from_utf8_lossy(&e.path_bytes()).trim_start_matches("./")
            );
            if conffiles.contains(&p) {
                // Hashed as it streams: a conffile the data member declares huge is not held.
                let mut md5 = Md5::new();
                std::io::copy(&mut e, &mut md5).map_err(|e| bad_deb(path, e))?;
                conffile_md5.insert(p, hex::encode(md5.finalize()));
            }
        }
    }
    Ok(Prepared {
        deb,
        tree,
        paths,
        conffile_md5,
    })
}

fn bad_deb(path: &Path, e: std::io::Error) -> Error {
    Error::BadDeb {
        path: path.to_path_buf(),
        reason: format!("data member: {e}"),
    }
}

fn hex_md5(b: &[u8]) -> String {
    hex::encode(Md5::digest(b))
}

fn list_paths(d: &StageDir, comps: &mut Vec<Vec<u8>>, out: &mut Vec<String>) {
    for (name, child) in &d.children {
        comps.push(name.clone());
        out.push(format!("/{}", path::display(&path::join(comps))));
        if let Staged::Dir(sub) = child {
            list_paths(sub, comps, out);
        }
        comps.pop();
    }
}

fn find_staged(d: &StageDir, p: &str) -> Option<Node> {
    let comps = path::split(p.as_bytes())?;
    let (last, parents) = comps.split_last()?;
    let mut cur = d;
    for c in parents {
        match cur.children.get(c)? {
            Staged::Dir(s) => cur = s,
            _ => return None,
        }
    }
    match cur.children.get(last)? {
        Staged::Node(n) => Some(n.clone()),
        _ => None,
    }
}

/// Whether a status paragraph is an installed package (`install ok installed`, or any want
/// and flag with the state `installed`).
pub(super) fn installed(p: &Paragraph) -> bool {
    p.get("Status").and_then(|s| s.split_whitespace().nth(2)) == Some("installed")
}

/// Installs `debs` into the image at `old`, adding to `edits` and `warnings`.
#[allow(clippy::too_many_arguments)]
pub(super) fn install_debs(
    inv: &mut Inventories<'_>,
    maker: &Maker<'_, '_>,
    old: &Commit,
    display: &str,
    debs: &[Prepared],
    edits: &mut Edits,
    warnings: &mut Vec<String>,
    now: i64,
) -> Result<()> {
    let current = inv.of(&old.root, display)?;
    if current.db != PkgDb::Dpkg {
        return Err(Error::PackageDb {
            image: display.into(),
            reason: format!(
                "has a {} database; .deb packages need dpkg",
                current.db.name()
            ),
        });
    }
    let (status_meta, status_text) =
        match inv
            .browser
            .lookup(&old.root, DPKG_STATUS.as_bytes(), true)?
        {
            Some(Node::File { meta, size, data }) => {
                (meta, inv.browser.read(&data, size, 256 << 20, DPKG_STATUS)?)
            }
            _ => unreachable!("inventory found the status file"),
        };
    let mut status =
        control::parse(&String::from_utf8_lossy(&status_text)).map_err(|e| Error::PackageDb {
            image: display.into(),
            reason: format!("{DPKG_STATUS}: {e}"),
        })?;
    // What is installed after this run, for dependency checks: current, then the new debs.
    let mut provided = Provided::from_status(&status);
    for d in debs {
        provided.add_package(
            d.deb.name(),
            d.deb.version(),
            d.deb.control.get("Provides").unwrap_or(""),
        );
    }
    for d in debs {
        let name = d.deb.name().to_string();
        warnings.extend(provided.unsatisfied(&name, &d.deb.control));
        let scripts = d.deb.scripts();
        if !scripts.is_empty() {
            warnings.push(format!(
                "{name} has maintainer scripts ({}) that were not run",
                scripts.join(", ")
            ));
        }
        let old_idx = status
            .iter()
            .position(|p| p.get("Package") == Some(name.as_str()));
        let old_para = old_idx.map(|i| &status[i]);
        let para = install_one(inv, maker, old, d, old_para, edits, warnings, now)?;
        match old_idx {
            Some(i) => status[i] = para,
            None => status.push(para),
        }
    }
    let text = render_status(&mut status);
    let meta = Meta {
        mtime_sec: now / 1_000_000_000,
        mtime_nsec: (now % 1_000_000_000) as u32,
        ..status_meta
    };
    let node = maker.file(&mut inv.browser, text.into_bytes(), meta)?;
    edits.set(DPKG_STATUS.as_bytes(), Edit::Put(node), &default_dir())?;
    Ok(())
}

/// One package's files and database entries (other than the status file); returns its new
/// status paragraph. `old_para` is the installed version's.
#[allow(clippy::too_many_arguments)]
fn install_one(
    inv: &mut Inventories<'_>,
    maker: &Maker<'_, '_>,
    old: &Commit,
    d: &Prepared,
    old_para: Option<&Paragraph>,
    edits: &mut Edits,
    warnings: &mut Vec<String>,
    now: i64,
) -> Result<Paragraph> {
    let deb = &d.deb;
    let name = deb.name();
    let info_name = info_name(deb);
    // Conffiles: keep what was changed locally, as dpkg --force-confold does.
    let old_conf = recorded_conffiles(old_para);
    let mut keep = BTreeSet::new();
    for (path, new_md5) in &d.conffile_md5 {
        let Some(Node::File { size, data, .. }) =
            inv.browser.lookup(&old.root, path.as_bytes(), false)?
        else {
            continue;
        };
        let cur = hex_md5(&inv.browser.read(&data, size, 64 << 20, path)?);
        if keeps_local_conffile(old_conf.get(path), &cur, new_md5) {
            keep.insert(path.clone());
            warnings.push(format!(
                "{name}: kept locally changed {path}; the package's version is {path}.dpkg-dist"
            ));
        }
    }
    let mut children = BTreeMap::new();
    stage_edits(&d.tree, false, &mut Vec::new(), &keep, &mut children);
    merge_edits(&mut edits.children, children);
    for p in &keep {
        if let Some(n) = find_staged(&d.tree, p) {
            edits.set(
                format!("{p}.dpkg-dist").as_bytes(),
                Edit::Put(n),
                &default_dir(),
            )?;
        }
    }
    let list_path = format!("{INFO_DIR}/{info_name}.list");
    if old_para.is_some() {
        remove_obsolete(inv, old, d, &list_path, &old_conf, &info_name, edits)?;
    }
    // The dpkg database: file list, control files; the status paragraph is returned.
    let info_meta = |mode| Meta {
        mode,
        uid: 0,
        gid: 0,
        mtime_sec: now / 1_000_000_000,
        mtime_nsec: (now % 1_000_000_000) as u32,
        xattrs: Vec::new(),
    };
    let node = maker.file(
        &mut inv.browser,
        list_text(&d.paths).into_bytes(),
        info_meta(0o644),
    )?;
    edits.set(list_path.as_bytes(), Edit::Put(node), &default_dir())?;
    for (fname, bytes, mode) in &deb.control_files {
        if fname.contains('/') {
            continue;
        }
        let p = format!("{INFO_DIR}/{info_name}.{fname}");
        let mode = if deb::SCRIPTS.contains(&fname.as_str()) {
            0o755
        } else {
            *mode & 0o777
        };
        let node = maker.file(&mut inv.browser, bytes.clone(), info_meta(mode))?;
        edits.set(p.as_bytes(), Edit::Put(node), &default_dir())?;
    }
    Ok(status_paragraph(&deb.control, name, &d.conffile_md5))
}

/// Files of the old version the new one no longer ships (not directories, not conffiles,
/// which dpkg keeps and marks obsolete), and old control files in info/ the new version does
/// not have.
fn remove_obsolete(
    inv: &mut Inventories<'_>,
    old: &Commit,
    d: &Prepared,
    list_path: &str,
    old_conf: &BTreeMap<String, String>,
    info_name: &str,
    edits: &mut Edits,
) -> Result<()> {
    let new_paths: BTreeSet<&str> = d.paths.iter().map(String::as_str).collect();
    if let Some(b) = inv.browser.read_path(&old.root, list_path, 64 << 20)? {
        for p in String::from_utf8_lossy(&b).lines() {
            if p == "/." || new_paths.contains(p) || old_conf.contains_key(p) {
                continue;
            }
            if let Some(n) = inv.browser.lookup(&old.root, p.as_bytes(), false)? {
                if !matches!(n, Node::Dir { .. }) {
                    edits.set(p.as_bytes(), Edit::Remove, &default_dir())?;
                }
            }
        }
    }
    let others = [
        "md5sums",
        "conffiles",
        "triggers",
        "shlibs",
        "symbols",
        "templates",
    ];
    for ext in deb::SCRIPTS.iter().chain(others.iter()) {
        let p = format!("{INFO_DIR}/{info_name}.{ext}");
        if d.deb.file(ext).is_none()
            && inv
                .browser
                .lookup(&old.root, p.as_bytes(), false)?
                .is_some()
        {
            edits.set(p.as_bytes(), Edit::Remove, &default_dir())?;
        }
    }
    Ok(())
}

/// The name of the package's files in info/: `PKG`, or `PKG:ARCH` for Multi-Arch: same.
fn info_name(deb: &Deb) -> String {
    if deb.control.get("Multi-Arch") == Some("same") {
        format!("{}:{}", deb.name(), deb.architecture())
    } else {
        deb.name().to_string()
    }
}

/// info/PKG.list: "/." then every path the package ships.
fn list_text(paths: &[String]) -> String {
    let mut list = String::from("/.\n");
    for p in paths {
        list.push_str(p);
        list.push('\n');
    }
    list
}

/// The conffiles and their md5s recorded in an installed package's status paragraph.
fn recorded_conffiles(para: Option<&Paragraph>) -> BTreeMap<String, String> {
    para.and_then(|p| p.get("Conffiles"))
        .map(|c| {
            c.lines()
                .filter_map(|l| {
                    let mut w = l.split_whitespace();
                    Some((w.next()?.to_string(), w.next()?.to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the image's conffile (md5 `current`) stays: it was changed since dpkg recorded
/// `recorded` and is not already what the package ships.
fn keeps_local_conffile(recorded: Option<&String>, current: &str, shipped: &str) -> bool {
    let unchanged_locally = recorded.map(String::as_str) == Some(current);
    !unchanged_locally && current != shipped
}

/// The status paragraph of an installed package: Package, then `Status: install ok
/// installed`, then the control file's fields, with Conffiles (and their shipped md5s)
/// before the Description, as dpkg orders them.
fn status_paragraph(
    control: &Paragraph,
    name: &str,
    conffile_md5: &BTreeMap<String, String>,
) -> Paragraph {
    let mut rest = control.clone();
    rest.remove("Status");
    let mut fields = vec![
        ("Package".to_string(), name.to_string()),
        ("Status".to_string(), "install ok installed".to_string()),
    ];
    fields.extend(
        rest.fields
            .into_iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("Package")),
    );
    let mut para = Paragraph { fields };
    if !conffile_md5.is_empty() {
        let mut c = String::new();
        for (p, m) in conffile_md5 {
            c.push('\n');
            c.push_str(&format!("{p} {m}"));
        }
        let at = para
            .fields
            .iter()
            .position(|(k, _)| k == "Description")
            .unwrap_or(para.fields.len());
        para.fields.insert(at, ("Conffiles".into(), c));
    }
    para
}

/// The status file: paragraphs sorted by package and architecture, as dpkg writes it.
fn render_status(status: &mut [Paragraph]) -> String {
    status.sort_by(|a, b| {
        a.get("Package")
            .cmp(&b.get("Package"))
            .then(a.get("Architecture").cmp(&b.get("Architecture")))
    });
    status.iter().map(|p| p.render() + "\n").collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn para(text: &str) -> Paragraph {
        control::parse(text).unwrap().remove(0)
    }

    #[test]
    fn status_paragraph_puts_package_and_status_first_and_conffiles_before_description() {
        let control = para(
            "Version: 3.0.15-1\nPackage: openssl\nStatus: half-installed\nArchitecture: amd64\n\
             Depends: libc6\nDescription: toolkit\n more text\n",
        );
        let md5 = BTreeMap::from([
            ("/etc/ssl/openssl.cnf".to_string(), "aa".repeat(16)),
            ("/etc/default/x".to_string(), "bb".repeat(16)),
        ]);
        let p = status_paragraph(&control, "openssl", &md5);
        let keys: Vec<&str> = p.fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "Package",
                "Status",
                "Version",
                "Architecture",
                "Depends",
                "Conffiles",
                "Description"
            ]
        );
        assert_eq!(p.get("Status"), Some("install ok installed"));
        let rendered = p.render();
        assert!(
            rendered.contains(&format!(
                "Conffiles:\n /etc/default/x {}\n /etc/ssl/openssl.cnf {}\n",
                "bb".repeat(16),
                "aa".repeat(16)
            )),
            "{rendered}"
        );
        // Without conffiles there is no Conffiles field.
        let p = status_paragraph(&control, "openssl", &BTreeMap::new());
        assert_eq!(p.get("Conffiles"), None);
        assert_eq!(p.fields.len(), 6);
    }

    #[test]
    fn status_file_is_sorted_by_package_then_architecture() {
        let mut status = control::parse(
            "Package: zlib1g\nArchitecture: amd64\n\n\
             Package: libc6\nArchitecture: i386\n\n\
             Package: libc6\nArchitecture: amd64\n",
        )
        .unwrap();
        let text = render_status(&mut status);
        assert_eq!(
            text,
            "Package: libc6\nArchitecture: amd64\n\n\
             Package: libc6\nArchitecture: i386\n\n\
             Package: zlib1g\nArchitecture: amd64\n\n"
        );
    }

    #[test]
    fn recorded_conffiles_come_from_the_old_paragraph() {
        let old = para(
            "Package: x\nConffiles:\n /etc/x.conf 0123\n /etc/y.conf 4567 obsolete\n \
             /etc/broken\n",
        );
        let c = recorded_conffiles(Some(&old));
        assert_eq!(
            c,
            BTreeMap::from([
                ("/etc/x.conf".to_string(), "0123".to_string()),
                ("/etc/y.conf".to_string(), "4567".to_string()),
            ])
        );
        assert!(recorded_conffiles(None).is_empty());
    }

    #[test]
    fn a_conffile_changed_locally_is_kept() {
        let recorded = "1".repeat(32);
        let local = "2".repeat(32);
        let shipped = "3".repeat(32);
        // Unchanged since dpkg installed it: the package's version replaces it.
        assert!(!keeps_local_conffile(Some(&recorded), &recorded, &shipped));
        // Changed locally: kept (and the package's version goes to .dpkg-dist).
        assert!(keeps_local_conffile(Some(&recorded), &local, &shipped));
        // Changed locally, but to exactly what the package ships: nothing to keep.
        assert!(!keeps_local_conffile(Some(&recorded), &shipped, &shipped));
        // Not recorded (a file the old version did not own as a conffile): kept if different.
        assert!(keeps_local_conffile(None, &local, &shipped));
        assert!(!keeps_local_conffile(None, &shipped, &shipped));
    }

    #[test]
    fn only_installed_paragraphs_count_as_installed() {
        assert!(installed(&para(
            "Package: a\nStatus: install ok installed\n"
        )));
        assert!(installed(&para("Package: a\nStatus: hold ok installed\n")));
        assert!(!installed(&para(
            "Package: a\nStatus: deinstall ok config-files\n"
        )));
        assert!(!installed(&para(
            "Package: a\nStatus: install ok unpacked\n"
        )));
        assert!(!installed(&para("Package: a\n")));
    }

    #[test]
    fn the_file_list_starts_with_the_root() {
        assert_eq!(
            list_text(&["/usr".into(), "/usr/bin".into(), "/usr/bin/x".into()]),
            "/.\n/usr\n/usr/bin\n/usr/bin/x\n"
        );
    }
}
