//! Shared by the build scripts of the binaries on the VM path (`starling-vmm`, `starling`):
//! a release build lays out first the functions a VM's start runs, as listed in the crate's
//! `link-order.txt` (written by scripts/link-order.py), so that a monitor starts with fewer
//! page faults and keeps less of its program resident. Names the linker no longer finds
//! (changed since the list was written) are skipped without a word.

use std::path::Path;

/// Hands `list` to the linker for `bin` when this build surely links with lld: a release
/// build for x86_64 Linux with glibc by a rustc of 1.90 or later (which links such targets
/// with its own lld by default), naming no linker of its own (whose flags we cannot know),
/// unless `STARLING_LINK_ORDER=off`. GNU ld would refuse the flag and fail the build.
pub fn emit(bin: &str, list: &Path) {
    println!("cargo:rerun-if-changed={}", list.display());
    println!("cargo:rerun-if-env-changed=STARLING_LINK_ORDER");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    let wanted = var("PROFILE") == "release"
        && var("TARGET") == "x86_64-unknown-linux-gnu"
        && var("STARLING_LINK_ORDER") != "off"
        && !flags.contains("linker")
        && !flags.contains("fuse-ld")
        && var("RUSTC_LINKER").is_empty()
        && rustc_links_with_lld()
        && list.is_file();
    if wanted {
        println!(
            "cargo:rustc-link-arg-bin={bin}=-Wl,--symbol-ordering-file={},--no-warn-symbol-ordering",
            list.display()
        );
    }
}

/// Whether the rustc building this is 1.90 or later (`rustc -vV`'s `release:` line).
fn rustc_links_with_lld() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = std::process::Command::new(rustc).arg("-vV").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(release) = text.lines().find_map(|l| l.strip_prefix("release: ")) else {
        return false;
    };
    let mut parts = release
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (1, 90)
}
