//! The machine description handed to the kernel: the Linux zero page (bzImage and 64-bit ELF)
//! or the PVH start info, each with the same memory map.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

use super::{EntryMode, InitrdPlace, KernelEntry};
use crate::layout::*;
use crate::Error;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

/// One entry of the guest's memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryMapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// RAM below the EBDA, the BIOS area reserved (it holds the ACPI tables), then RAM from 1 MiB.
pub fn memory_map(mem: &GuestMemoryMmap) -> Vec<MemoryMapEntry> {
    let mut map = vec![
        MemoryMapEntry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        MemoryMapEntry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    for region in mem.iter() {
        let start = region.start_addr().0.max(HIMEM_START);
        let end = region.start_addr().0 + region.len();
        if end > start {
            map.push(MemoryMapEntry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map
}

/// Writes the zero page or PVH start info for `kernel`.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    kernel: &KernelEntry,
    cmdline_size: usize,
    initrd: Option<InitrdPlace>,
    rsdp: u64,
) -> Result<(), Error> {
    let map = memory_map(mem);
    match kernel.mode {
        EntryMode::Linux64 => write_zero_page(mem, kernel, cmdline_size, initrd, rsdp, &map),
        EntryMode::Pvh => write_pvh_info(mem, initrd, rsdp, &map),
    }
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    kernel: &KernelEntry,
    cmdline_size: usize,
    initrd: Option<InitrdPlace>,
    rsdp: u64,
    map: &[MemoryMapEntry],
) -> Result<(), Error> {
    let mut params = boot_params::default();
    if let Some(hdr) = kernel.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_size as u32;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr.0 as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    params.acpi_rsdp_addr = rsdp;
    if map.len() > params.e820_table.len() {
        return Err(Error::Layout(
            "too many memory map entries for the zero page".into(),
        ));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
        };
    }
    params.e820_entries = map.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(|e| Error::Layout(format!("writing the zero page: {e}")))
}

fn write_pvh_info(
    mem: &GuestMemoryMmap,
    initrd: Option<InitrdPlace>,
    rsdp: u64,
    map: &[MemoryMapEntry],
) -> Result<(), Error> {
    // hvm_memmap_table_entry: addr u64, size u64, type u32, reserved u32.
    let mut table = Vec::with_capacity(map.len() * 24);
    for e in map {
        table.extend_from_slice(&e.addr.to_le_bytes());
        table.extend_from_slice(&e.size.to_le_bytes());
        table.extend_from_slice(&e.kind.to_le_bytes());
        table.extend_from_slice(&0u32.to_le_bytes());
    }
    // hvm_modlist_entry: paddr, size, cmdline_paddr, reserved (all u64), after the memory map.
    let modlist = PVH_MEMMAP_START + table.len() as u64;
    let mut mods = Vec::new();
    if let Some(initrd) = initrd {
        for v in [initrd.addr.0, initrd.size, 0, 0] {
            mods.extend_from_slice(&v.to_le_bytes());
        }
    }
    if modlist + mods.len() as u64 > ZERO_PAGE_START {
        return Err(Error::Layout("PVH memory map does not fit its page".into()));
    }
    // hvm_start_info, version 1.
    let mut info = Vec::with_capacity(56);
    info.extend_from_slice(&XEN_HVM_START_MAGIC.to_le_bytes());
    info.extend_from_slice(&1u32.to_le_bytes());
    info.extend_from_slice(&0u32.to_le_bytes());
    info.extend_from_slice(&(u32::from(initrd.is_some())).to_le_bytes());
    info.extend_from_slice(&(if initrd.is_some() { modlist } else { 0 }).to_le_bytes());
    info.extend_from_slice(&CMDLINE_START.to_le_bytes());
    info.extend_from_slice(&rsdp.to_le_bytes());
    info.extend_from_slice(&PVH_MEMMAP_START.to_le_bytes());
    info.extend_from_slice(&(map.len() as u32).to_le_bytes());
    info.extend_from_slice(&0u32.to_le_bytes());
    let write = |bytes: &[u8], at: u64| {
        mem.write_slice(bytes, GuestAddress(at))
            .map_err(|e| Error::Layout(format!("writing PVH start info: {e}")))
    };
    write(&info, PVH_INFO_START)?;
    write(&table, PVH_MEMMAP_START)?;
    write(&mods, modlist)
}
