//! Capturing and restoring what KVM holds: per vCPU its registers, FPU/XSAVE, LAPIC, MSRs,
//! events and CPUID; per VM the interrupt controllers, the PIT and kvmclock. The order of the
//! calls follows KVM's own rules (MP state before registers on capture, since reading it may
//! deliver pending INIT/SIPI; events last on restore).

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
    CpuId, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

use crate::Error;

#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub msrs: Vec<kvm_msr_entry>,
    pub events: kvm_vcpu_events,
    pub tsc_khz: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KvmVmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

fn kvm(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

/// An MSR read request for each index.
fn msrs_for(list: &[u32]) -> Result<Msrs, Error> {
    let entries: Vec<kvm_msr_entry> = list
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&entries).map_err(|_| Error::Invalid("too many MSRs".into()))
}

/// The MSRs KVM can save for this vCPU: its index list minus those the vCPU refuses.
pub fn msr_indices(kvm_fd: &Kvm, vcpu: &VcpuFd) -> Result<Vec<u32>, Error> {
    let mut list: Vec<u32> = kvm_fd
        .get_msr_index_list()
        .map_err(kvm("KVM_GET_MSR_INDEX_LIST"))?
        .as_slice()
        .to_vec();
    loop {
        let mut msrs = msrs_for(&list)?;
        let n = vcpu.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
        if n >= list.len() {
            return Ok(list);
        }
        // KVM stops at the first MSR it cannot read: leave that one out.
        list.remove(n);
    }
}

pub fn capture_vcpu(vcpu: &VcpuFd, msr_list: &[u32]) -> Result<VcpuState, Error> {
    let mp_state = vcpu.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?;
    let regs = vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?;
    let sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    let xsave = vcpu.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?;
    let xcrs = vcpu.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?;
    let debugregs = vcpu.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?;
    let lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    let tsc_khz = vcpu.get_tsc_khz().ok();
    let mut msrs = msrs_for(msr_list)?;
    let n = vcpu.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
    let msrs = msrs.as_slice()[..n].to_vec();
    let events = vcpu.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?;
    let cpuid = vcpu
        .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm("KVM_GET_CPUID2"))?
        .as_slice()
        .to_vec();
    Ok(VcpuState {
        cpuid,
        mp_state,
        regs,
        sregs,
        xsave,
        xcrs,
        debugregs,
        lapic,
        msrs,
        events,
        tsc_khz,
    })
}

pub fn restore_vcpu(vcpu: &VcpuFd, s: &VcpuState) -> Result<(), Error> {
    let cpuid = CpuId::from_entries(&s.cpuid)
        .map_err(|_| Error::Invalid("CPUID table too large".into()))?;
    vcpu.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
    if let Some(khz) = s.tsc_khz {
        // Same frequency as where it was taken; hosts that cannot scale keep theirs.
        let _ = vcpu.set_tsc_khz(khz);
    }
    vcpu.set_mp_state(s.mp_state)
        .map_err(kvm("KVM_SET_MP_STATE"))?;
    vcpu.set_regs(&s.regs).map_err(kvm("KVM_SET_REGS"))?;
    vcpu.set_sregs(&s.sregs).map_err(kvm("KVM_SET_SREGS"))?;
    // SAFETY: the xsave area came from KVM_GET_XSAVE of a vCPU with the same CPUID (restored
    // just above), so it has the layout KVM expects.
    unsafe { vcpu.set_xsave(&s.xsave) }.map_err(kvm("KVM_SET_XSAVE"))?;
    vcpu.set_xcrs(&s.xcrs).map_err(kvm("KVM_SET_XCRS"))?;
    vcpu.set_debug_regs(&s.debugregs)
        .map_err(kvm("KVM_SET_DEBUGREGS"))?;
    vcpu.set_lapic(&s.lapic).map_err(kvm("KVM_SET_LAPIC"))?;
    let msrs = Msrs::from_entries(&s.msrs).map_err(|_| Error::Invalid("too many MSRs".into()))?;
    let n = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
    if n != s.msrs.len() {
        let index = s.msrs.get(n).map_or(0, |m| m.index);
        return Err(Error::Invalid(format!(
            "this host's KVM refuses MSR {index:#x} of the snapshot"
        )));
    }
    vcpu.set_vcpu_events(&s.events)
        .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}

fn chip(vm: &VmFd, id: u32) -> Result<kvm_irqchip, Error> {
    let mut c = kvm_irqchip {
        chip_id: id,
        ..Default::default()
    };
    vm.get_irqchip(&mut c).map_err(kvm("KVM_GET_IRQCHIP"))?;
    Ok(c)
}

pub fn capture_vm(vm: &VmFd) -> Result<KvmVmState, Error> {
    Ok(KvmVmState {
        pic_master: chip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: chip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: chip(vm, KVM_IRQCHIP_IOAPIC)?,
        pit: vm.get_pit2().map_err(kvm("KVM_GET_PIT2"))?,
        clock: vm.get_clock().map_err(kvm("KVM_GET_CLOCK"))?,
    })
}

pub fn restore_vm(vm: &VmFd, s: &KvmVmState) -> Result<(), Error> {
    vm.set_pit2(&s.pit).map_err(kvm("KVM_SET_PIT2"))?;
    // kvmclock continues from the snapshot's value: the guest sees no jump in its monotonic
    // time (its wall clock is corrected by the identity it is handed).
    let clock = kvm_clock_data {
        clock: s.clock.clock,
        ..Default::default()
    };
    vm.set_clock(&clock).map_err(kvm("KVM_SET_CLOCK"))?;
    for c in [&s.pic_master, &s.pic_slave, &s.ioapic] {
        vm.set_irqchip(c).map_err(kvm("KVM_SET_IRQCHIP"))?;
    }
    Ok(())
}
