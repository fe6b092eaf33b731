//! Guest physical address map. Low memory follows the PC conventions stock kernels expect;
//! device windows sit in the 32-bit hole below 4 GiB, RAM beyond the hole continues above it.

/// GDT, IDT, page tables and boot structures live in the first 64 KiB, below the EBDA.
pub const GDT_START: u64 = 0x500;
pub const IDT_START: u64 = 0x520;
pub const PVH_INFO_START: u64 = 0x6000;
pub const PVH_MEMMAP_START: u64 = 0x6040;
pub const ZERO_PAGE_START: u64 = 0x7000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the BIOS/EBDA area, reserved in the memory map up to 1 MiB.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables: the RSDP must sit in 0xe0000..0x100000 where kernels scan for it.
pub const ACPI_START: u64 = 0xe0000;
pub const ACPI_END: u64 = 0x100000;
/// Kernels are loaded from 1 MiB.
pub const HIMEM_START: u64 = 0x100000;

/// The 32-bit MMIO hole: virtio-mmio devices, then the IOAPIC and local APIC.
pub const MMIO_HOLE_START: u64 = 0xd000_0000;
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
pub const VIRTIO_MMIO_BASE: u64 = MMIO_HOLE_START;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;

/// Legacy I/O ports.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
pub const I8042_PORT: u16 = 0x60;
pub const RTC_PORT: u16 = 0x70;
/// ACPI sleep control / status and reset register (hardware-reduced ACPI).
pub const ACPI_PM_PORT: u16 = 0x600;
/// A guest writes its exit status here (a byte): the monitor ends with that status.
pub const DEBUG_EXIT_PORT: u16 = 0x501;
/// With `STARLING_SECCOMP_PROBE=1` only (tests): a write here makes the monitor's vCPU thread
/// call something its filter forbids (`jail::probe`).
pub const SECCOMP_PROBE_PORT: u16 = 0x502;

/// Interrupt lines handed to virtio devices, in order (avoiding the legacy ones in use).
pub const VIRTIO_IRQS: [u32; 15] = [5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20];

/// Guest RAM ranges for a memory size: below the MMIO hole, and the rest above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(u64, u64)> {
    if size <= MMIO_HOLE_START {
        vec![(0, size)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (MMIO_HOLE_END, size - MMIO_HOLE_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_skips_the_mmio_hole() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (0, MMIO_HOLE_START));
        assert_eq!(r[1].0, 1 << 32);
        assert_eq!(r[0].1 + r[1].1, 4 << 30);
    }
}
