//! KVM's coalesced PIO ring for one port: while registered, the guest's writes to the port do
//! not exit to the monitor; KVM appends them to a ring page the monitor shares, which the
//! monitor reads at its next exit or tick ([`Ring::drain`]). The serial console's transmit
//! register uses it: a guest printing by polling (Linux's console, the test guest) reads the
//! line status and writes the character, two exits per character, and the write is the one
//! that can wait. When the ring is full KVM exits as usual, so nothing is lost.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use kvm_bindings::{kvm_coalesced_mmio, kvm_coalesced_mmio_zone};
use kvm_ioctls::{Cap, VcpuFd, VmFd};

/// The ring's page offset in a vCPU's mapping (after kvm_run and the PIO data page).
const PAGE_OFFSET: i64 = kvm_bindings::KVM_COALESCED_MMIO_PAGE_OFFSET as i64;
const PAGE: usize = 4096;
/// The ring's header: `first` (the monitor's), `last` (KVM's), both u32.
const HEADER: usize = 8;
const ENTRY: usize = std::mem::size_of::<kvm_coalesced_mmio>();
/// Entries in the ring (KVM_COALESCED_MMIO_MAX).
const SLOTS: u32 = ((PAGE - HEADER) / ENTRY) as u32;

// KVM_(UN)REGISTER_COALESCED_MMIO: _IOW(KVMIO, 0x67/0x68, struct kvm_coalesced_mmio_zone).
vmm_sys_util::ioctl_iow_nr!(
    KVM_REGISTER_COALESCED_MMIO,
    kvm_bindings::KVMIO,
    0x67,
    kvm_coalesced_mmio_zone
);
vmm_sys_util::ioctl_iow_nr!(
    KVM_UNREGISTER_COALESCED_MMIO,
    kvm_bindings::KVMIO,
    0x68,
    kvm_coalesced_mmio_zone
);

pub struct Ring {
    page: NonNull<u8>,
    /// The VM, for registering and unregistering the port (its own descriptor: the device
    /// owning the ring does not hold the VM).
    vm: OwnedFd,
    zone: kvm_coalesced_mmio_zone,
    registered: bool,
}

// SAFETY: the ring page is a mapping this struct owns; every access to it goes through
// `&mut self` (the serial device's lock), and KVM's side is synchronised by the ring's indices.
unsafe impl Send for Ring {}

impl Ring {
    /// The ring for writes to `port` (`size` bytes), not registered yet; None where KVM has
    /// no coalesced PIO.
    pub fn new(vm: &VmFd, vcpu: &VcpuFd, port: u16, size: u32) -> std::io::Result<Option<Ring>> {
        if !vm.check_extension(Cap::CoalescedPio) {
            return Ok(None);
        }
        // SAFETY: the VM's descriptor is open for as long as `vm` is borrowed; the duplicate
        // is ours.
        let vm = unsafe { BorrowedFd::borrow_raw(vm.as_raw_fd()) }.try_clone_to_owned()?;
        // SAFETY: a fresh shared mapping of one page of the vCPU's descriptor at the ring's
        // offset, as KVM documents it; checked below and unmapped on drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                PAGE_OFFSET * PAGE as i64,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let page = NonNull::new(p.cast::<u8>()).ok_or_else(|| std::io::Error::other("mmap"))?;
        let zone = kvm_coalesced_mmio_zone {
            addr: u64::from(port),
            size,
            __bindgen_anon_1: kvm_bindings::kvm_coalesced_mmio_zone__bindgen_ty_1 { pio: 1 },
        };
        Ok(Some(Ring {
            page,
            vm,
            zone,
            registered: false,
        }))
    }

    /// Registers (or unregisters) the port; a failure leaves writes exiting as before.
    pub fn set(&mut self, on: bool) {
        if on == self.registered {
            return;
        }
        let request = if on {
            KVM_REGISTER_COALESCED_MMIO()
        } else {
            KVM_UNREGISTER_COALESCED_MMIO()
        };
        // SAFETY: the request takes a pointer to a kvm_coalesced_mmio_zone, which lives on.
        let r = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(&self.vm, request, &self.zone) };
        if r == 0 {
            self.registered = on;
        }
    }

    pub fn registered(&self) -> bool {
        self.registered
    }

    /// Hands each write in the ring, oldest first, to `f` (its address and bytes) and frees
    /// its slot.
    pub fn drain(&mut self, mut f: impl FnMut(u64, &[u8])) {
        let base = self.page.as_ptr();
        // SAFETY: both indices are u32s at the start of the page-aligned mapping, shared with
        // KVM, which reads `first` and writes `last` atomically.
        let (first, last) = unsafe {
            (
                &*base.cast::<AtomicU32>(),
                &*base.add(4).cast::<AtomicU32>(),
            )
        };
        drain_ring(
            first,
            last,
            |i| {
                let mut e = [0u8; ENTRY];
                // SAFETY: slot i < SLOTS lies within the page.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        base.add(HEADER + i * ENTRY),
                        e.as_mut_ptr(),
                        ENTRY,
                    )
                };
                e
            },
            &mut f,
        );
    }
}

/// Takes entries from `first` up to `last` (read with `read`), handing each to `f`, and
/// moves `first` on after each; indices out of range (KVM never writes them) empty the ring.
fn drain_ring(
    first: &AtomicU32,
    last: &AtomicU32,
    read: impl Fn(usize) -> [u8; ENTRY],
    f: &mut impl FnMut(u64, &[u8]),
) {
    loop {
        let at = first.load(Ordering::Relaxed);
        let end = last.load(Ordering::Acquire);
        if at == end {
            return;
        }
        if at >= SLOTS || end >= SLOTS {
            first.store(end, Ordering::Release);
            return;
        }
        let e = read(at as usize);
        let addr = u64::from_ne_bytes(e[0..8].try_into().unwrap_or_default());
        let len = u32::from_ne_bytes(e[8..12].try_into().unwrap_or_default()).min(8) as usize;
        f(addr, &e[16..16 + len]);
        first.store((at + 1) % SLOTS, Ordering::Release);
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.page.as_ptr().cast(), PAGE) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(port: u64, byte: u8) -> [u8; ENTRY] {
        let mut e = [0u8; ENTRY];
        e[0..8].copy_from_slice(&port.to_ne_bytes());
        e[8..12].copy_from_slice(&1u32.to_ne_bytes());
        e[12..16].copy_from_slice(&1u32.to_ne_bytes());
        e[16] = byte;
        e
    }

    #[test]
    fn entries_come_out_in_order_across_the_wrap_and_free_their_slots() {
        let slots: Vec<[u8; ENTRY]> = (0..SLOTS).map(|i| entry(0x3f8, i as u8)).collect();
        // Five written at the end of the ring and three after the wrap.
        let first = AtomicU32::new(SLOTS - 5);
        let last = AtomicU32::new(3);
        let mut got = Vec::new();
        drain_ring(&first, &last, |i| slots[i], &mut |a, d| {
            assert_eq!(a, 0x3f8);
            got.extend_from_slice(d);
        });
        let want: Vec<u8> = (SLOTS - 5..SLOTS).chain(0..3).map(|i| i as u8).collect();
        assert_eq!(got, want);
        assert_eq!(first.load(Ordering::Relaxed), 3, "slots not freed");
        // Empty: nothing more.
        drain_ring(&first, &last, |i| slots[i], &mut |_, _| {
            panic!("drained twice")
        });
    }

    #[test]
    fn a_length_or_index_out_of_range_is_bounded() {
        let mut e = entry(0x3f8, b'x');
        e[8..12].copy_from_slice(&u32::MAX.to_ne_bytes());
        let (first, last) = (AtomicU32::new(0), AtomicU32::new(1));
        let mut n = 0;
        drain_ring(&first, &last, |_| e, &mut |_, d| n += d.len());
        assert_eq!(n, 8, "a length beyond the entry's data was read");
        let (first, last) = (AtomicU32::new(SLOTS + 7), AtomicU32::new(2));
        drain_ring(&first, &last, |_| e, &mut |_, _| {
            panic!("read out of range")
        });
        assert_eq!(first.load(Ordering::Relaxed), 2);
    }
}
