//! Whether and how this monitor is jailed (`STARLING_JAIL` and its companions), and what
//! its VM needs to see: worked out from the boot config or restore spec before anything is
//! built, then entered in one step ([`enter`]): the cgroup, the mount namespace, the
//! privilege drop. The seccomp filter follows as before.
//!
//!   STARLING_JAIL=on                 jail this monitor (it must be started as root)
//!   STARLING_JAIL_USER=UID[:GID]     run as this user (default: a user id of its own)
//!   STARLING_JAIL_MEMORY_MAX=BYTES   cgroup v2 memory.max for the VM and all its clones
//!   STARLING_JAIL_PIDS_MAX=N         cgroup v2 pids.max (processes and threads), likewise
//!   STARLING_JAIL_SHOW=DIR[:DIR…]    more directories the monitor may write (snapshots' homes)

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::cgroup::Limits;
use super::view::{absolute, Access, Shown};
use super::Error;
use crate::process::Start;

pub const JAIL_VAR: &str = "STARLING_JAIL";
pub const USER_VAR: &str = "STARLING_JAIL_USER";
pub const MEMORY_VAR: &str = "STARLING_JAIL_MEMORY_MAX";
pub const PIDS_VAR: &str = "STARLING_JAIL_PIDS_MAX";
pub const SHOW_VAR: &str = "STARLING_JAIL_SHOW";

/// What a jailed monitor sets `STARLING_JAIL` to for the monitors it starts (its clones):
/// they are inside its jail already.
const INHERITED: &str = "inherited";

static JAILED: AtomicBool = AtomicBool::new(false);
static ASKED: AtomicBool = AtomicBool::new(false);

/// Asks for the jail as `STARLING_JAIL=on` does (`vm run --jail`).
pub fn ask() {
    ASKED.store(true, Ordering::Relaxed);
}

/// Whether this monitor runs in a jail (its own or its parent's).
pub fn jailed() -> bool {
    JAILED.load(Ordering::Relaxed)
}

/// The jail as asked for in the environment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settings {
    pub user: Option<(u32, u32)>,
    pub limits: Limits,
    pub show: Vec<PathBuf>,
}

/// Reads the jail's settings: None when no jail is asked for, or when this monitor was
/// started inside one (a clone).
pub fn settings() -> Result<Option<Settings>, Error> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let asked = ASKED.load(Ordering::Relaxed).then(|| "on".to_string());
    match asked.or_else(|| var(JAIL_VAR)).as_deref() {
        None | Some("off") => return Ok(None),
        Some(INHERITED) => {
            JAILED.store(true, Ordering::Relaxed);
            return Ok(None);
        }
        Some("on") => {}
        Some(other) => {
            return Err(Error::Refused {
                reason: format!("{JAIL_VAR}={other:?}: say on or off"),
            })
        }
    }
    let number = |k: &str| -> Result<Option<u64>, Error> {
        var(k)
            .map(|v| {
                parse_size(&v).ok_or_else(|| Error::Refused {
                    reason: format!("{k}={v:?} is not a number (bytes, or with K, M or G)"),
                })
            })
            .transpose()
    };
    let user = match var(USER_VAR) {
        None => None,
        Some(v) => Some(parse_user(&v).ok_or_else(|| Error::Refused {
            reason: format!("{USER_VAR}={v:?}: say UID or UID:GID (numbers, not 0)"),
        })?),
    };
    Ok(Some(Settings {
        user,
        limits: Limits {
            memory_max: number(MEMORY_VAR)?,
            pids_max: number(PIDS_VAR)?,
        },
        show: var(SHOW_VAR)
            .map(|v| {
                std::env::split_paths(&v)
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect()
            })
            .unwrap_or_default(),
    }))
}

fn parse_user(v: &str) -> Option<(u32, u32)> {
    let (u, g) = v.split_once(':').unwrap_or((v, v));
    let (u, g) = (u.parse().ok()?, g.parse().ok()?);
    (u != 0 && g != 0).then_some((u, g))
}

fn parse_size(v: &str) -> Option<u64> {
    let (digits, shift) = match v.as_bytes().last()? {
        b'K' | b'k' => (&v[..v.len() - 1], 10),
        b'M' | b'm' => (&v[..v.len() - 1], 20),
        b'G' | b'g' => (&v[..v.len() - 1], 30),
        _ => (v, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// Tells a monitor this one starts that it runs in this jail already.
pub fn pass_on(cmd: &mut std::process::Command) {
    if jailed() {
        cmd.env(JAIL_VAR, INHERITED);
    }
}

/// Jails this process as `settings` say, for the VM `start` describes (whose run directory
/// is fixed here if it was left to default). Must run before the process starts a thread.
pub fn enter(settings: &Settings, start: &mut Start) -> Result<(), Error> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(Error::Refused {
            reason: format!(
                "the jail ({JAIL_VAR}=on, --jail) needs the monitor started as root (it \
                 runs as uid {euid}); it then gives root up"
            ),
        });
    }
    let (uid, gid) = match (settings.user, &*start) {
        (Some(user), _) => user,
        // A restored VM is its snapshot's: it runs as the user who owns it (the jail user of
        // the VM that wrote it), as the VM's clones do. The guest's memory is the same in all
        // of them, so they are one party; and the snapshot's files are that user's alone.
        (None, Start::Restore(s)) => snapshot_owner(&s.dir)?,
        (None, Start::Boot(_)) => {
            let u = super::user::default_uid(std::process::id());
            (u, u)
        }
    };
    let mut shown = needs(start, (uid, gid))?;
    for p in &settings.show {
        shown.push(Shown {
            path: absolute(p)?,
            access: Access::Write,
        });
    }
    let program = crate::fork::clone_program();
    let program = std::fs::canonicalize(&program)
        .map_err(|e| Error::setup(format!("finding {}", program.display()), e))?;
    for f in super::view::program_files(&program)? {
        shown.push(Shown {
            path: f,
            access: Access::Exec,
        });
    }
    let thp = Path::new("/sys/kernel/mm/transparent_hugepage");
    if thp.is_dir() {
        shown.push(Shown {
            path: thp.into(),
            access: Access::Read,
        });
    }
    if std::env::var_os("STARLING_EXIT_FILE").is_some() {
        return Err(Error::Refused {
            reason: format!(
                "STARLING_EXIT_FILE is not yet available to a jailed monitor (run it with \
                 {JAIL_VAR}=off)"
            ),
        });
    }
    if settings.limits.any() {
        super::cgroup::join(settings.limits)?;
    }
    super::view::enter(shown, (uid, gid))?;
    super::user::drop_to(uid, gid)?;
    JAILED.store(true, Ordering::Relaxed);
    Ok(())
}

/// Who owns a snapshot directory; root's is refused (a jailed monitor gives root up, and the
/// files of a snapshot an unjailed root monitor wrote are root's alone).
fn snapshot_owner(dir: &Path) -> Result<(u32, u32), Error> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(dir)
        .map_err(|e| Error::setup(format!("reading the snapshot {}", dir.display()), e))?;
    if md.uid() < super::user::FIRST_UID {
        return Err(Error::Refused {
            reason: format!(
                "the snapshot {} belongs to uid {}, not to a jailed VM's user (written by a \
                 monitor that was not jailed): restore it with {JAIL_VAR}=off, or name a user \
                 that runs nothing else with {USER_VAR}",
                dir.display(),
                md.uid()
            ),
        });
    }
    Ok((md.uid(), md.gid()))
}

/// What the VM needs to see, and how.
fn needs(start: &mut Start, owner: (u32, u32)) -> Result<Vec<Shown>, Error> {
    let mut shown = Vec::new();
    let mut show = |path: &Path, access: Access| -> Result<(), Error> {
        shown.push(Shown {
            path: absolute(path)?,
            access,
        });
        Ok(())
    };
    let unsupported = |what: &str| Error::Refused {
        reason: format!(
            "{what} is not yet available to a jailed monitor (run it with {JAIL_VAR}=off)"
        ),
    };
    let (run_dir, api, vsock, console) = match start {
        Start::Boot(c) => {
            show(&c.kernel, Access::Read)?;
            if let Some(i) = &c.initrd {
                show(i, Access::Read)?;
            }
            for d in &c.disks {
                // Opened now, as root (the file stays its owner's), and shown read-only
                // for the clones, which read it as their base beneath their own layers.
                disk(&d.path, d.read_only)?;
                show(&d.path, Access::Read)?;
            }
            if !c.fs.is_empty() {
                return Err(unsupported("an image root (virtio-fs)"));
            }
            for n in &c.net {
                tap(&n.tap)?;
            }
            (
                &mut c.run_dir,
                c.api_socket.clone(),
                c.vsock.as_ref().map(|v| v.path.clone()),
                c.console.clone(),
            )
        }
        Start::Restore(s) => {
            if s.lazy.is_some() {
                return Err(unsupported("a lazy restore"));
            }
            show(&s.dir, Access::Read)?;
            let state = crate::snapshot::read(&s.dir).map_err(|e| Error::Refused {
                reason: e.to_string(),
            })?;
            for (info, dev) in state.info.devices.iter().zip(&state.devices) {
                use crate::virtio::state::DeviceState;
                match &dev.device {
                    DeviceState::Block(b) => {
                        for l in &b.layers {
                            // A snapshot's own layers are named relative to it.
                            show(&s.dir.join(&l.path), Access::Read)?;
                        }
                    }
                    DeviceState::Fs(_) => return Err(unsupported("an image root (virtio-fs)")),
                    // The TAP the restore will attach to (as `net.rs` chooses it), opened now.
                    DeviceState::Net(n) => {
                        let named = s
                            .networks
                            .get(&info.id)
                            .map(|a| Some(a.tap.clone()))
                            .or_else(|| s.taps.get(&info.id).map(|t| Some(t.clone())));
                        let kept = (s.clone_id.is_none() && !n.owned).then(|| n.tap.clone());
                        if let Some(t) = named.unwrap_or(kept.flatten()).filter(|t| !t.is_empty()) {
                            tap(&t)?;
                        }
                    }
                    _ => {}
                }
            }
            if s.ready_file.is_some() {
                return Err(unsupported("a ready file (a pool's substrate)"));
            }
            (
                &mut s.run_dir,
                s.api_socket.clone(),
                s.vsock_path.clone(),
                s.console.clone().unwrap_or(crate::Console::Stdio),
            )
        }
    };
    let dir = run_dir
        .clone()
        .unwrap_or_else(crate::builder::default_run_dir);
    let dir = absolute(&dir)?;
    crate::private::create_dir_all(&dir)
        .map_err(|e| Error::setup(format!("making the run directory {}", dir.display()), e))?;
    // Through a descriptor of the directory itself (not a link put there since).
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&dir)
        .and_then(|d| std::os::unix::fs::fchown(&d, Some(owner.0), Some(owner.1)))
        .map_err(|e| Error::setup(format!("giving {} to the jail's user", dir.display()), e))?;
    *run_dir = Some(dir.clone());
    show(&dir, Access::Write)?;
    // Bound now, as root, where the caller said. The guest's own vsock connections to the
    // host go to sockets beside the vsock socket (`PATH_PORT`): the monitor reaches them only
    // if that directory is its run directory or one `STARLING_JAIL_SHOW` names.
    for sock in [&api, &vsock].into_iter().flatten() {
        super::sockets::bind_now(sock)
            .map_err(|e| Error::setup(format!("binding {}", sock.display()), e))?;
    }
    match console {
        // Opened now, as root, and handed to the console: the file stays its caller's.
        crate::Console::File(f) => crate::devices::serial::preopen(&f)
            .map_err(|e| Error::setup(format!("opening the console {}", f.display()), e))?,
        crate::Console::Socket { .. } => return Err(unsupported("a console socket")),
        crate::Console::Stdio | crate::Console::Off => {}
    }
    Ok(shown)
}

/// Opens a disk's base file as the VM will, for it to be handed over.
fn disk(path: &Path, read_only: bool) -> Result<(), Error> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(path)
        .map_err(|e| Error::setup(format!("opening the disk {}", path.display()), e))?;
    super::handed::put(super::handed::disk_key(path, read_only), file);
    Ok(())
}

/// Opens TAP `name` (attaching to it takes CAP_NET_ADMIN), for it to be handed over.
fn tap(name: &str) -> Result<(), Error> {
    let file = crate::virtio::net::tap::open(name).map_err(|reason| Error::Refused { reason })?;
    super::handed::put(format!("tap:{name}"), file);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_sizes_are_parsed_and_nonsense_refused() {
        assert_eq!(parse_user("1234"), Some((1234, 1234)));
        assert_eq!(parse_user("1234:99"), Some((1234, 99)));
        assert_eq!(parse_user("0"), None);
        assert_eq!(parse_user("1:0"), None);
        assert_eq!(parse_user("root"), None);
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("99999999999G"), None);
    }
}
