# Sourced by the VM benchmarks (bash): appends to the array `add` the SRC:DEST files that put
# this machine's QEMU into the tier-2 test host (OUTER_ADD): the binary, its libraries and
# the firmware its machines load. QEMU finds its firmware relative to its binary
# (BINDIR/../share/qemu), so Debian's paths are kept.
qemu=$(command -v qemu-system-x86_64)
add+=("$qemu:/usr/bin/qemu-system-x86_64")
for lib in $(ldd "$qemu" | grep -o '/[^ ]*'); do add+=("$(realpath "$lib"):$lib"); done
for f in bios-microvm.bin linuxboot_dma.bin kvmvapic.bin pvh.bin; do
  add+=("$(realpath /usr/share/qemu/$f):/usr/share/qemu/$f")
done
add+=("$(realpath /usr/share/seabios/bios-256k.bin):/usr/share/qemu/bios-256k.bin")
