//! The monitor's jail: what a guest that escapes the device model finds around it. Always,
//! a seccomp filter per kind of process (`filters.rs`: the monitor, the memory server) with
//! `no_new_privs`, installed on every thread while the VM is built and before the guest runs;
//! a forbidden call ends the process with one line naming it (`sigsys.rs`). With
//! `STARLING_JAIL=on` (`plan.rs`), a monitor started as root also gets, before it builds
//! anything: a cgroup v2 with memory and process limits (`cgroup.rs`), a mount namespace that
//! shows it only its VM's files (`view.rs`), and a user of its own with no capabilities
//! (`user.rs`). docs/SECURITY.md says what each leaves out.
//!
//! Processes a jailed monitor starts (clones, the network helper) inherit its
//! filter: the monitor's list is therefore everything a `starling-vmm` does in its whole life,
//! restores included. A memory server confines itself with a narrower filter of its own.
//! `STARLING_SECCOMP=off` runs without filters, for debugging; clones inherit the setting.

pub mod cgroup;
mod filters;
pub mod handed;
pub mod plan;
pub mod sigsys;
pub mod sockets;
pub mod user;
pub mod view;

use std::sync::atomic::{AtomicBool, Ordering};

pub use filters::Kind;
pub use plan::{jailed, settings, Settings};
pub use sigsys::FORBIDDEN_EXIT_STATUS;

/// The variable that turns the filters off (`off`), inherited by whatever the monitor starts.
pub const SECCOMP_VAR: &str = "STARLING_SECCOMP";

/// Set by a jailed monitor on the clones it starts: they run under its filter already, so
/// they do not stack a second copy (stacked filters are all evaluated on every call, and the
/// kernel caps their total size, which a deep line of clones of clones would reach).
pub const INHERITED_VAR: &str = "STARLING_SECCOMP_INHERITED";

/// Tests only: with `1`, the guest can make the monitor call what the filter forbids
/// ([`Probe`]), to show the filter stops it.
pub const PROBE_VAR: &str = "STARLING_SECCOMP_PROBE";

static CONFINED: AtomicBool = AtomicBool::new(false);
static DISABLED: AtomicBool = AtomicBool::new(false);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("building the {kind} seccomp filter: {reason}")]
    Build { kind: &'static str, reason: String },
    #[error("installing the {kind} seccomp filter: {reason}")]
    Install { kind: &'static str, reason: String },
    #[error("jail: {what}: {source}")]
    Setup {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("jail: {reason}")]
    Refused { reason: String },
}

impl Error {
    fn setup(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Setup {
            what: what.into(),
            source,
        }
    }
}

/// How a process ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confined {
    /// This call installed the filter.
    Filtered,
    /// The process already runs under the same kind of filter (a clone of a jailed monitor).
    Inherited,
    /// `STARLING_SECCOMP=off`.
    Off,
}

/// Whether filters are wanted: not [`disable`]d, and anything but `STARLING_SECCOMP=off`.
pub fn seccomp_wanted() -> bool {
    !DISABLED.load(Ordering::Relaxed) && std::env::var_os(SECCOMP_VAR).is_none_or(|v| v != "off")
}

/// Turns the filters off for this process and the monitors it starts (`--no-seccomp`).
pub fn disable() {
    DISABLED.store(true, Ordering::Relaxed);
}

/// Tells a monitor this one starts what its confinement is: off, or inherited.
pub fn pass_on(cmd: &mut std::process::Command) {
    plan::pass_on(cmd);
    if !seccomp_wanted() {
        cmd.env(SECCOMP_VAR, "off");
    } else if confined() {
        // Started under this monitor's filter: the clone need not stack another copy.
        cmd.env(INHERITED_VAR, Kind::Monitor.name());
    }
}

/// Whether this process runs under the monitor's filter (installed or inherited): what it
/// starts inherits it and is told so through [`INHERITED_VAR`].
pub fn confined() -> bool {
    CONFINED.load(Ordering::Relaxed)
}

/// Confines every thread of this process (those it has and those it will start) to `kind`'s
/// system calls, for good. A monitor calls it, from a thread of its own, while it builds the
/// VM; the guest must not run before it returns.
pub fn confine(kind: Kind) -> Result<Confined, Error> {
    if !seccomp_wanted() {
        eprintln!(
            "starling: warning: {SECCOMP_VAR}=off: the {} runs without its seccomp filter",
            kind.name()
        );
        return Ok(Confined::Off);
    }
    if kind == Kind::Monitor
        && std::env::var_os(INHERITED_VAR).is_some_and(|v| v == kind.name())
        && under_a_filter()
    {
        explain_refusals(kind)?;
        CONFINED.store(true, Ordering::Relaxed);
        return Ok(Confined::Inherited);
    }
    if kind == Kind::MemoryServer {
        // glibc reads /proc/sys/vm/overcommit_memory the first time it shrinks a thread
        // arena's heap, and this filter allows no open: with one arena (the main one, which
        // shrinks by brk) that never happens.
        // SAFETY: mallopt takes two ints and changes only the allocator's settings.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    }
    let net_helper =
        kind == Kind::Monitor && std::env::var_os(crate::clone_net::HELPER_VAR).is_some();
    let program = filters::compile(kind, net_helper)?;
    explain_refusals(kind)?;
    // Sets no_new_privs first (required for an unprivileged filter, and what we want anyway).
    seccompiler::apply_filter_all_threads(&program).map_err(|e| Error::Install {
        kind: kind.name(),
        reason: e.to_string(),
    })?;
    if kind == Kind::Monitor {
        CONFINED.store(true, Ordering::Relaxed);
    }
    Ok(Confined::Filtered)
}

/// Installs the handler that names a refused call (`sigsys.rs`).
fn explain_refusals(kind: Kind) -> Result<(), Error> {
    sigsys::install(kind == Kind::MemoryServer).map_err(|e| Error::Install {
        kind: kind.name(),
        reason: format!("SIGSYS handler: {e}"),
    })
}

/// For a monitor started by a confined one (a clone): refusals during its start, before it
/// reaches [`confine`], are named too.
pub fn explain_inherited_refusals() {
    if under_a_filter() {
        let _ = explain_refusals(Kind::Monitor);
    }
}

/// Whether this thread runs under a seccomp filter.
fn under_a_filter() -> bool {
    // SAFETY: PR_GET_SECCOMP takes no pointer arguments.
    unsafe { libc::prctl(libc::PR_GET_SECCOMP) == 2 }
}

/// The debugging path the guest reaches at `SECCOMP_PROBE_PORT` (only with [`PROBE_VAR`]):
/// opens a raw packet socket, the kind of call a guest that took over the monitor would make
/// to watch the host's network, and closes it at once; then opens the host's `/etc/shadow`,
/// which a jailed monitor does not see.
pub struct Probe;

impl crate::bus::BusDevice for Probe {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {
        // SAFETY: socket takes no pointers; a descriptor it returns is ours to close.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        let err = std::io::Error::last_os_error();
        if fd >= 0 {
            // SAFETY: fd was just opened here and is closed once.
            unsafe { libc::close(fd) };
        }
        eprintln!(
            "starling-vmm: seccomp probe: socket(AF_PACKET) {}",
            if fd >= 0 {
                "opened".to_string()
            } else {
                format!("failed: {err}")
            }
        );
        // What the host's files look like from here (the jail's point).
        let shadow = std::fs::File::open("/etc/shadow");
        eprintln!(
            "starling-vmm: seccomp probe: open /etc/shadow {}",
            match shadow {
                Ok(_) => "opened".to_string(),
                Err(e) => format!("failed: {e}"),
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    const CHILD: &str = "STARLING_JAIL_TEST_CHILD";

    /// In a child process (this test binary again): confines itself as `kind`, shows that
    /// what the monitor needs still works, then makes the call `what` on a thread named
    /// `probe`.
    fn child(kind: Kind, what: &str) {
        assert_eq!(confine(kind).unwrap(), Confined::Filtered);
        let worker = std::thread::Builder::new()
            .name("worker".into())
            .spawn(move || {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let _client = std::net::TcpStream::connect(listener.local_addr().unwrap());
                if kind == Kind::Monitor {
                    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
                    drop((a, b));
                    assert!(!std::fs::read("/proc/self/status").unwrap().is_empty());
                }
            })
            .unwrap();
        worker.join().unwrap();
        if kind == Kind::Monitor && std::path::Path::new("/dev/kvm").exists() {
            assert_eq!(kvm_ioctls::Kvm::new().unwrap().get_api_version(), 12);
        }
        eprintln!("allowed calls work");
        let what = what.to_string();
        let probe = std::thread::Builder::new()
            .name("probe".into())
            .spawn(move || {
                // SAFETY: each call is made to be refused; none is given a pointer it could
                // write through (TIOCSTI's is a valid byte).
                unsafe {
                    match what.as_str() {
                        "packet-socket" => {
                            libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
                        }
                        "netlink-socket" => {
                            libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, 0);
                        }
                        "ptrace" => {
                            libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
                        }
                        "ioctl" => {
                            let c = 0u8;
                            libc::ioctl(0, libc::TIOCSTI, &c);
                        }
                        "prctl" => {
                            libc::prctl(libc::PR_SET_DUMPABLE, 1);
                        }
                        "mount" => {
                            libc::mount(
                                std::ptr::null(),
                                std::ptr::null(),
                                std::ptr::null(),
                                0,
                                std::ptr::null(),
                            );
                        }
                        "execve" => {
                            libc::execve(std::ptr::null(), std::ptr::null(), std::ptr::null());
                        }
                        other => panic!("no probe {other}"),
                    }
                }
                eprintln!("the call was made");
            })
            .unwrap();
        let _ = probe.join();
        std::process::exit(0);
    }

    #[test]
    fn forbidden_calls_end_the_process_with_one_line_naming_them() {
        if let Ok(spec) = std::env::var(CHILD) {
            let (kind, what) = spec.split_once(':').unwrap();
            let kind = if kind == "monitor" {
                Kind::Monitor
            } else {
                Kind::MemoryServer
            };
            child(kind, what);
            return;
        }
        let cases = [
            ("monitor", "packet-socket", "socket (41) for domain 17"),
            ("monitor", "netlink-socket", "socket (41) for domain 16"),
            ("monitor", "ptrace", "ptrace (101)"),
            ("monitor", "ioctl", "ioctl (16) with request 0x5412"),
            ("monitor", "prctl", "prctl (157) with option 4"),
            ("monitor", "mount", "mount (165)"),
            ("memory-server", "execve", "execve (59)"),
            ("memory-server", "ioctl", "ioctl (16) with request 0x5412"),
        ];
        for (kind, what, named) in cases {
            let out = Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "jail::tests::forbidden_calls_end_the_process_with_one_line_naming_them",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD, format!("{kind}:{what}"))
                .env_remove(SECCOMP_VAR)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(i32::from(FORBIDDEN_EXIT_STATUS)),
                "{kind} {what}: {err}"
            );
            assert!(err.contains("allowed calls work"), "{kind} {what}: {err}");
            let who = if kind == "monitor" {
                "monitor"
            } else {
                "memory server"
            };
            let line = format!(
                "seccomp stopped the {who}: its thread probe made the system call {named}, \
                 which its filter forbids"
            );
            assert_eq!(err.matches(&line).count(), 1, "{kind} {what}: {err}");
            assert!(!err.contains("the call was made"), "{kind} {what}: {err}");
        }
    }
}
