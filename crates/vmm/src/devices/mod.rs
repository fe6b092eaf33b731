//! Legacy platform devices on the port-I/O bus.

pub mod power;
pub mod rtc;
pub mod serial;

pub use power::{DebugExit, I8042, PowerButton};
pub use rtc::Rtc;
pub use serial::{Console, SerialPort};
