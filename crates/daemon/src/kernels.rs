//! Which kernel boots a VM, and its files on the host: `--kernel REF` (a kernel image in the
//! store, as `starling vm kernel fetch` makes them), `--kernel DIR` (a kernel tree) or
//! `--kernel FILE` (a bzImage or ELF kernel with what the run init needs built in), else the image's own
//! `/boot/vmlinuz-RELEASE` with its `/lib/modules/RELEASE`, else the newest `debian-kernel`
//! image in the store. A kernel's files are copied out of the image once (per version and
//! release) into `STATE/kernels/`, where the boot artifact builder reads them.

use std::path::{Path, PathBuf};

use starling_image::browse::Browser;
use starling_image::extract::{extract_dir, extract_file};
use starling_image::manifest::Node;
use starling_image::reference::ImageRef;
use starling_store::{ObjectId, ObjectSource, Store};

use crate::vms::Resolved;
use crate::DaemonError;

/// More than any kernel and its modules take: a hostile image cannot fill the host's disk.
const MAX_KERNEL_BYTES: u64 = 2 << 30;

/// A kernel tree: `boot/vmlinuz-RELEASE` and `lib/modules/RELEASE/` under `dir`.
#[derive(Debug, Clone)]
pub struct KernelTree {
    pub dir: PathBuf,
    pub release: String,
    /// Where it came from, for messages (`debian-kernel:6.1.0-…`, `the image`, a path).
    pub origin: String,
}

/// The kernel releases under an image's `/boot` (from `vmlinuz-RELEASE`), newest last by
/// Debian's version ordering.
fn releases(b: &mut Browser<'_>, root: &ObjectId) -> Result<Vec<String>, DaemonError> {
    let up = |e: starling_image::Error| DaemonError::Upstream(e.to_string());
    let Some(Node::Dir { tree, .. }) = b.lookup(root, b"/boot", true).map_err(up)? else {
        return Ok(Vec::new());
    };
    let t = b.tree(&tree).map_err(up)?;
    let mut v: Vec<String> = t
        .entries
        .iter()
        .filter_map(|e| {
            std::str::from_utf8(&e.name)
                .ok()?
                .strip_prefix("vmlinuz-")
                .map(str::to_string)
        })
        .collect();
    v.sort_by(|a, b| starling_image::pkg::version::cmp_deb(a, b));
    Ok(v)
}

/// Copies `boot/vmlinuz-R` and `lib/modules/R` of the version `root` into
/// `STATE/kernels/KEY` (once: a finished copy is reused; a half one is never seen).
fn materialize(
    state: &Path,
    key: &str,
    source: &dyn ObjectSource,
    root: &ObjectId,
    release: &str,
    origin: String,
) -> Result<KernelTree, DaemonError> {
    let dir = state.join("kernels").join(key);
    if dir.join(".complete").exists() {
        return Ok(KernelTree {
            dir,
            release: release.into(),
            origin,
        });
    }
    let internal = |e: String| DaemonError::Internal(e);
    let tmp = state
        .join("kernels")
        .join(format!(".{key}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("boot")).map_err(|e| internal(e.to_string()))?;
    let mut b = Browser::new(source);
    let fail = |e: starling_image::Error| {
        DaemonError::BadRequest(format!("kernel {release} from {origin}: {e}"))
    };
    let copied = extract_file(
        &mut b,
        root,
        &format!("/boot/vmlinuz-{release}"),
        &tmp.join(format!("boot/vmlinuz-{release}")),
        MAX_KERNEL_BYTES,
    )
    .and_then(|_| {
        extract_dir(
            &mut b,
            root,
            &format!("/lib/modules/{release}"),
            &tmp.join(format!("lib/modules/{release}")),
            MAX_KERNEL_BYTES,
        )
    });
    if let Err(e) = copied {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(fail(e));
    }
    std::fs::write(tmp.join(".complete"), b"").map_err(|e| internal(e.to_string()))?;
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => {}
        // Another request copied the same kernel first.
        Err(_) if dir.join(".complete").exists() => {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        Err(e) => return Err(internal(format!("{}: {e}", dir.display()))),
    }
    Ok(KernelTree {
        dir,
        release: release.into(),
        origin,
    })
}

/// The kernel for a VM of `image` (see the module's documentation for the order).
pub fn choose(
    state: &Path,
    store_dir: &Path,
    wanted: Option<&str>,
    image: &Resolved,
) -> Result<KernelTree, DaemonError> {
    let bad = |e: String| DaemonError::BadRequest(e);
    if let Some(k) = wanted {
        let p = Path::new(k);
        if p.is_dir() {
            let boot = std::fs::read_dir(p.join("boot"))
                .map_err(|e| bad(format!("--kernel {k}: {e} (a directory needs boot/vmlinuz-RELEASE and lib/modules/RELEASE/)")))?;
            let release = boot
                .flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_prefix("vmlinuz-")
                        .map(str::to_string)
                })
                .max()
                .ok_or_else(|| bad(format!("--kernel {k}: no boot/vmlinuz-RELEASE in it")))?;
            return Ok(KernelTree {
                dir: p.to_path_buf(),
                release,
                origin: k.to_string(),
            });
        }
        if p.is_file() {
            return kernel_file(state, p);
        }
        let store = Store::open(store_dir).map_err(|e| bad(e.to_string()))?;
        let r = ImageRef::parse(k).map_err(|e| {
            bad(format!(
                "--kernel {k}: neither a directory nor a kernel image reference ({e})"
            ))
        })?;
        let v = starling_image::versions::resolve(&store, &r)
            .map_err(|e| bad(format!("--kernel {k}: {e}")))?;
        let mut b = Browser::new(&store);
        let release = releases(&mut b, &v.commit.root)?.pop().ok_or_else(|| {
            bad(format!(
                "--kernel {k}: the image has no /boot/vmlinuz-RELEASE"
            ))
        })?;
        return materialize(
            state,
            &format!("{}-{release}", v.id.short(16)),
            &store,
            &v.commit.root,
            &release,
            v.display,
        );
    }
    // The image's own kernel, when it has one with its modules.
    let mut b = Browser::new(image.objects.as_ref());
    for release in releases(&mut b, &image.commit.root)?.iter().rev() {
        let has_modules = matches!(
            b.lookup(
                &image.commit.root,
                format!("/lib/modules/{release}").as_bytes(),
                true
            ),
            Ok(Some(Node::Dir { .. }))
        );
        if has_modules {
            return materialize(
                state,
                &format!("{}-{release}", image.version.short(16)),
                image.objects.as_ref(),
                &image.commit.root,
                release,
                format!("{} (its own kernel)", image.display),
            );
        }
    }
    // The newest kernel image in the store.
    let no_kernel = || {
        bad(format!(
            "{} has no kernel and the store has no kernel image: run `starling vm kernel fetch`, or give --kernel",
            image.display
        ))
    };
    let store = Store::open(store_dir).map_err(|_| no_kernel())?;
    let mut kernels: Vec<(String, ObjectId)> = starling_image::tags::all(&store)
        .map_err(|e| DaemonError::Internal(e.to_string()))?
        .into_iter()
        .filter(|t| t.name == "debian-kernel")
        .map(|t| (t.tag, t.target))
        .collect();
    kernels.sort_by(|a, b| starling_image::pkg::version::cmp_deb(&a.0, &b.0));
    let (tag, id) = kernels.pop().ok_or_else(no_kernel)?;
    let commit = starling_image::versions::load_commit(&store, &id)
        .map_err(|e| DaemonError::Internal(e.to_string()))?;
    let mut b = Browser::new(&store);
    let release = releases(&mut b, &commit.root)?
        .pop()
        .ok_or_else(|| bad(format!("debian-kernel:{tag} has no /boot/vmlinuz-RELEASE")))?;
    materialize(
        state,
        &format!("{}-{release}", id.short(16)),
        &store,
        &commit.root,
        &release,
        format!("debian-kernel:{tag}"),
    )
}

/// A lone kernel file as a kernel tree of its own (`STATE/kernels/file-HASH/boot/vmlinuz-file`,
/// no modules), keyed by its content so that a changed file is a new kernel.
fn kernel_file(state: &Path, file: &Path) -> Result<KernelTree, DaemonError> {
    let shown = file.display().to_string();
    let bad = |e: String| DaemonError::BadRequest(format!("--kernel {shown}: {e}"));
    let meta = std::fs::metadata(file).map_err(|e| bad(e.to_string()))?;
    if meta.len() > MAX_KERNEL_BYTES {
        return Err(bad(format!("{} bytes is not a kernel", meta.len())));
    }
    let bytes = std::fs::read(file).map_err(|e| bad(e.to_string()))?;
    let is_bzimage = bytes.get(0x202..0x206) == Some(b"HdrS".as_slice());
    if !bytes.starts_with(b"\x7fELF") && !is_bzimage {
        return Err(bad(
            "neither a bzImage nor an ELF kernel (give a kernel file, a kernel tree directory or a kernel image reference)".into(),
        ));
    }
    let key = format!("file-{}", ObjectId::of(&bytes).short(32));
    let dir = state.join("kernels").join(&key);
    let target = dir.join("boot/vmlinuz-file");
    if !target.exists() {
        let internal = |e: std::io::Error| DaemonError::Internal(format!("{}: {e}", dir.display()));
        let tmp = state
            .join("kernels")
            .join(format!(".{key}.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("boot")).map_err(internal)?;
        std::fs::write(tmp.join("boot/vmlinuz-file"), &bytes).map_err(internal)?;
        if std::fs::rename(&tmp, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    Ok(KernelTree {
        dir,
        release: "file".into(),
        origin: shown,
    })
}
