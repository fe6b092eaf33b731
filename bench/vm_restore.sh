#!/usr/bin/env bash
# Restore of a booted Debian guest: Starling (`starling-vmm --restore`, memory file mapped
# MAP_PRIVATE) vs QEMU (`-incoming "exec:cat FILE"`), same kernel, initramfs and memory, in one
# run inside the QEMU test host of tier 2 (see tests/vm/tier2.sh): to running, and to all
# memory with data resident (QEMU has read its stream by the time it runs; Starling faults its
# pages in as they are touched, so restore-timer faults them all in). Writes
# bench/results/vm-restore.md.
#
#   cargo build --release && sudo bench/vm_restore.sh [target/release/starling]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
starling=$(realpath "${1:-$root/target/release/starling}")
work=${WORK:-/var/tmp/starling-vm-restore-bench}
rm -rf "$work" && mkdir -p "$work"
cc -static -O2 -o "$work/restore-timer" "$root/bench/vm/restore-timer.c"
add=("$work/restore-timer:/bin/restore-timer")
. "$root/bench/vm/qemu-files.sh"
STARLING_HOME=${STARLING_HOME:-/var/cache/starling-test/vm/store} \
  INNER_RUN="$root/bench/vm/inner-idle.sh" OUTER_RUN="$root/bench/vm/outer-restore.sh" \
  OUTER_ADD="${add[*]}" TIER2_TIMEOUT=900 \
  "$root/tests/vm/tier2.sh" "$starling" "$work"
python3 - "$work/console.log" "$root/bench/results/vm-restore.md" <<'PY'
import datetime, json, re, statistics, sys
log, out = sys.argv[1:3]
runs, sizes, snaps = {}, {}, []
for line in open(log, errors="replace"):
    m = re.search(r"bench: (\w+) elapsed_ms=([\d.]+) resident_ms=([\d.]+)", line)
    if m:
        runs.setdefault(m.group(1), []).append((float(m.group(2)), float(m.group(3))))
    m = re.search(r"bench-size: (\w+) (\d+)", line)
    if m:
        sizes[m.group(1)] = int(m.group(2))
    if "bench-snap:" in line:
        snaps.append(line.split("bench-snap: ", 1)[1].strip())
if "starling" not in runs or "qemu" not in runs:
    sys.exit("missing runs in " + log)
med = lambda k, i: statistics.median(r[i] for r in runs[k])
s, q = med("starling", 0), med("qemu", 0)
sr, qr = med("starling", 1), med("qemu", 1)
every = lambda k, i: ", ".join(f"{r[i]:.0f}" for r in runs[k])
kernel = open(log.replace("console.log", "kernel.json")).read().strip()
text = f"""# Restore of a booted Linux guest: Starling vs QEMU `-incoming`

Run {datetime.date.today()} with `sudo bench/vm_restore.sh` (release build), inside the QEMU
test host of tier 2 (TCG, `-cpu max`, nested SVM; see shared/MACHINES.md), both monitors in
one run, alternating. Kernel: `{kernel}` (the uncompressed vmlinux, PVH entry), the tier-2
busybox initramfs; the guest boots, drops its page cache and idles; 1 vCPU, 256 MiB, no virtio
devices on either side (QEMU `-M microvm -cpu host`). Starling snapshots with `vm snapshot
--stop` and restores with `starling-vmm --restore` (memory file mapped MAP_PRIVATE); QEMU
migrates to a file (`migrate exec:cat > FILE`, after `stop`) and restores with `-incoming
"exec:cat FILE"` (then `cont`). Times from spawning the monitor, measured by
`bench/vm/restore-timer.c` (polling every 0.2 ms): until its API (QMP `query-status` for QEMU)
reports the guest running; and until all of the guest's memory with data is resident in the
monitor: QEMU has read its whole stream into RAM before it runs (the same time), Starling's
pages come in as they are first touched, so restore-timer then faults every page with data in
(reads through `/proc/PID/mem`). Snapshots on the test host's tmpfs.

| monitor | runs | to running, median (ms) | every run | to all memory resident, median (ms) | every run | snapshot on disk (KiB) |
|---|---|---|---|---|---|---|
| Starling | {len(runs['starling'])} | {s:.1f} | {every('starling', 0)} | {sr:.1f} | {every('starling', 1)} | {sizes.get('starling', '-')} |
| QEMU 7.2 | {len(runs['qemu'])} | {q:.1f} | {every('qemu', 0)} | {qr:.1f} | {every('qemu', 1)} | {sizes.get('qemu', '-')} |

**Starling / QEMU: {s / q:.2f}x to running, {sr / qr:.2f}x to all memory resident.** Taking the
snapshots: {'; '.join(snaps)}.
Absolute times are those of a nested, emulated machine (every instruction of the test host is
emulated by TCG): only the ratios carry over. The same comparison on this project's own hosts
(tier 1) with the project's test guest is in `bench/results/vm-snapshot.md`.

<!-- figures {json.dumps({"restore_running_vs_qemu": round(s / q, 2), "restore_resident_vs_qemu": round(sr / qr, 2)})} -->
"""
open(out, "w").write(text)
print(text)
PY
