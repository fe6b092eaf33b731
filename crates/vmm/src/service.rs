//! The monitor's own vsock service on host port `SERVICE_PORT` (0x53540000): how a guest
//! forks itself, joins its clones and learns who it is. Text lines, one answer per request:
//!
//!   whoami       → `id=K hostname=H mac=M seed=HEX time=UNIX_NS [ip=ADDR::GW:MASK:HOST:DEV:off:DNS]`
//!                  (ip: the guest's address on its first network device, when the VM's network
//!                  gave it one, in the kernel's `ip=` form)
//!   watch        → no answer from this monitor: answered, with the `whoami` line, by the
//!                  monitor that restores a snapshot taken meanwhile (a restored VM or a clone
//!                  hears here that it is one, and takes its identity and address on)
//!   fork N       → `0` in the parent, `1`..`N` in the clones (SnowFlock's sf_clone)
//!   join         → `exit C1 C2 …`: the exit status of every clone forked so far, in clone-id
//!                  order, once all have ended (sf_join)
//!   ready        → (once the VM is activated) `activate K=V … [-- ARGS]`: a substrate's guest
//!                  says it is booted and idle, and waits here for its configuration; a pool
//!                  snapshots it in that state, and every VM activated from the pool answers
//!                  with its own environment and arguments
//!   exit N       → `ok`, and the VM ends with status N (what the debug-exit port does, for a
//!                  guest that cannot write the port: the run agent, which is PID 1 in user mode)
//!   anything else→ `error …`
//!
//! A request still unanswered when a snapshot is taken is answered again by the monitor that
//! restores it: a clone answers the fork that made it with its own id.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Child;
use std::sync::{mpsc, Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::api::ForkInfo;
use crate::bus::lock;

pub use crate::virtio::vsock::SERVICE_PORT;

/// Most clones one fork request may ask for (a VM family's budget is `VmConfig::fork_budget`).
pub const MAX_CLONES: u32 = 1024;
/// Most service connections served at once (a thread each).
const MAX_CONNECTIONS: usize = 64;

/// Who a VM is: handed to the guest so that clones do not share an RNG state, a hostname or a
/// MAC, and so that a restored guest can set its clock.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Identity {
    /// 0 for a VM that was booted or restored, K for the K-th clone of a fork.
    pub clone_id: u32,
    pub hostname: String,
    pub mac: [u8; 6],
    pub seed: [u8; 32],
    /// The guest's address (kernel `ip=` form), when its network gave it one.
    pub ip: Option<String>,
}

impl Identity {
    /// A fresh identity: new seed and MAC (locally administered, unicast).
    pub fn fresh(clone_id: u32, hostname: String) -> Self {
        let mut seed = [0u8; 32];
        getrandom(&mut seed);
        let mut mac = [0x02, 0x53, 0x54, 0, 0, 0];
        getrandom(&mut mac[3..]);
        Identity {
            clone_id,
            hostname,
            mac,
            seed,
            ip: None,
        }
    }

    pub fn line(&self) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mac: Vec<String> = self.mac.iter().map(|b| format!("{b:02x}")).collect();
        let seed: String = self.seed.iter().map(|b| format!("{b:02x}")).collect();
        let mut line = format!(
            "id={} hostname={} mac={} seed={} time={now}",
            self.clone_id,
            self.hostname,
            mac.join(":"),
            seed
        );
        if let Some(ip) = &self.ip {
            line.push_str(" ip=");
            line.push_str(ip);
        }
        line
    }
}

/// Fills `buf` from the kernel's random source (retrying until it has).
pub(crate) fn getrandom(buf: &mut [u8]) {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: writes at most buf.len()-done bytes into the rest of `buf`.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n <= 0 {
            continue;
        }
        done += n as usize;
    }
}

/// The answer to `ready`: `activate K=V … [-- ARGS]`. Keys and values are single words (no
/// spaces or newlines) so that a shell agent can split them.
pub fn activation_line(env: &[(String, String)], args: Option<&str>) -> Result<String, String> {
    let mut line = String::from("activate");
    for (k, v) in env {
        let word = |w: &str| !w.is_empty() && !w.contains(|c: char| c.is_whitespace());
        if !word(k) || k.contains('=') || !(v.is_empty() || word(v)) {
            return Err(format!(
                "environment {k}={v}: names and values are single words without spaces"
            ));
        }
        line.push_str(&format!(" {k}={v}"));
    }
    if let Some(a) = args {
        if a.contains('\n') {
            return Err("arguments: one line".into());
        }
        line.push_str(" -- ");
        line.push_str(a);
    }
    Ok(line)
}

/// A fork the guest asks the run loop for; the answer (sent once the clones run) is the
/// fork's outcome or why not.
pub struct GuestFork {
    pub count: u32,
    pub reply: mpsc::Sender<Result<ForkInfo, String>>,
}

pub struct Services {
    pub identity: Mutex<Identity>,
    forks: Mutex<Option<mpsc::Sender<GuestFork>>>,
    /// Clones forked from this VM not yet joined, in the order they were forked, with their
    /// exit status once reaped.
    children: Mutex<Vec<(Child, Option<i32>)>>,
    /// Service connections being served, and clones forked from inside the guest so far.
    connections: Arc<std::sync::atomic::AtomicUsize>,
    /// What the guests of this VM's family may still fork (shared with its clones).
    budget: crate::budget::ForkBudget,
    /// The guest asked `ready` (it is booted and waits for its configuration).
    ready: std::sync::atomic::AtomicBool,
    /// Wakes the run loop when a fork request is sent (and, in `vm.rs`, for API requests).
    pub(crate) wake: Arc<vmm_sys_util::eventfd::EventFd>,
    /// The configuration `ready` is answered with, once the VM is activated.
    activation: (Mutex<Option<String>>, std::sync::Condvar),
    /// Where `exit N` ends the VM.
    exit: Arc<crate::exit::ExitSignal>,
    /// The identity is complete (a restore sets the MAC and address from the network devices,
    /// which are restored after the vsock device that resumes pending requests).
    settled: (Mutex<bool>, std::sync::Condvar),
}

impl Services {
    pub fn new(
        identity: Identity,
        wake: Arc<vmm_sys_util::eventfd::EventFd>,
        exit: Arc<crate::exit::ExitSignal>,
        budget: crate::budget::ForkBudget,
    ) -> Arc<Self> {
        Arc::new(Services {
            exit,
            identity: Mutex::new(identity),
            forks: Mutex::new(None),
            children: Mutex::new(Vec::new()),
            connections: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            budget,
            ready: std::sync::atomic::AtomicBool::new(false),
            activation: (Mutex::new(None), std::sync::Condvar::new()),
            wake,
            settled: (Mutex::new(false), std::sync::Condvar::new()),
        })
    }

    /// The identity takes the first network device's MAC and address (at boot or restore, and
    /// when an activation attaches the device).
    pub fn follow_nic(&self, nic: &crate::virtio::NetIdentity) {
        let mut id = lock(&self.identity);
        id.mac = nic.mac.0;
        id.ip = nic.ip.clone();
    }

    /// The identity is final: requests resumed from a snapshot may be answered.
    pub fn settle(&self) {
        *lock(&self.settled.0) = true;
        self.settled.1.notify_all();
    }

    fn await_settled(&self) {
        let mut s = lock(&self.settled.0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !*s {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            s = self
                .settled
                .1
                .wait_timeout(s, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    pub fn fork_budget_left(&self) -> u32 {
        self.budget.left()
    }

    pub fn guest_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether the guest has had its configuration.
    pub fn activated(&self) -> bool {
        lock(&self.activation.0).is_some()
    }

    /// Hands the guest its configuration (the answer to `ready`); false if it already had one.
    pub fn activate(&self, answer: String) -> bool {
        let mut a = lock(&self.activation.0);
        if a.is_some() {
            return false;
        }
        *a = Some(answer);
        self.activation.1.notify_all();
        true
    }

    fn await_activation(&self) -> String {
        self.ready.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut a = lock(&self.activation.0);
        loop {
            if let Some(answer) = a.as_ref() {
                return answer.clone();
            }
            a = self.activation.1.wait(a).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Where fork requests go while the VM runs (None: forks are refused).
    pub fn set_fork_sender(&self, tx: Option<mpsc::Sender<GuestFork>>) {
        *lock(&self.forks) = tx;
    }

    pub fn adopt(&self, child: Child) {
        lock(&self.children).push((child, None));
    }

    /// Collects the exit status of clones that ended (called by the run loop, so that none
    /// stays a zombie whether or not the guest ever joins).
    pub fn reap(&self) {
        for (child, code) in lock(&self.children).iter_mut() {
            if code.is_none() {
                if let Ok(Some(s)) = child.try_wait() {
                    *code = Some(s.code().unwrap_or(255));
                }
            }
        }
    }

    /// The vsock device's handler for new (or restored) service connections.
    pub fn handler(self: &Arc<Self>) -> crate::virtio::vsock::ServiceHandler {
        let me = self.clone();
        Arc::new(move |stream, _port, unanswered| {
            use std::sync::atomic::Ordering::SeqCst;
            let count = me.connections.clone();
            if count.fetch_add(1, SeqCst) >= MAX_CONNECTIONS {
                // Dropping our end closes the connection: the guest sees it reset.
                count.fetch_sub(1, SeqCst);
                return;
            }
            let me = me.clone();
            let spawned = std::thread::Builder::new()
                .name("vm-service".into())
                .spawn(move || {
                    me.serve(stream, unanswered);
                    me.connections.fetch_sub(1, SeqCst);
                });
            if spawned.is_err() {
                count.fetch_sub(1, SeqCst);
            }
        })
    }

    fn serve(&self, stream: UnixStream, resumed: Vec<String>) {
        let mut out = match stream.try_clone() {
            Ok(s) => s,
            Err(_) => return,
        };
        // Requests from before a snapshot: answered as this VM (a clone answers its fork),
        // once it knows all of who it is.
        if !resumed.is_empty() {
            self.await_settled();
        }
        for req in resumed {
            if writeln!(out, "{}", self.answer_resumed(&req)).is_err() {
                return;
            }
        }
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        loop {
            line.clear();
            // The vsock device closes connections whose lines grow past its limit; this
            // bound only keeps a broken peer from growing the buffer.
            match (&mut reader).take(8192).read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if writeln!(out, "{}", self.answer(line.trim())).is_err() {
                break;
            }
        }
    }

    /// The fork budget's descriptor, which clones inherit.
    pub fn budget_fd(&self) -> std::os::fd::RawFd {
        self.budget.fd()
    }

    fn answer(&self, req: &str) -> String {
        let mut words = req.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("whoami"), None, _) => lock(&self.identity).line(),
            (Some("fork"), Some(n), None) => match n.parse::<u32>() {
                Ok(count @ 1..=MAX_CLONES) if self.budget.take(count) => match self.fork(count) {
                    Ok(_) => "0".into(),
                    Err(e) => {
                        self.budget.give_back(count);
                        format!("error fork: {e}")
                    }
                },
                Ok(1..=MAX_CLONES) => format!(
                    "error fork: this VM and its clones may fork {} more clones (their fork \
                     budget)",
                    self.budget.left()
                ),
                _ => format!("error fork: {n:?} is not a clone count (1..{MAX_CLONES})"),
            },
            (Some("join"), None, _) => self.join(),
            (Some("ready"), None, _) => self.await_activation(),
            (Some("watch"), None, _) => loop {
                // Answered only on restore (`answer_resumed`): this VM stays who it is.
                std::thread::park();
            },
            (Some("exit"), Some(n), None) => match n.parse::<u8>() {
                Ok(code) => {
                    self.exit.raise(crate::exit::ExitReason::GuestExit(code));
                    "ok".into()
                }
                Err(_) => format!("error exit: {n:?} is not a status (0..255)"),
            },
            _ => format!(
                "error unknown request {req:?} (whoami, watch, fork N, join, ready, exit N)"
            ),
        }
    }

    /// Answers a request that was in flight when the snapshot this VM came from was taken.
    fn answer_resumed(&self, req: &str) -> String {
        let id = lock(&self.identity).clone_id;
        match req.split_whitespace().next() {
            Some("fork") if id > 0 => id.to_string(),
            Some("fork") => "error fork: interrupted by a snapshot; ask again".into(),
            Some("join") => "exit".into(),
            Some("watch") => lock(&self.identity).line(),
            _ => self.answer(req),
        }
    }

    fn fork(&self, count: u32) -> Result<ForkInfo, String> {
        let (tx, rx) = mpsc::channel();
        let sender = lock(&self.forks).clone().ok_or("the VM is not running")?;
        sender
            .send(GuestFork { count, reply: tx })
            .map_err(|_| "the VM is stopping".to_string())?;
        let _ = self.wake.write(1);
        rx.recv().map_err(|_| "the VM is stopping".to_string())?
    }

    fn join(&self) -> String {
        loop {
            self.reap();
            let running = {
                let mut kids = lock(&self.children);
                if kids.iter().all(|(_, code)| code.is_some()) {
                    let mut line = String::from("exit");
                    for (_, code) in kids.drain(..) {
                        line.push_str(&format!(" {}", code.unwrap_or(255)));
                    }
                    return line;
                }
                // Opened under the lock: the run loop cannot reap (and free the pid of) a
                // clone between our seeing it run and opening its pidfd.
                pidfds(
                    kids.iter()
                        .filter(|(_, code)| code.is_none())
                        .map(|(c, _)| c.id()),
                )
            };
            match running {
                // Bounded, so that clones forked meanwhile are waited for too.
                Some(fds) => wait_for_an_exit(&fds, std::time::Duration::from_millis(500)),
                None => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
    }
}

/// A pidfd for each of `pids`; None where the kernel has none (Linux < 5.3).
fn pidfds(pids: impl Iterator<Item = u32>) -> Option<Vec<std::os::fd::OwnedFd>> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = Vec::new();
    for pid in pids {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: fd was just returned by pidfd_open and belongs to nothing else.
        fds.push(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    }
    Some(fds)
}

/// Sleeps until one of the processes behind `fds` exits (so a join answers the moment its
/// last clone ends) or `limit` passes.
fn wait_for_an_exit(fds: &[std::os::fd::OwnedFd], limit: std::time::Duration) {
    use std::os::fd::AsRawFd;
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|f| libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: pfds is a valid array of pfds.len() pollfds that lives across the call.
    unsafe {
        libc::poll(
            pfds.as_mut_ptr(),
            pfds.len() as libc::nfds_t,
            limit.as_millis() as i32,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_differ_and_requests_are_answered() {
        let a = Identity::fresh(1, "vm-1".into());
        let b = Identity::fresh(2, "vm-2".into());
        assert_ne!(a.seed, b.seed);
        assert_ne!(a.mac[3..], b.mac[3..]);
        assert_eq!(a.mac[0] & 3, 2, "locally administered unicast");
        let wake = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let exit = Arc::new(crate::exit::ExitSignal::new().unwrap());
        let budget = crate::budget::ForkBudget::new(3).unwrap();
        let s = Services::new(a, Arc::new(wake), exit.clone(), budget);
        s.settle();
        s.await_settled();
        assert!(s
            .answer("whoami")
            .starts_with("id=1 hostname=vm-1 mac=02:53:54:"));
        assert!(s.answer("fork 0").starts_with("error fork"));
        assert!(s.answer("fork 2").contains("not running"));
        // The failed fork gave its two back: three are left, and no more.
        assert!(s
            .answer("fork 4")
            .contains("may fork 3 more clones (their fork budget)"));
        assert!(s.budget.take(3));
        assert!(s.answer("fork 1").contains("may fork 0 more clones"));
        assert!(s.answer("launch").starts_with("error unknown"));
        assert_eq!(s.answer("join"), "exit");
        assert_eq!(s.answer_resumed("fork 3"), "1");
        assert!(!s.answer("whoami").contains(" ip="));
        lock(&s.identity).ip = Some("10.213.0.7::10.213.0.1:255.255.0.0:vm-1:eth0:off".into());
        let resumed = s.answer_resumed("watch");
        assert!(resumed.starts_with("id=1 hostname=vm-1 "), "{resumed}");
        assert!(
            resumed.ends_with(" ip=10.213.0.7::10.213.0.1:255.255.0.0:vm-1:eth0:off"),
            "{resumed}"
        );
        assert!(s.answer("exit 256").starts_with("error exit"));
        assert_eq!(exit.reason(), None);
        assert_eq!(s.answer("exit 9"), "ok");
        assert_eq!(exit.reason(), Some(crate::exit::ExitReason::GuestExit(9)));
    }
}
