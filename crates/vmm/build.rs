#[path = "../../build/link_order.rs"]
mod link_order;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let dir = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    link_order::emit("starling-vmm", &dir.join("link-order.txt"));
}
