//! The host side of the agent's exec service (`starling-agent serve`, vsock port
//! [`EXEC_PORT`]; protocol in docs/api/agent.md): connect through the monitor's vsock socket,
//! send a command, relay its stdin, stdout and stderr, and return its exit status.
//!
//! Everything the agent sends is bounded here as the agent bounds what the host sends: frames
//! of at most [`MAX_FRAME`] bytes, of the known types only.

use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The agent's exec port (`EXEC_PORT` in agent/starling-agent.c).
pub const EXEC_PORT: u32 = 0x5354_0001;
/// At most this many arguments, and as many environment entries.
pub const MAX_ARGC: usize = 4096;
pub const MAX_ENVC: usize = 4096;
/// At most this many bytes in one argument or environment entry.
pub const MAX_STRING: usize = 128 << 10;
/// At most this many bytes in all arguments and environment entries together.
pub const MAX_STRINGS_TOTAL: usize = 2 << 20;
/// At most this many bytes of payload in one frame, either way.
pub const MAX_FRAME: usize = 64 << 10;
/// Request flag: the command gets a pseudo-terminal as its stdin, stdout and stderr.
pub const FLAG_PTY: u32 = 1;
/// How long the monitor may take to answer `CONNECT`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Frame types.
pub mod frame {
    /// Host → agent: bytes for the command's stdin.
    pub const STDIN: u8 = 1;
    /// Host → agent: the command's stdin ends (empty payload).
    pub const STDIN_EOF: u8 = 2;
    /// Agent → host: bytes the command wrote to stdout (all output, with a pty).
    pub const STDOUT: u8 = 3;
    /// Agent → host: bytes the command wrote to stderr.
    pub const STDERR: u8 = 4;
    /// Agent → host: u32 LE exit status (exit code, or 128 + signal); the last frame.
    pub const EXIT: u8 = 5;
    /// Agent → host: a UTF-8 message; followed by an exit frame when the command could not
    /// start (127 not found, 126 not executable), else by the end of the connection (the
    /// request was refused).
    pub const ERROR: u8 = 6;
    /// Host → agent, with a pty: the window size, u16 LE rows then u16 LE columns.
    pub const RESIZE: u8 = 7;
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("exec connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("vsock port {port}: {reason}")]
    Connect { port: u32, reason: String },
    #[error("exec request: {0}")]
    Request(String),
    #[error("the agent refused: {0}")]
    Refused(String),
    #[error("the agent broke the exec protocol: {0}")]
    Protocol(String),
    #[error("the connection ended before the command's exit status")]
    Closed,
}

/// A command to run in the VM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub argv: Vec<Vec<u8>>,
    /// `K=V` entries, added to (and overriding) the defaults PATH and HOME (and TERM with a pty).
    pub env: Vec<Vec<u8>>,
    /// Give the command a pseudo-terminal (its output then all arrives as stdout).
    pub tty: bool,
}

impl Request {
    pub fn new<S: AsRef<[u8]>>(argv: &[S]) -> Self {
        Request {
            argv: argv.iter().map(|a| a.as_ref().to_vec()).collect(),
            ..Request::default()
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push(format!("{key}={value}").into_bytes());
        self
    }

    /// The request as sent after the `exec` line; refuses what the agent would refuse.
    pub fn encode(&self) -> Result<Vec<u8>, ExecError> {
        let bad = |m: String| Err(ExecError::Request(m));
        if self.argv.is_empty() {
            return bad("no command".into());
        }
        if self.argv.len() > MAX_ARGC {
            return bad(format!(
                "{} arguments (at most {MAX_ARGC})",
                self.argv.len()
            ));
        }
        if self.env.len() > MAX_ENVC {
            return bad(format!(
                "{} environment entries (at most {MAX_ENVC})",
                self.env.len()
            ));
        }
        let mut total = 0;
        let mut out = b"exec\n".to_vec();
        for (what, list) in [("argument", &self.argv), ("environment entry", &self.env)] {
            out.extend_from_slice(&(list.len() as u32).to_le_bytes());
            for (i, s) in list.iter().enumerate() {
                if s.len() > MAX_STRING {
                    return bad(format!(
                        "{what} {i} is {} bytes (at most {MAX_STRING})",
                        s.len()
                    ));
                }
                if s.contains(&0) {
                    return bad(format!("{what} {i} holds a NUL byte"));
                }
                if what != "argument" && (s.first() == Some(&b'=') || !s.contains(&b'=')) {
                    return bad(format!(
                        "environment entry {i} ({}) is not K=V",
                        String::from_utf8_lossy(s)
                    ));
                }
                total += s.len();
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s);
            }
        }
        if total > MAX_STRINGS_TOTAL {
            return bad(format!(
                "arguments and environment are {total} bytes (at most {MAX_STRINGS_TOTAL})"
            ));
        }
        let flags = if self.tty { FLAG_PTY } else { 0 };
        out.extend_from_slice(&flags.to_le_bytes());
        Ok(out)
    }
}

/// Connects to a guest's vsock `port` through the monitor's host socket at `socket`
/// (`CONNECT <port>\n`, answered `OK <host port>\n`).
pub fn connect(socket: &Path, port: u32) -> Result<UnixStream, ExecError> {
    let mut s = UnixStream::connect(socket).map_err(|e| ExecError::Connect {
        port,
        reason: format!("{}: {e}", socket.display()),
    })?;
    handshake(&mut s, port)?;
    Ok(s)
}

/// The monitor's `CONNECT` handshake on a fresh connection to its vsock socket.
pub fn handshake(stream: &mut UnixStream, port: u32) -> Result<(), ExecError> {
    let fail = |reason: String| ExecError::Connect { port, reason };
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    // Byte by byte: nothing after the line may be consumed here.
    let mut line = Vec::new();
    loop {
        let mut b = [0u8];
        match stream.read(&mut b) {
            Ok(0) => {
                return Err(fail(
                    "the guest does not listen there (is its agent running?)".into(),
                ))
            }
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) if line.len() < 64 => line.push(b[0]),
            Ok(_) => return Err(fail("the monitor's answer is too long".into())),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return Err(fail(format!(
                    "no answer from the monitor in {} s",
                    HANDSHAKE_TIMEOUT.as_secs()
                )))
            }
            Err(e) => return Err(e.into()),
        }
    }
    stream.set_read_timeout(None)?;
    if !line.starts_with(b"OK ") {
        return Err(fail(format!(
            "the monitor answered {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    Ok(())
}

/// What the agent sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Error(String),
    Exit(u32),
}

/// Sends to the command (cheap to clone; usable from another thread).
#[derive(Clone)]
pub struct Input(Arc<Mutex<UnixStream>>);

impl Input {
    fn frame(&self, kind: u8, payload: &[u8]) -> std::io::Result<()> {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut head = [kind, 0, 0, 0, 0];
        head[1..].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        s.write_all(&head)?;
        s.write_all(payload)
    }

    /// Bytes for the command's stdin (split into frames of at most [`MAX_FRAME`]).
    pub fn data(&self, bytes: &[u8]) -> std::io::Result<()> {
        bytes
            .chunks(MAX_FRAME)
            .try_for_each(|c| self.frame(frame::STDIN, c))
    }

    /// The command's stdin ends.
    pub fn eof(&self) -> std::io::Result<()> {
        self.frame(frame::STDIN_EOF, &[])
    }

    /// The terminal's size (with a pty).
    pub fn resize(&self, rows: u16, cols: u16) -> std::io::Result<()> {
        let mut p = [0u8; 4];
        p[..2].copy_from_slice(&rows.to_le_bytes());
        p[2..].copy_from_slice(&cols.to_le_bytes());
        self.frame(frame::RESIZE, &p)
    }
}

/// One command going in the VM.
pub struct Session {
    reader: BufReader<UnixStream>,
    input: Input,
    ended: bool,
}

impl Session {
    /// Sends `req` on `stream` (connected to the agent, past the monitor's handshake).
    pub fn start(stream: UnixStream, req: &Request) -> Result<Session, ExecError> {
        let bytes = req.encode()?;
        let writer = stream.try_clone()?;
        let session = Session {
            reader: BufReader::new(stream),
            input: Input(Arc::new(Mutex::new(writer))),
            ended: false,
        };
        session
            .input
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_all(&bytes)?;
        Ok(session)
    }

    pub fn input(&self) -> Input {
        self.input.clone()
    }

    /// The next thing the agent sent; `Closed` if the connection ends before an exit frame.
    pub fn next_event(&mut self) -> Result<Event, ExecError> {
        if self.ended {
            return Err(ExecError::Closed);
        }
        let mut head = [0u8; 5];
        match self.reader.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(ExecError::Closed)
            }
            Err(e) => return Err(e.into()),
        }
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_FRAME {
            return Err(ExecError::Protocol(format!(
                "a frame of {len} bytes (at most {MAX_FRAME})"
            )));
        }
        let mut payload = vec![0u8; len];
        self.reader.read_exact(&mut payload).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                ExecError::Closed
            } else {
                e.into()
            }
        })?;
        Ok(match head[0] {
            frame::STDOUT => Event::Stdout(payload),
            frame::STDERR => Event::Stderr(payload),
            frame::ERROR => Event::Error(String::from_utf8_lossy(&payload).into_owned()),
            frame::EXIT => {
                let b: [u8; 4] = payload.as_slice().try_into().map_err(|_| {
                    ExecError::Protocol(format!("an exit frame of {len} bytes (4 expected)"))
                })?;
                self.ended = true;
                Event::Exit(u32::from_le_bytes(b))
            }
            t => return Err(ExecError::Protocol(format!("unknown frame type {t}"))),
        })
    }
}

/// How a command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Exit code, or 128 + signal.
    pub status: u32,
    /// Why the command did not start (`... command not found`), when it did not.
    pub error: Option<String>,
}

/// Runs `req` over `stream` (connected to the agent): `stdin` (None: empty) is copied to the
/// command from a thread of its own, which is left behind if still blocked when the command
/// exits; its output goes to `stdout` and `stderr`.
pub fn run(
    stream: UnixStream,
    req: &Request,
    stdin: Option<Box<dyn Read + Send>>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<Outcome, ExecError> {
    let shutdown = stream.try_clone()?;
    let mut session = Session::start(stream, req)?;
    let input = session.input();
    match stdin {
        None => input.eof()?,
        Some(mut r) => {
            std::thread::spawn(move || {
                let mut buf = vec![0u8; MAX_FRAME];
                loop {
                    match r.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            if input.data(&buf[..n]).is_err() {
                                return;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                let _ = input.eof();
            });
        }
    }
    let mut error = None;
    let result = loop {
        match session.next_event() {
            Ok(Event::Stdout(b)) => {
                stdout.write_all(&b)?;
                stdout.flush()?;
            }
            Ok(Event::Stderr(b)) => {
                stderr.write_all(&b)?;
                stderr.flush()?;
            }
            Ok(Event::Error(m)) => error = Some(m),
            Ok(Event::Exit(status)) => break Ok(Outcome { status, error }),
            Err(ExecError::Closed) => {
                break Err(match error {
                    Some(m) => ExecError::Refused(m),
                    None => ExecError::Closed,
                })
            }
            Err(e) => break Err(e),
        }
    };
    // Ends the stdin thread's next write, and tells the agent we are done.
    let _ = shutdown.shutdown(std::net::Shutdown::Both);
    result
}

/// Asks the agent to end the VM's workload (`stop`): the run command gets SIGTERM (SIGKILL
/// after 10 s), or, with none, the VM powers off. Returns what the agent does: `command` or
/// `poweroff`.
pub fn stop(mut stream: UnixStream) -> Result<String, ExecError> {
    stream.write_all(b"stop\n")?;
    let mut answer = Vec::new();
    stream.take(512).read_to_end(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer);
    let line = answer.lines().next().unwrap_or("").trim();
    match line.strip_prefix("ok ") {
        Some(what) => Ok(what.to_owned()),
        None if line.is_empty() => Err(ExecError::Closed),
        None => Err(ExecError::Refused(
            line.strip_prefix("error ").unwrap_or(line).to_owned(),
        )),
    }
}
