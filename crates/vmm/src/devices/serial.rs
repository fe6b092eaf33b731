//! The 8250 UART on COM1 (vm-superio), its interrupt delivered through an irqfd, its output to
//! stdout, a file or an attachable socket (with a log), its input from stdin or the socket.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use serde::{Deserialize, Serialize};

use super::coalesced::Ring;
use crate::bus::BusDevice;
pub use crate::config::Console;
use crate::persist::{Persist, SaveContext};
use crate::Error;

/// The UART as saved: its nine registers (vm-superio's order) and the input not yet read.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SerialState {
    pub regs: [u8; 9],
    pub in_buffer: Vec<u8>,
}

pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Serial output: a line-buffer-free writer (guests print a byte at a time).
pub struct ConsoleOut(Box<dyn Write + Send>);

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(buf)?;
        self.0.flush()?;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

pub struct SerialPort(
    pub Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleOut>,
    /// The attach socket of a `Console::Socket`, taken by the thread that serves it.
    pub Option<UnixListener>,
    /// KVM's ring for the transmit register's writes, registered while a write there only
    /// outputs a byte ([`SerialPort::coalesce`]).
    pub Option<Ring>,
);

/// The transmit register's port and the registers whose writes decide whether a write to it
/// may wait in the ring: the interrupt enable (THR empty), line control (DLAB) and modem
/// control (loopback) registers.
const THR: u64 = 0;
const IER: u64 = 1;
const LCR: u64 = 3;
const MCR: u64 = 4;

/// The console log is cut back to its newest half beyond this (a guest cannot fill the disk).
const LOG_MAX: u64 = 16 << 20;
/// Output held for an attached client that reads slowly (bytes); beyond it the client is
/// told how much it missed (the log still has it) rather than the guest's vCPU stalling. A
/// command's output through `starling run` piped into a slow reader stays whole up to this.
const CLIENT_BACKLOG: usize = 4 << 20;
/// What the client's writer takes from the backlog at a time: what it holds while a slow
/// client blocks it is not counted in the backlog, so it stays small.
const CLIENT_CHUNK: usize = 64 << 10;

/// The log of a socket console: written by the vCPU thread, read back whole for a client
/// that attaches (under this lock, so the replay and the stream meet exactly).
struct LogState {
    log: File,
    log_path: PathBuf,
    /// Bytes in the log file now (it is cut back beyond `LOG_MAX`).
    written: u64,
    /// Bytes ever written: where each queued chunk ends, in this count.
    total: u64,
}

/// Who gets a socket console's output: the attached client and how far it has it (in
/// `LogState::total`'s count), and the output not sent to it yet.
struct ConsoleShared {
    log: Mutex<LogState>,
    client: Mutex<Option<(UnixStream, u64)>>,
    /// Whether a client is attached: the vCPU's write keeps a backlog only then, and never
    /// waits on `client` (held while a slow client is written to).
    attached: AtomicBool,
    backlog: Mutex<Backlog>,
    /// Output added to the backlog, or the backlog emptied.
    changed: Condvar,
}

/// Output for the attached client not sent yet: `bytes` begin at `start` in the count of
/// bytes ever written.
#[derive(Default)]
struct Backlog {
    bytes: VecDeque<u8>,
    start: u64,
    /// The writer thread is writing what it took last.
    sending: bool,
}

/// Output to the log and, through the backlog and a writer thread, to the attached client.
struct SocketOut {
    shared: Arc<ConsoleShared>,
}

impl Write for SocketOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let grew = {
            let mut st = lock(&self.shared.log);
            if st.written + buf.len() as u64 > LOG_MAX {
                keep_newest_half(&st.log_path)?;
                st.log = File::options().append(true).open(&st.log_path)?;
                st.written = st.log.metadata()?.len();
            }
            st.log.write_all(buf)?;
            st.written += buf.len() as u64;
            st.total += buf.len() as u64;
            let attached = self.shared.attached.load(Ordering::Acquire);
            if attached {
                // Under the log's lock, so an attach's replay and the backlog meet exactly.
                let mut b = lock(&self.shared.backlog);
                b.bytes.extend(buf);
                let over = b.bytes.len().saturating_sub(CLIENT_BACKLOG);
                if over > 0 {
                    b.bytes.drain(..over);
                    b.start += over as u64;
                }
            }
            attached
        };
        // The writer thread wakes only for output it has to send (a guest writes a byte at
        // a time, and with nobody attached there is nothing to send).
        if grew {
            self.shared.changed.notify_all();
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn keep_newest_half(path: &Path) -> std::io::Result<()> {
    let data = std::fs::read(path)?;
    let tail = &data[data.len() / 2..];
    let tmp = path.with_extension("cut");
    std::fs::write(
        &tmp,
        [b"[starling: older console output dropped]\n", tail].concat(),
    )?;
    std::fs::rename(&tmp, path)
}

static CONSOLES: Mutex<Vec<(PathBuf, Arc<ConsoleShared>)>> = Mutex::new(Vec::new());

/// The shared state of the socket console at `socket` (made by its output, found by its
/// attach thread).
fn shared(socket: &Path) -> Option<Arc<ConsoleShared>> {
    let g = CONSOLES.lock().unwrap_or_else(|p| p.into_inner());
    g.iter().find(|(p, _)| p == socket).map(|(_, c)| c.clone())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends the backlog to the attached client as it grows, at the client's pace; a client more
/// than [`CLIENT_BACKLOG`] behind is told how many bytes it missed.
fn client_writer(shared: Arc<ConsoleShared>) {
    loop {
        let (from, chunk) = {
            let mut b = lock(&shared.backlog);
            while b.bytes.is_empty() {
                b = shared.changed.wait(b).unwrap_or_else(|p| p.into_inner());
            }
            let take = b.bytes.len().min(CLIENT_CHUNK);
            let chunk: Vec<u8> = b.bytes.drain(..take).collect();
            let from = b.start;
            b.start += chunk.len() as u64;
            b.sending = true;
            (from, chunk)
        };
        let mut g = lock(&shared.client);
        if let Some((c, has)) = g.as_mut() {
            let sent = if from > *has {
                let note = format!(
                    "\r\n[starling: {} bytes of console output not sent here: this reader fell \
                     behind; the console log has them]\r\n",
                    from - *has
                );
                c.write_all(note.as_bytes())
                    .and_then(|()| c.write_all(&chunk))
            } else {
                // The replay at its attach may have covered the start of it.
                let skip = usize::try_from(*has - from).unwrap_or(usize::MAX);
                c.write_all(chunk.get(skip..).unwrap_or_default())
            };
            match sent {
                Ok(()) => *has = from + chunk.len() as u64,
                Err(_) => {
                    *g = None;
                    shared.attached.store(false, Ordering::Release);
                }
            }
        }
        drop(g);
        lock(&shared.backlog).sending = false;
        shared.changed.notify_all();
    }
}

/// Waits, up to `limit`, until every socket console's attached client has been sent the
/// output so far: called when the VM has ended, before the process exits and the client's
/// stream closes.
pub fn flush_attached(limit: Duration) {
    let consoles: Vec<Arc<ConsoleShared>> =
        lock(&CONSOLES).iter().map(|(_, c)| c.clone()).collect();
    let until = Instant::now() + limit;
    for c in consoles {
        let mut b = lock(&c.backlog);
        while c.attached.load(Ordering::Acquire) && (!b.bytes.is_empty() || b.sending) {
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                return;
            };
            b = c
                .changed
                .wait_timeout(b, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Opens the console file `path` now, as the VM's console will want it, for the VM built
/// later in this process: a jailed monitor opens its caller's file while it still may.
pub fn preopen(path: &Path) -> std::io::Result<()> {
    let file = open_console_file(path)?;
    crate::jail::handed::put(format!("console:{}", path.display()), file);
    Ok(())
}

// What the guest prints is its owner's: a console file the monitor creates is 0600.
fn open_console_file(path: &Path) -> std::io::Result<File> {
    if let Some(f) = crate::jail::handed::take(&format!("console:{}", path.display())) {
        return Ok(f);
    }
    std::os::unix::fs::OpenOptionsExt::mode(
        File::options().write(true).create(true).truncate(true),
        0o600,
    )
    .open(path)
}

fn console_out(console: &Console) -> std::io::Result<(ConsoleOut, Option<UnixListener>)> {
    let out: Box<dyn Write + Send> = match console {
        Console::Stdio => Box::new(std::io::stdout()),
        Console::File(p) => Box::new(open_console_file(p)?),
        Console::Off => Box::new(std::io::sink()),
        Console::Socket { socket, log } => {
            let _ = std::fs::remove_file(socket);
            let listener = UnixListener::bind(socket)?;
            std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            let file = File::options().create(true).append(true).open(log)?;
            std::fs::set_permissions(log, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            let written = file.metadata()?.len();
            let shared = Arc::new(ConsoleShared {
                log: Mutex::new(LogState {
                    log: file,
                    log_path: log.clone(),
                    written,
                    total: written,
                }),
                client: Mutex::new(None),
                attached: AtomicBool::new(false),
                backlog: Mutex::new(Backlog::default()),
                changed: Condvar::new(),
            });
            {
                let mut g = CONSOLES.lock().unwrap_or_else(|p| p.into_inner());
                g.retain(|(p, _)| p != socket);
                g.push((socket.clone(), shared.clone()));
            }
            let for_writer = shared.clone();
            std::thread::Builder::new()
                .name("console-out".into())
                .spawn(move || client_writer(for_writer))?;
            return Ok((ConsoleOut(Box::new(SocketOut { shared })), Some(listener)));
        }
    };
    Ok((ConsoleOut(out), None))
}

/// Makes `writer` the attached client: it is sent the console from its start (the log as it
/// is now), then what follows through the backlog, which starts where the replay ends (both
/// under the log's lock, which every write takes first).
fn attach_client(console: &ConsoleShared, mut writer: UnixStream) -> std::io::Result<()> {
    let st = lock(&console.log);
    let replay = std::fs::read(&st.log_path).unwrap_or_default();
    let upto = st.total;
    {
        let mut b = lock(&console.backlog);
        b.bytes.clear();
        b.start = upto;
    }
    console.attached.store(true, Ordering::Release);
    let mut g = lock(&console.client);
    drop(st);
    if let Err(e) = writer.write_all(&replay) {
        *g = None;
        console.attached.store(false, Ordering::Release);
        return Err(e);
    }
    *g = Some((writer, upto));
    Ok(())
}

/// Serves a socket console: each client that connects becomes the attached one (the
/// previous one is let go) and its input goes to the guest.
pub fn serve_attach(
    listener: UnixListener,
    socket: PathBuf,
    serial: Arc<Mutex<SerialPort>>,
    done: Arc<std::sync::atomic::AtomicBool>,
) {
    let Some(console) = shared(&socket) else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("console-attach".into())
        .spawn(move || {
            for conn in listener.incoming() {
                if done.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let Ok(writer) = conn.try_clone() else {
                    continue;
                };
                if attach_client(&console, writer).is_err() {
                    continue;
                }
                let serial = serial.clone();
                let done = done.clone();
                let _ = std::thread::Builder::new()
                    .name("console-in".into())
                    .spawn(move || {
                        let mut buf = [0u8; 256];
                        while let Ok(n) = conn.read(&mut buf) {
                            if n == 0 || done.load(std::sync::atomic::Ordering::SeqCst) {
                                return;
                            }
                            let mut rest = &buf[..n];
                            while !rest.is_empty() {
                                let took =
                                    serial.lock().unwrap_or_else(|p| p.into_inner()).input(rest);
                                rest = &rest[took..];
                                if !rest.is_empty() {
                                    std::thread::sleep(std::time::Duration::from_millis(5));
                                }
                            }
                        }
                    });
            }
        });
}

impl SerialPort {
    pub fn new(irq: EventFd, console: &Console) -> std::io::Result<Self> {
        let (out, listener) = console_out(console)?;
        Ok(SerialPort(
            Serial::new(IrqTrigger(irq), out),
            listener,
            None,
        ))
    }

    /// Queues input bytes for the guest; returns how many fit.
    pub fn input(&mut self, bytes: &[u8]) -> usize {
        self.0.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// Lets writes to the transmit register wait in KVM's `ring` instead of exiting, while
    /// that is all they do: no divisor latch (DLAB), no transmit interrupt, no loopback.
    pub fn coalesce(&mut self, ring: Ring) {
        self.2 = Some(ring);
        self.update_coalescing();
    }

    /// Outputs what the guest wrote to the transmit register without exiting.
    pub fn drain(&mut self) {
        let SerialPort(serial, _, ring) = self;
        if let Some(ring) = ring {
            ring.drain(|_, bytes| {
                for &b in bytes {
                    let _ = serial.write(THR as u8, b);
                }
            });
        }
    }

    /// Whether writes to the transmit register wait in the ring now.
    pub fn coalescing(&self) -> bool {
        self.2.as_ref().is_some_and(Ring::registered)
    }

    fn update_coalescing(&mut self) {
        let Some(ring) = self.2.as_mut() else {
            return;
        };
        let s = self.0.state();
        ring.set(
            s.line_control & 0x80 == 0
                && s.interrupt_enable & 0x02 == 0
                && s.modem_control & 0x10 == 0,
        );
    }
}

impl<'a> Persist<'a> for SerialPort {
    type State = SerialState;
    /// Its interrupt and where its output goes now.
    type Args = (EventFd, &'a Console);

    fn save(&mut self, _ctx: &SaveContext) -> Result<SerialState, Error> {
        // The ring is not part of the state: what waits in it is output now.
        self.drain();
        let s = self.0.state();
        Ok(SerialState {
            regs: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            in_buffer: s.in_buffer,
        })
    }

    fn restore((irq, console): Self::Args, s: &SerialState) -> Result<SerialPort, Error> {
        let r = s.regs;
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: r[0],
            baud_divisor_high: r[1],
            interrupt_enable: r[2],
            interrupt_identification: r[3],
            line_control: r[4],
            line_status: r[5],
            modem_control: r[6],
            modem_status: r[7],
            scratch: r[8],
            in_buffer: s.in_buffer.clone(),
        };
        let (out, listener) = console_out(console).map_err(|e| Error::Io {
            what: "opening the console".into(),
            source: e,
        })?;
        Serial::from_state(&state, IrqTrigger(irq), vm_superio::serial::NoEvents, out)
            .map(|s| SerialPort(s, listener, None))
            .map_err(|e| Error::Invalid(format!("serial state: {e:?}")))
    }
}

impl BusDevice for SerialPort {
    // Every access drains the ring first: the bytes written before it are output before it
    // takes effect (a divisor latch set, a loopback turned on), and a guest polling the line
    // status between characters sees them out at once.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.drain();
        if let Some(b) = data.first_mut() {
            *b = self.0.read(offset as u8);
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.drain();
        if let Some(&v) = data.first() {
            let _ = self.0.write(offset as u8, v);
        }
        if matches!(offset, IER | LCR | MCR) {
            self.update_coalescing();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client attaching while the guest writes gets the console exactly: the log before
    /// it, the output after it, nothing twice, nothing missing.
    #[test]
    fn an_attach_mid_output_gets_every_byte_once() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("console.sock");
        let log = dir.path().join("console.log");
        let (mut out, _listener) = console_out(&Console::Socket {
            socket: socket.clone(),
            log: log.clone(),
        })
        .unwrap();
        let console = shared(&socket).unwrap();
        let writer = std::thread::spawn(move || {
            // A byte at a time, as a guest writes.
            for i in 0..4000 {
                for b in format!("line {i}\n").bytes() {
                    out.write_all(&[b]).unwrap();
                }
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(5));
        let (ours, theirs) = UnixStream::pair().unwrap();
        attach_client(&console, theirs).unwrap();
        let reader = std::thread::spawn(move || read_all(ours));
        writer.join().unwrap();
        let got = reader.join().unwrap();
        let want = std::fs::read(&log).unwrap();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the attached stream differs from the log");
    }

    fn attached(dir: &Path) -> (ConsoleOut, UnixStream, PathBuf) {
        let socket = dir.join("console.sock");
        let log = dir.join("console.log");
        let (out, _listener) = console_out(&Console::Socket {
            socket: socket.clone(),
            log: log.clone(),
        })
        .unwrap();
        let (ours, theirs) = UnixStream::pair().unwrap();
        attach_client(&shared(&socket).unwrap(), theirs).unwrap();
        (out, ours, log)
    }

    /// What the stream carries until it has been quiet for 2 s.
    fn read_all(mut s: UnixStream) -> Vec<u8> {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    /// A reader slower than the guest (a command's output piped into a slow program) gets
    /// every byte, up to the backlog's bound, and the guest never waits for it.
    #[test]
    fn a_slow_reader_gets_every_byte_and_the_guest_does_not_wait() {
        let dir = tempfile::tempdir().unwrap();
        let (mut out, ours, log) = attached(dir.path());
        let want: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let started = Instant::now();
        // Nothing reads meanwhile: a socket buffer holds a few hundred KiB at most.
        for chunk in want.chunks(4096) {
            out.write_all(chunk).unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the writer waited"
        );
        flush_attached(Duration::from_millis(10));
        let reader = std::thread::spawn(move || read_all(ours));
        flush_attached(Duration::from_secs(10));
        drop(out);
        let got = reader.join().unwrap();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the slow reader's stream differs");
        assert_eq!(std::fs::read(&log).unwrap(), want);
    }

    /// A reader more than the backlog behind is told how much it missed, then gets what
    /// follows; the log has everything.
    #[test]
    fn a_reader_past_the_backlog_is_told_what_it_missed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut out, ours, log) = attached(dir.path());
        let total = CLIENT_BACKLOG + (2 << 20);
        let want: Vec<u8> = (0..total).map(|i| b'a' + (i % 26) as u8).collect();
        for chunk in want.chunks(4096) {
            out.write_all(chunk).unwrap();
        }
        out.write_all(b"THE END\n").unwrap();
        let reader = std::thread::spawn(move || read_all(ours));
        flush_attached(Duration::from_secs(10));
        let got = reader.join().unwrap();
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.contains("bytes of console output not sent here"),
            "no note"
        );
        assert!(text.ends_with("THE END\n"), "the end is missing");
        assert!(got.len() < total, "nothing was dropped?");
        assert!(
            got.len() > CLIENT_BACKLOG,
            "more than the bound was dropped"
        );
        assert_eq!(std::fs::read(&log).unwrap().len(), total + 8);
    }
}
