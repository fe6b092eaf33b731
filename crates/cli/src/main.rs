//! `starling`: the command line. Each subcommand group lives in its own module.
#![forbid(unsafe_code)]

mod cli_docs;
mod exit;
mod fleet_cmd;
mod format;
mod group_cmd;
mod image_cmd;
mod images;
mod mount_cmd;
mod net_helper;
mod pool_cmd;
mod progress;
mod registry_cmd;
mod repo_cmd;
mod run_cmd;
mod store_cmd;
mod tls;
mod vm_artifacts;
mod vm_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "starling",
    version,
    about = "VM images as content, VMs as processes"
)]
struct Cli {
    /// Store directory [default: $STARLING_HOME, else ~/.local/share/starling]; also taken
    /// after the commands that use a store
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Import, export, list and manage images
    #[command(subcommand)]
    Image(image_cmd::ImageCmd),
    /// Inspect and maintain the object store
    #[command(subcommand)]
    Store(store_cmd::StoreCmd),
    /// Create, serve and list TUF-signed repositories
    #[command(subcommand)]
    Repo(repo_cmd::RepoCmd),
    /// Groups of hosts: a desired state published to a repository (`apply`), which each
    /// following host's starlingd converges to (`status`)
    Group {
        #[command(subcommand)]
        cmd: group_cmd::GroupCmd,
        /// starlingd's API socket (this host's, for `status` without --host)
        #[arg(long, env = "STARLING_SOCKET", default_value = starling_daemon::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Publish an image version to a repository (only missing objects are copied)
    Push {
        /// NAME[:TAG] or NAME@VERSION
        image: String,
        /// Repository: a directory or s3://BUCKET[/PREFIX] (AWS_* environment variables give
        /// the endpoint, region and credentials)
        dest: String,
        /// Publish under this NAME[:TAG]
        #[arg(long = "as", value_name = "NAME[:TAG]")]
        as_name: Option<String>,
        /// Key directory [default: DEST.keys beside a directory repository]
        #[arg(long, value_name = "DIR", env = "STARLING_KEYS")]
        keys: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Fetch an image from a repository (URL or directory) into the local store, verified
    Pull {
        /// The repository: http(s)://… or a directory
        url: String,
        /// NAME[:TAG] or NAME@VERSION (any version the tag ever held)
        image: String,
        /// Trusted root metadata, needed on first contact with the repository
        #[arg(long, value_name = "ROOT.json")]
        root: Option<PathBuf>,
        /// Give up on a request that takes longer than this, e.g. 30s, 2m
        #[arg(long, default_value = "30s", value_parser = format::parse_duration, value_name = "DURATION")]
        timeout: u64,
        #[command(flatten)]
        routes: repo_cmd::RouteArgs,
        #[arg(long)]
        json: bool,
    },
    /// Run the host daemon in the foreground (the same as `starlingd`)
    Daemon(starling_daemon::args::DaemonArgs),
    /// Mount an image read-only and lazily (through starlingd): from a repository, fetched
    /// on first access into the host cache, or from the local store
    Mount {
        #[command(flatten)]
        args: mount_cmd::MountArgs,
        /// starlingd's API socket
        #[arg(long, env = "STARLING_SOCKET", default_value = starling_daemon::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Print a shell's completion script (bash: `source <(starling completions bash)`, or
    /// install it where the shell looks, as scripts/install.sh does)
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// Write man pages for starling and each of its commands (starling.1,
    /// starling-image-import.1, …) into DIR
    Man {
        /// Where to write them (made if missing), e.g. /usr/local/share/man/man1
        dir: PathBuf,
    },
    /// Boot an image as a VM: its root fetched on demand through the host cache, its writes
    /// on a copy-on-write layer; with `-- CMD` the command runs and its status is ours
    Run(run_cmd::RunArgs),
    /// The VMs starlingd keeps (running ones; -a for all)
    Ps {
        /// Also the VMs that ended
        #[arg(short, long)]
        all: bool,
        #[arg(long)]
        json: bool,
        #[arg(long, env = "STARLING_SOCKET", default_value = starling_daemon::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Stop VMs: the guest is asked to power off, and stopped after 10 s if it has not
    Stop {
        /// The VMs' names
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(long, env = "STARLING_SOCKET", default_value = starling_daemon::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Stop VMs at once
    Kill {
        /// The VMs' names
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(long, env = "STARLING_SOCKET", default_value = starling_daemon::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Remove VMs that ended (and their writable layers); --force stops running ones first
    Rm {
        /// The VMs' names
        #[arg(required = true)]
        names: Vec<String>,
        /// Stop running ones first (else they are refused)
        #[arg(short, long)]
        force: bool,
        #[arg(long, env = "STARLING_SOCKET", default_value = starling_daemon::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Run a command in a running VM (through its guest agent), like `docker exec`
    Exec(run_cmd::ExecArgs),
    /// A VM's console output (-f: keep following it)
    Logs {
        /// The VM's name
        name: String,
        /// Keep following the console until the VM ends (Ctrl-C to stop)
        #[arg(short, long)]
        follow: bool,
        #[arg(long, env = "STARLING_SOCKET", default_value = starling_daemon::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Store the changes of a VM's writable layer, or of a writable mount, as a new version
    /// NAME:TAG (parent: the version it runs or mounts) in the local store
    Commit {
        /// A VM's name, or the mountpoint of a writable mount
        #[arg(value_name = "VM|MOUNTPOINT")]
        mountpoint: PathBuf,
        /// NAME:TAG
        image: String,
        #[arg(long)]
        json: bool,
        #[arg(long, env = "STARLING_SOCKET", default_value = starling_daemon::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Unmount a Starling mount
    Umount {
        /// Where the image is mounted
        mountpoint: PathBuf,
        #[arg(long, env = "STARLING_SOCKET", default_value = starling_daemon::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// The daemon's mounts, with bytes served, fetched and read from the cache
    Mounts {
        #[arg(long)]
        json: bool,
        #[arg(long, env = "STARLING_SOCKET", default_value = starling_daemon::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Run microVMs on KVM
    #[command(subcommand)]
    Vm(vm_cmd::VmCmd),
    /// Substrate pools: booted VMs docked in memory, activated without booting
    #[command(subcommand)]
    Pool(pool_cmd::PoolCmd),
    /// The host cache shared by every mount
    Cache {
        #[command(subcommand)]
        cmd: mount_cmd::CacheCmd,
        #[arg(long, env = "STARLING_SOCKET", default_value = starling_daemon::DEFAULT_SOCKET, global = true)]
        socket: PathBuf,
    },
}

/// `--store`, else `$STARLING_HOME`, else the per-user data directory.
fn store_path(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p);
    }
    if let Some(p) = std::env::var_os("STARLING_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p).join("starling"));
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| anyhow::anyhow!("no store given: set --store, STARLING_HOME or HOME"))?;
    Ok(PathBuf::from(home).join(".local/share/starling"))
}

fn main() -> ExitCode {
    die_quietly_on_closed_stdout();
    // What a VM's monitor runs to put its clones on its network: not a user's command, so
    // not in the command line's definitions (nor its help, man pages and completions).
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if argv.get(1).is_some_and(|a| a == NET_HELPER) {
        return finish(net_helper::run(&argv[2..]));
    }
    // `run` and `exec` pass on the command's own status: their own failures (a bad flag
    // included) exit 125, as docker's do, so that none reads as the command's.
    let runs_a_command = matches!(subcommand(&argv), Some("run" | "exec"));
    let quick = quick_parse(&argv).map(|command| Cli {
        store: None,
        command,
    });
    let cli = quick.map(Ok).unwrap_or_else(|| {
        cli_command().try_get_matches_from(&argv).and_then(|m| {
            let mut cli = Cli::from_arg_matches(&m)?;
            cli.store = store_given(&m).or(cli.store);
            Ok(cli)
        })
    });
    let cli = match cli {
        Ok(c) => c,
        Err(e) if runs_a_command && e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(exit::OWN_FAILURE);
        }
        Err(e) => e.exit(),
    };
    let result = store_path(cli.store).and_then(|store| match cli.command {
        Command::Image(c) => image_cmd::run(&store, c),
        Command::Store(c) => store_cmd::run(&store, c),
        Command::Repo(c) => repo_cmd::run_repo(&store, c),
        Command::Group { cmd, socket } => group_cmd::run(&socket, cmd),
        Command::Push {
            image,
            dest,
            as_name,
            keys,
            json,
        } => repo_cmd::push(&store, &image, &dest, as_name.as_deref(), keys, json),
        Command::Pull {
            url,
            image,
            root,
            timeout,
            routes,
            json,
        } => repo_cmd::pull(&store, &url, &image, root, timeout, &routes, json),
        Command::Daemon(a) => Ok(a.run("starling daemon")),
        Command::Mount { args, socket } => mount_cmd::mount(&socket, &store, args),
        Command::Umount { mountpoint, socket } => mount_cmd::umount(&socket, &mountpoint),
        Command::Commit {
            mountpoint,
            image,
            json,
            socket,
        } => {
            // A VM name has no '/'; a mountpoint is a directory.
            let as_vm = mountpoint
                .to_str()
                .filter(|n| !n.contains('/') && !mountpoint.is_dir());
            match as_vm {
                Some(name) => run_cmd::commit_vm(&socket, &store, name, &image, json),
                None => mount_cmd::commit(&socket, &store, &mountpoint, &image, json),
            }
        }
        Command::Completions { shell } => cli_docs::completions(shell),
        Command::Man { dir } => cli_docs::man(&dir),
        Command::Run(a) => run_cmd::run(&store, a),
        Command::Ps { all, json, socket } => run_cmd::ps(&socket, all, json),
        Command::Stop { names, socket } => run_cmd::stop(&socket, &names, false),
        Command::Kill { names, socket } => run_cmd::stop(&socket, &names, true),
        Command::Rm {
            names,
            force,
            socket,
        } => run_cmd::rm(&socket, &names, force),
        Command::Exec(a) => run_cmd::exec(a),
        Command::Logs {
            name,
            follow,
            socket,
        } => run_cmd::logs(&socket, &name, follow),
        Command::Mounts { json, socket } => mount_cmd::mounts(&socket, json),
        Command::Cache { cmd, socket } => mount_cmd::cache(&socket, cmd),
        Command::Vm(c) => vm_cmd::run(&store, c),
        Command::Pool(c) => pool_cmd::run(&store, c),
    });
    match result {
        Err(e) if runs_a_command => {
            eprintln!("starling: {}", one_line(&e));
            ExitCode::from(exit::OWN_FAILURE)
        }
        r => finish(r),
    }
}

/// `starling image ls | head`: when the reader of standard output goes away, end as Unix
/// tools do (killed by SIGPIPE), saying nothing. SIGPIPE itself stays ignored (Rust's
/// default) for everything else: hyper writes requests with writev, which has no
/// MSG_NOSIGNAL, so with SIGPIPE's default a connection a registry, repository or client
/// broke would kill the process (`starling daemon` included) instead of being an error.
fn die_quietly_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            sigpipe::reset();
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::PIPE,
            );
            std::process::exit(141);
        }
        default(info);
    }));
}

/// `starling vm run`, `vm restore` and `pool run` parsed with their own definitions alone:
/// building the whole command line (every command's flags) was a good part of what they
/// added to a VM's start. Only a parse that succeeds is used; help and errors come from the
/// whole command line, so that what a user reads is the same either way.
fn quick_parse(argv: &[String]) -> Option<Command> {
    use clap::Args;
    let (group, name) = (argv.get(1)?.as_str(), argv.get(2)?.as_str());
    let (group_cmd, leaf) = match (group, name) {
        ("vm", "run") => (
            "vm",
            vm_cmd::RunArgs::augment_args(clap::Command::new("run")),
        ),
        ("vm", "restore") => (
            "vm",
            vm_cmd::RestoreArgs::augment_args(clap::Command::new("restore")),
        ),
        ("pool", "run") => (
            "pool",
            pool_cmd::RunArgs::augment_args(clap::Command::new("run")),
        ),
        _ => return None,
    };
    let m = clap::Command::new("starling")
        .subcommand(clap::Command::new(group_cmd).subcommand(leaf))
        .try_get_matches_from(argv)
        .ok()?;
    let (_, m) = m.subcommand()?;
    let (_, m) = m.subcommand()?;
    Some(match (group, name) {
        ("vm", "run") => Command::Vm(vm_cmd::VmCmd::Run(
            vm_cmd::RunArgs::from_arg_matches(m).ok()?,
        )),
        ("vm", _) => Command::Vm(vm_cmd::VmCmd::Restore(
            vm_cmd::RestoreArgs::from_arg_matches(m).ok()?,
        )),
        _ => Command::Pool(pool_cmd::PoolCmd::Run(
            pool_cmd::RunArgs::from_arg_matches(m).ok()?,
        )),
    })
}

/// The subcommand word of `argv`: the first argument that is not a global option.
fn subcommand(argv: &[String]) -> Option<&str> {
    let mut args = argv.iter().skip(1);
    while let Some(a) = args.next() {
        if a == "--store" {
            args.next();
        } else if !a.starts_with('-') {
            return Some(a);
        }
    }
    None
}

/// The subcommand `STARLING_NET_HELPER` names (see `net_helper`).
const NET_HELPER: &str = "net-helper";

fn finish(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("starling: {}", one_line(&e));
            exit::code(&e)
        }
    }
}

/// The command line as clap parses it (and as the completions and man pages describe it):
/// the derived definitions, with the help of the flags many commands share said once here.
fn cli_command() -> clap::Command {
    fn shared(cmd: clap::Command) -> clap::Command {
        cmd.mut_args(|a| {
            if a.get_help().is_some() {
                return a;
            }
            match a.get_long() {
                Some("json") => a.help("Print JSON instead of text"),
                Some("socket") => a.help("starlingd's API socket"),
                _ => a,
            }
        })
        .mut_subcommands(shared)
    }
    with_store(shared(Cli::command()), &[])
}

/// The commands that open a store (with all their subcommands): only these take `--store`
/// after their name, and only their help, man pages and completions offer it.
const STORE_USERS: [&[&str]; 12] = [
    &["image"],
    &["store"],
    &["push"],
    &["pull"],
    &["mount"],
    &["commit"],
    &["run"],
    &["repo", "ls"],
    &["repo", "trust"],
    &["vm", "kernel"],
    &["vm", "initramfs"],
    &["pool", "create"],
];

fn with_store(cmd: clap::Command, path: &[String]) -> clap::Command {
    let uses = STORE_USERS
        .iter()
        .any(|p| path.len() >= p.len() && path.iter().zip(p.iter()).all(|(a, b)| a == b));
    let cmd = if uses {
        cmd.arg(
            clap::Arg::new("store")
                .long("store")
                .value_name("DIR")
                .value_parser(clap::value_parser!(PathBuf))
                .help("Store directory [default: $STARLING_HOME, else ~/.local/share/starling]"),
        )
    } else {
        cmd
    };
    cmd.mut_subcommands(|sub| {
        let mut p = path.to_vec();
        p.push(sub.get_name().to_string());
        with_store(sub, &p)
    })
}

/// `--store` as given after a subcommand, the innermost one winning.
fn store_given(m: &clap::ArgMatches) -> Option<PathBuf> {
    let inner = m.subcommand().and_then(|(_, sm)| store_given(sm));
    inner.or_else(|| m.try_get_one::<PathBuf>("store").ok().flatten().cloned())
}

/// The error and its causes on one line, each said once: library errors often include their
/// cause's text in their own message already.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    /// The quick parser may only take what the whole command line takes (and parses it the
    /// same way: the definitions are the same derive); a new global flag, alias or env default
    /// that made them differ fails here.
    #[test]
    fn the_quick_parse_takes_only_what_the_whole_command_line_takes() {
        let taken = [
            "starling vm run --kernel k --mem 64M --no-rng --console off",
            "starling vm run --kernel k --cmdline a=b --vcpus 2 --api-socket /s",
            "starling vm restore /snap --api-socket /s --console off",
            "starling vm restore /snap --net nat",
            "starling pool run web --env A=1 --env B=2 --args x --json",
        ];
        let refused = [
            "starling vm run --bogus",
            "starling vm restore",
            "starling vm restore /a /b",
            "starling vm run --help",
            "starling vm restore --store /x /snap",
            "starling pool run",
            "starling pool run web --env novalue",
            "starling vm run --mem lots",
        ];
        for line in taken {
            let a = argv(line);
            assert!(quick_parse(&a).is_some(), "quick refused {line}");
            assert!(cli_command().try_get_matches_from(&a).is_ok(), "{line}");
        }
        for line in refused {
            let a = argv(line);
            assert!(quick_parse(&a).is_none(), "quick took {line}");
        }
        // Anything else goes to the whole command line.
        for line in [
            "starling --store /x vm run --kernel k",
            "starling image ls",
            "starling vm",
        ] {
            assert!(quick_parse(&argv(line)).is_none(), "{line}");
        }
    }
}
