//! Ways for a guest to end the VM: the ACPI sleep-control/reset register (hardware-reduced
//! ACPI), the i8042 reset line and a debug-exit port carrying the guest's own status.

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use crate::acpi::{RESET_VALUE, SLEEP_S5};
use crate::bus::BusDevice;
use crate::exit::{ExitReason, ExitSignal};

/// ACPI PM registers at `ACPI_PM_PORT`: offset 0 sleep control and reset, offset 1 status.
pub struct PowerButton(pub Arc<ExitSignal>);

impl BusDevice for PowerButton {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.first()) {
            (0, Some(&SLEEP_S5)) => self.0.raise(ExitReason::PowerOff),
            (0, Some(&RESET_VALUE)) => {
                reset_said(&self.0, "the ACPI reset register");
                self.0.raise(ExitReason::Reset)
            }
            _ => {}
        }
    }
}

/// Port 0x501: a byte written here ends the VM with that status (tests and CI guests).
pub struct DebugExit(pub Arc<ExitSignal>);

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(&code) = data.first() {
            self.0.raise(ExitReason::GuestExit(code));
        }
    }
}

/// Says once how the guest asked for a reset (a rebooting or panicking kernel): a triple
/// fault reported after it is the guest's reboot path going on, not the cause.
fn reset_said(exit: &ExitSignal, how: &str) {
    if exit.reason().is_none() {
        eprintln!("starling-vmm: the guest asked for a reset through {how}");
    }
}

struct ResetLine(Arc<ExitSignal>);

impl Trigger for ResetLine {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        reset_said(&self.0, "the i8042 reset command");
        self.0.raise(ExitReason::Reset);
        Ok(())
    }
}

/// The i8042 keyboard controller at ports 0x60-0x64: only its CPU reset command matters.
pub struct I8042(I8042Device<ResetLine>);

impl I8042 {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        I8042(I8042Device::new(ResetLine(exit)))
    }
}

impl BusDevice for I8042 {
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
