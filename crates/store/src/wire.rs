//! Objects over a unix socket: how a VM monitor reads its image's objects through the host's
//! one cache (the daemon answers; misses are fetched and verified there once per host). A
//! small binary protocol, so a warm read costs one round trip and no parsing to speak of.
//!
//! ```text
//! hello     client → "SLOW" u32 LE version        server → "SLOW" u32 LE version
//! request   u8 op (1 = one envelope), u16 LE source length, source (UTF-8, at most 4 KiB),
//!           [u8;32] object id, u64 LE largest uncompressed length the reader accepts
//!         | u8 op (2 = several), u16 LE source length, source, u16 LE count (1 to 64),
//!           then count × ([u8;32] object id, u64 LE largest length)
//! reply     per object asked, in order: u8 status (0 ok, 1 not found, 2 failed), u8 origin
//!           (0 local, 1 cache, 2 remote), u32 LE length, then the envelope (ok) or a UTF-8
//!           message (else)
//! ```
//!
//! Several objects in one request are what a sequential reader's read-ahead asks for: one
//! round trip (two thread wake-ups on each side) per batch instead of per chunk, and the
//! daemon writes each reply as soon as it has it.
//!
//! The source names where the daemon reads from (`repo:URL`, `store:PATH`); who may connect
//! is the socket's permission. Every envelope is verified again by the reader
//! ([`ObjectSource::read`]), so nothing reaches a guest that was not checked against its id
//! in the process that serves it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::source::{opened, ObjectSource, Origin};
use crate::{Error, ObjectId, Result};

const MAGIC: &[u8; 4] = b"SLOW";
pub const WIRE_VERSION: u32 = 1;
pub const OP_ENVELOPE: u8 = 1;
pub const OP_ENVELOPES: u8 = 2;
pub const MAX_SOURCE: usize = 4096;
/// The most objects one request may ask for.
pub const MAX_MANY: usize = 64;
/// Largest message a failed reply may carry.
pub const MAX_MESSAGE: u32 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    Failed = 2,
}

/// One request, as the server reads it: the objects it asks for, each with the largest
/// length the reader accepts, answered in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub source: String,
    pub wanted: Vec<(ObjectId, u64)>,
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// Reads the client's hello and answers it; an error for anything else.
pub fn accept_hello(s: &mut (impl Read + Write)) -> std::io::Result<()> {
    let mut h = [0u8; 8];
    s.read_exact(&mut h)?;
    if &h[..4] != MAGIC {
        return Err(bad("not a Starling object client"));
    }
    let v = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    s.write_all(MAGIC)?;
    s.write_all(&WIRE_VERSION.to_le_bytes())?;
    if v != WIRE_VERSION {
        return Err(bad("object protocol version mismatch"));
    }
    Ok(())
}

/// Reads one request; `Ok(None)` when the client closed the connection between requests.
pub fn read_request(s: &mut impl Read) -> std::io::Result<Option<Request>> {
    let mut op = [0u8; 1];
    let many = match s.read(&mut op)? {
        0 => return Ok(None),
        _ if op[0] == OP_ENVELOPE => false,
        _ if op[0] == OP_ENVELOPES => true,
        _ => return Err(bad("unknown object request")),
    };
    let n = read_u16(s)? as usize;
    if n > MAX_SOURCE {
        return Err(bad("source name too long"));
    }
    let mut src = vec![0u8; n];
    s.read_exact(&mut src)?;
    let source = String::from_utf8(src).map_err(|_| bad("source name is not UTF-8"))?;
    let count = if many { read_u16(s)? as usize } else { 1 };
    if !(1..=MAX_MANY).contains(&count) {
        return Err(bad("a request asks for 1 to 64 objects"));
    }
    let mut wanted = Vec::with_capacity(count);
    for _ in 0..count {
        let mut id = [0u8; 32];
        s.read_exact(&mut id)?;
        let mut len = [0u8; 8];
        s.read_exact(&mut len)?;
        wanted.push((ObjectId::from_bytes(id), u64::from_le_bytes(len)));
    }
    Ok(Some(Request { source, wanted }))
}

fn read_u16(s: &mut impl Read) -> std::io::Result<u16> {
    let mut n = [0u8; 2];
    s.read_exact(&mut n)?;
    Ok(u16::from_le_bytes(n))
}

/// Writes a reply: the envelope and where it came from, or why not.
pub fn write_reply(
    s: &mut impl Write,
    r: std::result::Result<(&[u8], Origin), (Status, String)>,
) -> std::io::Result<()> {
    // The envelope is written from where it lies (objects are up to megabytes each).
    let message;
    let (status, origin, body): (u8, u8, &[u8]) = match r {
        Ok((env, o)) => (Status::Ok as u8, origin_code(o), env),
        Err((st, msg)) => {
            message = msg;
            let m = message.as_bytes();
            (st as u8, 0, &m[..m.len().min(MAX_MESSAGE as usize)])
        }
    };
    let len = u32::try_from(body.len()).map_err(|_| bad("reply too large"))?;
    let mut head = [0u8; 6];
    head[0] = status;
    head[1] = origin;
    head[2..6].copy_from_slice(&len.to_le_bytes());
    s.write_all(&head)?;
    s.write_all(body)
}

fn origin_code(o: Origin) -> u8 {
    match o {
        Origin::Local => 0,
        Origin::Cache => 1,
        Origin::Remote => 2,
    }
}

/// The largest envelope an object of at most `max_len` bytes can have (zstd's worst case
/// plus the header).
pub fn envelope_bound(max_len: u64) -> u64 {
    crate::HEADER_LEN as u64 + max_len + max_len / 128 + 1024
}

/// A source read through a daemon's object socket. Connections are kept and reused; one
/// that breaks (a daemon restarting) is replaced once per read before the read fails.
pub struct SocketSource {
    path: PathBuf,
    source: String,
    timeout: Duration,
    idle: Mutex<Vec<UnixStream>>,
}

impl SocketSource {
    /// Reads `source` (`repo:URL`, `store:PATH`) through the daemon at `path`; a read that
    /// gets no answer within `timeout` fails.
    pub fn new(path: &Path, source: &str, timeout: Duration) -> Result<SocketSource> {
        if source.len() > MAX_SOURCE {
            return Err(Error::Invalid {
                what: "object source name".into(),
                reason: format!("is {} bytes, more than {MAX_SOURCE}", source.len()),
            });
        }
        Ok(SocketSource {
            path: path.to_path_buf(),
            source: source.to_string(),
            timeout,
            idle: Mutex::new(Vec::new()),
        })
    }

    fn connect(&self) -> std::io::Result<UnixStream> {
        let mut s = UnixStream::connect(&self.path)?;
        s.set_read_timeout(Some(self.timeout))?;
        s.set_write_timeout(Some(self.timeout))?;
        s.write_all(MAGIC)?;
        s.write_all(&WIRE_VERSION.to_le_bytes())?;
        let mut h = [0u8; 8];
        s.read_exact(&mut h)?;
        if &h[..4] != MAGIC || h[4..] != WIRE_VERSION.to_le_bytes() {
            return Err(bad("the daemon speaks another object protocol version"));
        }
        Ok(s)
    }

    /// Asks for `wanted` (at most [`MAX_MANY`]) in one request.
    fn send(&self, s: &mut UnixStream, wanted: &[(ObjectId, u64)]) -> std::io::Result<()> {
        let mut req = Vec::with_capacity(5 + self.source.len() + 40 * wanted.len());
        req.push(if wanted.len() == 1 {
            OP_ENVELOPE
        } else {
            OP_ENVELOPES
        });
        req.extend_from_slice(&(self.source.len() as u16).to_le_bytes());
        req.extend_from_slice(self.source.as_bytes());
        if wanted.len() != 1 {
            req.extend_from_slice(&(wanted.len() as u16).to_le_bytes());
        }
        for (id, max_len) in wanted {
            req.extend_from_slice(id.as_bytes());
            req.extend_from_slice(&max_len.to_le_bytes());
        }
        s.write_all(&req)
    }

    /// Reads the reply for an object of at most `max_len` bytes.
    fn reply(&self, s: &mut UnixStream, max_len: u64) -> std::io::Result<Reply> {
        let mut head = [0u8; 6];
        s.read_exact(&mut head)?;
        let len = u32::from_le_bytes([head[2], head[3], head[4], head[5]]);
        let limit = if head[0] == Status::Ok as u8 {
            envelope_bound(max_len)
        } else {
            u64::from(MAX_MESSAGE)
        };
        if u64::from(len) > limit {
            return Err(bad("the daemon sent more than the object can have"));
        }
        // Read into capacity (not a zeroed buffer first: one pass over the bytes less).
        let mut body = Vec::with_capacity(len as usize);
        (&mut *s).take(u64::from(len)).read_to_end(&mut body)?;
        if body.len() != len as usize {
            return Err(bad(&format!(
                "the daemon's reply ended after {} of {len} bytes",
                body.len()
            )));
        }
        Ok(Reply {
            status: head[0],
            origin: head[1],
            body,
        })
    }

    fn unavailable(&self, id: &ObjectId, reason: String) -> Error {
        Error::Unavailable {
            id: *id,
            from: self.describe(),
            reason,
        }
    }

    fn pooled(&self) -> std::io::Result<UnixStream> {
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        pooled.map_or_else(|| self.connect(), Ok)
    }

    fn keep(&self, s: UnixStream) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(s);
    }

    /// A reply as the envelope and where it came from, or why not.
    fn answer(&self, id: &ObjectId, r: Reply) -> Result<(Vec<u8>, Origin)> {
        match r.status {
            0 => Ok((
                r.body,
                match r.origin {
                    0 => Origin::Local,
                    1 => Origin::Cache,
                    _ => Origin::Remote,
                },
            )),
            1 => Err(Error::NotFound(*id)),
            _ => Err(self.unavailable(id, String::from_utf8_lossy(&r.body).into())),
        }
    }

    /// Asks for `wanted` (at most [`MAX_MANY`]) in one request and hands each reply to
    /// `each` as it arrives: on a kept connection, or a new one when that one breaks before
    /// its first answer (the daemon restarted, or closed it while idle). How many were
    /// answered, and why the rest were not.
    fn exchange(
        &self,
        wanted: &[(ObjectId, u64)],
        each: &mut dyn FnMut(usize, Reply),
    ) -> (usize, String) {
        let mut last = String::new();
        'connection: for fresh in [false, true] {
            let s = if fresh { self.connect() } else { self.pooled() };
            let mut s = match s {
                Ok(s) => s,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            if let Err(e) = self.send(&mut s, wanted) {
                last = e.to_string();
                continue;
            }
            for (i, (_, max_len)) in wanted.iter().enumerate() {
                match self.reply(&mut s, *max_len) {
                    Ok(r) => each(i, r),
                    Err(e) if i == 0 => {
                        last = e.to_string();
                        continue 'connection;
                    }
                    Err(e) => return (i, e.to_string()),
                }
            }
            self.keep(s);
            return (wanted.len(), last);
        }
        (0, last)
    }
}

struct Reply {
    status: u8,
    origin: u8,
    body: Vec<u8>,
}

impl ObjectSource for SocketSource {
    fn envelope(&self, id: &ObjectId, max_len: u64) -> Result<(Vec<u8>, Origin)> {
        let mut got = None;
        let (_, why) = self.exchange(&[(*id, max_len)], &mut |_, r| got = Some(r));
        match got {
            Some(r) => self.answer(id, r),
            None => Err(self.unavailable(id, why)),
        }
    }

    fn read_each(
        &self,
        wanted: &[(ObjectId, u64)],
        each: &mut dyn FnMut(usize, Result<(Vec<u8>, Origin)>),
    ) {
        for (k, part) in wanted.chunks(MAX_MANY).enumerate() {
            let base = k * MAX_MANY;
            let (done, _) = self.exchange(part, &mut |i, r| {
                let (id, max_len) = &part[i];
                let read = self
                    .answer(id, r)
                    .and_then(|(env, origin)| Ok((opened(id, &env, *max_len)?, origin)));
                each(base + i, read);
            });
            // What a broken connection left unanswered: one by one, each reconnecting
            // (and failing with the reason when the daemon is gone).
            for (i, (id, max_len)) in part.iter().enumerate().skip(done) {
                each(base + i, self.read(id, *max_len));
            }
        }
    }

    fn describe(&self) -> String {
        format!("{} via {}", self.source, self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A server answering from a map, closing each connection after `per_conn` requests.
    fn serve(
        path: &Path,
        objects: std::collections::HashMap<ObjectId, Vec<u8>>,
        per_conn: usize,
    ) -> std::thread::JoinHandle<()> {
        let l = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { return };
                if accept_hello(&mut c).is_err() {
                    continue;
                }
                'conn: for _ in 0..per_conn {
                    let Ok(Some(req)) = read_request(&mut c) else {
                        break;
                    };
                    for (id, _) in &req.wanted {
                        let r = match objects.get(id) {
                            Some(env) if req.source == "store:/x" => {
                                Ok((env.as_slice(), Origin::Cache))
                            }
                            Some(_) => {
                                Err((Status::Failed, format!("unknown source {}", req.source)))
                            }
                            None => Err((Status::NotFound, String::new())),
                        };
                        if write_reply(&mut c, r).is_err() {
                            break 'conn;
                        }
                    }
                }
            }
        })
    }

    #[test]
    fn reads_verify_reconnect_and_refuse_oversized_replies() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("objects.sock");
        let data = vec![5u8; 50_000];
        let id = ObjectId::of(&data);
        let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        let big_id = ObjectId::of(&big);
        let objects = [
            (id, crate::envelope::encode(&data, 3)),
            (big_id, crate::envelope::encode(&big, 3)),
        ]
        .into();
        // The server drops every connection after one request: each read reconnects.
        serve(&sock, objects, 1);
        let src = SocketSource::new(&sock, "store:/x", Duration::from_secs(5)).unwrap();
        for _ in 0..3 {
            let (b, o) = src.read(&id, 50_000).unwrap();
            assert_eq!((b, o), (data.clone(), Origin::Cache));
        }
        assert!(matches!(
            src.read(&ObjectId::of(b"nothing"), 10),
            Err(Error::NotFound(_))
        ));
        // A reader that allows less than the object is refused before anything is decoded.
        assert!(src.read(&big_id, 1000).is_err());
        let other =
            SocketSource::new(&sock, "repo:http://elsewhere/", Duration::from_secs(5)).unwrap();
        let e = other.read(&id, 50_000).unwrap_err().to_string();
        assert!(e.contains("unknown source"), "{e}");
        // No daemon: a clear error naming the socket.
        let gone = SocketSource::new(
            &dir.path().join("none.sock"),
            "store:/x",
            Duration::from_secs(1),
        )
        .unwrap();
        let e = gone.read(&id, 50_000).unwrap_err().to_string();
        assert!(e.contains("none.sock"), "{e}");
    }

    /// Many objects in one request: each verified and handed over in order, a damaged or
    /// missing one failing alone; a daemon that drops the connection after every request
    /// still answers everything (the rest asked one by one).
    #[test]
    fn many_objects_in_one_request() {
        let dir = tempfile::tempdir().unwrap();
        let objects: Vec<Vec<u8>> = (0..150u32)
            .map(|i| (0..3000u32).map(|x| (x * 31 + i * 7) as u8).collect())
            .collect();
        let mut served: std::collections::HashMap<ObjectId, Vec<u8>> = objects
            .iter()
            .map(|d| (ObjectId::of(d), crate::envelope::encode(d, 3)))
            .collect();
        let damaged = ObjectId::of(&objects[70]);
        let env = served.get_mut(&damaged).unwrap();
        let n = env.len();
        env[n - 2] ^= 1;
        let mut wanted: Vec<(ObjectId, u64)> =
            objects.iter().map(|d| (ObjectId::of(d), 3000)).collect();
        wanted.insert(100, (ObjectId::of(b"absent"), 10));
        for per_conn in [usize::MAX, 1] {
            let sock = dir.path().join(format!("objects-{per_conn}.sock"));
            serve(&sock, served.clone(), per_conn);
            let src = SocketSource::new(&sock, "store:/x", Duration::from_secs(5)).unwrap();
            let mut got = Vec::new();
            src.read_each(&wanted, &mut |i, r| got.push((i, r)));
            assert_eq!(got.len(), wanted.len());
            for (k, (i, r)) in got.into_iter().enumerate() {
                assert_eq!(i, k, "in order");
                match (i, r) {
                    (70, Err(Error::Corrupt { .. })) => {}
                    (100, Err(Error::NotFound(_))) => {}
                    (i, Ok((b, Origin::Cache))) if i != 70 && i != 100 => {
                        assert_eq!(b, objects[if i > 100 { i - 1 } else { i }]);
                    }
                    (i, r) => panic!("object {i}: {r:?}"),
                }
            }
        }
    }

    /// A daemon that dies half way through a reply: an error, never a short object.
    #[test]
    fn a_reply_cut_short_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("objects.sock");
        let l = UnixListener::bind(&sock).unwrap();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { return };
                if accept_hello(&mut c).is_ok() && read_request(&mut c).is_ok() {
                    let mut head = vec![Status::Ok as u8, 1];
                    head.extend_from_slice(&1000u32.to_le_bytes());
                    let _ = c.write_all(&head);
                    let _ = c.write_all(&[7u8; 10]);
                }
            }
        });
        let src = SocketSource::new(&sock, "store:/x", Duration::from_secs(5)).unwrap();
        let e = src.envelope(&ObjectId::of(b"x"), 5000).unwrap_err();
        assert!(
            matches!(e, Error::Unavailable { .. })
                && e.to_string().contains("ended after 10 of 1000 bytes"),
            "{e}"
        );
    }

    #[test]
    fn hostile_requests_are_refused() {
        let mut long = vec![OP_ENVELOPE];
        long.extend_from_slice(&(MAX_SOURCE as u16 + 1).to_le_bytes());
        assert!(read_request(&mut long.as_slice()).is_err());
        assert!(read_request(&mut [9u8].as_slice()).is_err());
        let mut truncated = vec![OP_ENVELOPE, 3, 0, b'a'];
        truncated.truncate(4);
        assert!(read_request(&mut truncated.as_slice()).is_err());
        assert!(read_request(&mut [].as_slice()).unwrap().is_none());
        // Several at once: 1 to 64 of them.
        let many = |count: u16, items: usize| {
            let mut r = vec![OP_ENVELOPES, 1, 0, b's'];
            r.extend_from_slice(&count.to_le_bytes());
            for i in 0..items {
                r.extend_from_slice(&[i as u8; 32]);
                r.extend_from_slice(&(i as u64).to_le_bytes());
            }
            r
        };
        let two = read_request(&mut many(2, 2).as_slice()).unwrap().unwrap();
        assert_eq!(two.source, "s");
        assert_eq!(
            two.wanted,
            vec![
                (ObjectId::from_bytes([0; 32]), 0),
                (ObjectId::from_bytes([1; 32]), 1)
            ]
        );
        assert!(read_request(&mut many(0, 0).as_slice()).is_err());
        assert!(read_request(&mut many(65, 65).as_slice()).is_err());
        assert!(
            read_request(&mut many(3, 2).as_slice()).is_err(),
            "cut short"
        );
        let mut hello = std::io::Cursor::new(b"HTTP/1.1".to_vec());
        struct Rw<'a>(&'a mut std::io::Cursor<Vec<u8>>, Vec<u8>);
        impl Read for Rw<'_> {
            fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
                self.0.read(b)
            }
        }
        impl Write for Rw<'_> {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.1.extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        assert!(accept_hello(&mut Rw(&mut hello, Vec::new())).is_err());
    }
}
