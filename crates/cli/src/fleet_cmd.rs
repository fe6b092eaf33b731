//! `starling image inventory|diff|search|update|derive`: fleet chores on manifests, without
//! booting or exporting images.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use starling_image::chunk::Progress;
use starling_image::diff::Change;
use starling_image::manifest::Node;
use starling_image::pkg::Inventories;
use starling_image::reference::ImageRef;
use starling_image::search::{self, Query, VersionExpr};
use starling_image::update::{Target, UpdateOptions};
use starling_image::versions;
use starling_store::Store;

use crate::images::{split_repository, Images};

#[derive(Subcommand)]
pub enum FleetCmd {
    /// Installed packages (name, version, architecture, source) and OS release of each image,
    /// read from its package database (dpkg, rpm, apk)
    Inventory {
        /// [REPOSITORY] NAME[:TAG]|NAME@VERSION…: images of the local store, or of a
        /// repository (URL or directory) read in place, without pulling
        #[arg(required = true, value_name = "[REPOSITORY] IMAGE")]
        images: Vec<String>,
        /// The repository's trusted root metadata (first contact only)
        #[arg(long, value_name = "ROOT.json")]
        root: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// What changed from A to B: a summary, the packages added, removed and upgraded, and on
    /// request the files (content, mode, owner, xattrs, link target, mtime) one by one or
    /// counted per directory; unchanged subtrees are skipped without being read
    Diff {
        /// [REPOSITORY] A B: two versions of the local store, or of a repository (URL or
        /// directory) read in place
        #[arg(num_args = 2..=3, required = true, value_name = "[REPOSITORY] A B")]
        args: Vec<String>,
        /// The repository's trusted root metadata (first contact only)
        #[arg(long, value_name = "ROOT.json")]
        root: Option<PathBuf>,
        /// List every changed file after the summary
        #[arg(long)]
        files: bool,
        /// Count the changed files per directory (`--stat=DEPTH` components deep, 2 if not given)
        #[arg(
            long,
            value_name = "DEPTH",
            num_args = 0..=1,
            require_equals = true,
            default_missing_value = "2"
        )]
        stat: Option<usize>,
        /// Leave modification times out: a file whose only change is its mtime is unchanged
        #[arg(long)]
        ignore_times: bool,
        /// Only the package changes
        #[arg(long, conflicts_with_all = ["files", "stat"])]
        packages: bool,
        #[arg(long)]
        json: bool,
    },
    /// Which image versions (every version in every tag's history) have a package (optionally
    /// in a version range), a path matching a glob, or a file with given content; exits 1
    /// when nothing matches
    #[command(group(clap::ArgGroup::new("query").required(true).args(["package", "path", "content_id"])))]
    Search {
        /// Search a repository (URL or directory) in place instead of the local store
        #[arg(value_name = "REPOSITORY")]
        repository: Option<String>,
        /// The repository's trusted root metadata (first contact only)
        #[arg(long, value_name = "ROOT.json")]
        root: Option<PathBuf>,
        /// Installed package name
        #[arg(long)]
        package: Option<String>,
        /// With --package: 'OP VERSION', OP one of < <= = >= > != (package manager's ordering)
        #[arg(long, requires = "package", allow_hyphen_values = true)]
        version: Option<String>,
        /// Image path glob: * within a name, ** across directories (e.g. '/usr/bin/python3*')
        #[arg(long)]
        path: Option<String>,
        /// A file content id (`image stat` shows it) or a chunk object id
        #[arg(long)]
        content_id: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// New versions of the named images (their tags move, history kept) with Debian packages
    /// installed as dpkg unpacks them (maintainer scripts are not run), a directory overlaid,
    /// or paths removed
    Update {
        /// NAME[:TAG], one or more
        #[arg(required = true)]
        images: Vec<String>,
        #[command(flatten)]
        changes: Changes,
    },
    /// A new image NEW from BASE with the given changes (only manifests and new content are
    /// written)
    Derive {
        /// NAME[:TAG] or NAME@VERSION to start from
        base: String,
        /// NAME[:TAG] to create (or move)
        new: String,
        #[command(flatten)]
        changes: Changes,
        /// Set the host name (/etc/hostname, and /etc/hosts' 127.0.1.1 line)
        #[arg(long, value_name = "NAME")]
        set_hostname: Option<String>,
        /// Add a user as the image's adduser would (its adduser.conf or login.defs: next free
        /// id, home mode, skeleton), with a locked password; an existing user is refused
        /// (repeatable)
        #[arg(long = "add-user", value_name = "USER")]
        add_users: Vec<String>,
    },
    /// Metadata and content id of one path in an image (symlinks not followed)
    Stat {
        /// NAME[:TAG], NAME@VERSION or a version id prefix
        image: String,
        /// An absolute path in the image, e.g. /etc/os-release
        path: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
pub struct Changes {
    /// Install this .deb (repeatable)
    #[arg(long = "apply-deb", value_name = "FILE.deb")]
    debs: Vec<PathBuf>,
    /// Copy this directory's tree over the image (files replaced, directories merged)
    #[arg(long, value_name = "DIR")]
    overlay: Option<PathBuf>,
    /// Remove this path (repeatable)
    #[arg(long = "remove", value_name = "PATH")]
    remove: Vec<String>,
    /// Show what would change; write nothing
    #[arg(long)]
    dry_run: bool,
    /// Refuse when a package's dependencies are not satisfied (default: warn)
    #[arg(long)]
    strict: bool,
    #[arg(long)]
    json: bool,
}

fn apply(
    store_dir: &Path,
    targets: Vec<Target>,
    c: &Changes,
    hostname: Option<String>,
    add_users: Vec<String>,
    op: &'static str,
) -> Result<ExitCode> {
    let store = Store::open(store_dir)?;
    if c.debs.is_empty()
        && c.overlay.is_none()
        && c.remove.is_empty()
        && hostname.is_none()
        && add_users.is_empty()
    {
        anyhow::bail!("nothing to change: give --apply-deb, --overlay or --remove");
    }
    let opts = UpdateOptions {
        debs: c.debs.iter().map(PathBuf::as_path).collect(),
        overlay: c.overlay.as_deref(),
        remove: c.remove.clone(),
        dry_run: c.dry_run,
        strict: c.strict,
        chunking: Default::default(),
        hostname,
        add_users,
        op,
    };
    let progress = Progress::default();
    let reports = starling_image::update::update(&store, &targets, &opts, &progress)?;
    if c.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(ExitCode::SUCCESS);
    }
    for r in &reports {
        for w in &r.warnings {
            eprintln!("warning: {}: {w}", r.image);
        }
        let n = r.diff.files.len();
        match (&r.new, c.dry_run) {
            (_, true) => {
                println!("# {} (dry run): {n} paths would change", r.image);
                for f in &r.diff.files {
                    println!("{} {} ({})", sign(f.change), f.path, f.kind);
                }
                for p in r.diff.packages.iter().flatten() {
                    println!(
                        "{} {} {}",
                        p.change,
                        p.name,
                        p.new.clone().or(p.old.clone()).unwrap_or_default()
                    );
                }
            }
            (Some(id), false) => println!(
                "{} {id} ({n} paths changed, parent {})",
                r.image,
                r.old.short(12)
            ),
            (None, false) => println!("{}: no change", r.image),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `image diff` shows beyond the summary.
struct DiffView {
    files: bool,
    stat: Option<usize>,
    ignore_times: bool,
    packages: bool,
}

/// `image diff` as text: the summary, the packages, then what was asked for.
fn diff_text(a: &str, b: &str, d: &starling_image::diff::Diff, view: &DiffView) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let sum = d.summary();
    if !view.packages {
        let _ = writeln!(out, "{a} → {b}");
        let modified = if sum.files_mtime_only > 0 {
            format!(
                "{} changed ({} only in mtime)",
                sum.files_modified, sum.files_mtime_only
            )
        } else {
            format!("{} changed", sum.files_modified)
        };
        let _ = writeln!(
            out,
            "files:    {} added, {} removed, {modified}",
            sum.files_added, sum.files_removed
        );
        let pk = match &sum.packages {
            None => "not compared (no package database in both)".to_string(),
            Some(by) if by.is_empty() => "no changes".to_string(),
            Some(by) => by
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect::<Vec<_>>()
                .join(", "),
        };
        let _ = writeln!(out, "packages: {pk}");
    }
    if let Some(ps) = &d.packages {
        if !ps.is_empty() && !view.packages {
            out.push('\n');
        }
        for p in ps {
            let versions = match (&p.old, &p.new) {
                (Some(o), Some(n)) => format!("{o} → {n}"),
                (Some(o), None) => o.clone(),
                (None, Some(n)) => n.clone(),
                _ => String::new(),
            };
            let _ = writeln!(out, "{:<10} {} {versions}", p.change, p.name);
        }
    } else if view.packages {
        let _ = writeln!(out, "packages not compared (no package database in both)");
    }
    if view.packages {
        return out;
    }
    if let Some(depth) = view.stat {
        out.push('\n');
        let _ = writeln!(
            out,
            "{:>7} {:>7} {:>7}  DIRECTORY",
            "ADDED", "REMOVED", "CHANGED"
        );
        for r in d.stat(depth) {
            let _ = writeln!(
                out,
                "{:>7} {:>7} {:>7}  {}",
                r.added, r.removed, r.modified, r.dir
            );
        }
    }
    if view.files {
        out.push('\n');
        for f in &d.files {
            let sign = sign(f.change);
            if f.details.is_empty() {
                let _ = writeln!(out, "{sign} {} ({})", f.path, f.kind);
            } else {
                let _ = writeln!(
                    out,
                    "{sign} {} ({}: {})",
                    f.path,
                    f.kind,
                    f.details.join(", ")
                );
            }
        }
    }
    if !view.files && view.stat.is_none() && !d.files.is_empty() {
        let mut hint = "\nthe files one by one: --files; per directory: --stat".to_string();
        if sum.files_mtime_only > 0 && !view.ignore_times {
            hint.push_str("; without mtime-only changes: --ignore-times");
        }
        let _ = writeln!(out, "{hint}");
    }
    out
}

fn sign(c: Change) -> char {
    match c {
        Change::Added => '+',
        Change::Removed => '-',
        Change::Modified => 'M',
    }
}

pub fn run(store_dir: &Path, cmd: FleetCmd) -> Result<ExitCode> {
    match cmd {
        FleetCmd::Update { images, changes } => {
            let mut targets = Vec::new();
            let store = Store::open(store_dir)?;
            for i in &images {
                // A bare NAME is the tag it means here (NAME:latest, else its only tag).
                let ImageRef::Tag { name, tag } = versions::concrete(&store, &ImageRef::parse(i)?)?
                else {
                    anyhow::bail!(
                        "image update {i}: name the tag to move (NAME[:TAG]), not a version"
                    );
                };
                targets.push(Target {
                    from: ImageRef::Tag {
                        name: name.clone(),
                        tag: tag.clone(),
                    },
                    name,
                    tag,
                });
            }
            return apply(store_dir, targets, &changes, None, Vec::new(), "update");
        }
        FleetCmd::Derive {
            base,
            new,
            changes,
            set_hostname,
            add_users,
        } => {
            let (name, tag) = ImageRef::parse_tag(&new)?;
            let targets = vec![Target {
                from: ImageRef::parse(&base)?,
                name,
                tag,
            }];
            return apply(
                store_dir,
                targets,
                &changes,
                set_hostname,
                add_users,
                "derive",
            );
        }
        FleetCmd::Inventory { images, root, json } => {
            let (repo, images) = split_repository(images);
            if images.is_empty() {
                anyhow::bail!("name at least one image after the repository");
            }
            let src = Images::open(store_dir, repo.as_deref(), root.as_deref())?;
            let mut inv = Inventories::new(src.source());
            let mut all = Vec::new();
            let refs = images
                .iter()
                .map(|i| ImageRef::parse(i))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            for r in src.resolve_many(&refs)? {
                let i = inv
                    .of(&r.commit.root, &r.display)
                    .with_context(|| format!("inventory of {}", r.display))?;
                all.push((r, i));
            }
            if json {
                let v: Vec<_> = all
                    .iter()
                    .map(|(r, i)| {
                        serde_json::json!({
                            "image": r.display, "version": r.id, "db": i.db,
                            "os_release": i.os_release, "packages": i.packages,
                        })
                    })
                    .collect();
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                serde_json::to_writer_pretty(&mut out, &v)?;
                std::io::Write::write_all(&mut out, b"\n")?;
            } else {
                for (r, i) in &all {
                    let os = i
                        .os_release
                        .get("PRETTY_NAME")
                        .cloned()
                        .unwrap_or_else(|| "unknown OS".into());
                    println!(
                        "# {}: {os}; {} packages ({})",
                        r.display,
                        i.packages.len(),
                        i.db.name()
                    );
                    let w = i.packages.iter().map(|p| p.name.len()).max().unwrap_or(4);
                    let wv = i
                        .packages
                        .iter()
                        .map(|p| p.version.len())
                        .max()
                        .unwrap_or(7);
                    for p in &i.packages {
                        println!(
                            "{:w$}  {:wv$}  {:6}  {}",
                            p.name, p.version, p.architecture, p.source
                        );
                    }
                }
            }
        }
        FleetCmd::Search {
            repository,
            root,
            package,
            version,
            path,
            content_id,
            json,
        } => {
            let src = Images::open(store_dir, repository.as_deref(), root.as_deref())?;
            let q = if let Some(name) = package {
                Query::Package {
                    name,
                    version: version.as_deref().map(VersionExpr::parse).transpose()?,
                }
            } else if let Some(p) = path {
                Query::Path(search::glob(&p)?)
            } else {
                let id = content_id.unwrap_or_default();
                Query::Content(
                    id.parse()
                        .map_err(|e| anyhow::anyhow!("--content-id {id:?}: {e}"))?,
                )
            };
            let (hits, stats) = search::search_versions(src.source(), src.versions()?, &q)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&hits)?);
            } else {
                for h in &hits {
                    println!("{}  [{}]", h.image, h.tags.join(" "));
                    for m in h.matches.iter().take(50) {
                        println!("    {m}");
                    }
                    if h.matches.len() > 50 {
                        println!("    … and {} more", h.matches.len() - 50);
                    }
                }
                eprintln!("{} of {} versions match", hits.len(), stats.versions);
            }
            if hits.is_empty() {
                return Ok(ExitCode::from(crate::exit::PROBLEMS));
            }
        }
        FleetCmd::Stat { image, path, json } => {
            let store = Store::open(store_dir)?;
            let r = versions::resolve(&store, &ImageRef::parse(&image)?)?;
            let mut b = starling_image::browse::Browser::new(&store);
            let node = b
                .lookup(&r.commit.root, path.as_bytes(), false)?
                .ok_or_else(|| anyhow::anyhow!("{}: no {path:?} in the image", r.display))?;
            let cid = match &node {
                Node::File { data, .. } => Some(data.content_id()),
                _ => None,
            };
            let meta = node.meta().cloned().unwrap_or_default();
            let size = match &node {
                Node::File { size, .. } => *size,
                _ => 0,
            };
            // The objects holding the file's bytes (what a lazy mount fetches to read it).
            let chunks: Vec<serde_json::Value> = match &node {
                Node::File {
                    data: starling_image::manifest::FileData::Chunks(c),
                    ..
                } => c
                    .iter()
                    .map(|c| serde_json::json!({"id": c.id.to_hex(), "len": c.len}))
                    .collect(),
                _ => Vec::new(),
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "image": r.display, "path": path, "kind": node.kind_name(),
                        "size": size, "mode": meta.mode, "uid": meta.uid, "gid": meta.gid,
                        "mtime_sec": meta.mtime_sec, "mtime_nsec": meta.mtime_nsec,
                        "xattrs": meta.xattrs.iter().map(|x| String::from_utf8_lossy(&x.name).into_owned()).collect::<Vec<_>>(),
                        "content_id": cid, "chunks": chunks,
                    }))?
                );
            } else {
                println!("{}: {path}", r.display);
                println!("kind:       {}", node.kind_name());
                println!("size:       {size}");
                println!(
                    "mode:       {:o}  owner {}:{}",
                    meta.mode, meta.uid, meta.gid
                );
                if let Some(c) = cid {
                    println!("content id: {c}");
                }
            }
        }
        FleetCmd::Diff {
            args,
            root,
            files,
            stat,
            ignore_times,
            packages,
            json,
        } => {
            let (repo, args) = split_repository(args);
            let [a, b] = args.as_slice() else {
                anyhow::bail!(
                    "diff takes two versions, A and B (after an optional repository); got {}",
                    args.join(" ")
                );
            };
            let src = Images::open(store_dir, repo.as_deref(), root.as_deref())?;
            let ra = src.resolve(&ImageRef::parse(a)?)?;
            let rb = src.resolve(&ImageRef::parse(b)?)?;
            let mut inv = Inventories::new(src.source());
            let mut d = starling_image::diff::diff(
                &mut inv,
                (&ra.commit.root, &ra.commit.root_meta),
                (&rb.commit.root, &rb.commit.root_meta),
            )
            .with_context(|| format!("diff of {} and {}", ra.display, rb.display))?;
            if ignore_times {
                d = d.ignoring_times();
            }
            let view = DiffView {
                files,
                stat,
                ignore_times,
                packages,
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "a": ra.display, "b": rb.display,
                        "summary": d.summary(),
                        "files": d.files, "packages": d.packages,
                        "stat": stat.map(|n| d.stat(n)),
                        "trees_read": d.trees_read,
                    }))?
                );
            } else {
                print!("{}", diff_text(&ra.display, &rb.display, &d, &view));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
