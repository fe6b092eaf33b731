//! ACPI tables (hardware-reduced): RSDP → XSDT → FADT (with DSDT), MADT. The DSDT announces
//! the virtio-mmio devices (`LNRO0005`), so stock kernels without
//! `VIRTIO_MMIO_CMDLINE_DEVICES` find them, plus COM1 and the RTC; `\_S5_` and the sleep
//! control register give ACPI poweroff.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::*;
use crate::Error;

const OEM_ID: [u8; 6] = *b"STRLNG";
const OEM_TABLE: [u8; 8] = *b"STARLING";

/// A virtio-mmio device window to announce.
#[derive(Clone, Copy, Debug)]
pub struct MmioDevice {
    pub addr: u64,
    pub len: u64,
    pub irq: u32,
}

/// Value the guest writes to the sleep control register for S5 (SLP_TYP=5, SLP_EN).
pub const SLEEP_S5: u8 = (5 << 2) | (1 << 5);
/// Value the guest writes to the reset register.
pub const RESET_VALUE: u8 = 1;

/// Writes the tables into the BIOS area; returns the RSDP address.
pub fn write_tables(
    mem: &GuestMemoryMmap,
    vcpus: u8,
    devices: &[MmioDevice],
) -> Result<u64, Error> {
    let mut at = ACPI_START + Rsdp::len() as u64;
    let mut place = |bytes: &[u8]| -> Result<u64, Error> {
        let addr = (at + 7) & !7;
        if addr + bytes.len() as u64 > ACPI_END {
            return Err(Error::Layout("ACPI tables do not fit the BIOS area".into()));
        }
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|e| Error::Layout(format!("writing ACPI tables: {e}")))?;
        at = addr + bytes.len() as u64;
        Ok(addr)
    };

    let dsdt = place(dsdt(devices).as_slice())?;
    let fadt = place(&aml_bytes(&fadt(dsdt)))?;
    let madt = place(&aml_bytes(&madt(vcpus)))?;
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE, 1);
    xsdt.add_entry(fadt);
    xsdt.add_entry(madt);
    let xsdt = place(&aml_bytes(&xsdt))?;
    let rsdp = Rsdp::new(OEM_ID, xsdt);
    mem.write_slice(&aml_bytes(&rsdp), GuestAddress(ACPI_START))
        .map_err(|e| Error::Layout(format!("writing the RSDP: {e}")))?;
    Ok(ACPI_START)
}

fn aml_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    table.to_aml_bytes(&mut v);
    v
}

fn fadt(dsdt: u64) -> acpi_tables::fadt::FADT {
    let pm = |offset: u16| {
        GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            u64::from(ACPI_PM_PORT + offset),
        )
    };
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE, 1)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .dsdt_64(dsdt);
    b.reset_reg = pm(0);
    b.reset_value = RESET_VALUE;
    b.sleep_control_reg = pm(0);
    b.sleep_status_reg = pm(1);
    b.hypervisor_vendor_identity = u64::from_le_bytes(*b"STARLING").into();
    b.finalize()
}

fn madt(vcpus: u8) -> MADT {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE,
        1,
        LocalInterruptController::Address(LAPIC_ADDR),
    );
    for id in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_ADDR, 0));
    madt
}

/// Already-encoded AML, so each device can be built on its own and placed in the scope.
struct Raw(Vec<u8>);

impl Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

fn device(name: &str, hid: &dyn Aml, uid: u32, resources: &[&dyn Aml]) -> Raw {
    let crs = aml::ResourceTemplate::new(resources.to_vec());
    let hid = aml::Name::new("_HID".into(), hid);
    let uid = aml::Name::new("_UID".into(), &uid);
    let crs = aml::Name::new("_CRS".into(), &crs);
    Raw(aml_bytes(&aml::Device::new(
        name.into(),
        vec![&hid, &uid, &crs],
    )))
}

fn dsdt(devices: &[MmioDevice]) -> Sdt {
    let mut body = Vec::new();
    aml::Name::new("_S5_".into(), &aml::Package::new(vec![&5u8])).to_aml_bytes(&mut body);

    let mut sb = vec![
        device(
            "COM1",
            &aml::EISAName::new("PNP0501"),
            0,
            &[
                &aml::IO::new(COM1_PORT, COM1_PORT, 1, 8),
                &aml::Interrupt::new(true, true, false, false, COM1_IRQ),
            ],
        ),
        device(
            "RTC0",
            &aml::EISAName::new("PNP0B00"),
            0,
            &[&aml::IO::new(RTC_PORT, RTC_PORT, 1, 2)],
        ),
    ];
    let hid: aml::AmlStr = "LNRO0005";
    for (i, d) in devices.iter().enumerate() {
        sb.push(device(
            &format!("V{i:03X}"),
            &hid,
            i as u32,
            &[
                &aml::Memory32Fixed::new(true, d.addr as u32, d.len as u32),
                &aml::Interrupt::new(true, true, false, false, d.irq),
            ],
        ));
    }
    let children: Vec<&dyn Aml> = sb.iter().map(|d| d as &dyn Aml).collect();
    aml::Scope::new("\\_SB_".into(), children).to_aml_bytes(&mut body);

    let mut sdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE, 1);
    sdt.append_slice(&body);
    sdt
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    #[test]
    fn tables_are_found_from_the_rsdp_and_checksum() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let devs = [
            MmioDevice {
                addr: VIRTIO_MMIO_BASE,
                len: 0x1000,
                irq: 5,
            },
            MmioDevice {
                addr: VIRTIO_MMIO_BASE + 0x1000,
                len: 0x1000,
                irq: 6,
            },
        ];
        let rsdp = write_tables(&mem, 2, &devs).unwrap();
        let mut r = [0u8; 36];
        mem.read_slice(&mut r, GuestAddress(rsdp)).unwrap();
        assert_eq!(&r[..8], b"RSD PTR ");
        assert!(checksum_ok(&r[..20]) && checksum_ok(&r));
        let xsdt = u64::from_le_bytes(r[24..32].try_into().unwrap());
        let table = |addr: u64| {
            let mut h = [0u8; 8];
            mem.read_slice(&mut h, GuestAddress(addr)).unwrap();
            let len = u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize;
            let mut t = vec![0u8; len];
            mem.read_slice(&mut t, GuestAddress(addr)).unwrap();
            assert!(checksum_ok(&t), "{:?} checksum", &t[..4]);
            t
        };
        let x = table(xsdt);
        let entries: Vec<u64> = x[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let sigs: Vec<Vec<u8>> = entries.iter().map(|&a| table(a)[..4].to_vec()).collect();
        assert_eq!(sigs, vec![b"FACP".to_vec(), b"APIC".to_vec()]);
        let fadt = table(entries[0]);
        let dsdt = u64::from_le_bytes(fadt[140..148].try_into().unwrap());
        let d = table(dsdt);
        let find = |needle: &[u8]| d.windows(needle.len()).filter(|w| *w == needle).count();
        assert_eq!(find(b"LNRO0005"), 2);
        assert_eq!(find(b"_S5_"), 1);
        // MADT: two local APIC entries (type 0, length 8).
        let m = table(entries[1]);
        let mut off = 44;
        let mut lapics = 0;
        while off + 2 <= m.len() {
            if m[off] == 0 {
                lapics += 1;
            }
            off += m[off + 1] as usize;
        }
        assert_eq!(lapics, 2);
    }
}
