//! virtio-vsock in userspace with Firecracker's host-side convention: one unix socket `PATH`
//! where host programs connect and write `CONNECT <port>\n` (answered `OK <host port>\n` once the
//! guest accepts), and guest connections to host port P go to a listener at `PATH_P`.
//! Stream sockets only; credit-based flow control both ways.

pub mod packet;

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use serde::{Deserialize, Serialize};

use super::{write_to_chain, Chain, DeviceEnv, QueueBroken, Queues, VirtioDevice, TYPE_VSOCK};
use crate::persist::{Persist, SaveContext};
use crate::Error;

pub use super::ServiceHandler;
use packet::*;

pub const HOST_CID: u64 = 2;
const RX: usize = 0;
const TX: usize = 1;
const QUEUE_SIZES: [u16; 3] = [256, 256, 256];
/// Receive buffer advertised to the guest per connection.
const BUF_ALLOC: u32 = 256 * 1024;
/// Largest payload a packet may carry (Linux sends at most 64 KiB).
const MAX_PAYLOAD: u32 = 64 * 1024;
/// Host ports handed to host-initiated connections start here.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Epoll token for the listener; streams use their fd number.
const LISTENER_TOKEN: u64 = u64::MAX;
/// Host port of the monitor's own service (fork, join, identity); see service.rs.
pub const SERVICE_PORT: u32 = 0x5354_0000;

/// Longest service request line, and most requests outstanding on one connection.
const MAX_REQUEST: usize = 4096;
const MAX_OUTSTANDING: usize = 64;

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Host side connected to PATH, its `CONNECT` line not yet complete.
    AwaitingLine(Vec<u8>),
    /// REQUEST sent to the guest, no RESPONSE yet.
    Connecting,
    Established,
}

struct Conn {
    stream: UnixStream,
    state: State,
    /// Our port (host side) and the guest's.
    local_port: u32,
    peer_port: u32,
    /// Guest-to-host bytes the host side has not taken yet.
    pending: Vec<u8>,
    /// Bytes of guest data written to the host side (our fwd_cnt) and last announced.
    fwd_cnt: u32,
    announced_fwd: u32,
    /// Bytes sent to the guest, and the guest's buffer and forwarded count.
    rx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Whether epoll watches this stream for input.
    armed: bool,
    /// The host side ended its output (we told the guest with SHUTDOWN SEND).
    host_done: bool,
    /// The guest ended its output; the host side's write half closes once `pending` drains.
    guest_done: bool,
    /// Host bytes taken from the stream but not yet given to the guest (a snapshot drains
    /// service streams here so that what the service said before the instant goes with it).
    outbox: Vec<u8>,
    /// Served by the monitor itself (see `ServiceHandler`).
    service: bool,
    /// Service connections: request lines the guest sent that no answer line has come back
    /// for yet (kept here, where both directions pass, so a snapshot knows them exactly), and
    /// the start of the next line.
    requests: VecDeque<String>,
    partial: Vec<u8>,
}

impl Conn {
    /// Notes the request lines in guest bytes bound for the service; false when the guest
    /// breaks the limits.
    fn note_requests(&mut self, bytes: &[u8]) -> bool {
        if !self.service {
            return true;
        }
        for &b in bytes {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.partial).trim().to_owned();
                self.partial.clear();
                self.requests.push_back(line);
            } else {
                self.partial.push(b);
            }
        }
        self.partial.len() <= MAX_REQUEST && self.requests.len() <= MAX_OUTSTANDING
    }

    /// Notes the answer lines in service bytes bound for the guest.
    fn note_answers(&mut self, bytes: &[u8]) {
        if self.service {
            for _ in bytes.iter().filter(|&&b| b == b'\n') {
                self.requests.pop_front();
            }
        }
    }

    fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.rx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }
}

/// The device as saved: the guest's CID and the connections.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct VsockState {
    pub cid: u64,
    pub conns: Vec<ConnState>,
    /// Control packets (headers) not yet delivered to the guest.
    pub control: Vec<Vec<u8>>,
    pub next_port: u32,
}

/// One connection as saved.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ConnState {
    pub local_port: u32,
    pub peer_port: u32,
    pub established: bool,
    /// A connection to the monitor's own service (fork, join, identity): it survives into
    /// restored VMs and clones; others are reset there (their host ends do not exist).
    pub service: bool,
    pub fwd_cnt: u32,
    pub announced_fwd: u32,
    pub rx_cnt: u32,
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    pub host_done: bool,
    pub guest_done: bool,
    /// Guest bytes not yet taken by the host side.
    pub pending: Vec<u8>,
    /// Host bytes not yet given to the guest.
    pub outbox: Vec<u8>,
    /// Service requests the guest sent that had no answer yet (answered again on restore),
    /// and the start of a request line not yet complete.
    pub unanswered: Vec<String>,
    pub partial: Vec<u8>,
}

pub struct Vsock {
    guest_cid: u64,
    path: PathBuf,
    listener: UnixListener,
    epoll: Arc<Epoll>,
    /// Keyed by the stream's fd.
    conns: HashMap<i32, Conn>,
    /// Control packets waiting for a free receive buffer.
    control: VecDeque<Header>,
    next_port: u32,
    service: Option<ServiceHandler>,
}

impl Vsock {
    /// Binds the host socket at `path` (replacing a stale one).
    pub fn new(guest_cid: u64, path: &Path) -> std::io::Result<Self> {
        if guest_cid <= HOST_CID || guest_cid >= u64::from(u32::MAX) {
            return Err(std::io::Error::new(
                ErrorKind::InvalidInput,
                format!("vsock guest CID {guest_cid} is reserved or out of range (3..2^32-1)"),
            ));
        }
        let listener = crate::jail::sockets::listener(path)?;
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
        )?;
        Ok(Vsock {
            guest_cid,
            path: path.to_owned(),
            listener,
            epoll: Arc::new(epoll),
            conns: HashMap::new(),
            control: VecDeque::new(),
            next_port: FIRST_LOCAL_PORT,
            service: None,
        })
    }

    /// Connections from the guest to host port SERVICE_PORT go to `handler`.
    pub fn set_service(&mut self, handler: ServiceHandler) {
        self.service = Some(handler);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn header(&self, c: &Conn, op: u16) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: c.local_port,
            dst_port: c.peer_port,
            kind: TYPE_STREAM,
            op,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: c.fwd_cnt,
            ..Default::default()
        }
    }

    /// Watches or stops watching a stream. Parked streams leave the epoll set entirely:
    /// hang-ups are reported even with no events asked for and would wake the thread forever.
    fn arm(&self, fd: i32, on: bool) {
        let _ = if on {
            self.epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, fd as u64),
            )
        } else {
            self.epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default())
        };
    }

    fn add_conn(&mut self, stream: UnixStream, state: State, local_port: u32, peer_port: u32) {
        let fd = stream.as_raw_fd();
        let _ = stream.set_nonblocking(true);
        if self
            .epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, fd as u64),
            )
            .is_err()
        {
            return;
        }
        self.conns.insert(
            fd,
            Conn {
                stream,
                state,
                local_port,
                peer_port,
                pending: Vec::new(),
                fwd_cnt: 0,
                announced_fwd: 0,
                rx_cnt: 0,
                peer_buf_alloc: 0,
                peer_fwd_cnt: 0,
                armed: true,
                host_done: false,
                guest_done: false,
                outbox: Vec::new(),
                service: false,
                requests: VecDeque::new(),
                partial: Vec::new(),
            },
        );
    }

    fn close(&mut self, fd: i32, tell_guest: bool) {
        if let Some(c) = self.conns.remove(&fd) {
            if c.armed {
                self.arm(fd, false);
            }
            if tell_guest && !matches!(c.state, State::AwaitingLine(_)) {
                let h = self.header(&c, OP_RST);
                self.control.push_back(h);
            }
        }
    }

    fn find(&self, local_port: u32, peer_port: u32) -> Option<i32> {
        self.conns
            .iter()
            .find(|(_, c)| c.local_port == local_port && c.peer_port == peer_port)
            .map(|(fd, _)| *fd)
    }

    fn rst_to(&mut self, h: &Header) {
        self.control.push_back(Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: h.dst_port,
            dst_port: h.src_port,
            kind: TYPE_STREAM,
            op: OP_RST,
            ..Default::default()
        });
    }

    /// Accepts host connections to PATH and reads their CONNECT lines.
    fn accept_host(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            self.add_conn(stream, State::AwaitingLine(Vec::new()), 0, 0);
        }
        let waiting: Vec<i32> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.state, State::AwaitingLine(_)))
            .map(|(fd, _)| *fd)
            .collect();
        for fd in waiting {
            let Some(c) = self.conns.get_mut(&fd) else {
                continue;
            };
            let mut byte = [0u8; 1];
            let mut done = None;
            loop {
                match c.stream.read(&mut byte) {
                    Ok(1) => {
                        let State::AwaitingLine(line) = &mut c.state else {
                            break;
                        };
                        if byte[0] == b'\n' {
                            done = Some(parse_connect(line));
                            break;
                        }
                        line.push(byte[0]);
                        if line.len() > 64 {
                            done = Some(None);
                            break;
                        }
                    }
                    Ok(_) => {
                        done = Some(None);
                        break;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        done = Some(None);
                        break;
                    }
                }
            }
            match done {
                Some(Some(port)) => {
                    let local = self.next_port;
                    self.next_port = self.next_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
                    if let Some(c) = self.conns.get_mut(&fd) {
                        c.state = State::Connecting;
                        c.local_port = local;
                        c.peer_port = port;
                    }
                    if let Some(c) = self.conns.get(&fd) {
                        let h = self.header(c, OP_REQUEST);
                        self.control.push_back(h);
                    }
                }
                Some(None) => self.close(fd, false),
                None => {}
            }
        }
    }

    /// Handles one packet the guest sent.
    fn handle_guest_packet(&mut self, h: Header, payload: &[u8]) {
        if h.kind != TYPE_STREAM || h.dst_cid != HOST_CID || h.src_cid != self.guest_cid {
            if h.op != OP_RST {
                self.rst_to(&h);
            }
            return;
        }
        let fd = self.find(h.dst_port, h.src_port);
        if let Some(c) = fd.and_then(|fd| self.conns.get_mut(&fd)) {
            c.peer_buf_alloc = h.buf_alloc;
            c.peer_fwd_cnt = h.fwd_cnt;
        }
        match (h.op, fd) {
            (OP_REQUEST, None) => {
                let target = format!("{}_{}", self.path.display(), h.dst_port);
                let connected = match (&self.service, h.dst_port) {
                    (Some(handler), SERVICE_PORT) => UnixStream::pair().map(|(ours, theirs)| {
                        handler(theirs, h.src_port, Vec::new());
                        ours
                    }),
                    _ => UnixStream::connect(&target),
                };
                match connected {
                    Ok(stream) => {
                        self.add_conn(stream, State::Established, h.dst_port, h.src_port);
                        if let Some(fd) = self.find(h.dst_port, h.src_port) {
                            if let Some(c) = self.conns.get_mut(&fd) {
                                c.peer_buf_alloc = h.buf_alloc;
                                c.peer_fwd_cnt = h.fwd_cnt;
                                c.service = h.dst_port == SERVICE_PORT && self.service.is_some();
                            }
                            let c = &self.conns[&fd];
                            let r = self.header(c, OP_RESPONSE);
                            self.control.push_back(r);
                        }
                    }
                    Err(_) => self.rst_to(&h),
                }
            }
            (OP_RESPONSE, Some(fd)) => {
                let c = self.conns.get_mut(&fd).expect("found above");
                if c.state == State::Connecting {
                    c.state = State::Established;
                    let line = format!("OK {}\n", c.local_port);
                    if c.stream.write_all(line.as_bytes()).is_err() {
                        self.close(fd, true);
                    }
                } else {
                    self.close(fd, true);
                }
            }
            (OP_RW, Some(fd)) => {
                let c = self.conns.get_mut(&fd).expect("found above");
                // A guest that overruns the buffer we advertised breaks the protocol.
                if c.state != State::Established
                    || c.pending.len() + payload.len() > BUF_ALLOC as usize
                    || !c.note_requests(payload)
                {
                    self.close(fd, true);
                    return;
                }
                c.pending.extend_from_slice(payload);
                self.flush_to_host(fd);
            }
            (OP_CREDIT_UPDATE, Some(fd)) => self.arm_all_if(fd),
            (OP_CREDIT_REQUEST, Some(fd)) => {
                let c = &self.conns[&fd];
                let r = self.header(c, OP_CREDIT_UPDATE);
                self.control.push_back(r);
            }
            (OP_SHUTDOWN, Some(fd)) => {
                let c = self.conns.get_mut(&fd).expect("found above");
                if h.flags & SHUTDOWN_SEND != 0 {
                    c.guest_done = true;
                }
                if h.flags & SHUTDOWN_RCV != 0 {
                    // The guest reads no more: whatever the host still sends has nowhere to go.
                    c.host_done = true;
                }
                self.flush_to_host(fd);
            }
            (OP_RST, Some(fd)) => self.close(fd, false),
            (OP_RST, None) => {}
            _ => self.rst_to(&h),
        }
    }

    fn arm_all_if(&mut self, fd: i32) {
        if let Some(c) = self.conns.get_mut(&fd) {
            if !c.armed && !c.host_done {
                c.armed = true;
                self.arm(fd, true);
            }
        }
    }

    /// Writes what the guest sent to the host side; announces credit as it drains.
    fn flush_to_host(&mut self, fd: i32) {
        let Some(c) = self.conns.get_mut(&fd) else {
            return;
        };
        while !c.pending.is_empty() {
            match c.stream.write(&c.pending) {
                Ok(0) => break,
                Ok(n) => {
                    c.pending.drain(..n);
                    c.fwd_cnt = c.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.close(fd, true);
                    return;
                }
            }
        }
        if c.guest_done && c.pending.is_empty() {
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
            if c.host_done {
                // Both directions ended: the connection is over.
                self.close(fd, true);
                return;
            }
        }
        if c.fwd_cnt.wrapping_sub(c.announced_fwd) >= BUF_ALLOC / 4 {
            c.announced_fwd = c.fwd_cnt;
            let h = self.header(&self.conns[&fd], OP_CREDIT_UPDATE);
            self.control.push_back(h);
        }
    }

    /// Drains the guest's transmit queue.
    fn process_tx(&mut self, q: &mut Queues) -> Result<bool, QueueBroken> {
        let chains = q.pop_all(TX)?;
        for chain in &chains {
            if let Some((h, payload)) = read_packet(&q.mem, chain) {
                self.handle_guest_packet(h, &payload);
            }
            q.add_used(TX, chain.head, 0)?;
        }
        Ok(!chains.is_empty())
    }

    /// Fills the guest's receive buffers: control packets first, then data from host streams.
    fn process_rx(&mut self, q: &mut Queues) -> Result<bool, QueueBroken> {
        self.accept_host();
        let fds: Vec<i32> = self.conns.keys().copied().collect();
        for fd in &fds {
            if self.conns.get(fd).is_some_and(|c| !c.pending.is_empty()) {
                self.flush_to_host(*fd);
            }
        }
        let mut used = false;
        while let Some(h) = self.control.front().copied() {
            let Some(chain) = q.pop_one(RX)? else {
                return Ok(used);
            };
            let n = write_to_chain(&q.mem, &chain.descs, 0, &h.to_bytes()).unwrap_or(0);
            q.add_used(RX, chain.head, n as u32)?;
            used = true;
            self.control.pop_front();
        }
        for fd in fds {
            while let Some(c) = self.conns.get_mut(&fd) {
                if c.state != State::Established || c.host_done {
                    break;
                }
                let credit = c.peer_credit().min(MAX_PAYLOAD);
                if credit == 0 {
                    // Wait for the guest's credit update before reading more.
                    if c.armed {
                        c.armed = false;
                        self.arm(fd, false);
                    }
                    break;
                }
                let Some(chain) = q.pop_one(RX)? else {
                    self.disarm_all();
                    return Ok(used);
                };
                let room: u32 = chain
                    .descs
                    .iter()
                    .filter(|d| d.is_write_only())
                    .map(|d| d.len())
                    .sum::<u32>()
                    .saturating_sub(HEADER_LEN as u32);
                let mut buf = vec![0u8; credit.min(room) as usize];
                let c = self.conns.get_mut(&fd).expect("checked above");
                let got = if buf.is_empty() {
                    Err(ErrorKind::WouldBlock.into())
                } else if !c.outbox.is_empty() {
                    let n = buf.len().min(c.outbox.len());
                    buf[..n].copy_from_slice(&c.outbox[..n]);
                    c.outbox.drain(..n);
                    Ok(n)
                } else {
                    let r = c.stream.read(&mut buf);
                    if let Ok(n) = r {
                        c.note_answers(&buf[..n]);
                    }
                    r
                };
                match got {
                    Ok(0) => {
                        // The host side ended its output: tell the guest; its own output may
                        // still flow the other way (a half-closed stream).
                        q.undo_pop(RX);
                        c.host_done = true;
                        let guest_done = c.guest_done && c.pending.is_empty();
                        let mut h = self.header(&self.conns[&fd], OP_SHUTDOWN);
                        h.flags = SHUTDOWN_SEND;
                        self.control.push_back(h);
                        if guest_done {
                            self.close(fd, true);
                        } else {
                            self.arm(fd, false);
                            if let Some(c) = self.conns.get_mut(&fd) {
                                c.armed = false;
                            }
                        }
                        break;
                    }
                    Ok(n) => {
                        c.rx_cnt = c.rx_cnt.wrapping_add(n as u32);
                        let mut h = self.header(&self.conns[&fd], OP_RW);
                        h.len = n as u32;
                        let mut pkt = h.to_bytes().to_vec();
                        pkt.extend_from_slice(&buf[..n]);
                        let w = write_to_chain(&q.mem, &chain.descs, 0, &pkt).unwrap_or(0);
                        q.add_used(RX, chain.head, w as u32)?;
                        used = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        q.undo_pop(RX);
                        break;
                    }
                    Err(_) => {
                        q.undo_pop(RX);
                        self.close(fd, true);
                        break;
                    }
                }
            }
        }
        // Control packets queued while reading (closes) go out on the next round.
        while let Some(h) = self.control.front().copied() {
            let Some(chain) = q.pop_one(RX)? else { break };
            let n = write_to_chain(&q.mem, &chain.descs, 0, &h.to_bytes()).unwrap_or(0);
            q.add_used(RX, chain.head, n as u32)?;
            used = true;
            self.control.pop_front();
        }
        Ok(used)
    }

    /// The connections as they are now, for a snapshot (the device must be quiet). Service
    /// streams are drained into their outboxes first, so that what the service said before
    /// the instant goes with it; `in_flight(guest port)` says what a service had not answered.
    fn snap(&mut self) -> VsockState {
        let mut conns = Vec::new();
        for c in self.conns.values_mut() {
            if matches!(c.state, State::AwaitingLine(_)) {
                continue;
            }
            if c.service {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = c.stream.read(&mut buf) {
                    c.outbox.extend_from_slice(&buf[..n]);
                    c.note_answers(&buf[..n]);
                }
            }
            conns.push(ConnState {
                local_port: c.local_port,
                peer_port: c.peer_port,
                established: c.state == State::Established,
                service: c.service,
                fwd_cnt: c.fwd_cnt,
                announced_fwd: c.announced_fwd,
                rx_cnt: c.rx_cnt,
                peer_buf_alloc: c.peer_buf_alloc,
                peer_fwd_cnt: c.peer_fwd_cnt,
                host_done: c.host_done,
                guest_done: c.guest_done,
                pending: c.pending.clone(),
                outbox: c.outbox.clone(),
                unanswered: c.requests.iter().cloned().collect(),
                partial: c.partial.clone(),
            });
        }
        VsockState {
            cid: self.guest_cid,
            conns,
            control: self.control.iter().map(|h| h.to_bytes().to_vec()).collect(),
            next_port: self.next_port,
        }
    }

    /// Takes up a snapshot's connections in a new monitor: service connections continue
    /// (with a new service end, told what was in flight); the others had host ends that do
    /// not exist here, so the guest's ends are reset.
    fn take_up(&mut self, snap: &VsockState) {
        self.next_port = snap.next_port.max(FIRST_LOCAL_PORT);
        self.control
            .extend(snap.control.iter().filter_map(|h| Header::parse(h)));
        for c in &snap.conns {
            if let (Some(handler), true) = (self.service.clone(), c.service) {
                if let Ok((ours, theirs)) = UnixStream::pair() {
                    let fd = ours.as_raw_fd();
                    let state = if c.established {
                        State::Established
                    } else {
                        State::Connecting
                    };
                    self.add_conn(ours, state, c.local_port, c.peer_port);
                    if let Some(n) = self.conns.get_mut(&fd) {
                        n.service = true;
                        n.fwd_cnt = c.fwd_cnt;
                        n.announced_fwd = c.announced_fwd;
                        n.rx_cnt = c.rx_cnt;
                        n.peer_buf_alloc = c.peer_buf_alloc;
                        n.peer_fwd_cnt = c.peer_fwd_cnt;
                        n.host_done = c.host_done;
                        n.guest_done = c.guest_done;
                        n.pending = c.pending.clone();
                        n.outbox = c.outbox.clone();
                        n.requests = c.unanswered.iter().cloned().collect();
                        n.partial = c.partial.clone();
                    }
                    handler(theirs, c.peer_port, c.unanswered.clone());
                    continue;
                }
            }
            self.control.push_back(Header {
                src_cid: HOST_CID,
                dst_cid: self.guest_cid,
                src_port: c.local_port,
                dst_port: c.peer_port,
                kind: TYPE_STREAM,
                op: OP_RST,
                ..Default::default()
            });
        }
    }

    fn disarm_all(&mut self) {
        let fds: Vec<i32> = self
            .conns
            .iter()
            .filter(|(_, c)| c.armed && c.state == State::Established)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in fds {
            if let Some(c) = self.conns.get_mut(&fd) {
                c.armed = false;
            }
            self.arm(fd, false);
        }
    }

    fn rearm_all(&mut self) {
        let fds: Vec<i32> = self.conns.keys().copied().collect();
        for fd in fds {
            self.arm_all_if(fd);
        }
    }
}

impl<'a> Persist<'a> for Vsock {
    type State = VsockState;
    type Args = &'a DeviceEnv<'a>;

    /// The connections (service streams drained first, see `snap`).
    fn save(&mut self, _ctx: &SaveContext) -> Result<VsockState, Error> {
        Ok(self.snap())
    }

    /// A new host socket (the restore's own path, or `vsock.sock` in its run directory) with
    /// the service connections continuing and the others reset.
    fn restore(env: &'a DeviceEnv<'a>, state: &VsockState) -> Result<Vsock, Error> {
        let path = env
            .spec
            .vsock_path
            .clone()
            .unwrap_or_else(|| env.run_dir.join("vsock.sock"));
        let mut v = Vsock::new(state.cid, &path).map_err(|e| Error::Io {
            what: format!("vsock socket {}", path.display()),
            source: e,
        })?;
        v.set_service(env.service.clone());
        v.take_up(state);
        Ok(v)
    }
}

fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    s.strip_prefix("CONNECT ")?.trim().parse().ok()
}

/// Reads a packet from a transmit chain: the header and `len` payload bytes (readable
/// descriptors only); None for a chain too short or a payload over the limit.
pub fn read_packet(mem: &vm_memory::GuestMemoryMmap, chain: &Chain) -> Option<(Header, Vec<u8>)> {
    use vm_memory::Bytes;
    let mut bytes = Vec::new();
    let mut want = HEADER_LEN;
    for d in chain.descs.iter().filter(|d| !d.is_write_only()) {
        if bytes.len() >= want {
            break;
        }
        let take = (d.len() as usize).min(want - bytes.len());
        let start = bytes.len();
        bytes.resize(start + take, 0);
        mem.read_slice(&mut bytes[start..], d.addr()).ok()?;
        if bytes.len() >= HEADER_LEN && want == HEADER_LEN {
            let h = Header::parse(&bytes)?;
            if h.len > MAX_PAYLOAD {
                return None;
            }
            want = HEADER_LEN + h.len as usize;
            // The rest of this descriptor may hold payload already.
            let extra = (d.len() as usize)
                .saturating_sub(take)
                .min(want - bytes.len());
            if extra > 0 {
                let s = bytes.len();
                bytes.resize(s + extra, 0);
                let addr = d.addr().0.checked_add(take as u64)?;
                mem.read_slice(&mut bytes[s..], vm_memory::GuestAddress(addr))
                    .ok()?;
            }
        }
    }
    let h = Header::parse(&bytes)?;
    if bytes.len() < HEADER_LEN + h.len as usize {
        return None;
    }
    Some((h, bytes.split_off(HEADER_LEN)))
}

impl VirtioDevice for Vsock {
    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }
    fn event_source(&self) -> Option<Arc<Epoll>> {
        Some(self.epoll.clone())
    }
    fn queue_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::blk::read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }
    fn notify(&mut self, index: usize, q: &mut Queues) -> Result<bool, QueueBroken> {
        let mut used = false;
        if index == TX {
            used |= self.process_tx(q)?;
        }
        if index == RX {
            // New receive buffers: streams parked for lack of them may go on.
            self.rearm_all();
        }
        used |= self.process_rx(q)?;
        Ok(used)
    }
    fn backend(&mut self, q: &mut Queues) -> Result<bool, QueueBroken> {
        self.process_rx(q)
    }
    fn reset(&mut self) {
        let fds: Vec<i32> = self.conns.keys().copied().collect();
        for fd in fds {
            self.close(fd, false);
        }
        self.control.clear();
    }
}

/// Event queue index (transport resets are the only events we send, none at present).
pub const EVENT_QUEUE: usize = 2;
/// Receive queue index, for the event thread's `process` calls.
pub const RX_QUEUE: usize = RX;
