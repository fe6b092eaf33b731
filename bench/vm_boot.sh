#!/usr/bin/env bash
# Boot time to /init and monitor memory overhead: Starling's VMM vs QEMU (microvm and q35),
# same kernel (Debian cloud) and initramfs, in one run inside the QEMU test host (tier 2; see
# tests/vm/tier2.sh). Writes bench/results/vm-boot.md.
#
#   cargo build --release && sudo bench/vm_boot.sh [target/release/starling]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
starling=$(realpath "${1:-$root/target/release/starling}")
work=${WORK:-/var/tmp/starling-vm-bench}
rm -rf "$work" && mkdir -p "$work"
add=()
. "$root/bench/vm/qemu-files.sh"
STARLING_HOME=${STARLING_HOME:-/var/cache/starling-test/vm/store} \
  INNER_RUN="$root/bench/vm/inner-bench.sh" OUTER_RUN="$root/bench/vm/outer-bench.sh" \
  OUTER_ADD="${add[*]}" TIER2_TIMEOUT=900 \
  "$root/tests/vm/tier2.sh" "$starling" "$work"
python3 - "$work/console.log" "$root/bench/results/vm-boot.md" "$starling" <<'PY'
import re, statistics, sys, datetime, subprocess
log, out, starling = sys.argv[1:4]
runs = {}
for line in open(log, errors="replace"):
    m = re.search(r"bench: (\S+) t0=(\S+) init=(\S*) rss_kb=(\d*) guest_rss_kb=(\d*) status=(\d+)", line)
    if not m:
        continue
    name, t0, init, rss, guest, status = m.groups()
    if not init:
        print(f"{name}: no /init line (status {status})", file=sys.stderr)
        continue
    runs.setdefault(name, []).append((float(init) - float(t0), int(rss or 0) - int(guest or 0), int(rss or 0)))
if not any(k.startswith("starling") for k in runs):
    sys.exit("no successful Starling runs in " + log)
med = {k: statistics.median(x[0] for x in v) for k, v in runs.items()}
ovh = {k: statistics.median(x[1] for x in v) for k, v in runs.items()}
rows = []
for k in sorted(runs, key=lambda k: (k.split("-")[-1], k)):
    kind = k.split("-")[-1]
    ours = med.get("starling-" + kind)
    ratio = f"{ours / med[k]:.2f}x" if ours else "-"
    best = f"{med['starling-vmlinux'] / med[k]:.2f}x" if "starling-vmlinux" in med else "-"
    rows.append(f"| {k} | {len(runs[k])} | {med[k]:.2f} | {ratio} | {best} | {ovh[k]/1024:.1f} |")
kernel = open(log.replace("console.log", "kernel.json")).read().strip()
text = f"""# VM boot: time to /init and monitor overhead

Run {datetime.date.today()} with `sudo bench/vm_boot.sh` (release build), inside the QEMU test host
of tier 2 (TCG, `-cpu max`, nested SVM; see shared/MACHINES.md), all monitors in one run,
alternating, on the same kernel and initramfs. Kernel: `{kernel}`.
Guest: 2 vCPUs, 256 MiB, `console=ttyS0 reboot=k panic=-1 pci=off quiet`; the initramfs's first
line is `starling-initramfs: /init started`. Time = from starting the monitor to that line
reaching the test host (stamped on arrival with its uptime, 10 ms resolution). Overhead = the
monitor's RSS minus the RSS of its guest-RAM mapping, sampled 1 s after /init while the guest
idles.

| monitor-kernel | runs | time to /init, median (s) | Starling (same kernel file) / this | Starling (vmlinux) / this | RSS beyond guest RAM (MiB) |
|---|---|---|---|---|---|
""" + "\n".join(rows) + f"""

`vmlinuz` is Debian's bzImage (LZ4, decompressed in the guest by its boot stub); `vmlinux` is
the same kernel uncompressed by `starling vm kernel fetch` and booted through its PVH note
(QEMU boots it through its pvh.bin option ROM). Goals (issue 7): time ≤ 0.5x QEMU; overhead
≤ 5 MiB.
Absolute times are those of a nested, emulated machine: only the ratios carry over.
"""
open(out, "w").write(text)
print(text)
PY
