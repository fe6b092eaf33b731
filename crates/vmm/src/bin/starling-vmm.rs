//! `starling-vmm`: one VM per process, as small as the monitor itself (no store, HTTP or TUF
//! code mapped), so its memory beyond guest RAM stays a few MiB. A fork starts one per clone,
//! pools one per substrate, starlingd one per VM; `starling vm run` and `vm restore` run the
//! same monitor in their own process. It can also be run directly.
//!
//!   starling-vmm --config FILE | --config-json JSON     boot a VM
//!   starling-vmm --restore DIR | --restore-json SPEC    restore a snapshot (SPEC: RestoreSpec)
//!   starling-vmm --memory-server DIR|ADDR#HASH --listen ADDR
//!                      serve a snapshot's memory (lazy restores), from its directory or from
//!                      another memory server; prints ADDR#HASH, the address pinned to the state
//!
//!   starling-vmm --version | --help
//!
//! Exit status: the guest's (see docs/api/vmm.md); 2 when the VM cannot be built.

use std::process::ExitCode;

use starling_vmm::process::{run_to_exit, Start};
use starling_vmm::{RestoreSpec, VmConfig};

const USAGE: &str = "usage: starling-vmm --config FILE | --config-json JSON | --restore DIR | --restore-json SPEC | --memory-server DIR|ADDR#HASH --listen ADDR | --version";

/// Serves memory until killed; returns only on error. The first line on stdout is the pinned
/// address clients restore from (`ADDR#HASH`).
fn memory_server(source: &str, listen: &str) -> Result<(), String> {
    use starling_vmm::lazy::{Addr, MemoryServer};
    let listen: Addr = listen.parse().map_err(|e| format!("{e}"))?;
    let server = MemoryServer::open(source).map_err(|e| e.to_string())?;
    let pinned = server.pinned(&listen);
    std::sync::Arc::new(server)
        .serve(&listen, || {
            // Confined once listening, before the first client is taken.
            if let Err(e) = starling_vmm::jail::confine(starling_vmm::jail::Kind::MemoryServer) {
                eprintln!("starling: memory server: {e}");
                std::process::exit(2);
            }
            println!("{pinned}");
            eprintln!("starling: serving the memory of {source} on {listen}");
        })
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    starling_vmm::jail::explain_inherited_refusals();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let start = match args.as_slice() {
        [flag] if flag == "--version" || flag == "-V" => {
            println!("starling-vmm {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        [flag] if flag == "--help" || flag == "-h" => {
            println!(
                "{USAGE}\n\nBoots or restores one microVM in this process; see docs/api/vmm.md."
            );
            return ExitCode::SUCCESS;
        }
        [flag, file] if flag == "--config" => VmConfig::from_file(file.as_ref())
            .map(Start::Boot)
            .map_err(|e| e.to_string()),
        [flag, json] if flag == "--config-json" => serde_json::from_str::<VmConfig>(json)
            .map(Start::Boot)
            .map_err(|e| format!("VM config: {e}")),
        [flag, dir] if flag == "--restore" => Ok(Start::Restore(RestoreSpec {
            dir: dir.into(),
            ..Default::default()
        })),
        [flag, json] if flag == "--restore-json" => serde_json::from_str::<RestoreSpec>(json)
            .map(Start::Restore)
            .map_err(|e| format!("restore spec: {e}")),
        [flag, source, l, listen] if flag == "--memory-server" && l == "--listen" => {
            let e = memory_server(source, listen).err().unwrap_or_default();
            eprintln!("starling: memory server: {e}");
            return ExitCode::from(2);
        }
        _ => Err(USAGE.into()),
    };
    match start {
        Ok(s) => ExitCode::from(run_to_exit(s)),
        Err(e) => {
            eprintln!("starling: {e}");
            ExitCode::from(2)
        }
    }
}
