//! The 8250 UART on COM1 (vm-superio), its interrupt delivered through an irqfd, its output to
//! stdout, a file or an attachable socket (with a log), its input from stdin or the socket.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use serde::{Deserialize, Serialize};

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
);

/// The console log is cut back to its newest half beyond this (a guest cannot fill the disk).
const LOG_MAX: u64 = 16 << 20;
/// Output queued for an attached client that reads slowly; beyond it the client misses
/// output (the log still has it) rather than stalling the guest's vCPU.
const CLIENT_QUEUE: usize = 1024;

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

/// Who gets a socket console's output: the attached client and how far it has it.
struct ConsoleShared {
    log: Mutex<LogState>,
    client: Mutex<Option<(UnixStream, u64)>>,
}

/// Output to the log and, through a queue and a writer thread, to the attached client.
struct SocketOut {
    shared: Arc<ConsoleShared>,
    client: SyncSender<(u64, Vec<u8>)>,
}

impl Write for SocketOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let end = {
            let mut st = self.shared.log.lock().unwrap_or_else(|p| p.into_inner());
            if st.written + buf.len() as u64 > LOG_MAX {
                keep_newest_half(&st.log_path)?;
                st.log = File::options().append(true).open(&st.log_path)?;
                st.written = st.log.metadata()?.len();
            }
            st.log.write_all(buf)?;
            st.written += buf.len() as u64;
            st.total += buf.len() as u64;
            st.total
        };
        match self.client.try_send((end, buf.to_vec())) {
            Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
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

/// Sends queued output to the attached client, if any: only what it does not have yet (the
/// replay at its attach may have covered a chunk still queued).
fn client_writer(rx: Receiver<(u64, Vec<u8>)>, shared: Arc<ConsoleShared>) {
    for (end, chunk) in rx {
        let mut g = shared.client.lock().unwrap_or_else(|p| p.into_inner());
        let Some((c, has)) = g.as_mut() else {
            continue;
        };
        if end <= *has {
            continue;
        }
        let start = chunk.len().saturating_sub((end - *has) as usize);
        if c.write_all(&chunk[start..]).is_err() {
            *g = None;
        } else {
            *has = end;
        }
    }
}

fn console_out(console: &Console) -> std::io::Result<(ConsoleOut, Option<UnixListener>)> {
    let out: Box<dyn Write + Send> = match console {
        Console::Stdio => Box::new(std::io::stdout()),
        Console::File(p) => Box::new(File::create(p)?),
        Console::Off => Box::new(std::io::sink()),
        Console::Socket { socket, log } => {
            let _ = std::fs::remove_file(socket);
            let listener = UnixListener::bind(socket)?;
            std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            let file = File::options().create(true).append(true).open(log)?;
            std::fs::set_permissions(log, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            let (tx, rx) = sync_channel(CLIENT_QUEUE);
            let written = file.metadata()?.len();
            let shared = Arc::new(ConsoleShared {
                log: Mutex::new(LogState {
                    log: file,
                    log_path: log.clone(),
                    written,
                    total: written,
                }),
                client: Mutex::new(None),
            });
            {
                let mut g = CONSOLES.lock().unwrap_or_else(|p| p.into_inner());
                g.retain(|(p, _)| p != socket);
                g.push((socket.clone(), shared.clone()));
            }
            let for_writer = shared.clone();
            std::thread::Builder::new()
                .name("console-out".into())
                .spawn(move || client_writer(rx, for_writer))?;
            return Ok((
                ConsoleOut(Box::new(SocketOut { shared, client: tx })),
                Some(listener),
            ));
        }
    };
    Ok((ConsoleOut(out), None))
}

/// Makes `writer` the attached client: it is sent the console from its start (the log as it
/// is now), then what follows (queued output it already holds is not sent twice). The client
/// lock is taken before the log's is let go, so output written after the read waits in the
/// queue for this client instead of being dropped.
fn attach_client(console: &ConsoleShared, mut writer: UnixStream) -> std::io::Result<()> {
    let st = console.log.lock().unwrap_or_else(|p| p.into_inner());
    let replay = std::fs::read(&st.log_path).unwrap_or_default();
    let upto = st.total;
    let mut g = console.client.lock().unwrap_or_else(|p| p.into_inner());
    drop(st);
    writer.write_all(&replay)?;
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
        Ok(SerialPort(Serial::new(IrqTrigger(irq), out), listener))
    }

    /// Queues input bytes for the guest; returns how many fit.
    pub fn input(&mut self, bytes: &[u8]) -> usize {
        self.0.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl<'a> Persist<'a> for SerialPort {
    type State = SerialState;
    /// Its interrupt and where its output goes now.
    type Args = (EventFd, &'a Console);

    fn save(&mut self, _ctx: &SaveContext) -> Result<SerialState, Error> {
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
            .map(|s| SerialPort(s, listener))
            .map_err(|e| Error::Invalid(format!("serial state: {e:?}")))
    }
}

impl BusDevice for SerialPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(b) = data.first_mut() {
            *b = self.0.read(offset as u8);
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&v) = data.first() {
            let _ = self.0.write(offset as u8, v);
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
            // Paced below the queue's bound (a client that cannot keep up misses output by
            // design; that is not what this tests).
            for i in 0..4000 {
                out.write_all(format!("line {i}\n").as_bytes()).unwrap();
                if i % 40 == 0 {
                    std::thread::sleep(std::time::Duration::from_micros(500));
                }
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(5));
        let (ours, theirs) = UnixStream::pair().unwrap();
        attach_client(&console, theirs).unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut ours = ours;
            ours.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            let mut buf = [0u8; 65536];
            while let Ok(n) = ours.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            got
        });
        writer.join().unwrap();
        let got = reader.join().unwrap();
        let want = std::fs::read(&log).unwrap();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the attached stream differs from the log");
    }
}
