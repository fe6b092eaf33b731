//! New image versions made by editing manifests: Debian packages installed the way dpkg
//! unpacks them (files placed, obsolete files removed, conffiles kept when changed locally,
//! the dpkg database updated), overlays of a directory, removals. Maintainer scripts are not
//! run; the report says which packages have them. Content is stored once for all images.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::Path;

use md5::{Digest, Md5};
use serde::Serialize;
use starling_store::{ObjectId, Store, Txn};

use crate::browse::Browser;
use crate::chunk::{store_content, ChunkParams, Progress};
use crate::deb::Deb;
use crate::diff::Diff;
use crate::edit::{Edit, Editor, Edits};
use crate::error::{Error, Result};
use crate::manifest::{Commit, FileData, Meta, Node, Tree, TreeStats};
use crate::path;
use crate::pkg::control::{self, Paragraph};
use crate::pkg::{version, Inventories, PkgDb, DPKG_STATUS};
use crate::reference::ImageRef;
use crate::stage::{StageDir, Staged};
use crate::{now_unix_ns, tags, versions};

pub struct UpdateOptions<'a> {
    pub debs: Vec<&'a Path>,
    pub overlay: Option<&'a Path>,
    pub remove: Vec<String>,
    pub dry_run: bool,
    /// Refuse (instead of warn) when a package's dependencies are not satisfied.
    pub strict: bool,
    pub chunking: ChunkParams,
    /// Write /etc/hostname (and the 127.0.1.1 line of /etc/hosts).
    pub hostname: Option<String>,
    /// Users to add (passwd, group, shadow with a locked password, a home directory).
    pub add_users: Vec<String>,
    pub op: &'static str,
}

/// One image to change: the version to start from and the tag that gets the result.
#[derive(Debug, Clone)]
pub struct Target {
    pub from: ImageRef,
    pub name: String,
    pub tag: String,
}

#[derive(Debug, Serialize)]
pub struct UpdateReport {
    pub image: String,
    pub old: ObjectId,
    /// The new version; `None` in a dry run or when nothing changed.
    pub new: Option<ObjectId>,
    pub diff: Diff,
    pub warnings: Vec<String>,
}

/// A package ready to install: its metadata, its files staged in the transaction.
struct Prepared {
    deb: Deb,
    tree: StageDir,
    /// Every path the package ships (directories too), `/`-rooted, sorted.
    paths: Vec<String>,
    /// md5 of each conffile as shipped.
    conffile_md5: BTreeMap<String, String>,
}

pub fn update(
    store: &Store,
    targets: &[Target],
    opts: &UpdateOptions<'_>,
    progress: &Progress,
) -> Result<Vec<UpdateReport>> {
    if let Some(h) = &opts.hostname {
        if h.is_empty()
            || h.len() > 63
            || !h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            || h.starts_with('-')
        {
            return Err(Error::BadQuery {
                what: "hostname",
                input: h.clone(),
                reason: "use 1 to 63 letters, digits and inner hyphens".into(),
            });
        }
    }
    for u in &opts.add_users {
        let ok = !u.is_empty()
            && u.len() <= 32
            && u.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && u.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !ok {
            return Err(Error::BadQuery {
                what: "user name",
                input: u.clone(),
                reason:
                    "use lower-case letters, digits, '_' and '-', starting with a letter or '_'"
                        .into(),
            });
        }
    }
    let _writer = store.lock_writer()?;
    let txn = store.begin()?;
    let mut prepared = Vec::new();
    for p in &opts.debs {
        prepared.push(prepare(&txn, p, &opts.chunking, progress)?);
    }
    let overlay = match opts.overlay {
        Some(dir) => Some(crate::import::stage_dir(
            &txn,
            dir,
            &opts.chunking,
            progress,
        )?),
        None => None,
    };

    let _refs = store.lock_refs()?;
    let mut inv = Inventories::new(store);
    let mut reports = Vec::new();
    let mut commits = Vec::new();
    let mut stats_cache: HashMap<ObjectId, TreeStats> = HashMap::new();
    let mut all_new_trees = Vec::new();
    for t in targets {
        let (name, tag) = (&t.name, &t.tag);
        let display = format!("{name}:{tag}");
        let from = versions::resolve(store, &t.from)?;
        let old = from.commit;
        let maker = Maker {
            txn: &txn,
            params: &opts.chunking,
            progress,
        };
        let mut warnings = Vec::new();
        let mut edits = Edits::default();
        let now = now_unix_ns();
        if !prepared.is_empty() {
            install_debs(
                &mut inv,
                &maker,
                &old,
                &display,
                &prepared,
                &mut edits,
                &mut warnings,
                now,
            )?;
        }
        if let Some(o) = &overlay {
            let mut children = BTreeMap::new();
            stage_edits(o, true, &mut Vec::new(), &BTreeSet::new(), &mut children);
            merge_edits(&mut edits.children, children);
        }
        customize(
            &mut inv.browser,
            &maker,
            &old,
            opts,
            &mut edits,
            &mut warnings,
            now,
        )?;
        for r in &opts.remove {
            match inv.browser.lookup(&old.root, r.as_bytes(), false)? {
                Some(_) => edits.set(r.as_bytes(), Edit::Remove, &default_dir())?,
                None => warnings.push(format!("--remove {r}: not in the image")),
            }
        }
        let mut editor = Editor::new(&mut inv.browser);
        let new_root = editor.apply(&old.root, &edits)?;
        let new_trees = std::mem::take(&mut editor.new_trees);
        for (id, bytes) in &new_trees {
            inv.browser.preload(*id, Tree::decode(id, bytes)?);
        }
        let diff = crate::diff::diff(
            &mut inv,
            (&old.root, &old.root_meta),
            (&new_root, &old.root_meta),
        )?;
        let mut report = UpdateReport {
            image: display.clone(),
            old: from.id,
            new: None,
            diff,
            warnings,
        };
        if new_root != old.root && !opts.dry_run {
            let stats = tree_stats(&mut inv.browser, &new_root, &mut stats_cache)?;
            let what: Vec<String> = prepared
                .iter()
                .map(|p| format!("{}={}", p.deb.name(), p.deb.version()))
                .chain(opts.overlay.map(|o| format!("overlay {}", o.display())))
                .chain(opts.remove.iter().map(|r| format!("-{r}")))
                .chain(opts.hostname.iter().map(|h| format!("hostname={h}")))
                .chain(opts.add_users.iter().map(|u| format!("user+{u}")))
                .collect();
            let commit = Commit {
                root: new_root,
                root_meta: old.root_meta.clone(),
                parent: Some(from.id),
                created_unix_ns: now,
                name: name.clone(),
                labels: old.labels.clone(),
                boot: old.boot.clone(),
                stats,
                source: format!("{}: {}", opts.op, what.join(" ")),
            };
            let bytes = commit.encode();
            report.new = Some(ObjectId::of(&bytes));
            commits.push((name.clone(), tag.clone(), bytes));
            all_new_trees.extend(new_trees);
        }
        reports.push(report);
    }
    if let Some(r) = reports
        .iter()
        .find(|r| r.warnings.iter().any(|w| w.starts_with("unsatisfied")))
    {
        if opts.strict {
            return Err(Error::PackageDb {
                image: r.image.clone(),
                reason: format!("{} (--strict)", r.warnings.join("; ")),
            });
        }
    }
    if opts.dry_run {
        return Ok(reports);
    }
    for (_, bytes) in &all_new_trees {
        txn.put(bytes)?;
    }
    let mut ids = Vec::new();
    for (name, tag, bytes) in &commits {
        ids.push((name, tag, txn.put(bytes)?.id));
    }
    txn.commit()?;
    for (name, tag, id) in ids {
        tags::point(store, name, tag, id, opts.op)?;
    }
    Ok(reports)
}

/// Stores files the update makes itself (dpkg database entries) through the normal chunking,
/// and makes their chunks readable before the transaction commits (for the diff).
struct Maker<'t, 'a> {
    txn: &'t Txn<'a>,
    params: &'t ChunkParams,
    progress: &'t Progress,
}

impl Maker<'_, '_> {
    fn file(&self, browser: &mut Browser<'_>, bytes: Vec<u8>, meta: Meta) -> Result<Node> {
        let (size, data) = store_content(
            self.txn,
            self.params,
            bytes.as_slice(),
            self.progress,
            &|e| Error::Io {
                path: "dpkg database".into(),
                source: e,
            },
        )?;
        if let FileData::Chunks(chunks) = &data {
            let mut at = 0usize;
            for c in chunks {
                let end = at + c.len as usize;
                browser.pending.insert(c.id, bytes[at..end].to_vec());
                at = end;
            }
        }
        Ok(Node::File { meta, size, data })
    }
}

/// Hostname and users, written into the image's own configuration files.
fn customize(
    b: &mut Browser<'_>,
    maker: &Maker<'_, '_>,
    old: &Commit,
    opts: &UpdateOptions<'_>,
    edits: &mut Edits,
    warnings: &mut Vec<String>,
    now: i64,
) -> Result<()> {
    let stamp = |mut m: Meta| {
        m.mtime_sec = now / 1_000_000_000;
        m.mtime_nsec = (now % 1_000_000_000) as u32;
        m
    };
    let existing = |b: &mut Browser<'_>, p: &str| -> Result<Option<(Meta, Vec<u8>)>> {
        match b.lookup(&old.root, p.as_bytes(), false)? {
            Some(Node::File { meta, size, data }) => {
                Ok(Some((meta, b.read(&data, size, 16 << 20, p)?)))
            }
            _ => Ok(None),
        }
    };
    let plain = |mode| Meta {
        mode,
        ..Meta::default()
    };
    if let Some(h) = &opts.hostname {
        let meta = existing(b, "/etc/hostname")?.map_or(plain(0o644), |e| e.0);
        let node = maker.file(b, format!("{h}\n").into_bytes(), stamp(meta))?;
        edits.set(b"/etc/hostname", Edit::Put(node), &default_dir())?;
        if let Some((meta, hosts)) = existing(b, "/etc/hosts")? {
            let text = String::from_utf8_lossy(&hosts);
            let mut lines: Vec<String> = text
                .lines()
                .filter(|l| !l.starts_with("127.0.1.1"))
                .map(String::from)
                .collect();
            let at = lines
                .iter()
                .position(|l| l.starts_with("127.0.0.1"))
                .map_or(0, |i| i + 1);
            lines.insert(at, format!("127.0.1.1\t{h}"));
            let node = maker.file(b, (lines.join("\n") + "\n").into_bytes(), stamp(meta))?;
            edits.set(b"/etc/hosts", Edit::Put(node), &default_dir())?;
        }
    }
    if opts.add_users.is_empty() {
        return Ok(());
    }
    let Some((pmeta, passwd)) = existing(b, "/etc/passwd")? else {
        warnings.push("no /etc/passwd: users not added".into());
        return Ok(());
    };
    let (gmeta, group) = existing(b, "/etc/group")?.unwrap_or((plain(0o644), Vec::new()));
    let shadow = existing(b, "/etc/shadow")?;
    let mut passwd = String::from_utf8_lossy(&passwd).into_owned();
    let mut group = String::from_utf8_lossy(&group).into_owned();
    let mut shadow_text = shadow
        .as_ref()
        .map(|s| String::from_utf8_lossy(&s.1).into_owned());
    let ids = |text: &str, field: usize| -> BTreeSet<u32> {
        text.lines()
            .filter_map(|l| l.split(':').nth(field)?.parse().ok())
            .collect()
    };
    for u in &opts.add_users {
        if passwd
            .lines()
            .any(|l| l.split(':').next() == Some(u.as_str()))
        {
            warnings.push(format!("user {u} exists already"));
            continue;
        }
        let used: BTreeSet<u32> = ids(&passwd, 2).union(&ids(&group, 2)).copied().collect();
        let id = (1000..60000).find(|i| !used.contains(i)).unwrap_or(60000);
        for text in [&mut passwd, &mut group] {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
        }
        passwd.push_str(&format!("{u}:x:{id}:{id}::/home/{u}:/bin/bash\n"));
        group.push_str(&format!("{u}:x:{id}:\n"));
        if let Some(sh) = shadow_text.as_mut() {
            if !sh.is_empty() && !sh.ends_with('\n') {
                sh.push('\n');
            }
            sh.push_str(&format!(
                "{u}:!:{}:0:99999:7:::\n",
                now / 86_400_000_000_000
            ));
        }
        let home = Meta {
            mode: 0o755,
            uid: id,
            gid: id,
            ..stamp(Meta::default())
        };
        edits.set(
            format!("/home/{u}").as_bytes(),
            Edit::Dir {
                meta: home,
                set_meta: true,
                children: BTreeMap::new(),
            },
            &default_dir(),
        )?;
    }
    let node = maker.file(b, passwd.into_bytes(), stamp(pmeta))?;
    edits.set(b"/etc/passwd", Edit::Put(node), &default_dir())?;
    let node = maker.file(b, group.into_bytes(), stamp(gmeta))?;
    edits.set(b"/etc/group", Edit::Put(node), &default_dir())?;
    if let (Some((smeta, _)), Some(text)) = (shadow, shadow_text) {
        let node = maker.file(b, text.into_bytes(), stamp(smeta))?;
        edits.set(b"/etc/shadow", Edit::Put(node), &default_dir())?;
    }
    Ok(())
}

fn default_dir() -> Meta {
    Meta {
        mode: 0o755,
        ..Meta::default()
    }
}

/// Reads a .deb and stages its files.
fn prepare(
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
    // The conffiles as shipped, hashed from the data member (they are small).
    let conffiles: BTreeSet<String> = deb.conffiles().into_iter().collect();
    let mut conffile_md5 = BTreeMap::new();
    if !conffiles.is_empty() {
        let mut ar = tar::Archive::new(deb.data()?);
        for e in ar.entries().map_err(|e| bad_deb(path, e))? {
            let mut e = e.map_err(|e| bad_deb(path, e))?;
            let p = format!(
                "/{}",
                String::from_utf8_lossy(&e.path_bytes()).trim_start_matches("./")
            );
            if conffiles.contains(&p) {
                let mut b = Vec::new();
                e.read_to_end(&mut b).map_err(|e| bad_deb(path, e))?;
                conffile_md5.insert(p, hex_md5(&b));
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

/// Edits that put a staged tree into the image: directories merged (existing ones keep their
/// metadata unless `set_meta`), everything else replaced.
fn stage_edits(
    d: &StageDir,
    set_meta: bool,
    comps: &mut Vec<Vec<u8>>,
    skip: &BTreeSet<String>,
    out: &mut BTreeMap<Vec<u8>, Edit>,
) {
    for (name, child) in &d.children {
        comps.push(name.clone());
        let p = format!("/{}", path::display(&path::join(comps)));
        match child {
            Staged::Dir(sub) => {
                let mut children = BTreeMap::new();
                stage_edits(sub, set_meta, comps, skip, &mut children);
                out.insert(
                    name.clone(),
                    Edit::Dir {
                        meta: sub.meta.clone(),
                        set_meta,
                        children,
                    },
                );
            }
            Staged::Node(n) if !skip.contains(&p) => {
                out.insert(name.clone(), Edit::Put(n.clone()));
            }
            _ => {}
        }
        comps.pop();
    }
}

/// Merges `src` into `dst`: directory edits combine, anything else from `src` wins.
fn merge_edits(dst: &mut BTreeMap<Vec<u8>, Edit>, src: BTreeMap<Vec<u8>, Edit>) {
    for (k, v) in src {
        match (dst.get_mut(&k), v) {
            (
                Some(Edit::Dir {
                    children: d,
                    meta,
                    set_meta,
                }),
                Edit::Dir {
                    children: c,
                    meta: m,
                    set_meta: sm,
                },
            ) => {
                if sm {
                    *meta = m;
                    *set_meta = true;
                }
                merge_edits(d, c);
            }
            (_, v) => {
                dst.insert(k, v);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn install_debs(
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
    let mut provided: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
    for p in &status {
        if !installed(p) {
            continue;
        }
        if let Some(n) = p.get("Package") {
            provided
                .entry(n.into())
                .or_default()
                .push(p.get("Version").map(String::from));
        }
        for v in relations(p.get("Provides").unwrap_or(""))
            .into_iter()
            .flatten()
        {
            provided.entry(v.0).or_default().push(v.2);
        }
    }
    for d in debs {
        provided.insert(d.deb.name().into(), vec![Some(d.deb.version().into())]);
        for v in relations(d.deb.control.get("Provides").unwrap_or(""))
            .into_iter()
            .flatten()
        {
            provided.entry(v.0).or_default().push(v.2);
        }
    }
    for d in debs {
        let deb = &d.deb;
        let name = deb.name().to_string();
        for field in ["Pre-Depends", "Depends"] {
            for alts in relations(deb.control.get(field).unwrap_or("")) {
                let ok = alts.iter().any(|(n, op, v)| {
                    provided.get(n).is_some_and(|vs| {
                        vs.iter().any(|have| match (op, v, have) {
                            (None, _, _) => true,
                            (Some(op), Some(want), Some(have)) => relation_holds(have, op, want),
                            _ => false,
                        })
                    })
                });
                if !ok {
                    let text: Vec<String> = alts
                        .iter()
                        .map(|(n, op, v)| match (op, v) {
                            (Some(o), Some(v)) => format!("{n} ({o} {v})"),
                            _ => n.clone(),
                        })
                        .collect();
                    warnings.push(format!(
                        "unsatisfied dependency of {name}: {field}: {}",
                        text.join(" | ")
                    ));
                }
            }
        }
        let scripts = deb.scripts();
        if !scripts.is_empty() {
            warnings.push(format!(
                "{name} has maintainer scripts ({}) that were not run",
                scripts.join(", ")
            ));
        }
        let multi_same = deb.control.get("Multi-Arch") == Some("same");
        let info_name = if multi_same {
            format!("{name}:{}", deb.architecture())
        } else {
            name.clone()
        };
        let old_idx = status
            .iter()
            .position(|p| p.get("Package") == Some(name.as_str()));
        let old_para = old_idx.map(|i| status[i].clone());
        // Conffiles: keep what was changed locally, as dpkg --force-confold does.
        let old_conf: BTreeMap<String, String> = old_para
            .as_ref()
            .and_then(|p| p.get("Conffiles"))
            .map(|c| {
                c.lines()
                    .filter_map(|l| {
                        let mut w = l.split_whitespace();
                        Some((w.next()?.to_string(), w.next()?.to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut keep = BTreeSet::new();
        for (path, new_md5) in &d.conffile_md5 {
            let Some(Node::File { size, data, .. }) =
                inv.browser.lookup(&old.root, path.as_bytes(), false)?
            else {
                continue;
            };
            let cur = hex_md5(&inv.browser.read(&data, size, 64 << 20, path)?);
            let unchanged_locally = old_conf.get(path) == Some(&cur);
            if !unchanged_locally && cur != *new_md5 {
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
        // Files of the old version the new one no longer ships (not directories, not
        // conffiles, which dpkg keeps and marks obsolete).
        let new_paths: BTreeSet<&str> = d.paths.iter().map(String::as_str).collect();
        let old_list_path = format!("/var/lib/dpkg/info/{info_name}.list");
        if old_para.is_some() {
            if let Some(b) = inv.browser.read_path(&old.root, &old_list_path, 64 << 20)? {
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
            // Old control files in info/ that the new version does not have.
            for ext in crate::deb::SCRIPTS.iter().chain(
                [
                    "md5sums",
                    "conffiles",
                    "triggers",
                    "shlibs",
                    "symbols",
                    "templates",
                ]
                .iter(),
            ) {
                let p = format!("/var/lib/dpkg/info/{info_name}.{ext}");
                if deb.file(ext).is_none()
                    && inv
                        .browser
                        .lookup(&old.root, p.as_bytes(), false)?
                        .is_some()
                {
                    edits.set(p.as_bytes(), Edit::Remove, &default_dir())?;
                }
            }
        }
        // The dpkg database: file list, control files, status paragraph.
        let info_meta = |mode| Meta {
            mode,
            uid: 0,
            gid: 0,
            mtime_sec: now / 1_000_000_000,
            mtime_nsec: (now % 1_000_000_000) as u32,
            xattrs: Vec::new(),
        };
        let mut list = String::from("/.\n");
        for p in &d.paths {
            list.push_str(p);
            list.push('\n');
        }
        let node = maker.file(&mut inv.browser, list.into_bytes(), info_meta(0o644))?;
        edits.set(old_list_path.as_bytes(), Edit::Put(node), &default_dir())?;
        for (fname, bytes, mode) in &deb.control_files {
            if fname.contains('/') {
                continue;
            }
            let p = format!("/var/lib/dpkg/info/{info_name}.{fname}");
            let mode = if crate::deb::SCRIPTS.contains(&fname.as_str()) {
                0o755
            } else {
                *mode & 0o777
            };
            let node = maker.file(&mut inv.browser, bytes.clone(), info_meta(mode))?;
            edits.set(p.as_bytes(), Edit::Put(node), &default_dir())?;
        }
        let mut para = deb.control.clone();
        para.remove("Status");
        let mut fields = vec![
            ("Package".to_string(), name.clone()),
            ("Status".to_string(), "install ok installed".to_string()),
        ];
        fields.extend(
            para.fields
                .into_iter()
                .filter(|(k, _)| !k.eq_ignore_ascii_case("Package")),
        );
        let mut para = Paragraph { fields };
        if !d.conffile_md5.is_empty() {
            let mut c = String::new();
            for (p, m) in &d.conffile_md5 {
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
        match old_idx {
            Some(i) => status[i] = para,
            None => status.push(para),
        }
    }
    status.sort_by(|a, b| {
        a.get("Package")
            .cmp(&b.get("Package"))
            .then(a.get("Architecture").cmp(&b.get("Architecture")))
    });
    let text: String = status.iter().map(|p| p.render() + "\n").collect();
    let meta = Meta {
        mtime_sec: now / 1_000_000_000,
        mtime_nsec: (now % 1_000_000_000) as u32,
        ..status_meta
    };
    let node = maker.file(&mut inv.browser, text.into_bytes(), meta)?;
    edits.set(DPKG_STATUS.as_bytes(), Edit::Put(node), &default_dir())?;
    Ok(())
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

fn installed(p: &Paragraph) -> bool {
    p.get("Status").and_then(|s| s.split_whitespace().nth(2)) == Some("installed")
}

/// A relation field (`a (>= 1) | b, c:any`) as alternatives of (name, op, version).
type Relation = (String, Option<String>, Option<String>);

fn relations(field: &str) -> Vec<Vec<Relation>> {
    field
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|group| {
            group
                .split('|')
                .map(|alt| {
                    let alt = alt.trim();
                    let (name, rest) = alt
                        .split_once('(')
                        .map_or((alt, ""), |(n, r)| (n.trim(), r));
                    let name = name.split_whitespace().next().unwrap_or("");
                    let name = name.split(':').next().unwrap_or(name).to_string();
                    let rest = rest.trim_end_matches(')').trim();
                    let op_len = rest
                        .find(|c: char| !"<>=".contains(c))
                        .unwrap_or(rest.len());
                    let (op, ver) = rest.split_at(op_len);
                    let ver = ver.trim();
                    if op.is_empty() || ver.is_empty() {
                        (name, None, None)
                    } else {
                        (name, Some(op.to_string()), Some(ver.to_string()))
                    }
                })
                .collect()
        })
        .collect()
}

fn relation_holds(have: &str, op: &str, want: &str) -> bool {
    use std::cmp::Ordering::*;
    let o = version::cmp_deb(have, want);
    match op {
        "<<" => o == Less,
        "<=" | "<" => o != Greater,
        "=" => o == Equal,
        ">=" | ">" => o != Less,
        ">>" => o == Greater,
        _ => false,
    }
}

/// Statistics of a tree, memoised by tree id so shared subtrees are counted once.
pub(crate) fn tree_stats(
    b: &mut Browser<'_>,
    id: &ObjectId,
    cache: &mut HashMap<ObjectId, TreeStats>,
) -> Result<TreeStats> {
    if let Some(s) = cache.get(id) {
        return Ok(*s);
    }
    let t = b.tree(id)?;
    let mut s = TreeStats::default();
    for e in &t.entries {
        match &e.node {
            Node::Dir { tree, .. } => {
                s.dirs += 1;
                let sub = tree_stats(b, tree, cache)?;
                s.files += sub.files;
                s.dirs += sub.dirs;
                s.bytes += sub.bytes;
                s.symlinks += sub.symlinks;
                s.hardlinks += sub.hardlinks;
                s.special += sub.special;
            }
            Node::File { size, .. } => {
                s.files += 1;
                s.bytes += size;
            }
            Node::Symlink { .. } => s.symlinks += 1,
            Node::Hardlink { .. } => s.hardlinks += 1,
            _ => s.special += 1,
        }
    }
    cache.insert(*id, s);
    Ok(s)
}
