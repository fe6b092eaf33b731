//! The CPUID a guest sees, normalised as Firecracker does (its
//! docs/cpu_templates/cpuid-normalization.md): KVM's supported set with this vCPU's identity and
//! topology (caches included), what a guest must not rely on inside a VM hidden (performance
//! monitoring and its capability MSR, turbo and frequency control, IA32_ARCH_CAPABILITIES on
//! AMD), and a brand string of the vendor's server line instead of the host's model. Also the
//! XCR0 a vCPU starts with, and the check that a snapshot's CPUID fits the host restoring it.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// APIC ids the topology leaves reserve in the package: every id a vCPU may have
/// (`config::MAX_VCPUS`), so that the core level's shift does not depend on the VM's size.
const PACKAGE_IDS: u32 = crate::config::MAX_VCPUS as u32;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Vendor {
    Intel,
    Amd,
    Other,
}

impl std::fmt::Display for Vendor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Vendor::Intel => "Intel",
            Vendor::Amd => "AMD",
            Vendor::Other => "neither Intel nor AMD",
        })
    }
}

fn vendor(entries: &[kvm_cpuid_entry2]) -> Vendor {
    let Some(e) = entries.iter().find(|e| e.function == 0) else {
        return Vendor::Other;
    };
    match (e.ebx, e.edx, e.ecx) {
        // "GenuineIntel", "AuthenticAMD" in EBX, EDX, ECX order.
        (0x756e_6547, 0x4965_6e69, 0x6c65_746e) => Vendor::Intel,
        // "HygonGenuine" is AMD's design.
        (0x6874_7541, 0x6974_6e65, 0x444d_4163) | (0x6f67_7948, 0x6e65_476e, 0x656e_6975) => {
            Vendor::Amd
        }
        _ => Vendor::Other,
    }
}

fn set_bit(x: &mut u32, bit: u32, on: bool) {
    *x = (*x & !(1 << bit)) | (u32::from(on) << bit);
}

fn set_bits(x: &mut u32, low: u32, width: u32, value: u32) {
    let mask = ((1u64 << width) - 1) as u32;
    *x = (*x & !(mask << low)) | ((value & mask) << low);
}

/// Bits needed to number `n` ids (0 for one).
fn id_bits(n: u32) -> u32 {
    n.max(1).next_power_of_two().trailing_zeros()
}

/// CPUID for vCPU `id` of `count`, from KVM's supported set `base`. One thread per core, all
/// cores in one package.
pub fn cpuid_for(base: &CpuId, id: u8, count: u8) -> CpuId {
    let mut entries: Vec<kvm_cpuid_entry2> = base.as_slice().to_vec();
    normalize(&mut entries, u32::from(id), u32::from(count));
    // At most two entries more than KVM's own set, far below the table's bound.
    #[allow(clippy::expect_used)]
    CpuId::from_entries(&entries).expect("a CPUID table within KVM_MAX_CPUID_ENTRIES")
}

fn normalize(entries: &mut Vec<kvm_cpuid_entry2>, id: u32, count: u32) {
    let vendor = vendor(entries);
    // APIC ids 0..count: a cache all vCPUs share must span the next power of two of them
    // (Linux finds a cache's id by shifting the APIC id by the bits of its sharer count).
    let all = count.max(1).next_power_of_two();
    // AMD's topology extension (leaves 0x8000001D/E, which are set below) where KVM lists both.
    let topoext = vendor == Vendor::Amd
        && [0x8000_001d, 0x8000_001e]
            .iter()
            .all(|f| entries.iter().any(|e| e.function == *f))
        && entries
            .iter()
            .any(|e| e.function == 0x8000_0000 && e.eax >= 0x8000_001e);
    let brand = brand_string(vendor, entries);
    // KVM no longer lists the topology leaves' core level (Linux 6.2); the guest needs both
    // levels. Leaf 0x1F (V2 topology, preferred by Linux when present) says the same as 0xB.
    for leaf in [0xb, 0x1f] {
        if entries.iter().any(|e| e.function == leaf)
            && !entries.iter().any(|e| e.function == leaf && e.index == 1)
        {
            entries.push(kvm_cpuid_entry2 {
                function: leaf,
                index: 1,
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                ..Default::default()
            });
        }
    }
    for e in entries.iter_mut() {
        match (e.function, vendor) {
            (1, _) => {
                // CLFLUSH line size in 8-byte units; APIC ids in the package; this one's id.
                set_bits(&mut e.ebx, 8, 8, 8);
                set_bits(&mut e.ebx, 16, 8, count.next_power_of_two().min(128));
                set_bits(&mut e.ebx, 24, 8, id);
                // No IA32_PERF_CAPABILITIES; the LAPIC timer's TSC-deadline mode (KVM's
                // in-kernel LAPIC emulates it); running on a hypervisor.
                set_bit(&mut e.ecx, 15, false);
                set_bit(&mut e.ecx, 24, true);
                set_bit(&mut e.ecx, 31, true);
                // HTT: EBX[23:16] is valid.
                set_bit(&mut e.edx, 28, count > 1);
            }
            (6, Vendor::Intel) => {
                // Turbo boost and frequency selection are the host's.
                set_bit(&mut e.eax, 1, false);
                set_bit(&mut e.ecx, 3, false);
            }
            (0xa, Vendor::Intel) => {
                // No architectural performance monitoring.
                (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0);
            }
            (0xb | 0x1f, _) => {
                e.flags |= KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
                e.edx = id;
                (e.eax, e.ebx, e.ecx) = match e.index {
                    // The thread level: one per core, no id bits.
                    0 => (0, 1, 1 << 8),
                    // The core level: every vCPU, the ids of all that may be.
                    1 => (id_bits(PACKAGE_IDS), count, (2 << 8) | 1),
                    // No more levels.
                    i => (0, 0, i & 0xff),
                };
            }
            (7, Vendor::Amd) if e.index == 0 => {
                // IA32_ARCH_CAPABILITIES is an Intel MSR KVM offers on AMD too: not there.
                set_bit(&mut e.edx, 29, false);
            }
            (0x8000_0008, Vendor::Amd) => {
                // Cores in the package less one, and the APIC id bits that number them.
                set_bits(&mut e.ecx, 0, 8, count.saturating_sub(1));
                set_bits(&mut e.ecx, 12, 4, id_bits(count));
            }
            // Deterministic cache parameters (Intel) and AMD's cache topology: one thread per
            // core, so L1 and L2 are each vCPU's own and L3 is every vCPU's; the host's own
            // sharing (its cores, its SMT) is not the VM's.
            (4, Vendor::Intel) | (0x8000_001d, Vendor::Amd) if e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 0x7;
                set_bits(&mut e.eax, 14, 12, if level >= 3 { all - 1 } else { 0 });
                if e.function == 4 {
                    // Addressable core ids in the package, less one.
                    set_bits(&mut e.eax, 26, 6, all.min(64) - 1);
                }
            }
            (0x8000_0001, Vendor::Amd) if topoext => set_bit(&mut e.ecx, 22, true),
            (0x8000_0002..=0x8000_0004, _) => {
                if let Some(b) = &brand {
                    [e.eax, e.ebx, e.ecx, e.edx] = brand_words(b, e.function);
                }
            }
            (0x8000_001e, Vendor::Amd) => {
                // Extended APIC id; one thread per core, core id = APIC id; one node.
                e.eax = id;
                set_bits(&mut e.ebx, 0, 8, id);
                set_bits(&mut e.ebx, 8, 8, 0);
                set_bits(&mut e.ecx, 0, 11, 0);
            }
            _ => {}
        }
    }
}

/// Bytes in CPUID's brand string (leaves 0x80000002..4, NUL-padded).
const BRAND_LEN: usize = 48;

/// The brand string a guest is shown, as Firecracker shows it: the vendor's server line
/// rather than the host's model (hosts of a fleet differ, and a clone or restore elsewhere
/// shows what its first boot showed); Intel's with the host's nominal frequency, which
/// Linux reads from it. None for other vendors or when KVM lists no brand string.
fn brand_string(vendor: Vendor, entries: &[kvm_cpuid_entry2]) -> Option<[u8; BRAND_LEN]> {
    let host = brand_bytes(entries)?;
    let text = match vendor {
        Vendor::Intel => {
            let host = String::from_utf8_lossy(&host);
            let host = host.trim_end_matches(['\0', ' ']);
            // "… CPU @ 3.00GHz": the frequency is what follows the last '@'.
            match host.rsplit_once('@').map(|(_, f)| f.trim()) {
                Some(f) if f.ends_with("Hz") && !f.is_empty() => {
                    format!("Intel(R) Xeon(R) Processor @ {f}")
                }
                _ => "Intel(R) Xeon(R) Processor".to_owned(),
            }
        }
        Vendor::Amd => "AMD EPYC".to_owned(),
        Vendor::Other => return None,
    };
    let mut b = [0u8; BRAND_LEN];
    // The last byte stays NUL: the string is terminated, as CPUs give it.
    let n = text.len().min(BRAND_LEN - 1);
    b[..n].copy_from_slice(&text.as_bytes()[..n]);
    Some(b)
}

/// The brand string leaves 0x80000002..4 hold, as bytes; None when one is not listed.
fn brand_bytes(entries: &[kvm_cpuid_entry2]) -> Option<[u8; BRAND_LEN]> {
    let mut b = [0u8; BRAND_LEN];
    for (leaf, chunk) in (0x8000_0002..=0x8000_0004).zip(b.chunks_exact_mut(16)) {
        let e = entries.iter().find(|e| e.function == leaf)?;
        for (r, out) in [e.eax, e.ebx, e.ecx, e.edx]
            .iter()
            .zip(chunk.chunks_exact_mut(4))
        {
            out.copy_from_slice(&r.to_le_bytes());
        }
    }
    Some(b)
}

/// EAX, EBX, ECX and EDX of brand string leaf `leaf` (0x80000002..4) holding `b`.
fn brand_words(b: &[u8; BRAND_LEN], leaf: u32) -> [u32; 4] {
    let at = (leaf.saturating_sub(0x8000_0002) as usize).min(2) * 16;
    std::array::from_fn(|k| {
        let w = &b[at + 4 * k..at + 4 * k + 4];
        u32::from_le_bytes([w[0], w[1], w[2], w[3]])
    })
}

/// The XCR0 a vCPU starts with: every user state component KVM offers (CPUID 0xD.0
/// EDX:EAX), as the guest kernel will enable them; None without XSAVE. Set before the guest
/// runs so that CPUID 0xD's XSAVE area sizes, which KVM computes from XCR0, already describe
/// the state the guest will use: a KVM that never sees the guest's XSETBV (nested under
/// QEMU's emulated SVM) otherwise keeps reporting the x87/SSE size, and Linux then finds its
/// XSAVE layout inconsistent and turns XSAVE (and AVX with it) off. A KVM that does see the
/// guest's XSETBV recomputes the sizes for whatever the guest sets.
pub fn initial_xcr0(cpuid: &CpuId) -> Option<u64> {
    let entries = cpuid.as_slice();
    let xsave = entries
        .iter()
        .find(|e| e.function == 1)
        .is_some_and(|e| e.ecx & (1 << 26) != 0);
    let leaf = entries.iter().find(|e| e.function == 0xd && e.index == 0)?;
    let mask = valid_xcr0(u64::from(leaf.eax) | (u64::from(leaf.edx) << 32));
    (xsave && mask != 0).then_some(mask)
}

/// `offered` cut to an XCR0 that XSETBV accepts: x87 always; AVX only with SSE; the three
/// AVX-512 components together and only with AVX; AMX's two together (some KVMs list its
/// configuration without its data when the VMM has not asked for AMX). MPX is left out: Linux
/// no longer uses it, and a guest that does enables it itself.
fn valid_xcr0(offered: u64) -> u64 {
    const X87: u64 = 1;
    const SSE: u64 = 1 << 1;
    const AVX: u64 = 1 << 2;
    const MPX: u64 = 0b11 << 3;
    const AVX512: u64 = 0b111 << 5;
    const AMX: u64 = 0b11 << 17;
    if offered & X87 == 0 {
        return 0;
    }
    let mut x = offered & !MPX;
    if x & SSE == 0 {
        x &= !AVX;
    }
    if x & AVX == 0 || x & AVX512 != AVX512 {
        x &= !AVX512;
    }
    if x & AMX != AMX {
        x &= !AMX;
    }
    x
}

/// Feature registers a snapshot's guest may have used: (leaf, subleaf, register name, the
/// register, bits that the monitor or the guest's own state sets and KVM never lists).
type Register = (u32, u32, &'static str, fn(&kvm_cpuid_entry2) -> u32, u32);
const FEATURES: [Register; 8] = [
    // OSXSAVE (27) follows the guest's CR4; TSC-deadline (24) and hypervisor (31) are ours.
    (1, 0, "ECX", |e| e.ecx, (1 << 27) | (1 << 24) | (1 << 31)),
    // APIC (9) follows the guest's APIC base MSR; HTT (28) is ours.
    (1, 0, "EDX", |e| e.edx, (1 << 9) | (1 << 28)),
    (7, 0, "EBX", |e| e.ebx, 0),
    // OSPKE (4) follows the guest's CR4.
    (7, 0, "ECX", |e| e.ecx, 1 << 4),
    (7, 0, "EDX", |e| e.edx, 0),
    (0xd, 0, "EAX", |e| e.eax, 0),
    // TOPOEXT (22) is ours on AMD.
    (0x8000_0001, 0, "ECX", |e| e.ecx, 1 << 22),
    (0x8000_0001, 0, "EDX", |e| e.edx, 0),
];

/// The entry CPUID(function, index) answers from, as KVM looks it up: a leaf without
/// subleaves answers every index, whatever its entry's index field holds.
fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> Option<&kvm_cpuid_entry2> {
    entries.iter().find(|e| {
        e.function == function
            && (e.index == index || e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0)
    })
}

/// Whether a snapshot whose vCPUs had `saved` can run on a host whose KVM offers `host`: the
/// same CPU vendor, and no feature the guest was given that this host lacks (a guest that
/// found AVX-512 at boot would fault on its first such instruction here). The error names
/// the CPUID leaf, register and bits.
pub fn check_restorable(saved: &[kvm_cpuid_entry2], host: &CpuId) -> Result<(), String> {
    let host = host.as_slice();
    let (was, is) = (vendor(saved), vendor(host));
    if was != is {
        return Err(format!(
            "the snapshot was taken on an {was} CPU and this host's is {is}"
        ));
    }
    for (leaf, sub, name, reg, dynamic) in FEATURES {
        let Some(s) = find(saved, leaf, sub) else {
            continue;
        };
        let offered = find(host, leaf, sub).map_or(0, reg);
        let missing = reg(s) & !dynamic & !offered;
        if missing != 0 {
            return Err(format!(
                "the snapshot's guest was given CPU features this host's KVM does not offer: \
                 CPUID leaf {leaf:#x}.{sub} {name} bits {missing:#010x}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    const INTEL: [u32; 4] = [0x1f, 0x756e_6547, 0x6c65_746e, 0x4965_6e69];
    const AMD: [u32; 4] = [0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65];

    fn host(vendor: [u32; 4]) -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(0, 0, vendor),
            // PDCM (15) and XSAVE (26) on; HTT off; a stale APIC id in EBX.
            entry(
                1,
                0,
                [0x806f8, 0x0700_0800, (1 << 15) | (1 << 26), 0x178b_fbff],
            ),
            entry(6, 0, [0x77, 0, 0x9, 0]),
            entry(7, 0, [0, 0x0010_0000, 0, (1 << 29) | (1 << 26)]),
            entry(0xa, 0, [0x0703_0805, 0, 0, 0x603]),
            entry(0xb, 0, [1, 2, 0x100, 7]),
            entry(0x1f, 0, [1, 2, 0x100, 7]),
            entry(0xd, 0, [0x207, 0x240, 0xa88, 0]),
            entry(0x8000_0001, 0, [0, 0, 0x1, 0x2c10_0800]),
            entry(0x8000_0008, 0, [0x3030, 0, 0x7007, 0]),
            entry(0x8000_001e, 0, [9, 0x0100, 0x0101, 0]),
            entry(0x8000_0000, 0, [0x8000_0021, 0, 0, 0]),
        ]
        .into_iter()
        .chain(brand(b"Intel(R) Xeon(R) Platinum 8275CL CPU @ 3.00GHz"))
        // Caches as a host with SMT and 24 cores per package reports them: L1d, L1i and L2
        // shared by a core's 2 threads, L3 by 48; then the end of the list.
        .chain([4, 0x8000_001d].into_iter().flat_map(|f| {
            [0x121u32, 0x122, 0x143, 0x163, 0]
                .into_iter()
                .enumerate()
                .map(move |(i, kind)| {
                    let sharing = if kind & 0xe0 == 0x60 { 47 } else { 1 };
                    let cores = if f == 4 { 23 << 26 } else { 0 };
                    let eax = if kind == 0 {
                        0
                    } else {
                        kind | (sharing << 14) | cores
                    };
                    let mut e = entry(f, i as u32, [eax, 0x3f, 0x3f, 0]);
                    e.flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
                    e
                })
        }))
        .collect()
    }

    /// Leaves 0x80000002..4 holding `text`, NUL-padded.
    fn brand(text: &[u8]) -> Vec<kvm_cpuid_entry2> {
        let mut b = [0u8; BRAND_LEN];
        b[..text.len()].copy_from_slice(text);
        (0x8000_0002..=0x8000_0004)
            .map(|leaf| entry(leaf, 0, brand_words(&b, leaf)))
            .collect()
    }

    fn brand_of(entries: &[kvm_cpuid_entry2]) -> String {
        let b = brand_bytes(entries).expect("brand string leaves");
        assert_eq!(b.last(), Some(&0), "the brand string ends in NUL");
        String::from_utf8_lossy(&b)
            .trim_end_matches('\0')
            .to_owned()
    }

    fn get(entries: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *find(entries, f, i).unwrap_or_else(|| panic!("leaf {f:#x}.{i} missing"))
    }

    #[test]
    fn each_vcpu_gets_its_identity_and_the_topology_of_its_vm() {
        for vendor in [INTEL, AMD] {
            let mut e = host(vendor);
            normalize(&mut e, 2, 3);
            let l1 = get(&e, 1, 0);
            assert_eq!(l1.ebx >> 24, 2, "initial APIC id");
            assert_eq!((l1.ebx >> 16) & 0xff, 4, "APIC ids in the package");
            assert_eq!((l1.ebx >> 8) & 0xff, 8, "CLFLUSH line size");
            assert_eq!(l1.ecx & (1 << 15), 0, "PDCM hidden");
            assert_ne!(l1.ecx & (1 << 24), 0, "TSC deadline");
            assert_ne!(l1.ecx & (1 << 31), 0, "hypervisor");
            assert_ne!(l1.edx & (1 << 28), 0, "HTT with 3 vCPUs");
            let t0 = get(&e, 0xb, 0);
            let t1 = get(&e, 0xb, 1);
            assert_eq!((t0.eax, t0.ebx, t0.ecx, t0.edx), (0, 1, 0x100, 2));
            assert_eq!((t1.eax, t1.ebx, t1.ecx, t1.edx), (5, 3, 0x201, 2));
            assert_ne!(t1.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX, 0);
            for i in [0, 1] {
                let (v1, v2) = (get(&e, 0xb, i), get(&e, 0x1f, i));
                assert_eq!(
                    (v1.eax, v1.ebx, v1.ecx, v1.edx),
                    (v2.eax, v2.ebx, v2.ecx, v2.edx)
                );
            }
        }
        let mut one = host(INTEL);
        normalize(&mut one, 0, 1);
        assert_eq!(get(&one, 1, 0).edx & (1 << 28), 0, "no HTT alone");
    }

    #[test]
    fn what_a_guest_must_not_rely_on_is_hidden_per_vendor() {
        let mut intel = host(INTEL);
        normalize(&mut intel, 0, 2);
        let pm = get(&intel, 0xa, 0);
        assert_eq!((pm.eax, pm.ebx, pm.ecx, pm.edx), (0, 0, 0, 0));
        let pw = get(&intel, 6, 0);
        assert_eq!((pw.eax & 2, pw.ecx & 8), (0, 0));
        // Intel's own IA32_ARCH_CAPABILITIES stays.
        assert_ne!(get(&intel, 7, 0).edx & (1 << 29), 0);

        let mut amd = host(AMD);
        normalize(&mut amd, 1, 2);
        assert_eq!(get(&amd, 7, 0).edx & (1 << 29), 0);
        assert_ne!(get(&amd, 7, 0).edx & (1 << 26), 0, "other bits kept");
        assert_eq!(get(&amd, 0x8000_0008, 0).ecx & 0xf0ff, 0x1001);
        let ext = get(&amd, 0x8000_001e, 0);
        assert_eq!((ext.eax, ext.ebx & 0xffff, ext.ecx & 0x7ff), (1, 1, 0));
        // AMD's leaves 6 and 0xA are left as KVM gives them.
        assert_eq!(get(&amd, 0xa, 0).eax, 0x0703_0805);
    }

    #[test]
    fn caches_are_shared_as_the_vm_s_topology_says_not_the_host_s() {
        for (vendor, leaf) in [(INTEL, 4), (AMD, 0x8000_001d)] {
            let mut e = host(vendor);
            normalize(&mut e, 1, 3);
            // (sharers less one, addressable cores less one) per level: L1d, L1i, L2, L3.
            let sharing: Vec<_> = (0..4)
                .map(|i| {
                    let c = get(&e, leaf, i);
                    ((c.eax >> 14) & 0xfff, c.eax >> 26, c.eax & 0x3fff)
                })
                .collect();
            let cores = if leaf == 4 { 3 } else { 0 };
            assert_eq!(
                sharing,
                [
                    (0, cores, 0x121),
                    (0, cores, 0x122),
                    (0, cores, 0x143),
                    (3, cores, 0x163)
                ],
                "leaf {leaf:#x}"
            );
            // The end of the list stays the end.
            assert_eq!(get(&e, leaf, 4).eax, 0);
        }
        // The other vendor's cache leaf is left alone.
        let mut amd = host(AMD);
        normalize(&mut amd, 0, 2);
        assert_eq!((get(&amd, 4, 3).eax >> 14) & 0xfff, 47);
        // AMD's topology extension announced, as leaves 0x8000001D/E now describe the VM.
        assert_ne!(get(&amd, 0x8000_0001, 0).ecx & (1 << 22), 0);
        let mut intel = host(INTEL);
        normalize(&mut intel, 0, 2);
        assert_eq!(get(&intel, 0x8000_0001, 0).ecx & (1 << 22), 0);
    }

    #[test]
    fn the_brand_string_names_the_vendor_s_server_line_not_the_host_s_model() {
        let mut intel = host(INTEL);
        normalize(&mut intel, 0, 1);
        assert_eq!(brand_of(&intel), "Intel(R) Xeon(R) Processor @ 3.00GHz");
        let mut amd = host(AMD);
        normalize(&mut amd, 0, 1);
        assert_eq!(brand_of(&amd), "AMD EPYC");
        // A host string without a frequency; one of exactly 48 bytes (no NUL of its own).
        for (text, want) in [
            (
                &b"Genuine Intel(R) CPU 0000"[..],
                "Intel(R) Xeon(R) Processor",
            ),
            (&[b'x'; BRAND_LEN][..], "Intel(R) Xeon(R) Processor"),
            (
                &b"Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz   "[..],
                "Intel(R) Xeon(R) Processor @ 3.20GHz",
            ),
        ] {
            let mut e: Vec<_> = host(INTEL)
                .into_iter()
                .filter(|e| !(0x8000_0002..=0x8000_0004).contains(&e.function))
                .chain(brand(text))
                .collect();
            normalize(&mut e, 0, 1);
            assert_eq!(brand_of(&e), want);
        }
        // No brand leaves listed: none are made up.
        let mut bare: Vec<_> = host(AMD)
            .into_iter()
            .filter(|e| e.function != 0x8000_0003)
            .collect();
        normalize(&mut bare, 0, 1);
        assert!(find(&bare, 0x8000_0003, 0).is_none());
        assert_eq!(
            get(&bare, 0x8000_0002, 0).eax,
            brand(b"Intel(R) Xeon(R) Platinum")[0].eax
        );
    }

    #[test]
    fn the_first_xcr0_enables_every_state_component_kvm_offers() {
        let mut e = host(INTEL);
        normalize(&mut e, 0, 1);
        let cpuid = CpuId::from_entries(&e).unwrap();
        assert_eq!(initial_xcr0(&cpuid), Some(0x207));
        // What XSETBV would refuse is left out.
        assert_eq!(valid_xcr0(0x2ff), 0x2e7, "MPX out, AVX-512 kept");
        assert_eq!(valid_xcr0(0x20207 | (1 << 17)), 0x207, "AMX's config alone");
        assert_eq!(valid_xcr0(0x60207), 0x60207);
        assert_eq!(valid_xcr0(0x65), 0x1, "AVX and AVX-512 need SSE");
        assert_eq!(valid_xcr0(0x6), 0);
        // No XSAVE, no XCR0.
        let mut plain = host(INTEL);
        plain[1].ecx &= !(1 << 26);
        assert_eq!(initial_xcr0(&CpuId::from_entries(&plain).unwrap()), None);
    }

    #[test]
    fn this_host_s_cpuid_passes_its_own_restore_check() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("SKIPPED: no /dev/kvm to read this host's CPUID from");
            return;
        };
        let host = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        for id in 0..4 {
            let given = cpuid_for(&host, id, 4);
            check_restorable(given.as_slice(), &host).unwrap();
        }
    }

    #[test]
    fn a_snapshot_restores_on_a_host_with_its_features_and_is_refused_elsewhere() {
        let offered = host(INTEL);
        let mut saved = offered.clone();
        normalize(&mut saved, 0, 2);
        // What the running guest itself turned on.
        saved[1].ecx |= 1 << 27;
        let same = CpuId::from_entries(&offered).unwrap();
        check_restorable(&saved, &same).unwrap();

        // A host without AVX-512F (leaf 7 EBX bit 16) that the guest was given.
        let mut richer = saved.clone();
        richer[3].ebx |= 1 << 16;
        let e = check_restorable(&richer, &same).unwrap_err();
        assert!(e.contains("leaf 0x7.0 EBX bits 0x00010000"), "{e}");
        // Fewer XSAVE components here than the snapshot's guest used.
        let mut less = offered.clone();
        let xsave = less.iter_mut().find(|e| e.function == 0xd).unwrap();
        xsave.eax = 0x7;
        let e = check_restorable(&saved, &CpuId::from_entries(&less).unwrap()).unwrap_err();
        assert!(e.contains("leaf 0xd.0 EAX bits 0x00000200"), "{e}");
        // Another vendor.
        let e = check_restorable(&saved, &CpuId::from_entries(&host(AMD)).unwrap()).unwrap_err();
        assert!(e.contains("Intel") && e.contains("AMD"), "{e}");
    }
}
