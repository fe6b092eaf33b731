//! Legacy platform devices on the port-I/O bus.

pub mod coalesced;
pub mod power;
pub mod rtc;
pub mod serial;

pub use power::{DebugExit, PowerButton, I8042};
pub use rtc::Rtc;
pub use serial::{Console, SerialPort};
