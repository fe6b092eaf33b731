//! Boot artifacts from the distribution's own packages, kept in the store as images:
//! `fetch` takes a Debian kernel package (with the host's `apt-get download` and
//! `dpkg-deb -x`), adds the uncompressed kernel beside the bzImage and imports the tree as
//! `debian-kernel:RELEASE`; `initramfs` builds an initramfs with a stored kernel's modules.

use std::path::{Path, PathBuf};
use std::process::Command;

use starling_image::chunk::{ChunkParams, Progress};
use starling_image::deb::Deb;
use starling_image::export::{self, ExportFormat};
use starling_image::import::{self, ImportOptions, SourceFormat};
use starling_image::reference::ImageRef;
use starling_image::versions;
use starling_store::Store;

use crate::modules::ModuleTree;
use crate::{Error, Initramfs};

/// The image kernels are kept under; the tag is the kernel release.
pub const KERNEL_IMAGE: &str = "debian-kernel";

/// A kernel in the store.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Fetched {
    /// `debian-kernel:RELEASE`.
    pub image: String,
    pub release: String,
    pub package: String,
    pub version: String,
}

fn tool_failed(tool: &str, reason: impl Into<String>) -> Error {
    Error::Tool {
        tool: tool.into(),
        reason: reason.into(),
    }
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

fn apt_download(dir: &Path, package: &str) -> Result<PathBuf, Error> {
    let out = Command::new("apt-get")
        .arg("download")
        .arg(package)
        .current_dir(dir)
        .output()
        .map_err(|e| {
            tool_failed(
                "apt-get",
                format!("{e} (kernel fetch uses the host's Debian package sources)"),
            )
        })?;
    if !out.status.success() {
        return Err(tool_failed(
            "apt-get",
            format!(
                "download {package} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    std::fs::read_dir(dir)
        .map_err(io_at(dir))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .ok_or_else(|| tool_failed("apt-get", format!("download {package} left no .deb")))
}

/// The kernel release a tree ships (from its `boot/vmlinuz-RELEASE`), if it ships one.
pub fn release_in(tree: &Path) -> Option<String> {
    std::fs::read_dir(tree.join("boot"))
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .find_map(|n| n.strip_prefix("vmlinuz-").map(str::to_owned))
}

/// Unpacks a package into `dest` (emptied first) with `dpkg-deb -x`.
fn unpack(deb: &Path, dest: &Path) -> Result<(), Error> {
    let _ = std::fs::remove_dir_all(dest);
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(dest)
        .status()
        .map_err(|e| tool_failed("dpkg-deb", e.to_string()))?;
    if !status.success() {
        return Err(tool_failed(
            "dpkg-deb",
            format!("-x {} failed ({status})", deb.display()),
        ));
    }
    Ok(())
}

/// Downloads `package` (following a meta package to the kernel it depends on), unpacks it,
/// adds `boot/vmlinux-RELEASE` (the bzImage's payload, decompressed here: an ELF the monitor
/// enters through its PVH note) and imports the tree into the store at `store_dir` as
/// `debian-kernel:RELEASE`, labelled with the package's name and version. Writes
/// `vmlinuz-RELEASE` and `vmlinux-RELEASE` into `out` when given.
pub fn fetch(store_dir: &Path, package: &str, out: Option<&Path>) -> Result<Fetched, Error> {
    let tmp = tempfile::tempdir().map_err(io_at(&std::env::temp_dir()))?;
    let root = tmp.path().join("root");
    let mut deb_path = apt_download(tmp.path(), package)?;
    let mut deb = Deb::open(&deb_path)?;
    unpack(&deb_path, &root)?;
    if release_in(&root).is_none() {
        // A meta package: follow its linux-image-* dependency.
        let depends = deb.control.get("Depends").unwrap_or_default().to_string();
        let target = depends
            .split(',')
            .map(|d| d.trim().split([' ', '(']).next().unwrap_or(""))
            .find(|d| d.starts_with("linux-image-"))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{package} ships no kernel and depends on none ({depends})"
                ))
            })?
            .to_string();
        deb_path = apt_download(tmp.path(), &target)?;
        deb = Deb::open(&deb_path)?;
        unpack(&deb_path, &root)?;
    }
    let release = release_in(&root)
        .ok_or_else(|| Error::Invalid(format!("{} has no boot/vmlinuz-*", deb_path.display())))?;
    let boot = root.join("boot");
    let vmlinuz = boot.join(format!("vmlinuz-{release}"));
    let vmlinux = boot.join(format!("vmlinux-{release}"));
    let elf = crate::vmlinux::extract(&std::fs::read(&vmlinuz).map_err(io_at(&vmlinuz))?)?;
    std::fs::write(&vmlinux, elf).map_err(io_at(&vmlinux))?;
    let store = Store::open_or_init(store_dir)?;
    import::import(
        &store,
        &ImportOptions {
            source: &root,
            format: Some(SourceFormat::Dir),
            name: KERNEL_IMAGE,
            tag: &release,
            labels: [
                ("package".to_string(), deb.name().to_string()),
                ("version".to_string(), deb.version().to_string()),
            ]
            .into_iter()
            .collect(),
            chunking: ChunkParams::default(),
            partition: None,
            allow_backing: false,
        },
        &Progress::default(),
    )?;
    if let Some(out) = out {
        std::fs::create_dir_all(out).map_err(io_at(out))?;
        for src in [&vmlinuz, &vmlinux] {
            let dest = out.join(src.file_name().unwrap_or_default());
            std::fs::copy(src, &dest).map_err(io_at(&dest))?;
        }
    }
    Ok(Fetched {
        image: format!("{KERNEL_IMAGE}:{release}"),
        release,
        package: deb.name().to_string(),
        version: deb.version().to_string(),
    })
}

/// What `initramfs` builds from.
pub struct InitramfsFromStore<'a> {
    /// A kernel image in the store (from `fetch`), e.g. `debian-kernel:6.1.0-56-cloud-amd64`.
    pub kernel_image: &'a str,
    pub modules: Vec<String>,
    /// A statically linked busybox (default: the host's busybox-static).
    pub busybox: Option<PathBuf>,
    /// Replaces the default /init.
    pub init: Option<PathBuf>,
    /// Extra files: (source, absolute destination).
    pub add: Vec<(PathBuf, String)>,
    pub out: &'a Path,
    /// Also write the kernel's bzImage and its uncompressed ELF here.
    pub vmlinuz_out: Option<&'a Path>,
    pub vmlinux_out: Option<&'a Path>,
}

/// Builds an initramfs with modules (and their dependencies, in load order) from a kernel
/// image in the store at `store_dir`; returns its size and the modules in load order.
pub fn initramfs(store_dir: &Path, a: InitramfsFromStore<'_>) -> Result<(u64, Vec<String>), Error> {
    let store = Store::open(store_dir)?;
    let parsed = ImageRef::parse(a.kernel_image)?;
    let resolved = versions::resolve(&store, &parsed).map_err(|e| {
        Error::Invalid(format!(
            "{}: {e} (fetch one with `starling vm kernel fetch`)",
            a.kernel_image
        ))
    })?;
    let tmp = tempfile::tempdir().map_err(io_at(&std::env::temp_dir()))?;
    let tree = tmp.path().join("kernel");
    export::export(
        &store,
        &resolved,
        &tree,
        ExportFormat::Dir,
        &Progress::default(),
    )?;
    let release = release_in(&tree).ok_or_else(|| {
        Error::Invalid(format!(
            "{} holds no boot/vmlinuz-*: not a kernel image",
            resolved.display
        ))
    })?;
    let modules = ModuleTree::scan(&tree.join("lib/modules").join(&release))?;
    let busybox = match a.busybox {
        Some(b) => b,
        None => ["/bin/busybox", "/usr/bin/busybox"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| {
                Error::Invalid("no busybox found: install busybox-static or pass --busybox".into())
            })?,
    };
    let mut ird = Initramfs::new(&busybox)?;
    let names: Vec<&str> = a.modules.iter().map(String::as_str).collect();
    ird.modules(&modules, &names)?;
    for (src, dest) in &a.add {
        ird.add_file(src, dest)?;
    }
    if let Some(init) = &a.init {
        ird.init(std::fs::read(init).map_err(io_at(init))?);
    }
    let size = ird.write(a.out)?;
    for (kind, dest) in [("vmlinuz", a.vmlinuz_out), ("vmlinux", a.vmlinux_out)] {
        if let Some(v) = dest {
            let src = tree.join(format!("boot/{kind}-{release}"));
            if kind == "vmlinux" && !src.exists() {
                // Kernels fetched before vmlinux was kept: extract it now.
                let z = tree.join(format!("boot/vmlinuz-{release}"));
                let elf = crate::vmlinux::extract(&std::fs::read(&z).map_err(io_at(&z))?)?;
                std::fs::write(v, elf).map_err(io_at(v))?;
                continue;
            }
            std::fs::copy(&src, v).map_err(io_at(v))?;
        }
    }
    Ok((
        size,
        ird.module_names().into_iter().map(String::from).collect(),
    ))
}
