//! Building a busybox initramfs for a distribution kernel: busybox (static), the kernel
//! modules asked for with their dependencies (loaded in order by /init), extra files, and an
//! /init that mounts the basics, loads the modules and runs `/etc/starling/run` if present
//! (powering off when it returns), else a shell on the console.

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;

use crate::cpio::CpioWriter;
use crate::modules::ModuleTree;
use crate::Error;

/// Modules for the devices Starling's VMM gives a guest: virtio-mmio transport, block, rng,
/// vsock and network.
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "virtio_rng",
    "vmw_vsock_virtio_transport",
    "virtio_net",
];

/// Applies the kernel's `ip=` parameter once the modules are in (every initramfs has it as
/// /etc/starling/net-setup; the default init and the run init call it).
pub const NET_SETUP: &str = include_str!("../init/net-setup.sh");

/// The line /init prints first: boot-time measurements stop at it.
pub const INIT_MARKER: &str = "starling-initramfs: /init started";

const DEFAULT_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox echo "starling-initramfs: /init started"
/bin/busybox mkdir -p /proc /sys /dev /tmp /mnt /run /bin /sbin /etc
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in $(cat /etc/starling/modules); do
  insmod /lib/modules/$m.ko || echo "starling-initramfs: insmod $m failed"
done
echo "starling-initramfs: modules loaded"
/etc/starling/net-setup
# A restored VM or a clone hears here that it is one: the agent takes its identity on (seed,
# hostname, clock, and its own address and MAC on Starling's network).
if [ -x /bin/starling-agent ] && [ -e /dev/vsock ]; then
  /bin/starling-agent watch >/dev/null &
fi
if [ -x /etc/starling/run ]; then
  /etc/starling/run
  echo "starling-initramfs: run ended with status $?"
  sync
  poweroff -f
fi
exec sh
"#;

pub struct Initramfs {
    busybox: PathBuf,
    modules: Vec<(String, PathBuf)>,
    files: Vec<(FileSource, String)>,
    init: Option<Vec<u8>>,
    /// Written gzip-compressed (the default) or as a plain cpio archive.
    gzip: bool,
}

/// Where an extra file's content comes from.
enum FileSource {
    /// A host file (its permission bits come along).
    Path(PathBuf),
    /// Bytes held here, with their permission bits.
    Bytes(Vec<u8>, u32),
}

fn check_dest(dest: &str) -> Result<(), Error> {
    if !dest.starts_with('/') || dest.split('/').any(|c| c == "..") {
        return Err(Error::Invalid(format!(
            "{dest}: destinations are absolute paths without '..'"
        )));
    }
    Ok(())
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

/// Whether an ELF executable is statically linked (no PT_INTERP program header).
pub fn is_static_elf(data: &[u8]) -> bool {
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if data.get(..5) != Some(b"\x7fELF\x02") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    !(0..usize::from(phnum)).any(|i| {
        u32_at(phoff as usize + i * usize::from(phentsize)) == Some(3) // PT_INTERP
    })
}

/// The host's statically linked busybox (Debian package busybox-static), if it has one.
pub fn host_busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| std::fs::read(p).is_ok_and(|d| is_static_elf(&d)))
}

impl Initramfs {
    /// Starts from a static busybox binary.
    pub fn new(busybox: &Path) -> Result<Self, Error> {
        let data = read(busybox)?;
        if !is_static_elf(&data) {
            return Err(Error::Invalid(format!(
                "{}: not a statically linked ELF executable (install busybox-static)",
                busybox.display()
            )));
        }
        Ok(Initramfs {
            busybox: busybox.to_owned(),
            modules: Vec::new(),
            files: Vec::new(),
            init: None,
            gzip: true,
        })
    }

    /// Writes a plain cpio archive: a few MiB more on disk, and the guest kernel copies it
    /// instead of decompressing it (most of its unpacking time on a slow or nested machine).
    pub fn uncompressed(&mut self) {
        self.gzip = false;
    }

    /// Adds modules (and their dependencies) from a kernel's module tree.
    pub fn modules(&mut self, tree: &ModuleTree, names: &[&str]) -> Result<(), Error> {
        for (name, path) in tree.load_order(names)? {
            if !self.modules.iter().any(|(n, _)| *n == name) {
                self.modules.push((name, path));
            }
        }
        Ok(())
    }

    /// Adds modules already in load order (e.g. from [`ModuleTree::load_order`]).
    pub fn set_modules(&mut self, modules: Vec<(String, PathBuf)>) {
        for (name, path) in modules {
            if !self.modules.iter().any(|(n, _)| *n == name) {
                self.modules.push((name, path));
            }
        }
    }

    /// Adds a host file at `dest` (an absolute path inside the initramfs).
    pub fn add_file(&mut self, src: &Path, dest: &str) -> Result<(), Error> {
        check_dest(dest)?;
        if !src.is_file() {
            return Err(Error::Invalid(format!("{}: not a file", src.display())));
        }
        self.files
            .push((FileSource::Path(src.to_owned()), dest.to_owned()));
        Ok(())
    }

    /// Adds `data` at `dest` (an absolute path inside the initramfs) with permissions `mode`.
    pub fn add_bytes(&mut self, data: Vec<u8>, dest: &str, mode: u32) -> Result<(), Error> {
        check_dest(dest)?;
        self.files
            .push((FileSource::Bytes(data, mode), dest.to_owned()));
        Ok(())
    }

    /// Replaces the default /init.
    pub fn init(&mut self, script: Vec<u8>) {
        self.init = Some(script);
    }

    pub fn module_names(&self) -> Vec<&str> {
        self.modules.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Writes the archive (gzip-compressed unless [`Self::uncompressed`]) to `out` (through a
    /// temporary file, so a failure leaves no half-written initramfs); returns its size.
    pub fn write(&self, out: &Path) -> Result<u64, Error> {
        let io = |source| Error::Io {
            path: out.to_owned(),
            source,
        };
        let tmp = out.with_extension("partial");
        let file = std::fs::File::create(&tmp).map_err(io)?;
        let result = if self.gzip {
            self.write_to(GzEncoder::new(file, flate2::Compression::default()))
                .and_then(|enc| enc.finish().map_err(io))
        } else {
            self.write_to(std::io::BufWriter::new(file))
                .and_then(|w| w.into_inner().map_err(|e| io(e.into_error())))
        };
        let file = match result {
            Ok(file) => file,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&tmp, out).map_err(io)?;
        Ok(std::fs::metadata(out).map_err(io)?.len())
    }

    fn write_to<W: Write>(&self, w: W) -> Result<W, Error> {
        let io = |source| Error::Io {
            path: PathBuf::from("initramfs"),
            source,
        };
        let mut c = CpioWriter::new(w);
        let mut dirs: Vec<String> = [
            "/bin",
            "/dev",
            "/etc",
            "/etc/starling",
            "/lib",
            "/lib/modules",
            "/proc",
            "/sys",
            "/tmp",
            "/mnt",
            "/run",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (_, dest) in &self.files {
            for d in Path::new(dest).ancestors().skip(1) {
                let d = d.to_string_lossy().into_owned();
                if d != "/" && !d.is_empty() && !dirs.contains(&d) {
                    dirs.push(d);
                }
            }
        }
        dirs.sort();
        for d in &dirs {
            c.dir(d).map_err(io)?;
        }
        c.chardev("/dev/console", 5, 1).map_err(io)?;
        c.chardev("/dev/null", 1, 3).map_err(io)?;
        c.file("/bin/busybox", 0o755, &read(&self.busybox)?)
            .map_err(io)?;
        c.symlink("/bin/sh", "busybox").map_err(io)?;
        let mut list = String::new();
        for (name, path) in &self.modules {
            c.file(&format!("/lib/modules/{name}.ko"), 0o644, &read(path)?)
                .map_err(io)?;
            list.push_str(name);
            list.push('\n');
        }
        c.file("/etc/starling/modules", 0o644, list.as_bytes())
            .map_err(io)?;
        c.file("/etc/starling/net-setup", 0o755, NET_SETUP.as_bytes())
            .map_err(io)?;
        for (src, dest) in &self.files {
            use std::os::unix::fs::PermissionsExt;
            match src {
                FileSource::Path(src) => {
                    let mode = std::fs::metadata(src)
                        .map(|m| m.permissions().mode())
                        .unwrap_or(0o644);
                    c.file(dest, mode, &read(src)?).map_err(io)?;
                }
                FileSource::Bytes(data, mode) => c.file(dest, *mode, data).map_err(io)?,
            }
        }
        let init = self.init.as_deref().unwrap_or(DEFAULT_INIT.as_bytes());
        c.file("/init", 0o755, init).map_err(io)?;
        c.finish().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_holds_busybox_modules_files_and_init() {
        let Some(busybox) = ["/bin/busybox", "/usr/bin/busybox"]
            .iter()
            .map(Path::new)
            .find(|p| std::fs::read(p).is_ok_and(|d| is_static_elf(&d)))
        else {
            starling_testkit::skip(
                "no static busybox (Debian package busybox-static) on this host",
            );
            return;
        };
        if std::process::Command::new("cpio")
            .arg("--version")
            .output()
            .is_err()
        {
            starling_testkit::skip("GNU cpio not installed (Debian package cpio)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let extra = dir.path().join("run.sh");
        std::fs::write(&extra, "#!/bin/sh\necho hi\n").unwrap();
        let mut i = Initramfs::new(busybox).unwrap();
        i.add_file(&extra, "/etc/starling/run").unwrap();
        i.add_file(&extra, "/opt/deep/dir/x").unwrap();
        assert!(i.add_file(&extra, "relative").is_err());
        assert!(i.add_file(&extra, "/a/../b").is_err());
        let out = dir.path().join("initrd.img");
        i.write(&out).unwrap();
        let list = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("zcat {} | cpio -itv --quiet", out.display()))
            .output()
            .unwrap();
        let list = String::from_utf8_lossy(&list.stdout);
        for want in [
            "bin/busybox",
            "init",
            "etc/starling/run",
            "opt/deep/dir/x",
            "etc/starling/modules",
        ] {
            assert!(
                list.lines().any(|l| l.ends_with(&format!(" {want}"))),
                "{want} missing:\n{list}"
            );
        }
        assert!(
            list.lines()
                .any(|l| l.starts_with("crw") && l.ends_with(" dev/console")),
            "{list}"
        );
        assert!(
            list.lines()
                .any(|l| l.starts_with("drwx") && l.ends_with(" opt/deep")),
            "{list}"
        );
        // Not static: refused with the reason.
        let e = Initramfs::new(Path::new("/bin/sh"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("statically linked"), "{e}");
    }
}
