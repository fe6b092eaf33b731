//! `starling vm kernel fetch` and `starling vm initramfs`: boot artifacts from the
//! distribution's own packages, kept in the store as images.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use starling_guest::modules::ModuleTree;
use starling_guest::Initramfs;
use starling_image::chunk::{ChunkParams, Progress};
use starling_image::deb::Deb;
use starling_image::export::{self, ExportFormat};
use starling_image::import::{self, ImportOptions, SourceFormat};
use starling_image::reference::ImageRef;
use starling_image::versions;
use starling_store::Store;

/// The image kernels are kept under; the tag is the kernel release.
pub const KERNEL_IMAGE: &str = "debian-kernel";

fn apt_download(dir: &Path, package: &str) -> Result<PathBuf> {
    let out = Command::new("apt-get")
        .arg("download")
        .arg(package)
        .current_dir(dir)
        .output()
        .context("running apt-get (kernel fetch uses the host's Debian package sources)")?;
    if !out.status.success() {
        bail!(
            "apt-get download {package} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .ok_or_else(|| anyhow!("apt-get download {package} left no .deb"))
}

/// The kernel release a package ships (from its `boot/vmlinuz-RELEASE`), if it ships one.
fn release_in(tree: &Path) -> Option<String> {
    std::fs::read_dir(tree.join("boot"))
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .find_map(|n| n.strip_prefix("vmlinuz-").map(str::to_owned))
}

pub struct Fetched {
    pub image: String,
    pub release: String,
    pub package: String,
    pub version: String,
}

/// Downloads `package` (following a meta package to the kernel it depends on), unpacks it and
/// imports it as `debian-kernel:RELEASE`; writes `vmlinuz` to `out` when given.
pub fn kernel_fetch(store_dir: &Path, package: &str, out: Option<&Path>) -> Result<Fetched> {
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    let mut deb_path = apt_download(tmp.path(), package)?;
    let mut deb = Deb::open(&deb_path)?;
    let unpack = |deb_path: &Path| -> Result<PathBuf> {
        let dest = tmp.path().join("root");
        let _ = std::fs::remove_dir_all(&dest);
        let status = Command::new("dpkg-deb")
            .arg("-x")
            .arg(deb_path)
            .arg(&dest)
            .status()
            .context("running dpkg-deb")?;
        if !status.success() {
            bail!("dpkg-deb -x {} failed", deb_path.display());
        }
        Ok(dest)
    };
    let mut root = unpack(&deb_path)?;
    if release_in(&root).is_none() {
        // A meta package: follow its linux-image-* dependency.
        let depends = deb.control.get("Depends").unwrap_or_default().to_string();
        let target = depends
            .split(',')
            .map(|d| d.trim().split([' ', '(']).next().unwrap_or(""))
            .find(|d| d.starts_with("linux-image-"))
            .ok_or_else(|| anyhow!("{package} ships no kernel and depends on none ({depends})"))?
            .to_string();
        deb_path = apt_download(tmp.path(), &target)?;
        deb = Deb::open(&deb_path)?;
        root = unpack(&deb_path)?;
    }
    let release =
        release_in(&root).ok_or_else(|| anyhow!("{} has no boot/vmlinuz-*", deb_path.display()))?;
    let store = Store::open_or_init(store_dir)?;
    let progress = Progress::default();
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
        },
        &progress,
    )
    .with_context(|| format!("importing {} into the store", deb.name()))?;
    if let Some(out) = out {
        std::fs::create_dir_all(out)?;
        for k in ["vmlinuz", "vmlinux"] {
            std::fs::copy(
                root.join(format!("boot/{k}-{release}")),
                out.join(format!("{k}-{release}")),
            )?;
        }
    }
    Ok(Fetched {
        image: format!("{KERNEL_IMAGE}:{release}"),
        release,
        package: deb.name().to_string(),
        version: deb.version().to_string(),
    })
}

pub struct InitramfsArgs<'a> {
    pub kernel_image: &'a str,
    pub modules: Vec<String>,
    pub busybox: Option<PathBuf>,
    pub init: Option<PathBuf>,
    pub add: Vec<(PathBuf, String)>,
    pub out: &'a Path,
    pub vmlinuz_out: Option<&'a Path>,
    pub vmlinux_out: Option<&'a Path>,
}

/// Builds an initramfs with modules from a kernel image in the store.
pub fn initramfs(store_dir: &Path, a: InitramfsArgs<'_>) -> Result<(u64, Vec<String>)> {
    let store = Store::open(store_dir)?;
    let parsed = ImageRef::parse(a.kernel_image)?;
    let resolved = versions::resolve(&store, &parsed).with_context(|| {
        format!(
            "{} (fetch one with `starling vm kernel fetch`)",
            a.kernel_image
        )
    })?;
    let tmp = tempfile::tempdir()?;
    let tree = tmp.path().join("kernel");
    export::export(
        &store,
        &resolved,
        &tree,
        ExportFormat::Dir,
        &Progress::default(),
    )
    .with_context(|| format!("exporting {}", resolved.display))?;
    let release = release_in(&tree).ok_or_else(|| {
        anyhow!(
            "{} holds no boot/vmlinuz-*: not a kernel image",
            resolved.display
        )
    })?;
    let modules = ModuleTree::scan(&tree.join("lib/modules").join(&release))?;
    let busybox = match a.busybox {
        Some(b) => b,
        None => ["/bin/busybox", "/usr/bin/busybox"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| anyhow!("no busybox found: install busybox-static or pass --busybox"))?,
    };
    let mut ird = Initramfs::new(&busybox)?;
    let names: Vec<&str> = a.modules.iter().map(String::as_str).collect();
    ird.modules(&modules, &names)?;
    for (src, dest) in &a.add {
        ird.add_file(src, dest)?;
    }
    if let Some(init) = &a.init {
        ird.init(std::fs::read(init).with_context(|| format!("reading {}", init.display()))?);
    }
    let size = ird.write(a.out)?;
    for (kind, dest) in [("vmlinuz", a.vmlinuz_out), ("vmlinux", a.vmlinux_out)] {
        if let Some(v) = dest {
            let src = tree.join(format!("boot/{kind}-{release}"));
            if kind == "vmlinux" && !src.exists() {
                // Kernels fetched before vmlinux was kept: extract it now.
                std::fs::write(
                    v,
                    starling_guest::vmlinux::extract(&std::fs::read(
                        tree.join(format!("boot/vmlinuz-{release}")),
                    )?)?,
                )?;
                continue;
            }
            std::fs::copy(&src, v).with_context(|| format!("writing {}", v.display()))?;
        }
    }
    Ok((
        size,
        ird.module_names().into_iter().map(String::from).collect(),
    ))
}

/// Writes a stored image as a raw ext4 file system (a VM's disk).
pub fn export_ext4(store_dir: &Path, image: &str, dest: &Path) -> Result<()> {
    let store = Store::open(store_dir)?;
    let resolved = versions::resolve(&store, &ImageRef::parse(image)?)?;
    export::export(
        &store,
        &resolved,
        dest,
        ExportFormat::Ext4 { size: None },
        &Progress::default(),
    )
    .with_context(|| format!("exporting {image} to {}", dest.display()))?;
    Ok(())
}
