//! The `starling` binary is linked position-dependent (not PIE). A PIE this size has the
//! dynamic loader write ~0.9 MB of relocated pointers (.data.rel.ro) at every start: about a
//! millisecond of page faults on a virtualised host, most of what `starling vm run` and
//! `vm restore` added over the monitor alone (bench/cli_overhead.py). The libraries' code
//! stays position-independent; heap, stack and shared libraries are still randomised.
//! `starling-vmm` (forks, pools, the daemon's VMs) and `starlingd` stay PIE (docs/SECURITY.md).
//! Both binaries on the VM path lay out their hot code first (`link_order`).
#[path = "../../build/link_order.rs"]
mod link_order;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let dir = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    link_order::emit("starling", &dir.join("link-order.txt"));
    // glibc targets only: musl's static PIE start files expect a PIE.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu")
    {
        println!("cargo:rustc-link-arg-bin=starling=-no-pie");
    }
}
