//! Loading a guest kernel and describing the machine to it: bzImage (Linux boot protocol, 64-bit
//! entry), ELF with a PVH note (32-bit PVH entry) and plain 64-bit ELF (entered in long mode).

pub mod cpu;
pub mod cpuid;
mod params;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::loader::{self, BzImage, Cmdline, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

use crate::layout::{self, CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START};
use crate::Error;

pub use params::{write_boot_params, MemoryMapEntry};

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit long mode at `entry`, RSI = zero page (bzImage and plain ELF).
    Linux64,
    /// 32-bit protected mode, paging off, at `entry`, RBX = hvm_start_info (PVH).
    Pvh,
}

/// Where the kernel landed and how to start it.
#[derive(Clone, Copy, Debug)]
pub struct KernelEntry {
    pub entry: GuestAddress,
    pub mode: EntryMode,
    /// First byte after the loaded kernel.
    pub end: u64,
    /// The bzImage setup header, to be completed in the zero page.
    pub setup_header: Option<loader::bootparam::setup_header>,
}

/// An initrd placed in guest memory.
#[derive(Clone, Copy, Debug)]
pub struct InitrdPlace {
    pub addr: GuestAddress,
    pub size: u64,
}

/// Loads the kernel at `path`, choosing the loader by the file's own header.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<KernelEntry, Error> {
    let kernel_err = |reason: String| Error::Kernel {
        path: path.to_owned(),
        reason,
    };
    let mut file = File::open(path).map_err(|e| kernel_err(e.to_string()))?;
    let mut head = [0u8; 0x206];
    let got = read_up_to(&mut file, &mut head).map_err(|e| kernel_err(e.to_string()))?;
    if got >= 4 && &head[..4] == b"\x7fELF" {
        let r = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
            .map_err(|e| kernel_err(format!("ELF kernel does not load: {e}")))?;
        let (entry, mode) = match r.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => (addr, EntryMode::Pvh),
            _ => (r.kernel_load, EntryMode::Linux64),
        };
        return Ok(KernelEntry {
            entry,
            mode,
            end: r.kernel_end,
            setup_header: None,
        });
    }
    if got >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        file.seek(SeekFrom::Start(0))
            .map_err(|e| kernel_err(e.to_string()))?;
        let r = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
            .map_err(|e| kernel_err(format!("bzImage does not load: {e}")))?;
        let hdr = r
            .setup_header
            .ok_or_else(|| kernel_err("bzImage without a setup header".into()))?;
        let version = hdr.version;
        if version < 0x020c {
            return Err(kernel_err(format!(
                "boot protocol {}.{} is too old for a 64-bit entry (2.12 or later needed)",
                version >> 8,
                version & 0xff
            )));
        }
        return Ok(KernelEntry {
            // The 64-bit entry point sits 0x200 bytes into the protected-mode kernel.
            entry: r.kernel_load.unchecked_add(0x200),
            mode: EntryMode::Linux64,
            end: r.kernel_end,
            setup_header: Some(hdr),
        });
    }
    Err(kernel_err(
        "neither an ELF kernel nor a bzImage (no ELF magic, no HdrS signature)".into(),
    ))
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Places the initrd at the top of low RAM (page aligned, below `max_addr`, above the kernel).
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    max_addr: u64,
) -> Result<InitrdPlace, Error> {
    let initrd_err = |reason: String| Error::Initrd {
        path: path.to_owned(),
        reason,
    };
    let mut file = File::open(path).map_err(|e| initrd_err(e.to_string()))?;
    let size = file
        .metadata()
        .map_err(|e| initrd_err(e.to_string()))?
        .len();
    let low_end = mem
        .iter()
        .map(|r| r.start_addr().raw_value() + r.len())
        .filter(|&end| end <= layout::MMIO_HOLE_START)
        .max()
        .unwrap_or(0)
        .min(max_addr);
    let top = low_end & !0xfff;
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= kernel_end)
        .ok_or_else(|| {
            initrd_err(format!(
                "{} bytes do not fit in guest memory between the kernel's end (0x{kernel_end:x}) and 0x{top:x}; give the VM more memory",
                size
            ))
        })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| initrd_err(format!("reading into guest memory: {e}")))?;
    Ok(InitrdPlace {
        addr: GuestAddress(addr),
        size,
    })
}

/// Builds and writes the kernel command line.
pub fn load_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<usize, Error> {
    let mut c = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| Error::Cmdline(e.to_string()))?;
    c.insert_str(cmdline)
        .map_err(|e| Error::Cmdline(format!("{e} (at most {CMDLINE_MAX_SIZE} bytes)")))?;
    loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &c)
        .map_err(|e| Error::Cmdline(e.to_string()))?;
    Ok(cmdline.len() + 1)
}
