//! Which KVM this host has: hardware (kvm_intel, kvm_amd) or the software PVM
//! (kvm_pvm), read from /sys/module. Tests print it; Linux guests need a hardware flavour.

use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    Intel,
    Amd,
    Pvm,
    Unknown,
    Absent,
}

impl Flavour {
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Intel => "kvm_intel",
            Flavour::Amd => "kvm_amd",
            Flavour::Pvm => "kvm_pvm",
            Flavour::Unknown => "kvm (unknown flavour)",
            Flavour::Absent => "none",
        }
    }

    /// Whether a stock Linux kernel boots at useful speed here.
    pub fn boots_linux(self) -> bool {
        matches!(self, Flavour::Intel | Flavour::Amd)
    }
}

pub fn detect() -> Flavour {
    detect_in(Path::new("/sys/module"), Path::new("/dev/kvm"))
}

fn detect_in(modules: &Path, dev: &Path) -> Flavour {
    if !dev.exists() {
        return Flavour::Absent;
    }
    // PVM first: a host may also load kvm_amd/kvm_intel without usable hardware support.
    for (m, f) in [
        ("kvm_pvm", Flavour::Pvm),
        ("kvm_intel", Flavour::Intel),
        ("kvm_amd", Flavour::Amd),
    ] {
        if modules.join(m).exists() {
            return f;
        }
    }
    Flavour::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavour_from_loaded_modules() {
        let d = tempfile::tempdir().unwrap();
        let dev = d.path().join("kvm");
        assert_eq!(detect_in(d.path(), &dev), Flavour::Absent);
        std::fs::write(&dev, "").unwrap();
        assert_eq!(detect_in(d.path(), &dev), Flavour::Unknown);
        std::fs::create_dir(d.path().join("kvm_amd")).unwrap();
        assert_eq!(detect_in(d.path(), &dev), Flavour::Amd);
        std::fs::create_dir(d.path().join("kvm_pvm")).unwrap();
        assert_eq!(detect_in(d.path(), &dev), Flavour::Pvm);
        println!("this host: {}", detect().name());
    }
}
