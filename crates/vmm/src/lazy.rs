//! Lazy memory: a restored VM starts with empty RAM and gets each page when it first touches
//! it, through userfaultfd, from a memory server over TCP or a unix socket.
//!
//! A memory server serves one snapshot: from its directory, or from another memory server
//! (`upstream`), keeping every page it fetched so that the clones on one host share one fetch
//! of each page. Clients get the state file and the page map first, check the map against the
//! state's `memory_map` hash, and check every page against its BLAKE3 in the map; pages not in
//! the map are zero and never fetched. The state itself is checked against the BLAKE3 hash the
//! client was given with the server's address (`ADDR#HASH`, as `vm memory-server` prints it),
//! so every byte a lazy VM runs on is verified against a hash its operator chose.
//!
//! The protocol (integers little-endian): the client sends `STRLMEM1`, then requests of one
//! op byte: 1 state → u64 length + bytes; 2 map → u64 length + bytes; 3 + u64 page number →
//! 4096 bytes; 4 statistics → four u64 (pages served, bytes sent, pages fetched upstream, bytes
//! fetched upstream).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde::Serialize;
use userfaultfd::{Event, Uffd, UffdBuilder};

use crate::bus::lock;
use crate::exit::{ExitReason, ExitSignal};
use crate::memory::{GuestRam, PAGE};
use crate::snapshot::{self, VmState};
use crate::Error;

const MAGIC: &[u8; 8] = b"STRLMEM1";
const OP_STATE: u8 = 1;
const OP_MAP: u8 = 2;
const OP_PAGE: u8 = 3;
const OP_STATS: u8 = 4;
/// Largest state or map a client accepts.
const MAX_BLOB: u64 = 256 << 20;

/// Where a memory server listens or a client connects: `tcp://HOST:PORT`,
/// `tls://HOST:PORT` (TCP with mutual TLS, see [`TlsWrap`]), `unix:PATH` or a path.
#[derive(Clone, Debug, PartialEq)]
pub enum Addr {
    Tcp(String),
    /// `name` as given (what the server's certificate must name), `at` where to connect
    /// (the name, or its address once [`Addr::resolved`]).
    Tls {
        name: String,
        at: String,
    },
    Unix(PathBuf),
}

impl std::str::FromStr for Addr {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        if let Some(a) = s.strip_prefix("tls://") {
            if a.rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            {
                return Ok(Addr::Tls {
                    name: a.to_owned(),
                    at: a.to_owned(),
                });
            }
            return Err(Error::Invalid(format!(
                "memory server address {s:?}: expected tls://HOST:PORT"
            )));
        }
        if let Some(a) = s.strip_prefix("tcp://") {
            if a.rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            {
                return Ok(Addr::Tcp(a.to_owned()));
            }
            return Err(Error::Invalid(format!(
                "memory server address {s:?}: expected tcp://HOST:PORT"
            )));
        }
        let p = s.strip_prefix("unix:").unwrap_or(s);
        if p.is_empty() {
            return Err(Error::Invalid("memory server address: empty".into()));
        }
        Ok(Addr::Unix(p.into()))
    }
}

impl Addr {
    /// The same address with a host name resolved to its first IP address: names are
    /// resolved before a process confines itself (resolving reads files and sends DNS queries,
    /// which neither filter allows).
    pub fn resolved(&self) -> Result<Addr, Error> {
        let ip = |a: &str| {
            use std::net::ToSocketAddrs;
            a.to_socket_addrs()
                .map_err(|e| Error::Invalid(format!("memory server address {a}: {e}")))?
                .next()
                .map(|ip| ip.to_string())
                .ok_or_else(|| Error::Invalid(format!("memory server address {a}: no address")))
        };
        match self {
            Addr::Tcp(a) => Ok(Addr::Tcp(ip(a)?)),
            // The name stays: the server's certificate is checked against it.
            Addr::Tls { name, .. } => Ok(Addr::Tls {
                name: name.clone(),
                at: ip(name)?,
            }),
            Addr::Unix(_) => Ok(self.clone()),
        }
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Tcp(a) => write!(f, "tcp://{a}"),
            Addr::Tls { name, .. } => write!(f, "tls://{name}"),
            Addr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A snapshot on a memory server: where (`ADDR`) and which (`#` and the BLAKE3 of its state
/// file, in hex). Written `tcp://HOST:PORT#HASH` or `unix:PATH#HASH`.
#[derive(Clone, Debug, PartialEq)]
pub struct Remote {
    pub addr: Addr,
    pub state: blake3::Hash,
}

impl std::str::FromStr for Remote {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let Some((addr, hash)) = s.rsplit_once('#') else {
            return Err(Error::Invalid(format!(
                "memory server {s:?}: no state hash; give ADDR#HASH as `vm memory-server` prints \
                 it (the hash pins the snapshot: nothing unverified is run)"
            )));
        };
        let state = blake3::Hash::from_hex(hash).map_err(|_| {
            Error::Invalid(format!(
                "memory server {s:?}: {hash:?} is not a BLAKE3 hash (64 hex digits)"
            ))
        })?;
        Ok(Remote {
            addr: addr.parse()?,
            state,
        })
    }
}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.addr, self.state.to_hex())
    }
}

/// A connection to or from a memory server.
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// TLS for `tls://` addresses: a server's connections accepted, a client's made, both with
/// certificates (mutual TLS). Given by the program that links a TLS stack (the `starling`
/// command, `vm memory-server` and `vm restore`) through [`use_tls`]; the monitor binary
/// carries none, and restores across hosts from its own host's memory server on a unix socket
/// (one fetch per page per host anyway).
pub trait TlsWrap: Send + Sync {
    /// A connection a server accepted, its handshake done (within [`IO_TIMEOUT`] per read: a
    /// client that never completes one frees its place).
    fn accept(&self, s: TcpStream) -> std::io::Result<Box<dyn Stream>>;
    /// A connection to the server named `host` (its certificate must name it).
    fn connect(&self, host: &str, s: TcpStream) -> std::io::Result<Box<dyn Stream>>;
}

static TLS: OnceLock<Box<dyn TlsWrap>> = OnceLock::new();

/// Sets this process's TLS for `tls://` addresses (the first call wins).
pub fn use_tls(w: Box<dyn TlsWrap>) {
    let _ = TLS.set(w);
}

fn tls() -> std::io::Result<&'static dyn TlsWrap> {
    TLS.get().map(|b| &**b).ok_or_else(|| {
        std::io::Error::other(
            "a tls:// memory server needs certificates: STARLING_TLS_CERT, STARLING_TLS_KEY \
             and STARLING_TLS_CA (or `vm memory-server --tls-cert … --tls-key … --tls-ca …`); \
             a monitor restores across hosts from its own host's memory server on a unix socket",
        )
    })
}

/// How long a memory server may take to answer: past it the page is failed (and the VM that
/// needed it ends) rather than its vCPU waiting forever.
pub const IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Most clients a memory server serves at once (a thread each); more are closed at once.
const MAX_CLIENTS: usize = 256;

/// Gives a client's place back when its thread ends.
struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn connect(addr: &Addr) -> std::io::Result<Box<dyn Stream>> {
    let tcp = |a: &str| -> std::io::Result<TcpStream> {
        let s = TcpStream::connect(a)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(s)
    };
    Ok(match addr {
        Addr::Tcp(a) => Box::new(tcp(a)?),
        Addr::Tls { name, at } => {
            let wrap = tls()?;
            let host = name.rsplit_once(':').map_or(name.as_str(), |(h, _)| h);
            wrap.connect(host.trim_matches(['[', ']']), tcp(at)?)?
        }
        Addr::Unix(p) => {
            let s = UnixStream::connect(p)?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.set_write_timeout(Some(IO_TIMEOUT))?;
            Box::new(s)
        }
    })
}

fn read_blob(r: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut n = [0u8; 8];
    r.read_exact(&mut n)?;
    let n = u64::from_le_bytes(n);
    if n > MAX_BLOB {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the server sent a {n}-byte blob"),
        ));
    }
    let mut v = vec![0u8; n as usize];
    r.read_exact(&mut v)?;
    Ok(v)
}

/// Page number → BLAKE3 of every page with data.
pub type PageMap = HashMap<u64, [u8; 32]>;

/// The page map, checked against the state's hash of it.
pub fn parse_map(state: &VmState, map: &[u8]) -> Result<PageMap, String> {
    let want = state
        .memory_map
        .ok_or("the snapshot has no page map (taken by a fork, not `vm snapshot`)")?;
    if blake3::hash(map).as_bytes() != &want {
        return Err("the page map does not match the state's hash of it".into());
    }
    if !map.len().is_multiple_of(40) {
        return Err("the page map is not a whole number of entries".into());
    }
    Ok(map
        .chunks_exact(40)
        .map(|e| {
            let mut n = [0u8; 8];
            n.copy_from_slice(&e[..8]);
            let mut h = [0u8; 32];
            h.copy_from_slice(&e[8..]);
            (u64::from_le_bytes(n), h)
        })
        .collect())
}

/// A connection to a memory server.
pub struct LazyClient {
    conn: BufReader<Box<dyn Stream>>,
    /// Every byte read from the server.
    pub received: u64,
}

impl LazyClient {
    pub fn connect(addr: &Addr) -> std::io::Result<Self> {
        let mut conn = connect(addr)?;
        conn.write_all(MAGIC)?;
        Ok(LazyClient {
            conn: BufReader::new(conn),
            received: 0,
        })
    }

    fn blob(&mut self, op: u8) -> std::io::Result<Vec<u8>> {
        self.conn.get_mut().write_all(&[op])?;
        let v = read_blob(&mut self.conn)?;
        self.received += 8 + v.len() as u64;
        Ok(v)
    }

    pub fn state(&mut self) -> std::io::Result<Vec<u8>> {
        self.blob(OP_STATE)
    }

    pub fn map(&mut self) -> std::io::Result<Vec<u8>> {
        self.blob(OP_MAP)
    }

    pub fn page(&mut self, n: u64) -> std::io::Result<Vec<u8>> {
        let mut req = [0u8; 9];
        req[0] = OP_PAGE;
        req[1..].copy_from_slice(&n.to_le_bytes());
        self.conn.get_mut().write_all(&req)?;
        let mut page = vec![0u8; PAGE as usize];
        self.conn.read_exact(&mut page)?;
        self.received += PAGE;
        Ok(page)
    }

    pub fn stats(&mut self) -> std::io::Result<ServerStats> {
        self.conn.get_mut().write_all(&[OP_STATS])?;
        let mut b = [0u8; 32];
        self.conn.read_exact(&mut b)?;
        let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        Ok(ServerStats {
            pages_served: w(0),
            bytes_sent: w(1),
            upstream_pages: w(2),
            upstream_bytes: w(3),
        })
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ServerStats {
    pub pages_served: u64,
    pub bytes_sent: u64,
    pub upstream_pages: u64,
    pub upstream_bytes: u64,
}

type PageSlot = Arc<OnceLock<Result<Arc<Vec<u8>>, String>>>;

enum Source {
    Dir(File),
    Upstream(Box<Upstream>),
}

struct Upstream {
    addr: Addr,
    conn: Mutex<LazyClient>,
    hashes: PageMap,
    /// Every page fetched, kept: a host fetches each page once.
    cache: Mutex<HashMap<u64, PageSlot>>,
    fetched: AtomicU64,
}

pub struct MemoryServer {
    state: Vec<u8>,
    map: Vec<u8>,
    bytes: u64,
    source: Source,
    served: AtomicU64,
    sent: AtomicU64,
}

impl MemoryServer {
    /// Serves the snapshot in `dir`.
    pub fn open_dir(dir: &Path) -> Result<Self, Error> {
        let bad = |reason: String| Error::Snapshot {
            path: dir.to_owned(),
            reason,
        };
        let state_path = dir.join(snapshot::STATE_FILE);
        let state_bytes = std::fs::read(&state_path).map_err(|e| bad(format!("state: {e}")))?;
        let (state, _) = snapshot::file::decode(&state_path, &state_bytes, None)?;
        let map = std::fs::read(dir.join(snapshot::MEMORY_MAP_FILE))
            .map_err(|e| bad(format!("memory.map: {e}")))?;
        parse_map(&state, &map).map_err(bad)?;
        let memory =
            File::open(dir.join(snapshot::MEMORY_FILE)).map_err(|e| bad(format!("memory: {e}")))?;
        Ok(MemoryServer {
            state: state_bytes,
            map,
            bytes: state.info.mem_bytes(),
            source: Source::Dir(memory),
            served: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        })
    }

    /// Serves `source`: a snapshot directory, or a pinned `ADDR#HASH` of another memory server.
    pub fn open(source: &str) -> Result<Self, Error> {
        if ["tcp://", "tls://", "unix:"]
            .iter()
            .any(|p| source.starts_with(p))
        {
            MemoryServer::upstream(&source.parse()?)
        } else {
            MemoryServer::open_dir(Path::new(source))
        }
    }

    /// The address clients restore from when this server listens at `addr`: pinned to the
    /// BLAKE3 of the state file it serves (`ADDR#HASH`).
    pub fn pinned(&self, addr: &Addr) -> Remote {
        Remote {
            addr: addr.clone(),
            state: blake3::hash(&self.state),
        }
    }

    /// Serves what another memory server serves, fetching each page from it once.
    pub fn upstream(remote: &Remote) -> Result<Self, Error> {
        // Reconnections happen under the memory server's filter: no name lookups then.
        let addr = &remote.addr.resolved()?;
        let (state_bytes, state, map, hashes, c) = fetch(remote)?;
        Ok(MemoryServer {
            state: state_bytes,
            map,
            bytes: state.info.mem_bytes(),
            source: Source::Upstream(Box::new(Upstream {
                addr: addr.clone(),
                conn: Mutex::new(c),
                hashes,
                cache: Mutex::new(HashMap::new()),
                fetched: AtomicU64::new(0),
            })),
            served: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        })
    }

    fn page(&self, n: u64) -> Result<Arc<Vec<u8>>, String> {
        if n >= self.bytes / PAGE {
            return Err(format!("page {n} is beyond the VM's memory"));
        }
        match &self.source {
            Source::Dir(f) => {
                let mut p = vec![0u8; PAGE as usize];
                f.read_exact_at(&mut p, n * PAGE)
                    .map_err(|e| format!("reading page {n}: {e}"))?;
                Ok(Arc::new(p))
            }
            Source::Upstream(u) => {
                let Upstream {
                    addr,
                    conn,
                    hashes,
                    cache,
                    fetched,
                } = &**u;
                let slot = lock(cache).entry(n).or_default().clone();
                // Concurrent requests for one page wait for the first fetch.
                let r = slot
                    .get_or_init(|| {
                        let mut c = lock(conn);
                        let p = match c.page(n) {
                            Ok(p) => p,
                            Err(e) => {
                                // The stream may be out of step now: start a new one for the
                                // next request.
                                if let Ok(fresh) = LazyClient::connect(addr) {
                                    *c = fresh;
                                }
                                return Err(format!("fetching page {n} upstream: {e}"));
                            }
                        };
                        drop(c);
                        fetched.fetch_add(1, Ordering::Relaxed);
                        match hashes.get(&n) {
                            Some(h) if blake3::hash(&p).as_bytes() == h => Ok(Arc::new(p)),
                            Some(_) => Err(format!("page {n} from upstream fails its hash")),
                            None if p.iter().all(|&b| b == 0) => Ok(Arc::new(p)),
                            None => Err(format!("page {n} from upstream should be zero")),
                        }
                    })
                    .clone();
                if r.is_err() {
                    // A failure is not kept: the next request for the page tries again.
                    let mut c = lock(cache);
                    if c.get(&n).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                        c.remove(&n);
                    }
                }
                r
            }
        }
    }

    fn stats(&self) -> ServerStats {
        let (upstream_pages, upstream_bytes) = match &self.source {
            Source::Dir(_) => (0, 0),
            Source::Upstream(u) => {
                let (conn, fetched) = (&u.conn, &u.fetched);
                (fetched.load(Ordering::Relaxed), lock(conn).received)
            }
        };
        ServerStats {
            pages_served: self.served.load(Ordering::Relaxed),
            bytes_sent: self.sent.load(Ordering::Relaxed),
            upstream_pages,
            upstream_bytes,
        }
    }

    fn client(&self, stream: &mut dyn Stream) -> std::io::Result<()> {
        let mut magic = [0u8; 8];
        match stream.read_exact(&mut magic) {
            // Connected and went away (a probe): nothing to say.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            r => r?,
        }
        if &magic != MAGIC {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not a Starling memory client",
            ));
        }
        let mut op = [0u8; 1];
        loop {
            if stream.read(&mut op)? == 0 {
                return Ok(());
            }
            let mut out = BufWriter::new(&mut *stream);
            let sent = match op[0] {
                OP_STATE | OP_MAP => {
                    let b = if op[0] == OP_STATE {
                        &self.state
                    } else {
                        &self.map
                    };
                    out.write_all(&(b.len() as u64).to_le_bytes())?;
                    out.write_all(b)?;
                    8 + b.len() as u64
                }
                OP_PAGE => {
                    drop(out);
                    let mut n = [0u8; 8];
                    stream.read_exact(&mut n)?;
                    let p = self
                        .page(u64::from_le_bytes(n))
                        .map_err(std::io::Error::other)?;
                    stream.write_all(&p)?;
                    self.served.fetch_add(1, Ordering::Relaxed);
                    self.sent.fetch_add(PAGE, Ordering::Relaxed);
                    continue;
                }
                OP_STATS => {
                    let s = self.stats();
                    for v in [
                        s.pages_served,
                        s.bytes_sent,
                        s.upstream_pages,
                        s.upstream_bytes,
                    ] {
                        out.write_all(&v.to_le_bytes())?;
                    }
                    0
                }
                other => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("unknown request {other}"),
                    ))
                }
            };
            out.flush()?;
            self.sent.fetch_add(sent, Ordering::Relaxed);
        }
    }

    /// Serves clients at `addr` until the process ends (one thread per client); `listening`
    /// runs once clients can connect.
    pub fn serve(self: Arc<Self>, addr: &Addr, listening: impl FnOnce()) -> Result<(), Error> {
        let io = |e: std::io::Error| Error::Io {
            what: format!("listening on {addr}"),
            source: e,
        };
        let clients = Arc::new(AtomicUsize::new(0));
        let refused_said = AtomicBool::new(false);
        // `open` gives the client's stream in the client's thread (a TLS handshake is made
        // there, not in the accepting loop).
        let spawn =
            |me: Arc<Self>, open: Box<dyn FnOnce() -> std::io::Result<Box<dyn Stream>> + Send>| {
                if clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
                    clients.fetch_sub(1, Ordering::SeqCst);
                    if !refused_said.swap(true, Ordering::Relaxed) {
                        eprintln!(
                            "starling memory server: {MAX_CLIENTS} clients at once; closing more \
                         (said once)"
                        );
                    }
                    return;
                }
                let place = Place(clients.clone());
                let _ = std::thread::Builder::new()
                    .name("memory-client".into())
                    .spawn(move || {
                        let _place = place;
                        let served = open().and_then(|mut s| me.client(&mut *s));
                        match served {
                            // Gone between requests (TLS peers often without close_notify).
                            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
                            Err(e) => eprintln!("starling memory server: a client: {e}"),
                            Ok(()) => {}
                        }
                    });
            };
        match addr {
            Addr::Tcp(a) => {
                let l = TcpListener::bind(a).map_err(io)?;
                listening();
                for s in l.incoming().flatten() {
                    let _ = s.set_nodelay(true);
                    // A client that stops reading does not hold its thread forever.
                    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
                    spawn(
                        self.clone(),
                        Box::new(move || Ok(Box::new(s) as Box<dyn Stream>)),
                    );
                }
            }
            Addr::Tls { at, .. } => {
                let wrap = tls().map_err(io)?;
                let l = TcpListener::bind(at).map_err(io)?;
                listening();
                for s in l.incoming().flatten() {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
                    spawn(self.clone(), Box::new(move || wrap.accept(s)));
                }
            }
            Addr::Unix(p) => {
                let _ = std::fs::remove_file(p);
                let l = UnixListener::bind(p).map_err(io)?;
                // The snapshot's memory is this user's: the socket is theirs alone, and each
                // peer's credentials are checked too (a mode can be changed behind our back).
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
                let me = crate::private::euid();
                let stranger_said = AtomicBool::new(false);
                listening();
                for s in l.incoming().flatten() {
                    match peer_uid(&s) {
                        Some(uid) if uid == me || uid == 0 => {}
                        uid => {
                            if !stranger_said.swap(true, Ordering::Relaxed) {
                                eprintln!(
                                    "starling memory server: refused a client of user {} (only \
                                     user {me} and root are served; said once)",
                                    uid.map_or("unknown".into(), |u| u.to_string())
                                );
                            }
                            continue;
                        }
                    }
                    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
                    spawn(
                        self.clone(),
                        Box::new(move || Ok(Box::new(s) as Box<dyn Stream>)),
                    );
                }
            }
        }
        Ok(())
    }
}

/// The user id of the process at the other end of `s` (SO_PEERCRED).
fn peer_uid(s: &UnixStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of a ucred and its size, as SO_PEERCRED
    // expects; the descriptor belongs to `s`, alive for the call.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0 && len as usize == std::mem::size_of::<libc::ucred>()).then_some(cred.uid)
}

/// What a lazily restored VM fetched: pages with data, and zero pages filled in place.
#[derive(Debug, Default)]
pub struct FaultStats {
    pub pages_fetched: AtomicU64,
    pub zero_pages: AtomicU64,
    pub bytes_received: AtomicU64,
}

impl FaultStats {
    /// The counters now, as the API reports them.
    pub fn snapshot(&self) -> crate::api::LazyStats {
        crate::api::LazyStats {
            pages_fetched: self.pages_fetched.load(Ordering::Relaxed),
            zero_pages: self.zero_pages.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
        }
    }
}

/// Connects to the memory server holding `remote` and returns the snapshot's state (checked
/// against the pinned hash), its page map and the connection (which then serves the faults).
pub fn fetch_state(remote: &Remote) -> Result<(VmState, PageMap, LazyClient), Error> {
    let (_, state, _, map, c) = fetch(remote)?;
    Ok((state, map, c))
}

/// The state (as sent and decoded) and the page map (as sent and checked) from a memory
/// server, and the connection.
type Fetched = (Vec<u8>, VmState, Vec<u8>, PageMap, LazyClient);

fn fetch(remote: &Remote) -> Result<Fetched, Error> {
    let addr = &remote.addr;
    let io = |e: std::io::Error| Error::Io {
        what: format!("memory server {addr}"),
        source: e,
    };
    let mut c = LazyClient::connect(addr).map_err(io)?;
    let state_bytes = c.state().map_err(io)?;
    let got = blake3::hash(&state_bytes);
    if got != remote.state {
        return Err(Error::Snapshot {
            path: addr.to_string().into(),
            reason: format!(
                "the state it sent has BLAKE3 {}, not the pinned {} (another snapshot, or \
                 damaged on the way)",
                got.to_hex(),
                remote.state.to_hex()
            ),
        });
    }
    // Pinned by its BLAKE3 (checked above): its MAC, made on the snapshot's host with that
    // host's key, is not what vouches for it here.
    let (state, _) = snapshot::file::decode(Path::new(&addr.to_string()), &state_bytes, None)?;
    let map_bytes = c.map().map_err(io)?;
    let map = parse_map(&state, &map_bytes).map_err(|r| Error::Snapshot {
        path: addr.to_string().into(),
        reason: r,
    })?;
    Ok((state_bytes, state, map_bytes, map, c))
}

/// Registers the VM's RAM with userfaultfd and serves its faults from `client` on a thread of
/// its own; a page that cannot be had (server gone, hash mismatch) ends the VM.
pub fn serve_faults(
    ram: &GuestRam,
    mut client: LazyClient,
    map: PageMap,
    exit: Arc<ExitSignal>,
) -> Result<Arc<FaultStats>, Error> {
    let uffd = UffdBuilder::new()
        .close_on_exec(true)
        .non_blocking(false)
        // KVM touches guest pages from the kernel: those faults must come to us too.
        .user_mode_only(false)
        .create()
        .map_err(|e| Error::Io {
            what: "creating a userfaultfd (needs root or /dev/userfaultfd)".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
    let ranges = ram.ranges();
    for &(host, len, _) in &ranges {
        uffd.register(host as *mut libc::c_void, len as usize)
            .map_err(|e| Error::Io {
                what: "registering guest memory with userfaultfd".into(),
                source: std::io::Error::other(e.to_string()),
            })?;
    }
    let stats = Arc::new(FaultStats::default());
    client.received = 0;
    let st = stats.clone();
    std::thread::Builder::new()
        .name("page-faults".into())
        .spawn(move || {
            if let Err(e) = fault_loop(&uffd, &ranges, &mut client, &map, &st) {
                eprintln!("starling: lazy memory: {e}");
                exit.raise(ExitReason::VcpuFailed(0));
                // Keep the registration: dropping it would let the guest run on zero pages
                // until the VM is torn down.
                loop {
                    std::thread::park();
                }
            }
        })
        .map_err(|e| Error::Io {
            what: "starting the page fault thread".into(),
            source: e,
        })?;
    Ok(stats)
}

fn fault_loop(
    uffd: &Uffd,
    ranges: &[(u64, u64, u64)],
    client: &mut LazyClient,
    map: &PageMap,
    stats: &FaultStats,
) -> Result<(), String> {
    loop {
        let event = match uffd.read_event() {
            Ok(Some(e)) => e,
            Ok(None) => continue,
            Err(e) => return Err(format!("reading faults: {e}")),
        };
        let Event::Pagefault { addr, .. } = event else {
            continue;
        };
        let at = addr as u64 & !(PAGE - 1);
        let Some(&(host, _, off)) = ranges.iter().find(|(h, l, _)| at >= *h && at < h + l) else {
            return Err(format!("a fault outside guest memory at {at:#x}"));
        };
        let n = (at - host + off) / PAGE;
        let done = match map.get(&n) {
            Some(hash) => {
                let page = client
                    .page(n)
                    .map_err(|e| format!("fetching page {n}: {e}"))?;
                if blake3::hash(&page).as_bytes() != hash {
                    return Err(format!("page {n} from the memory server fails its hash"));
                }
                stats.pages_fetched.fetch_add(1, Ordering::Relaxed);
                stats
                    .bytes_received
                    .store(client.received, Ordering::Relaxed);
                // SAFETY: `at` is a page inside a registered range of our RAM mapping and
                // `page` holds PAGE bytes; the kernel copies them in and wakes the faulter.
                unsafe {
                    uffd.copy(
                        page.as_ptr().cast(),
                        at as *mut libc::c_void,
                        PAGE as usize,
                        true,
                    )
                }
                .map(|_| ())
            }
            None => {
                stats.zero_pages.fetch_add(1, Ordering::Relaxed);
                // SAFETY: as above; the kernel maps a zero page.
                unsafe { uffd.zeropage(at as *mut libc::c_void, PAGE as usize, true) }.map(|_| ())
            }
        };
        match done {
            Ok(()) => {}
            // Another fault on the same page got there first.
            Err(userfaultfd::Error::CopyFailed(e)) | Err(userfaultfd::Error::ZeropageFailed(e))
                if e as i32 == libc::EEXIST => {}
            Err(e) => return Err(format!("filling page {n}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A memory server of `b"the state"` and no pages listening at `path`, once it is.
    fn serving(path: &Path) {
        let server = Arc::new(MemoryServer {
            state: b"the state".to_vec(),
            map: Vec::new(),
            bytes: 0,
            source: Source::Dir(tempfile::tempfile().unwrap()),
            served: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let listen = Addr::Unix(path.to_owned());
        std::thread::spawn(move || server.serve(&listen, || tx.send(()).unwrap()));
        rx.recv().unwrap();
    }

    #[test]
    fn a_memory_server_serves_at_most_its_clients_at_once_and_takes_more_as_they_go() {
        let t = tempfile::tempdir().unwrap();
        let path = &t.path().join("mem.sock");
        serving(path);
        // Clients that connect and say nothing hold their places.
        let mut idle: Vec<UnixStream> = (0..MAX_CLIENTS)
            .map(|_| UnixStream::connect(path).unwrap())
            .collect();
        let ask_state = |s: &mut UnixStream| -> std::io::Result<Vec<u8>> {
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
            s.write_all(MAGIC)?;
            s.write_all(&[OP_STATE])?;
            let mut len = [0u8; 8];
            s.read_exact(&mut len)?;
            let mut b = vec![0u8; u64::from_le_bytes(len) as usize];
            s.read_exact(&mut b)?;
            Ok(b)
        };
        // One more is closed without an answer.
        let mut extra = UnixStream::connect(path).unwrap();
        assert!(ask_state(&mut extra).is_err());
        // A place given back is taken by the next client, which is served.
        drop(idle.pop());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let got = loop {
            let mut next = UnixStream::connect(path).unwrap();
            match ask_state(&mut next) {
                Ok(b) => break b,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => panic!("no place was given back: {e}"),
            }
        };
        assert_eq!(got, b"the state");
    }

    #[test]
    fn a_unix_memory_server_is_its_user_s_alone() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("mem.sock");
        serving(&path);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Its owner is served.
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(MAGIC).unwrap();
        s.write_all(&[OP_STATE]).unwrap();
        let mut len = [0u8; 8];
        s.read_exact(&mut len).unwrap();
        assert_eq!(u64::from_le_bytes(len), 9);
        // Another user who finds the socket opened up (its mode changed behind the server's
        // back) connects, and is closed without a byte.
        if crate::private::euid() != 0 {
            eprintln!("SKIPPED-PART: connecting as another user needs root");
            return;
        }
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let out = std::process::Command::new("setpriv")
            .args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                "/usr/bin/python3",
                "-c",
            ])
            .arg(
                "import socket, sys\n\
                 s = socket.socket(socket.AF_UNIX)\n\
                 s.settimeout(10)\n\
                 s.connect(sys.argv[1])\n\
                 try:\n    s.sendall(b'STRLMEM1\\x01')\n    got = len(s.recv(64))\n\
                 except (BrokenPipeError, ConnectionResetError):\n    got = 0\n\
                 print('connected', got)",
            )
            .arg(&path)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            said.trim(),
            "connected 0",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn host_names_are_resolved_to_an_address_and_paths_are_left_alone() {
        let a: Addr = "tcp://localhost:7070".parse().unwrap();
        let Addr::Tcp(ip) = a.resolved().unwrap() else {
            panic!("not tcp")
        };
        let ip: std::net::SocketAddr = ip.parse().unwrap();
        assert!(ip.ip().is_loopback() && ip.port() == 7070, "{ip}");
        let u: Addr = "unix:/run/mem.sock".parse().unwrap();
        assert_eq!(u.resolved().unwrap(), u);
    }

    #[test]
    fn pinned_addresses_parse_print_and_refuse() {
        let h = blake3::hash(b"state");
        for a in [
            format!("tcp://10.0.0.1:7070#{}", h.to_hex()),
            format!("unix:/run/mem.sock#{}", h.to_hex()),
        ] {
            let r: Remote = a.parse().unwrap();
            assert_eq!(r.state, h);
            assert_eq!(r.to_string(), a);
        }
        for (bad, why) in [
            ("tcp://10.0.0.1:7070", "no state hash"),
            ("tcp://10.0.0.1#00", "not a BLAKE3 hash"),
            (
                "tcp://nohost#0000000000000000000000000000000000000000000000000000000000000000",
                "expected tcp://HOST:PORT",
            ),
        ] {
            let e = bad.parse::<Remote>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
