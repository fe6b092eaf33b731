//! Shared by the build scripts of the binaries on the VM path (`starling-vmm`, `starling`):
//! a release build lays out first the functions a VM's start runs, as listed in the crate's
//! `link-order.txt` (written by scripts/link-order.py), so that a monitor starts with fewer
//! page faults and keeps less of its program resident. Names the linker no longer finds
//! (changed since the list was written) are skipped without a word.

use std::path::Path;

/// The linker argument ordering `list` for `bin`, when this build can take it: a release
/// build for x86_64 Linux with glibc, where rustc links with its own lld (since Rust 1.90),
/// unless `STARLING_LINK_ORDER=off` or the build names a linker of its own (whose flags we
/// cannot know).
pub fn emit(bin: &str, list: &Path) {
    println!("cargo:rerun-if-changed={}", list.display());
    println!("cargo:rerun-if-env-changed=STARLING_LINK_ORDER");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let wanted = var("PROFILE") == "release"
        && var("TARGET") == "x86_64-unknown-linux-gnu"
        && var("STARLING_LINK_ORDER") != "off"
        && !var("CARGO_ENCODED_RUSTFLAGS").contains("linker")
        && var("RUSTC_LINKER").is_empty()
        && list.is_file();
    if wanted {
        println!(
            "cargo:rustc-link-arg-bin={bin}=-Wl,--symbol-ordering-file={},--no-warn-symbol-ordering",
            list.display()
        );
    }
}
