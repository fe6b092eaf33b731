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
    Cli::parse().args.run("starlingd")
}
