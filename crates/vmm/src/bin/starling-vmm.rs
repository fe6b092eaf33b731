//! `starling-vmm`: one VM per process, as small as the monitor itself (no store, HTTP or TUF
//! code mapped), so its memory beyond guest RAM stays a few MiB. `starling vm run` execs it
//! with the VM's config as JSON; it can also be run directly.
//!
//!   starling-vmm --config FILE | --config-json JSON
//!
//! Exit status: the guest's (see docs/api/vmm.md); 2 when the VM cannot be built.

use std::process::ExitCode;

use starling_vmm::VmConfig;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match args.as_slice() {
        [flag, file] if flag == "--config" => {
            VmConfig::from_file(file.as_ref()).map_err(|e| e.to_string())
        }
        [flag, json] if flag == "--config-json" => {
            serde_json::from_str::<VmConfig>(json).map_err(|e| format!("VM config: {e}"))
        }
        _ => Err("usage: starling-vmm --config FILE | --config-json JSON".into()),
    };
    match config {
        Ok(c) => ExitCode::from(starling_vmm::process::run_to_exit(c)),
        Err(e) => {
            eprintln!("starling: {e}");
            ExitCode::from(2)
        }
    }
}
