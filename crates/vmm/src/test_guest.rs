//! Builds the project's tier-1 test guest (`tests/guest`: a freestanding C program with a PVH
//! note and a 64-bit ELF entry) with the system C compiler. Shared by this crate's tests and
//! the CLI's; not part of the monitor.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The two builds of the guest.
pub struct TestGuest {
    /// With the PVH note: entered in 32-bit protected mode.
    pub pvh: PathBuf,
    /// Without it: entered in 64-bit long mode at the ELF entry.
    pub elf64: PathBuf,
}

/// Compiles both variants into `out`; Err names what is missing (a C compiler).
pub fn build(out: &Path) -> Result<TestGuest, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest");
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let compile = |name: &str, extra: &[&str]| -> Result<PathBuf, String> {
        let target = out.join(name);
        let status = Command::new("cc")
            .args(extra)
            .args([
                "-O2",
                "-Wall",
                "-Werror",
                "-ffreestanding",
                "-fno-pic",
                "-fno-pie",
                "-no-pie",
                "-fno-stack-protector",
                "-mno-red-zone",
                "-mgeneral-regs-only",
                "-nostdlib",
                "-static",
                "-Wl,--build-id=none",
                "-Wl,--no-warn-rwx-segments",
            ])
            .arg(format!("-Wl,-T,{}", src.join("guest.ld").display()))
            .arg("-o")
            .arg(&target)
            .arg(src.join("start.S"))
            .arg(src.join("guest.c"))
            .status()
            .map_err(|e| format!("cannot run cc: {e}"))?;
        if status.success() {
            Ok(target)
        } else {
            Err(format!("cc failed building the test guest ({status})"))
        }
    };
    Ok(TestGuest {
        pvh: compile("guest-pvh.elf", &[])?,
        elf64: compile("guest-64.elf", &["-DNO_PVH_NOTE"])?,
    })
}

/// For tests: what this host lacks to run the guest (no /dev/kvm, no C compiler), or None.
/// A compiler that runs and rejects the guest is not "missing": [`build`] then fails, and so
/// must the test.
pub fn missing() -> Option<String> {
    if !Path::new("/dev/kvm").exists() {
        return Some("no /dev/kvm on this host".into());
    }
    eprintln!("KVM flavour: {}", crate::flavour::detect().name());
    if Command::new("cc").arg("--version").output().is_err() {
        return Some("no C compiler (cc) to build the test guest".into());
    }
    None
}

/// For tests: the guest compiled once per process into `out` (the first caller's), or why
/// this host cannot run it ([`missing`]; the caller skips loudly). A compiler that rejects
/// the guest fails the test.
pub fn once(out: &Path) -> Result<&'static TestGuest, &'static str> {
    static G: OnceLock<Result<TestGuest, String>> = OnceLock::new();
    let g = G.get_or_init(|| match missing() {
        Some(why) => Err(why),
        None => Ok(build(out).unwrap_or_else(|e| panic!("the test guest does not build: {e}"))),
    });
    g.as_ref().map_err(String::as_str)
}
