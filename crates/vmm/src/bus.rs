//! Port-I/O and MMIO buses: address ranges mapped to devices, looked up on each vCPU exit.

use std::sync::{Arc, Mutex};

/// A device on a bus; `offset` is relative to the start of its range.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// A range of the bus: where it starts, how long it is, the device, and the device's offset
/// at its start.
type Range = (u64, u64, SharedDevice, u64);

#[derive(Default, Clone)]
pub struct Bus {
    ranges: Vec<Range>,
}

impl Bus {
    /// Adds a device at `[base, base+len)`; overlapping ranges are a programming error.
    pub fn insert(&mut self, base: u64, len: u64, dev: SharedDevice) {
        self.insert_part(base, len, dev, 0);
    }

    /// Adds `[base, base+len)` as part of a device's window that starts `first` bytes into
    /// it (a window split so that some of its registers are served without the device's lock).
    pub fn insert_part(&mut self, base: u64, len: u64, dev: SharedDevice, first: u64) {
        assert!(
            !self
                .ranges
                .iter()
                .any(|(b, l, _, _)| base < b + l && *b < base + len),
            "bus ranges overlap at 0x{base:x}"
        );
        self.ranges.push((base, len, dev, first));
        self.ranges.sort_by_key(|r| r.0);
    }

    fn find(&self, addr: u64) -> Option<(u64, &SharedDevice)> {
        let i = self
            .ranges
            .partition_point(|r| r.0 <= addr)
            .checked_sub(1)?;
        let (base, len, dev, first) = &self.ranges[i];
        (addr < base + len).then_some((addr - base + first, dev))
    }

    /// Reads from the device at `addr`; unclaimed addresses read as all ones, like an open bus.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some((off, dev)) => lock(dev).read(off, data),
            None => data.fill(0xff),
        }
    }

    /// Writes to the device at `addr`; unclaimed addresses drop the write.
    pub fn write(&self, addr: u64, data: &[u8]) {
        if let Some((off, dev)) = self.find(addr) {
            lock(dev).write(off, data);
        }
    }
}

/// A poisoned device lock means a device panicked; its state is still the best we have.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0 + offset as u8);
        }
        fn write(&mut self, _: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn lookup_by_range() {
        let mut bus = Bus::default();
        bus.insert(0x100, 8, Arc::new(Mutex::new(Echo(1))));
        bus.insert(0x200, 2, Arc::new(Mutex::new(Echo(10))));
        let mut b = [0u8; 1];
        bus.read(0x103, &mut b);
        assert_eq!(b[0], 4);
        bus.read(0x108, &mut b);
        assert_eq!(b[0], 0xff);
        bus.read(0xff, &mut b);
        assert_eq!(b[0], 0xff);
        bus.write(0x201, &[7]);
        bus.read(0x200, &mut b);
        assert_eq!(b[0], 7);
        // A part of a window keeps the device's own offsets.
        bus.insert_part(0x300, 4, Arc::new(Mutex::new(Echo(1))), 0x10);
        bus.read(0x302, &mut b);
        assert_eq!(b[0], 1 + 0x12);
    }
}
