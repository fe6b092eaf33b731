//! The 8250 UART on COM1 (vm-superio), its interrupt delivered through an irqfd, its output to
//! stdout or a file, its input from stdin.

use std::fs::File;
use std::io::Write;

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

pub struct SerialPort(pub Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleOut>);

fn console_out(console: &Console) -> std::io::Result<ConsoleOut> {
    let out: Box<dyn Write + Send> = match console {
        Console::Stdio => Box::new(std::io::stdout()),
        Console::File(p) => Box::new(File::create(p)?),
        Console::Off => Box::new(std::io::sink()),
    };
    Ok(ConsoleOut(out))
}

impl SerialPort {
    pub fn new(irq: EventFd, console: &Console) -> std::io::Result<Self> {
        Ok(SerialPort(Serial::new(
            IrqTrigger(irq),
            console_out(console)?,
        )))
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
        let out = console_out(console).map_err(|e| Error::Io {
            what: "opening the console".into(),
            source: e,
        })?;
        Serial::from_state(&state, IrqTrigger(irq), vm_superio::serial::NoEvents, out)
            .map(SerialPort)
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
