#!/usr/bin/env bash
# Starling's monitor vs Firecracker with Debian's kernel, inside the QEMU test host of tier 2
# (tests/vm/tier2.sh): boot to /init, memory beyond guest RAM, restore of a booted guest
# (bench/vm/outer-firecracker.sh). The tier-1 side by side, with the project's test guest, is
# bench/vm_firecracker.py. Writes bench/results/vm-firecracker-tier2.md (OUT= elsewhere).
#
#   cargo build --release && FIRECRACKER=path [FIRECRACKER_MEMORY_FIRST=path] [ROUNDS=3] \
#     sudo -E bench/vm_firecracker_tier2.sh [target/release/starling]
#
# How to build a Firecracker: docs/ARCHITECTURE.md, "Benchmarks against Firecracker".
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
starling=$(realpath "${1:-$root/target/release/starling}")
fc=$(realpath "${FIRECRACKER:?FIRECRACKER=path to a firecracker binary}")
for f in "$fc" ${FIRECRACKER_MEMORY_FIRST:+"$FIRECRACKER_MEMORY_FIRST"}; do
  [ -x "$f" ] || { echo "vm_firecracker_tier2: $f is not an executable Firecracker" >&2; exit 2; }
done
out=${OUT:-$root/bench/results/vm-firecracker-tier2.md}
work=${WORK:-/var/tmp/starling-vm-firecracker-bench}
rm -rf "$work" && mkdir -p "$work"
cc -static -O2 -o "$work/restore-timer" "$root/bench/vm/restore-timer.c"
# ROUNDS reaches the test host as a file (its init has no environment of ours).
echo "${ROUNDS:-3}" > "$work/rounds"
add=("$work/restore-timer:/bin/restore-timer" "$fc:/bin/firecracker" "$work/rounds:/etc/starling/bench-rounds")
[ -n "${FIRECRACKER_MEMORY_FIRST:-}" ] && add+=("$(realpath "$FIRECRACKER_MEMORY_FIRST"):/bin/firecracker-memory-first")
# Firecracker's libraries, those the test host does not get with starling's (tier2.sh).
have=$(ldd "$starling")
for lib in $(ldd "$fc" | grep -o '/[^ ]*'); do
  case "$have" in *"$lib"*) ;; *) add+=("$(realpath "$lib"):$lib") ;; esac
done
STARLING_HOME=${STARLING_HOME:-/var/cache/starling-test/vm/store} \
  INNER_RUN="$root/bench/vm/inner-idle.sh" OUTER_RUN="$root/bench/vm/outer-firecracker.sh" \
  OUTER_ADD="${add[*]}" TIER2_TIMEOUT=${TIER2_TIMEOUT:-1200} \
  "$root/tests/vm/tier2.sh" "$starling" "$work"
version=$("$fc" --version | head -1)
python3 - "$work/console.log" "$out" "$version" "$root" <<'PY'
import datetime, json, re, statistics, subprocess, sys
log, out, version, root = sys.argv[1:5]
boots, rss, restores, sizes, snaps = {}, {}, {}, {}, []
for line in open(log, errors="replace"):
    m = re.search(r"bench-boot: (\S+) t0=(\S+) init=(\S*) rss_kb=(\d*) guest_rss_kb=(\d*)", line)
    if m:
        name, t0, init, r, guest = m.groups()
        if not init:
            sys.exit(f"{name}: no /init line in {log}")
        boots.setdefault(name, []).append((float(init) - float(t0)) * 1e3)
        rss.setdefault(name, []).append(int(r or 0) - int(guest or 0))
    m = re.search(r"bench-restore: (\S+) elapsed_ms=([\d.]+)", line)
    if m:
        restores.setdefault(m.group(1), []).append(float(m.group(2)))
    elif "bench-restore:" in line:
        sys.exit("a restore failed: " + line.strip())
    m = re.search(r"bench-size: starling (\d+) firecracker (\d+)", line)
    if m:
        sizes = {"starling": int(m.group(1)), "firecracker": int(m.group(2))}
    if "bench-snap:" in line:
        snaps.append(line.split("bench-snap: ", 1)[1].strip())
for k, v in (("boots", boots), ("restores", restores)):
    if "starling" not in v or "firecracker" not in v:
        sys.exit(f"missing {k} in {log}")
med = statistics.median
ratio = lambda d, fc: med(d["starling"]) / med(d[fc])
listed = lambda xs: ", ".join(f"{x:.0f}" for x in xs)
kernel = open(log.replace("console.log", "kernel.json")).read().strip()
commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                        text=True).stdout.strip()
figures = {"boot_vs_fc": round(ratio(boots, "firecracker"), 2), "restore_vs_fc": round(ratio(restores, "firecracker"), 2),
           "memory_vs_fc": round(med(rss["starling"]) / med(rss["firecracker"]), 2)}
rows = [f"| boot: spawn → /init's first line (ms) | {med(boots['starling']):.0f} | {med(boots['firecracker']):.0f} | **{figures['boot_vs_fc']:.2f}** |",
        f"| restore of a booted, idle guest: spawn → API reports running (ms) | {med(restores['starling']):.1f} | {med(restores['firecracker']):.1f} | **{figures['restore_vs_fc']:.2f}** |",
        f"| monitor memory beyond guest RAM, idle booted guest (KiB RSS) | {med(rss['starling']):.0f} | {med(rss['firecracker']):.0f} | **{figures['memory_vs_fc']:.2f}** |"]
mf = ""
if "firecracker-memory-first" in boots and "firecracker-memory-first" in restores:
    figures["boot_vs_fc_memory_first"] = round(ratio(boots, "firecracker-memory-first"), 2)
    figures["restore_vs_fc_memory_first"] = round(ratio(restores, "firecracker-memory-first"), 2)
    mf = f"""
The same Firecracker with guest memory registered before its irqchip and vCPUs
(`bench/vm/firecracker-memory-first.py`), in the same alternation:

| | Starling | Firecracker, memory first | ratio |
|---|---:|---:|---:|
| boot (ms) | {med(boots['starling']):.0f} | {med(boots['firecracker-memory-first']):.0f} | **{figures['boot_vs_fc_memory_first']:.2f}** |
| restore (ms) | {med(restores['starling']):.1f} | {med(restores['firecracker-memory-first']):.1f} | **{figures['restore_vs_fc_memory_first']:.2f}** |
"""
every = "\n".join(f"- {what} {k}: {listed(v)}" for what, d in (("boot", boots), ("restore", restores)) for k, v in d.items())
text = f"""# Starling's monitor vs Firecracker with Debian's kernel (tier 2)

Run {datetime.date.today()} with `FIRECRACKER=… sudo -E bench/vm_firecracker_tier2.sh` (release build of {commit}),
`{version}` built from its source (stable toolchain, gnu target), inside the QEMU test host of
tier 2 (TCG, `-cpu max`, nested SVM; see shared/MACHINES.md), the monitors alternating in one
run. Kernel: `{kernel}` (the uncompressed vmlinux; both enter it through its PVH note), the
tier-2 busybox initramfs; 1 vCPU, 256 MiB, no devices; `starling-vmm --config-json` against
`firecracker --no-api --config-file`, both without seccomp filters. Boot time: from starting
the monitor to the initramfs's first line (stamped by the test host with its uptime as it
arrives: 10 ms resolution). Memory: the monitor's RSS minus its guest-RAM mapping's, 1 s after
/init. Restore: the guest booted, its page cache dropped, idle; Starling snapshots with `vm
snapshot --stop` and restores with `starling-vmm --restore-json`; Firecracker pauses, takes a
Full snapshot, and restores through `PUT /snapshot/load` with a File memory backend and
`resume_vm`; from spawn until the API reports the guest running (`bench/vm/restore-timer.c`,
polling every 0.2 ms). Snapshots on the test host's tmpfs (Starling {sizes.get('starling', '-')} KiB,
Firecracker {sizes.get('firecracker', '-')} KiB). Ratio = Starling / Firecracker.

| | Starling | Firecracker | ratio |
|---|---:|---:|---:|
""" + "\n".join(rows) + f"""
{mf}
Absolute times are those of a nested, emulated machine (every instruction of the test host is
emulated by TCG): only the ratios carry over. Taking the snapshots: {'; '.join(snaps)}.

Every run (ms):
{every}

<!-- figures {json.dumps(figures)} -->
"""
open(out, "w").write(text)
print(text)
PY
