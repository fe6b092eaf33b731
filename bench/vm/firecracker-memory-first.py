#!/usr/bin/env python3
"""Reorders a Firecracker source tree so that guest memory is registered with KVM before the
interrupt controller and vCPUs are created (Starling's order), for both boot and snapshot
restore, to measure how much of a restore-time difference is that one ordering (on some KVMs
registering memory after KVM_CREATE_IRQCHIP costs several ms). Edits FIRECRACKER_SRC in place;
build it again afterwards (bench/vm_firecracker.py, FIRECRACKER_MEMORY_FIRST=path).

  python3 bench/vm/firecracker-memory-first.py FIRECRACKER_SRC
"""
import re
import sys

path = sys.argv[1] + "/src/vmm/src/builder.rs"
src = open(path).read()
boot = ("    let mut vcpus = vm.create_vcpus(vm_resources.machine_config.vcpu_count)?;\n"
        "    vm.register_dram_memory_regions(guest_memory)?;\n")
boot_swapped = ("    vm.register_dram_memory_regions(guest_memory)?;\n"
                "    let mut vcpus = vm.create_vcpus(vm_resources.machine_config.vcpu_count)?;\n")
restore = re.compile(r"(    let mut vcpus = vm\n        \.create_vcpus\(vm_resources\.machine_config\.vcpu_count\)\n"
                     r"        \.map_err\(StartMicrovmError::KvmVm\)\?;\n\n)"
                     r"(    vm\.restore_memory_regions\(guest_memory, &microvm_state\.vm_state\.memory\)\n"
                     r"        \.map_err\(StartMicrovmError::KvmVm\)\?;\n)")
if boot_swapped in src:
    sys.exit(f"{path}: already reordered")
if boot not in src or not restore.search(src):
    sys.exit(f"{path}: the calls to reorder are not where this script expects them (another Firecracker version?)")
src = src.replace(boot, boot_swapped)
src = restore.sub(lambda m: m.group(2) + "\n" + m.group(1).rstrip("\n") + "\n", src)
open(path, "w").write(src)
print(f"{path}: guest memory now registered before the irqchip and vCPUs (boot and restore)")
