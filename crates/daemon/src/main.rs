//! starlingd: the host daemon (see the library docs).
#![forbid(unsafe_code)]

use clap::Parser;
use starling_daemon::args::DaemonArgs;

#[derive(Parser)]
#[command(
    name = "starlingd",
    version,
    about = "Starling host daemon: lazy mounts over one shared cache"
)]
struct Cli {
    #[command(flatten)]
    args: DaemonArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match starling_daemon::server::run(cli.args.config()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("starlingd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
