//! `starling run`, `ps`, `stop`, `kill`, `rm`, `logs`, `exec` and `commit NAME`: VMs booted
//! from images, kept by starlingd (they outlive this command), used as `docker` users expect.

use std::io::{IsTerminal, Read, Seek, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use starling_daemon::api::*;
use starling_daemon::client::Client;

use crate::format;

#[derive(clap::Args)]
pub struct RunArgs {
    /// `[URL] NAME[:TAG|@VERSION]`: an image of the local store, or of a repository (URL or
    /// directory) read through the host cache, fetched on demand
    #[arg(num_args = 1..=2, required = true, value_name = "[URL] IMAGE")]
    pub image: Vec<String>,
    /// The command to run in the image, as its init would (default: boot /sbin/init)
    #[arg(last = true, value_name = "CMD")]
    pub cmd: Vec<String>,
    /// The VM's name (default: the image's, with a random suffix)
    #[arg(long)]
    pub name: Option<String>,
    /// Guest memory (e.g. 512M, 2G)
    #[arg(long, default_value = "512M", value_parser = format::parse_size)]
    pub mem: u64,
    /// Virtual CPUs
    #[arg(long, default_value_t = 1)]
    pub vcpus: u8,
    /// Remove the VM (and its writable layer) when it ends
    #[arg(long)]
    pub rm: bool,
    /// Start it and return (see `starling ps`, `logs`, `exec`, `stop`)
    #[arg(short, long)]
    pub detach: bool,
    /// Send this terminal's input to the VM's console (the default when it is a terminal)
    #[arg(short, long)]
    pub interactive: bool,
    /// A kernel image in the store (`debian-kernel:RELEASE`), a directory with
    /// boot/vmlinuz-RELEASE and lib/modules/RELEASE/, or a kernel file (bzImage or ELF) with
    /// virtio-fs, overlayfs and vsock built in (default: the image's own kernel, else the
    /// newest kernel image in the store)
    #[arg(long, value_name = "REF|DIR|FILE")]
    pub kernel: Option<String>,
    /// Appended to the kernel's command line
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub kernel_args: Option<String>,
    /// `KEY=VALUE` for the command (repeatable)
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Size of the writable layer (a sparse scratch disk)
    #[arg(long, default_value = "8G", value_parser = format::parse_size)]
    pub disk_size: u64,
    /// Trusted root metadata, needed on first contact with the repository
    #[arg(long, value_name = "ROOT.json")]
    pub root: Option<PathBuf>,
    /// The VM's network: `nat` (an address of its own on Starling's bridge, outbound NAT,
    /// `-p` ports) or `none`
    #[arg(long, default_value = "nat", value_parser = ["nat", "none"])]
    pub net: String,
    /// Publish a guest port on the host, as HOSTPORT:GUESTPORT[/tcp|/udp] (repeatable)
    #[arg(short = 'p', long = "publish", value_name = "HOSTPORT:GUESTPORT")]
    pub publish: Vec<starling_net::Publish>,
    #[arg(long, env = "STARLING_SOCKET", default_value = starling_daemon::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

fn abs(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("path {}", p.display()))
}

fn client(socket: &Path) -> Result<Client> {
    Ok(Client::new(socket)?)
}

/// `[URL] IMAGE` (and the repository's trusted root) as the daemon takes it.
pub(crate) fn source(store: &Path, image: &[String], root: Option<&Path>) -> Result<Source> {
    Ok(match image {
        [url, image] => Source::Repo {
            url: url.clone(),
            image: image.clone(),
            root: root.map(abs).transpose()?,
        },
        [image] => {
            if root.is_some() {
                bail!("--root is for repository images (give URL IMAGE)");
            }
            Source::Store {
                store: abs(store)?,
                image: image.clone(),
            }
        }
        _ => bail!("give [URL] IMAGE"),
    })
}

/// `--kernel REF|DIR|FILE`: a path made absolute for the daemon, a reference as it is.
pub(crate) fn kernel_arg(kernel: Option<&String>) -> Result<Option<String>> {
    kernel
        .map(|k| {
            if Path::new(k).exists() {
                abs(Path::new(k)).map(|p| p.display().to_string())
            } else {
                Ok(k.clone())
            }
        })
        .transpose()
}

pub(crate) fn check_env(env: &[String]) -> Result<()> {
    for e in env {
        if !e.contains('=') {
            bail!("--env {e:?}: give KEY=VALUE");
        }
    }
    Ok(())
}

pub fn run(store: &Path, a: RunArgs) -> Result<ExitCode> {
    let source = source(store, &a.image, a.root.as_deref())?;
    check_env(&a.env)?;
    let req = RunRequest {
        name: a.name.clone(),
        source,
        store: abs(store)?,
        mem_mib: a.mem >> 20,
        vcpus: a.vcpus,
        kernel: kernel_arg(a.kernel.as_ref())?,
        kernel_args: a.kernel_args.clone(),
        cmd: a.cmd.clone(),
        env: a.env.clone(),
        // Attached, this command removes the VM once it has its status (the daemon would
        // remove it before we could ask); detached, the daemon does when it ends.
        rm: a.rm && a.detach,
        disk_bytes: a.disk_size,
        net: if a.net == "none" {
            RunNet::None
        } else {
            RunNet::Nat
        },
        publish: a.publish.clone(),
    };
    let c = client(&a.socket)?;
    let tty = std::io::stdout().is_terminal();
    if tty && !a.detach {
        eprintln!("starling: starting {} …", req.image_arg());
    }
    let vm: VmInfo = c.post("/v1/vms", &req)?;
    if let Some(note) = &vm.note {
        eprintln!("starling: {note}");
    }
    if a.detach {
        println!("{}", vm.name);
        return Ok(ExitCode::SUCCESS);
    }
    let input = a.interactive || std::io::stdin().is_terminal();
    let shown = attach(&c, &vm, input)?;
    // The console closed: the VM ended. Its status is ours.
    let end = wait_end(&c, &vm.name)?;
    // A VM done before we attached (a quick command) closes its console unsent: what it
    // printed is in its log.
    catch_up(&end, shown)?;
    if a.rm {
        let _: Result<VmInfo, _> = c.delete(
            &format!("/v1/vms/{}", vm.name),
            &StopRequest { force: false },
        );
    }
    let status = end.exit_status.unwrap_or(1);
    if status < 0 {
        eprintln!(
            "starling: VM {} ended without a status: {}",
            vm.name,
            end.exit_reason.unwrap_or_default()
        );
        return Ok(ExitCode::from(125));
    }
    Ok(ExitCode::from(status.clamp(0, 255) as u8))
}

/// Waits until the daemon has recorded the VM's end.
fn wait_end(c: &Client, name: &str) -> Result<VmInfo> {
    for _ in 0..600 {
        let vm: VmInfo = c.get(&format!("/v1/vms/{name}"))?;
        if matches!(vm.state, VmState::Exited | VmState::Dead) {
            return Ok(vm);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("VM {name}: its console closed but it still runs (see `starling ps`)")
}

/// Puts the terminal in raw mode for as long as it lives.
struct RawTerminal(Option<rustix::termios::Termios>);

impl RawTerminal {
    fn enter() -> RawTerminal {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return RawTerminal(None);
        }
        let Ok(old) = rustix::termios::tcgetattr(&stdin) else {
            return RawTerminal(None);
        };
        let mut raw = old.clone();
        raw.make_raw();
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw);
        RawTerminal(Some(old))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            let _ = rustix::termios::tcsetattr(
                std::io::stdin(),
                rustix::termios::OptionalActions::Now,
                old,
            );
        }
    }
}

/// Ctrl-] leaves the console, as in telnet and virsh.
const DETACH: u8 = 0x1d;

/// Shows the VM's console from its start (the monitor sends its log, then live output) and,
/// with `input`, sends this terminal's input to it; returns the bytes shown when the VM ends
/// or the user detaches.
fn attach(c: &Client, vm: &VmInfo, input: bool) -> Result<u64> {
    // Its monitor may have ended already, its socket with it (then it is in the log), or
    // be about to (a zombie the daemon has not reaped yet looks alive): asked for 5 s.
    let mut tries = 0;
    let mut sock = loop {
        match UnixStream::connect(&vm.console_socket) {
            Ok(s) => break s,
            Err(e) => {
                let now: VmInfo = c.get(&format!("/v1/vms/{}", vm.name))?;
                if matches!(now.state, VmState::Exited | VmState::Dead) {
                    return Ok(0);
                }
                tries += 1;
                if tries >= 50 {
                    return Err(e)
                        .with_context(|| format!("attaching to {}", vm.console_socket.display()));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    let mut out = std::io::stdout();
    let _raw = if input && std::io::stdin().is_terminal() {
        eprint!("starling: attached to {} (Ctrl-] to detach)\r\n", vm.name);
        Some(RawTerminal::enter())
    } else {
        None
    };
    if input {
        let mut to_vm = sock.try_clone()?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            let mut stdin = std::io::stdin();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 {
                    return;
                }
                if let Some(i) = buf[..n].iter().position(|&b| b == DETACH) {
                    let _ = to_vm.write_all(&buf[..i]);
                    let _ = to_vm.shutdown(std::net::Shutdown::Both);
                    return;
                }
                if to_vm.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        });
    }
    let mut buf = [0u8; 4096];
    let mut shown = 0u64;
    loop {
        match sock.read(&mut buf) {
            Ok(0) | Err(_) => return Ok(shown),
            Ok(n) => {
                out.write_all(&buf[..n])?;
                out.flush()?;
                shown = shown.saturating_add(n as u64);
                // Output was dropped for this reader (it fell behind) and a note put in its
                // place: the stream no longer counts the log's bytes, so no catching up.
                if buf[..n].windows(SKIPPED.len()).any(|w| w == SKIPPED) {
                    shown = u64::MAX;
                }
            }
        }
    }
}

/// Part of the note the monitor puts in a console stream where it dropped output for a slow
/// reader (`vmm/src/devices/serial.rs`).
const SKIPPED: &[u8] = b"bytes of console output not sent here";

/// Shows what the ended VM's console log holds past the `shown` bytes its console stream
/// gave (the stream is the log, replayed then followed).
fn catch_up(vm: &VmInfo, shown: u64) -> Result<()> {
    let Ok(mut f) = std::fs::File::open(&vm.console_log) else {
        return Ok(());
    };
    if f.metadata().map(|m| m.len()).unwrap_or(0) <= shown {
        return Ok(());
    }
    f.seek(std::io::SeekFrom::Start(shown))?;
    let mut out = std::io::stdout();
    std::io::copy(&mut f, &mut out)?;
    out.flush()?;
    Ok(())
}

pub fn ps(socket: &Path, all: bool, json: bool) -> Result<ExitCode> {
    let vms: Vec<VmInfo> = client(socket)?.get("/v1/vms")?;
    let vms: Vec<VmInfo> = vms
        .into_iter()
        .filter(|v| all || !matches!(v.state, VmState::Exited | VmState::Dead))
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&vms)?);
        return Ok(ExitCode::SUCCESS);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    println!(
        "{:<20} {:<36} {:<14} {:>10} {:>9} {:>8}  {:<15} {:<20} COMMAND",
        "NAME", "IMAGE", "STATE", "UP", "MEMORY", "PID", "ADDRESS", "PORTS"
    );
    for v in &vms {
        let state = match (v.state, v.exit_status) {
            (VmState::Exited, Some(s)) => format!("exited ({s})"),
            (s, _) => s.word().to_string(),
        };
        let up = match v.ended_unix {
            Some(end) => format!("{} ago", format::duration(now.saturating_sub(end))),
            None => format::duration(now.saturating_sub(v.created_unix)),
        };
        let mem = match v.rss_bytes {
            Some(r) => format!(
                "{}/{}",
                format::bytes_short(r),
                format::bytes_short(v.mem_mib << 20)
            ),
            None => format::bytes_short(v.mem_mib << 20),
        };
        let cmd = if v.cmd.is_empty() {
            "/sbin/init".to_string()
        } else {
            command_column(&v.cmd)
        };
        // As docker shows them: HOST->GUEST/PROTO.
        let ports: Vec<String> = v
            .ports
            .iter()
            .map(|p| {
                let proto = if p.proto == starling_net::Proto::Udp {
                    "udp"
                } else {
                    "tcp"
                };
                format!("{}->{}/{proto}", p.host, p.guest)
            })
            .collect();
        println!(
            "{:<20} {:<36} {:<14} {:>10} {:>9} {:>8}  {:<15} {:<20} {}",
            v.name,
            v.image,
            state,
            up,
            mem,
            v.pid.map_or("-".into(), |p| p.to_string()),
            v.address.map_or("-".into(), |a| a.to_string()),
            if ports.is_empty() {
                "-".to_string()
            } else {
                ports.join(",")
            },
            cmd
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A command on one line of at most `COMMAND_WIDTH` characters (control characters escaped,
/// the rest cut with `…`, as `docker ps` does): `ps --json` has it whole.
fn command_column(argv: &[String]) -> String {
    const COMMAND_WIDTH: usize = 60;
    let line: String = argv
        .join(" ")
        .chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    match line.char_indices().nth(COMMAND_WIDTH - 1) {
        Some((i, _)) if line.chars().count() > COMMAND_WIDTH => format!("{}…", &line[..i]),
        _ => line,
    }
}

pub fn stop(socket: &Path, names: &[String], force: bool) -> Result<ExitCode> {
    let c = client(socket)?;
    Ok(each_vm(names, |n| {
        c.post(&format!("/v1/vms/{n}/stop"), &StopRequest { force })
    }))
}

pub fn rm(socket: &Path, names: &[String], force: bool) -> Result<ExitCode> {
    let c = client(socket)?;
    Ok(each_vm(names, |n| {
        c.delete(&format!("/v1/vms/{n}"), &StopRequest { force })
    }))
}

/// Asks the daemon about each VM in turn, as `docker stop A B` does: prints each name done,
/// each error on one line, and goes on; the first failure's status (`exit`) if any failed.
fn each_vm<E: Into<anyhow::Error>>(
    names: &[String],
    mut ask: impl FnMut(&str) -> std::result::Result<VmInfo, E>,
) -> ExitCode {
    let mut failed = None;
    for n in names {
        match ask(n) {
            Ok(v) => println!("{}", v.name),
            Err(e) => {
                let e = e.into();
                eprintln!("starling: {e}");
                failed.get_or_insert(crate::exit::class(&e));
            }
        }
    }
    failed.map_or(ExitCode::SUCCESS, ExitCode::from)
}

pub fn logs(socket: &Path, name: &str, follow: bool) -> Result<ExitCode> {
    let c = client(socket)?;
    let vm: VmInfo = c.get(&format!("/v1/vms/{name}"))?;
    let mut f = std::fs::File::open(&vm.console_log)
        .with_context(|| format!("console log {}", vm.console_log.display()))?;
    let mut out = std::io::stdout();
    std::io::copy(&mut f, &mut out)?;
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        let n = std::io::copy(&mut f, &mut out)?;
        out.flush()?;
        if n == 0 {
            let vm: VmInfo = c.get(&format!("/v1/vms/{name}"))?;
            if matches!(vm.state, VmState::Exited | VmState::Dead) {
                std::io::copy(&mut f, &mut out)?;
                return Ok(ExitCode::SUCCESS);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

pub fn commit_vm(
    socket: &Path,
    store: &Path,
    name: &str,
    image: &str,
    json: bool,
) -> Result<ExitCode> {
    let c = client(socket)?;
    let r: CommitInfo = c.post(
        &format!("/v1/vms/{name}/commit"),
        &VmCommitRequest {
            store: abs(store)?,
            image: image.to_string(),
        },
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("{} {}", r.image, r.version);
        eprintln!(
            "{} paths put, {} removed (parent {})",
            r.put,
            r.removed,
            &r.parent[..12]
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct ExecArgs {
    /// The VM (see `starling ps`), or the vsock socket of a VM the daemon does not manage (a
    /// clone from `vm fork`, a `vm restore`: any path with a `/`)
    #[arg(value_name = "VM|SOCKET")]
    pub name: String,
    /// The command and its arguments
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<String>,
    /// Keep stdin open and send it to the command
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the command a terminal (its output then all arrives on stdout)
    #[arg(short, long)]
    pub tty: bool,
    /// `KEY=VALUE` for the command (repeatable)
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    #[arg(long, env = "STARLING_SOCKET", default_value = starling_daemon::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

/// `starling exec`: the command runs in the VM's root through its agent (vsock port
/// 0x53540001, docs/api/agent.md); its exit status is ours.
pub fn exec(a: ExecArgs) -> Result<ExitCode> {
    use starling_guest::exec::{self as agent, Event, Request, EXEC_PORT};
    // VM names never hold a `/` (vms.rs), so a path is a vsock socket.
    let vsock = if a.name.contains('/') {
        PathBuf::from(&a.name)
    } else {
        let vm: VmInfo = client(&a.socket)?.get(&format!("/v1/vms/{}", a.name))?;
        if !matches!(vm.state, VmState::Running) {
            bail!(
                "VM {} is {}: exec needs a running VM (see `starling ps -a`)",
                a.name,
                vm.state.word()
            );
        }
        vm.vsock_socket
    };
    let mut req = Request::new(&a.cmd);
    req.tty = a.tty;
    for e in &a.env {
        match e.split_once('=') {
            Some((k, v)) if !k.is_empty() => req = req.env(k, v),
            _ => bail!("--env {e:?}: give KEY=VALUE"),
        }
    }
    let stream = agent::connect(&vsock, EXEC_PORT).with_context(|| {
        format!(
            "VM {}: its agent does not answer (has the guest finished booting?)",
            a.name
        )
    })?;
    let mut session = agent::Session::start(stream, &req)?;
    let input = session.input();
    let _raw = (a.tty && std::io::stdin().is_terminal()).then(RawTerminal::enter);
    if a.tty {
        if let Ok(ws) = rustix::termios::tcgetwinsize(std::io::stdout()) {
            let _ = input.resize(ws.ws_row, ws.ws_col);
        }
    }
    if a.interactive {
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 16 << 10];
            let mut stdin = std::io::stdin();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if input.data(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = input.eof();
        });
    } else {
        input.eof()?;
    }
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let mut refusal = None;
    loop {
        match session.next_event() {
            Ok(Event::Stdout(b)) => {
                out.write_all(&b)?;
                out.flush()?;
            }
            Ok(Event::Stderr(b)) => {
                err.write_all(&b)?;
                err.flush()?;
            }
            Ok(Event::Error(m)) => refusal = Some(m),
            Ok(Event::Exit(status)) => {
                drop(_raw);
                if let Some(m) = refusal {
                    eprintln!("starling: {}: {m}", a.name);
                }
                return Ok(ExitCode::from(status.min(255) as u8));
            }
            Err(e) => {
                drop(_raw);
                match refusal {
                    Some(m) => bail!("VM {}: {m}", a.name),
                    None => bail!("VM {}: {e}", a.name),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::command_column;

    #[test]
    fn a_command_is_one_short_line() {
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(command_column(&argv(&["/bin/true"])), "/bin/true");
        assert_eq!(
            command_column(&argv(&["python3", "-c", "import os\nprint(1)"])),
            "python3 -c import os\\nprint(1)"
        );
        let long = command_column(&argv(&["sh", "-c", &"x".repeat(200)]));
        assert_eq!(long.chars().count(), 60);
        assert!(long.ends_with('…') && !long.contains('\n'), "{long}");
    }
}
