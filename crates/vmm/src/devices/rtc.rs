//! The CMOS real-time clock at ports 0x70/0x71: the host's UTC time in BCD, 24-hour mode, and
//! the rest of the 128-byte CMOS RAM as plain storage.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::BusDevice;

const REG_A: usize = 0x0a;
const REG_B: usize = 0x0b;
const REG_C: usize = 0x0c;
const REG_D: usize = 0x0d;
const CENTURY: usize = 0x32;

pub struct Rtc {
    index: usize,
    ram: [u8; 128],
}

impl Default for Rtc {
    fn default() -> Self {
        let mut ram = [0u8; 128];
        ram[REG_A] = 0x26; // 32.768 kHz divider, 1024 Hz rate, no update in progress
        ram[REG_B] = 0x02; // 24-hour mode, BCD
        ram[REG_D] = 0x80; // valid RAM and time
        Rtc { index: 0, ram }
    }
}

fn bcd(v: u64) -> u8 {
    (((v / 10) % 10) << 4 | (v % 10)) as u8
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's method).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

impl Rtc {
    fn clock_register(&self, index: usize, now: u64) -> Option<u8> {
        let days = (now / 86_400) as i64;
        let secs = now % 86_400;
        let (year, month, day) = civil_from_days(days);
        Some(match index {
            0x00 => bcd(secs % 60),
            0x02 => bcd(secs / 60 % 60),
            0x04 => bcd(secs / 3600),
            // 1 = Sunday; 1970-01-01 was a Thursday.
            0x06 => bcd(((days + 4).rem_euclid(7) + 1) as u64),
            0x07 => bcd(u64::from(day)),
            0x08 => bcd(u64::from(month)),
            0x09 => bcd(year.rem_euclid(100) as u64),
            CENTURY => bcd((year / 100) as u64),
            _ => return None,
        })
    }
}

impl BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Some(b) = data.first_mut() else { return };
        *b = match offset {
            0 => self.index as u8,
            _ => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let v = self
                    .clock_register(self.index, now)
                    .unwrap_or(self.ram[self.index]);
                if self.index == REG_C {
                    // Reading C clears pending interrupt flags.
                    self.ram[REG_C] = 0;
                }
                v
            }
        };
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            // Bit 7 of the index port masks NMIs; the register number is the low 7 bits.
            0 => self.index = usize::from(v & 0x7f),
            _ => match self.index {
                REG_C | REG_D => {}
                i => self.ram[i] = v,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_calendar_time_in_bcd() {
        let rtc = Rtc::default();
        // 2026-11-23 11:12:19 UTC, a Monday.
        let t = 1_795_432_339;
        let r = |i| rtc.clock_register(i, t).unwrap();
        assert_eq!((r(0x09), r(0x08), r(0x07)), (0x26, 0x11, 0x23));
        assert_eq!((r(0x04), r(0x02), r(0x00)), (0x11, 0x12, 0x19));
        assert_eq!(r(CENTURY), 0x20);
        assert_eq!(r(0x06), 2);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn index_port_selects_registers_and_ram_keeps_values() {
        let mut rtc = Rtc::default();
        rtc.write(0, &[0x80 | 0x40]);
        rtc.write(1, &[0x5a]);
        let mut b = [0];
        rtc.read(1, &mut b);
        assert_eq!(b[0], 0x5a);
        rtc.write(0, &[REG_D as u8]);
        rtc.read(1, &mut b);
        assert_eq!(b[0], 0x80);
    }
}
