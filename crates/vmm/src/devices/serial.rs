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

/// Output to the log and, through a queue and a writer thread, to the attached client.
struct SocketOut {
    log: File,
    log_path: PathBuf,
    written: u64,
    client: SyncSender<Vec<u8>>,
}

impl Write for SocketOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written + buf.len() as u64 > LOG_MAX {
            keep_newest_half(&self.log_path)?;
            self.log = File::options().append(true).open(&self.log_path)?;
            self.written = self.log.metadata()?.len();
        }
        self.log.write_all(buf)?;
        self.written += buf.len() as u64;
        match self.client.try_send(buf.to_vec()) {
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

/// The attached client of each socket console: who gets output, replaced by a new attach.
type Attached = Arc<Mutex<Option<UnixStream>>>;

static ATTACHED: Mutex<Vec<(PathBuf, Attached)>> = Mutex::new(Vec::new());

fn attached(socket: &Path) -> Attached {
    let mut g = ATTACHED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, a)) = g.iter().find(|(p, _)| p == socket) {
        return a.clone();
    }
    let a: Attached = Arc::default();
    g.push((socket.to_path_buf(), a.clone()));
    a
}

/// Sends queued output to the attached client, if any.
fn client_writer(rx: Receiver<Vec<u8>>, client: Attached) {
    for chunk in rx {
        let mut g = client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = g.as_mut() {
            if c.write_all(&chunk).is_err() {
                *g = None;
            }
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
            let client = attached(socket);
            std::thread::Builder::new()
                .name("console-out".into())
                .spawn(move || client_writer(rx, client))?;
            let written = file.metadata()?.len();
            return Ok((
                ConsoleOut(Box::new(SocketOut {
                    log: file,
                    log_path: log.clone(),
                    written,
                    client: tx,
                })),
                Some(listener),
            ));
        }
    };
    Ok((ConsoleOut(out), None))
}

/// Serves a socket console: each client that connects becomes the attached one (the
/// previous one is let go) and its input goes to the guest.
pub fn serve_attach(
    listener: UnixListener,
    socket: PathBuf,
    serial: Arc<Mutex<SerialPort>>,
    done: Arc<std::sync::atomic::AtomicBool>,
) {
    let client = attached(&socket);
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
                *client.lock().unwrap_or_else(|p| p.into_inner()) = Some(writer);
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
