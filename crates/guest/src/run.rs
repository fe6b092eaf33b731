//! The boot artifact of `starling run`: a kernel and an initramfs that boot any image as a
//! VM's root. The initramfs holds a static busybox, the kernel modules for Starling's devices
//! (virtio-mmio, -blk, -rng, -fs with fuse, overlayfs, vsock; ext4 too where it is a module),
//! the guest agent (`crate::AGENT`) and the run init (`init/run-init.sh`). Built once per
//! content of all of that and kept under `CACHE/<hash>/`.
//!
//! What the host gives the guest (the daemon's side):
//! - the image on a virtio-fs device tagged [`VIRTIOFS_TAG`];
//! - optionally a scratch disk as the first virtio-blk disk (`/dev/vda`), ext4 with `/upper`,
//!   `/work` and `/starling/` (`starling_image::scratch`); without one the changes live in a
//!   tmpfs;
//! - in `/starling/` of that disk, [`CMD_FILE`] (the command, [`nul_list`]) and optionally
//!   [`ENV_FILE`] (`K=V` entries): with a command the VM runs it and ends with its status;
//!   without one the image's `/sbin/init` boots.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::initramfs::{host_busybox, Initramfs};
use crate::modules::{canonical, ModuleTree};
use crate::Error;

/// The run init (`/init` of the artifact's initramfs).
pub const RUN_INIT: &str = include_str!("../init/run-init.sh");
/// The first line the run init prints: boot-time measurements stop at it.
pub const RUN_INIT_MARKER: &str = "starling-init: started";
/// The virtio-fs tag the init mounts the image from.
pub const VIRTIOFS_TAG: &str = "root";
/// Where the init mounts the scratch disk; its `starling/` directory holds the files below.
pub const GUEST_CONFIG_DIR: &str = "/scratch/starling";
/// The command (argv as NUL-terminated strings) in `/starling/` of the scratch disk.
pub const CMD_FILE: &str = "cmd";
/// Optional environment (`K=V`, NUL-terminated) in `/starling/` of the scratch disk.
pub const ENV_FILE: &str = "env";

/// Exit statuses of a VM booted from the artifact, when it ends for reasons of its own (a
/// command's own status otherwise). Written to the monitor's debug-exit port by the agent.
pub mod status {
    /// The image has no /sbin/init and no command was given; also a command that exists but
    /// cannot be executed.
    pub const NO_INIT: u8 = 126;
    /// The command was not found in the image.
    pub const NOT_FOUND: u8 = 127;
    /// The agent could not prepare the image root (proc, sys, dev, tmp, run mounts).
    pub const RUN_PREPARE: u8 = 247;
    /// `/starling/cmd` or `/starling/env` is unreadable, empty, malformed or over 2 MiB.
    pub const RUN_CONFIG: u8 = 248;
    /// Mounting /proc, /sys or /dev in the initramfs failed.
    pub const BASIC_MOUNTS: u8 = 249;
    /// A kernel module failed to load.
    pub const MODULE: u8 = 250;
    /// The image (virtio-fs tag `root`) could not be mounted.
    pub const IMAGE: u8 = 251;
    /// The scratch disk could not be mounted, or lacks /upper and /work.
    pub const SCRATCH: u8 = 252;
    /// The overlay could not be mounted.
    pub const OVERLAY: u8 = 253;
    /// /dev, /proc or /sys could not be moved into the image before switch_root.
    pub const HANDOVER: u8 = 254;
}

/// What the kernel must provide, as (module, what it is), in load order of need.
pub const RUN_MODULES: &[(&str, &str)] = &[
    ("virtio_mmio", "virtio-mmio"),
    ("virtio_blk", "virtio-blk"),
    ("virtio_rng", "virtio-rng"),
    ("ext4", "ext4"),
    ("virtiofs", "virtio-fs"),
    ("overlay", "overlayfs"),
    ("vmw_vsock_virtio_transport", "virtio-vsock"),
    ("virtio_net", "virtio-net"),
];

/// Loaded when the kernel has them as modules: `tcp_diag` lets the agent abort a clone's TCP
/// connections from its parent's address (SOCK_DESTROY) when it takes its own address on.
pub const OPTIONAL_RUN_MODULES: &[&str] = &["tcp_diag"];

/// Bump when the layout of the artifact changes without its inputs changing.
const ARTIFACT_FORMAT: &str = "starling-run-artifact 3";

/// A built (or cached) boot artifact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunArtifact {
    /// The kernel as given: a bzImage (compressed: the artifact stays small, ~16 MB with
    /// Debian's cloud kernel where its PVH ELF alone is 53 MB) or an ELF kernel.
    pub kernel: PathBuf,
    /// The initramfs, an uncompressed cpio archive (the guest copies it; decompressing was
    /// most of its unpacking time on slow or nested machines).
    pub initrd: PathBuf,
    pub release: String,
    /// kernel + initrd, in bytes.
    pub size_bytes: u64,
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// Encodes strings as NUL-terminated entries, the format of [`CMD_FILE`] and [`ENV_FILE`];
/// refuses a string holding a NUL byte.
pub fn nul_list<S: AsRef<[u8]>>(items: &[S]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    for (i, s) in items.iter().enumerate() {
        let s = s.as_ref();
        if s.contains(&0) {
            return Err(Error::Invalid(format!(
                "entry {i} ({}) holds a NUL byte",
                String::from_utf8_lossy(s)
            )));
        }
        out.extend_from_slice(s);
        out.push(0);
    }
    Ok(out)
}

/// The names in `modules.builtin` (canonical), empty when there is no such file.
fn builtin(modules_dir: &Path) -> Result<Vec<String>, Error> {
    let path = modules_dir.join("modules.builtin");
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text
            .lines()
            .filter_map(|l| l.trim().rsplit('/').next())
            .filter_map(|n| n.strip_suffix(".ko"))
            .map(canonical)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_at(&path)(e)),
    }
}

/// The modules to load (each after its dependencies), refusing a kernel that lacks one of
/// [`RUN_MODULES`] both as a module and built in.
fn run_modules(modules_dir: &Path, release: &str) -> Result<Vec<(String, PathBuf)>, Error> {
    // A kernel given as a lone file has no module tree: what it needs must be built in (if
    // not, the init names the mount that failed and ends the VM with its status).
    if !modules_dir.exists() {
        return Ok(Vec::new());
    }
    let tree = ModuleTree::scan(modules_dir).ok();
    let builtin = builtin(modules_dir)?;
    let mut wanted = Vec::new();
    for (name, what) in RUN_MODULES {
        if builtin.iter().any(|b| b == name) {
            continue;
        }
        if tree.as_ref().and_then(|t| t.path(name)).is_none() {
            return Err(Error::Invalid(format!(
                "kernel {release} has no {what} support ({name}.ko, and not built in)"
            )));
        }
        wanted.push(*name);
    }
    for name in OPTIONAL_RUN_MODULES {
        if tree.as_ref().is_some_and(|t| t.path(name).is_some()) {
            wanted.push(*name);
        }
    }
    match tree {
        Some(tree) => tree.load_order(&wanted),
        None => Ok(Vec::new()),
    }
}

/// The boot artifact for the kernel in `kernel_tree` (`boot/vmlinuz-RELEASE` and
/// `lib/modules/RELEASE/`, as a `debian-kernel:RELEASE` image or a Debian image with its own
/// kernel holds them; `boot/vmlinuz-RELEASE` may also be an ELF kernel, and without a module
/// tree everything the init needs must be built into the kernel), built into `cache_dir/<hash>/` unless it is there already. The hash
/// covers the kernel, the modules loaded, the agent, the init and busybox. Concurrent callers
/// build in private directories and rename; each sees a whole artifact or none.
pub fn artifact(cache_dir: &Path, kernel_tree: &Path) -> Result<RunArtifact, Error> {
    let release = crate::kernel::release_in(kernel_tree).ok_or_else(|| {
        Error::Invalid(format!(
            "{}: no boot/vmlinuz-RELEASE: not a kernel tree",
            kernel_tree.display()
        ))
    })?;
    let vmlinuz = kernel_tree.join(format!("boot/vmlinuz-{release}"));
    let modules_dir = kernel_tree.join("lib/modules").join(&release);
    let modules = run_modules(&modules_dir, &release)?;
    let busybox = host_busybox().ok_or_else(|| {
        Error::Invalid("no statically linked busybox on this host: install busybox-static".into())
    })?;
    let at = |dir: &Path| -> Result<RunArtifact, Error> {
        let kernel = dir.join("kernel");
        let initrd = dir.join("initrd.img");
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).map_err(io_at(p));
        Ok(RunArtifact {
            size_bytes: size(&kernel)? + size(&initrd)?,
            kernel,
            initrd,
            release: release.clone(),
        })
    };
    // Every `starling run` asks for its artifact: inputs that have not changed since they
    // were hashed (same files, sizes, change times) name it without reading ~20 MB again.
    let inputs: Vec<&Path> = std::iter::once(vmlinuz.as_path())
        .chain(modules.iter().map(|(_, p)| p.as_path()))
        .chain(std::iter::once(busybox.as_path()))
        .collect();
    let stamp = stamp_of(&release, &inputs);
    if let Some(dir) = stamp.as_deref().and_then(|s| stamped(cache_dir, s)) {
        return at(&dir);
    }
    let bzimage = std::fs::read(&vmlinuz).map_err(io_at(&vmlinuz))?;

    let mut h = blake3::Hasher::new();
    let mut part = |name: &[u8], data: &[u8]| {
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name);
        h.update(&(data.len() as u64).to_le_bytes());
        h.update(data);
    };
    part(b"format", ARTIFACT_FORMAT.as_bytes());
    part(b"release", release.as_bytes());
    part(b"vmlinuz", &bzimage);
    for (name, path) in &modules {
        part(name.as_bytes(), &std::fs::read(path).map_err(io_at(path))?);
    }
    part(b"agent", crate::AGENT);
    part(b"init", RUN_INIT.as_bytes());
    part(b"net-setup", crate::initramfs::NET_SETUP.as_bytes());
    part(
        b"busybox",
        &std::fs::read(&busybox).map_err(io_at(&busybox))?,
    );
    let hash = h.finalize().to_hex();
    let dir = cache_dir.join(&hash[..32]);
    if !dir.is_dir() {
        build(cache_dir, &dir, &vmlinuz, &bzimage, &busybox, modules)?;
    }
    if let Some(s) = &stamp {
        record_stamp(cache_dir, s, &hash[..32]);
    }
    at(&dir)
}

/// What names an artifact's inputs without reading them: the format, the release, the
/// embedded agent and scripts, and each input file's identity, size and change times (a
/// file written or replaced since has another). `None` when an input cannot be looked at.
fn stamp_of(release: &str, inputs: &[&Path]) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    static EMBEDDED: std::sync::OnceLock<blake3::Hash> = std::sync::OnceLock::new();
    let embedded = EMBEDDED.get_or_init(|| {
        let mut h = blake3::Hasher::new();
        for part in [
            crate::AGENT,
            RUN_INIT.as_bytes(),
            crate::initramfs::NET_SETUP.as_bytes(),
        ] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.finalize()
    });
    let mut h = blake3::Hasher::new();
    h.update(ARTIFACT_FORMAT.as_bytes());
    h.update(&[0]);
    h.update(release.as_bytes());
    h.update(&[0]);
    h.update(embedded.as_bytes());
    for p in inputs {
        let m = std::fs::metadata(p).ok()?;
        h.update(p.as_os_str().as_encoded_bytes());
        h.update(&[0]);
        for v in [
            m.dev(),
            m.ino(),
            m.len(),
            m.mtime() as u64,
            m.mtime_nsec() as u64,
            m.ctime() as u64,
            m.ctime_nsec() as u64,
        ] {
            h.update(&v.to_le_bytes());
        }
    }
    Some(h.finalize().to_hex()[..32].to_string())
}

const STAMPS: &str = "stamps";

/// The artifact a stamp was recorded for, if it is still there.
fn stamped(cache_dir: &Path, stamp: &str) -> Option<PathBuf> {
    let name = std::fs::read_to_string(cache_dir.join(STAMPS).join(stamp)).ok()?;
    let name = name.trim();
    let ok = name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit());
    let dir = cache_dir.join(name);
    (ok && dir.join("kernel").is_file() && dir.join("initrd.img").is_file()).then_some(dir)
}

/// Best effort: without the record the next run hashes its inputs again.
fn record_stamp(cache_dir: &Path, stamp: &str, artifact: &str) {
    let dir = cache_dir.join(STAMPS);
    let tmp = dir.join(format!(".{stamp}.{}", std::process::id()));
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&tmp, artifact))
        .and_then(|()| std::fs::rename(&tmp, dir.join(stamp)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Builds the artifact `dir` in a temporary directory beside it and renames it into place.
fn build(
    cache_dir: &Path,
    dir: &Path,
    vmlinuz: &Path,
    bzimage: &[u8],
    busybox: &Path,
    modules: Vec<(String, PathBuf)>,
) -> Result<(), Error> {
    std::fs::create_dir_all(cache_dir).map_err(io_at(cache_dir))?;
    let tmp = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(cache_dir)
        .map_err(io_at(cache_dir))?;
    let kernel = tmp.path().join("kernel");
    let mut f = std::fs::File::create(&kernel).map_err(io_at(&kernel))?;
    // Both boot as they are (the monitor loads an ELF through its PVH note and a bzImage by
    // the Linux boot protocol); anything else is refused here rather than by a guest.
    let is_bzimage = bzimage.get(0x202..0x206) == Some(b"HdrS".as_slice());
    if !is_bzimage && !bzimage.starts_with(b"\x7fELF") {
        return Err(Error::Invalid(format!(
            "{}: neither a bzImage nor an ELF kernel",
            vmlinuz.display()
        )));
    }
    f.write_all(bzimage)
        .and_then(|()| f.sync_all())
        .map_err(io_at(&kernel))?;
    let mut ird = Initramfs::new(busybox)?;
    ird.set_modules(modules);
    ird.add_bytes(crate::AGENT.to_vec(), "/bin/starling-agent", 0o755)?;
    ird.init(RUN_INIT.as_bytes().to_vec());
    // Built once per kernel, booted by every VM: copied by the guest, not decompressed.
    ird.uncompressed();
    ird.write(&tmp.path().join("initrd.img"))?;
    let built = tmp.keep();
    if let Err(e) = std::fs::rename(&built, dir) {
        let _ = std::fs::remove_dir_all(&built);
        // Another builder of the same artifact got there first: theirs is as good.
        if !dir.is_dir() {
            return Err(io_at(dir)(e));
        }
    }
    if let Ok(d) = std::fs::File::open(cache_dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::tests::module;

    const RELEASE: &str = "9.9.9-test";

    /// A bzImage whose gzip payload is `elf` (enough for `vmlinux::extract`).
    fn bzimage(elf: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(elf).unwrap();
        let payload = gz.finish().unwrap();
        let mut img = vec![0u8; 1024];
        img[0x1f1] = 1; // setup sectors: the protected-mode part starts at 1024
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        img[0x248..0x24c].copy_from_slice(&0u32.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        img.extend_from_slice(&payload);
        img
    }

    /// A kernel tree with the run modules as assembler-made objects (ext4 built in); None
    /// without an assembler.
    fn kernel_tree(root: &Path, elf: &[u8], leave_out: &[&str]) -> Option<PathBuf> {
        let boot = root.join("boot");
        let mods = root.join("lib/modules").join(RELEASE);
        let drivers = mods.join("kernel/drivers");
        std::fs::create_dir_all(&boot).unwrap();
        std::fs::create_dir_all(&drivers).unwrap();
        std::fs::write(boot.join(format!("vmlinuz-{RELEASE}")), bzimage(elf)).unwrap();
        std::fs::write(
            mods.join("modules.builtin"),
            "kernel/fs/ext4/ext4.ko\nkernel/fs/jbd2/jbd2.ko\n",
        )
        .unwrap();
        for (name, deps) in [
            ("virtio_ring", ""),
            ("virtio", "virtio_ring"),
            ("virtio_mmio", "virtio,virtio_ring"),
            ("virtio_blk", "virtio,virtio_ring"),
            ("virtio_rng", "virtio,virtio_ring"),
            ("fuse", ""),
            ("virtiofs", "fuse,virtio,virtio_ring"),
            ("overlay", ""),
            ("vsock", ""),
            ("vmw_vsock_virtio_transport_common", "vsock"),
            (
                "vmw_vsock_virtio_transport",
                "vmw_vsock_virtio_transport_common,vsock,virtio,virtio_ring",
            ),
            ("failover", ""),
            ("net_failover", "failover"),
            ("virtio_net", "net_failover,failover,virtio,virtio_ring"),
        ] {
            if !leave_out.contains(&name) {
                module(&drivers, name, deps)?;
            }
        }
        Some(root.to_owned())
    }

    fn tools_or_skip() -> bool {
        if host_busybox().is_none() {
            starling_testkit::skip("no static busybox (Debian package busybox-static)");
            return false;
        }
        if std::process::Command::new("cpio")
            .arg("--version")
            .output()
            .is_err()
        {
            starling_testkit::skip("GNU cpio not installed (Debian package cpio)");
            return false;
        }
        true
    }

    /// Unpacks an initramfs with GNU cpio; returns the listing in archive order. The run
    /// artifact's is a plain cpio archive (newc), which the guest copies, not decompresses.
    fn unpack(initrd: &Path, into: &Path) -> Vec<String> {
        let head = std::fs::read(initrd).unwrap();
        assert!(
            head.starts_with(b"070701"),
            "not an uncompressed newc archive"
        );
        std::fs::create_dir_all(into).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("cpio -idv --quiet < {} 2>&1", initrd.display()))
            .current_dir(into)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_lone_elf_kernel_boots_as_it_is_with_no_modules() {
        if !tools_or_skip() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("k");
        std::fs::create_dir_all(tree.join("boot")).unwrap();
        std::fs::write(tree.join("boot/vmlinuz-file"), b"\x7fELF all built in").unwrap();
        let a = artifact(&dir.path().join("cache"), &tree).unwrap();
        assert_eq!(a.release, "file");
        assert_eq!(std::fs::read(&a.kernel).unwrap(), b"\x7fELF all built in");
        let listing = unpack(&a.initrd, &dir.path().join("x"));
        assert!(
            listing.iter().any(|l| l == "bin/starling-agent"),
            "{listing:?}"
        );
        assert!(!listing.iter().any(|l| l.ends_with(".ko")), "{listing:?}");
    }

    #[test]
    fn initramfs_holds_init_busybox_agent_and_modules_in_order() {
        if !tools_or_skip() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let Some(tree) = kernel_tree(&dir.path().join("k"), b"\x7fELF kernel one", &[]) else {
            starling_testkit::skip("no assembler (as, Debian package binutils)");
            return;
        };
        let a = artifact(&dir.path().join("cache"), &tree).unwrap();
        assert_eq!(a.release, RELEASE);
        assert_eq!(
            std::fs::read(&a.kernel).unwrap(),
            bzimage(b"\x7fELF kernel one")
        );
        assert_eq!(
            a.size_bytes,
            std::fs::metadata(&a.kernel).unwrap().len()
                + std::fs::metadata(&a.initrd).unwrap().len()
        );
        let x = dir.path().join("x");
        let listing = unpack(&a.initrd, &x);
        let order = [
            "virtio_ring",
            "virtio",
            "virtio_mmio",
            "virtio_blk",
            "virtio_rng",
            "fuse",
            "virtiofs",
            "overlay",
            "vsock",
            "vmw_vsock_virtio_transport_common",
            "vmw_vsock_virtio_transport",
            "failover",
            "net_failover",
            "virtio_net",
        ];
        assert_eq!(
            std::fs::read_to_string(x.join("etc/starling/modules")).unwrap(),
            order.map(|m| format!("{m}\n")).concat()
        );
        // The archive itself holds them in that order too, and nothing built in.
        let in_archive: Vec<&str> = listing
            .iter()
            .filter_map(|l| l.strip_prefix("lib/modules/")?.strip_suffix(".ko"))
            .collect();
        assert_eq!(in_archive, order);
        assert_eq!(std::fs::read_to_string(x.join("init")).unwrap(), RUN_INIT);
        assert_eq!(
            std::fs::read(x.join("bin/starling-agent")).unwrap(),
            crate::AGENT
        );
        assert_eq!(
            std::fs::read(x.join("bin/busybox")).unwrap(),
            std::fs::read(host_busybox().unwrap()).unwrap()
        );
        use std::os::unix::fs::PermissionsExt;
        for exe in ["init", "bin/starling-agent", "bin/busybox"] {
            let mode = std::fs::metadata(x.join(exe)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o755, "{exe}");
        }
        // The init is busybox sh that busybox itself parses.
        let st = std::process::Command::new(host_busybox().unwrap())
            .args(["sh", "-n"])
            .arg(x.join("init"))
            .status()
            .unwrap();
        assert!(st.success());
        assert!(RUN_INIT.contains(&format!("echo \"{RUN_INIT_MARKER}\"")));
    }

    #[test]
    fn cached_artifacts_are_reused_and_keyed_by_content() {
        if !tools_or_skip() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let Some(one) = kernel_tree(&dir.path().join("one"), b"\x7fELF kernel one", &[]) else {
            starling_testkit::skip("no assembler (as, Debian package binutils)");
            return;
        };
        let two = kernel_tree(&dir.path().join("two"), b"\x7fELF kernel two", &[]).unwrap();
        // Two builders at once: both get the one whole artifact.
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| artifact(&cache, &one).unwrap());
            let b = s.spawn(|| artifact(&cache, &one).unwrap());
            (a.join().unwrap(), b.join().unwrap())
        });
        assert_eq!(a, b);
        use std::os::unix::fs::MetadataExt;
        let before = std::fs::metadata(&a.initrd).unwrap();
        let again = artifact(&cache, &one).unwrap();
        assert_eq!(again, a);
        let after = std::fs::metadata(&again.initrd).unwrap();
        assert_eq!(
            (before.ino(), before.mtime_nsec()),
            (after.ino(), after.mtime_nsec()),
            "the cached initramfs was rebuilt"
        );
        let other = artifact(&cache, &two).unwrap();
        assert_ne!(other.kernel.parent(), a.kernel.parent());
        assert_eq!(
            std::fs::read(&other.kernel).unwrap(),
            bzimage(b"\x7fELF kernel two")
        );
        // Exactly the two artifacts (and the stamps naming them), no build directories left.
        let mut entries: Vec<String> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|e| e != "stamps")
            .collect();
        entries.sort();
        assert_eq!(entries.len(), 2, "{entries:?}");
        assert!(entries.iter().all(|e| !e.starts_with('.')), "{entries:?}");
        // A kernel written since its stamp was taken is hashed again, not taken for the old.
        let vmlinuz = one.join(format!("boot/vmlinuz-{RELEASE}"));
        std::fs::write(&vmlinuz, bzimage(b"\x7fELF kernel two")).unwrap();
        let changed = artifact(&cache, &one).unwrap();
        assert_eq!(changed.kernel, other.kernel, "keyed by content again");
        // A stamp whose artifact went (removed by hand) leads to a rebuild.
        std::fs::remove_dir_all(other.kernel.parent().unwrap()).unwrap();
        let rebuilt = artifact(&cache, &two).unwrap();
        assert_eq!(rebuilt, other);
        assert!(rebuilt.initrd.is_file());
    }

    #[test]
    fn kernels_without_what_run_needs_are_refused_by_name() {
        if !tools_or_skip() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let Some(tree) = kernel_tree(&dir.path().join("k"), b"\x7fELF k", &["virtiofs"]) else {
            starling_testkit::skip("no assembler (as, Debian package binutils)");
            return;
        };
        let e = artifact(&cache, &tree).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "kernel {RELEASE} has no virtio-fs support (virtiofs.ko"
            )),
            "{e}"
        );
        // Built in is as good as a module, and is not loaded.
        let builtin = tree
            .join("lib/modules")
            .join(RELEASE)
            .join("modules.builtin");
        let mut text = std::fs::read_to_string(&builtin).unwrap();
        text.push_str("kernel/fs/fuse/virtiofs.ko\n");
        std::fs::write(&builtin, text).unwrap();
        let a = artifact(&cache, &tree).unwrap();
        let listing = unpack(&a.initrd, &dir.path().join("x"));
        assert!(
            !listing.iter().any(|l| l.contains("virtiofs")),
            "{listing:?}"
        );
        assert!(
            !listing.iter().any(|l| l.contains("/fuse.ko")),
            "{listing:?}"
        );
        // Without modules.builtin, ext4 must be a module.
        std::fs::remove_file(&builtin).unwrap();
        let e = artifact(&cache, &tree).unwrap_err().to_string();
        assert!(e.contains("has no ext4 support (ext4.ko"), "{e}");
        let overlayless = kernel_tree(&dir.path().join("o"), b"\x7fELF o", &["overlay"]).unwrap();
        let e = artifact(&cache, &overlayless).unwrap_err().to_string();
        assert!(e.contains("no overlayfs support (overlay.ko"), "{e}");
        // Not a kernel tree at all.
        let e = artifact(&cache, dir.path()).unwrap_err().to_string();
        assert!(e.contains("no boot/vmlinuz-RELEASE"), "{e}");
    }

    #[test]
    fn command_files_are_nul_terminated_lists() {
        assert_eq!(
            nul_list(&["sh", "-c", "echo hi"]).unwrap(),
            b"sh\0-c\0echo hi\0"
        );
        assert_eq!(nul_list::<&str>(&[]).unwrap(), b"");
        let e = nul_list(&[&b"a\0b"[..]]).unwrap_err().to_string();
        assert!(e.contains("NUL"), "{e}");
    }
}
