#!/usr/bin/env bash
# virtio-net: Starling's monitor (userspace device over a TAP) against QEMU's userspace
# virtio-net (`-netdev tap,vhost=off`), the same Debian guest and kernel, in one run inside
# the QEMU test host of tier 2 (tests/vm/tier2.sh), taking turns. TCP throughput both ways
# (16 MiB, nc and wget), ping round trip, small HTTP requests, and the monitor's CPU time per
# GiB moved. Writes bench/results/vm-net.md.
#
#   cargo build --release && sudo bench/vm_net.sh [target/release/starling]
#
# The test host is itself emulated (TCG) with a nested KVM: absolute figures are small and
# noisy; the ratios, measured side by side, are the result.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
starling=$(realpath "${1:-$root/target/release/starling}")
work=${WORK:-/var/tmp/starling-net-bench}
export STARLING_HOME=${STARLING_HOME:-/var/cache/starling-test/vm/store}
if [ -z "${REPARSE:-}" ]; then
  rm -rf "$work" && mkdir -p "$work"
  add=()
  . "$root/bench/vm/qemu-files.sh"
  echo "vm_net: the test host (a few minutes)" >&2
  INNER_RUN="$root/bench/vm/inner-net.sh" OUTER_RUN="$root/bench/vm/outer-net-bench.sh" \
    OUTER_ADD="${add[*]}" TIER2_TIMEOUT=2400 \
    "$root/tests/vm/tier2.sh" "$starling" "$work" || echo "vm_net: the test host failed; what it measured is kept" >&2
fi
python3 - "$work/console.log" "$root/bench/results/vm-net.md" <<'PY'
import datetime, json, re, statistics, sys
log, out = sys.argv[1], sys.argv[2]
text = open(log, errors="replace").read().replace("\r", "")
runs, failed = {}, []
for l in text.splitlines():
    i = l.find("bench: ")
    if i < 0:
        continue
    l = l[i + 7:]
    m = re.match(r"(starling|qemu) round=(\d+) (.*)", l)
    if not m:
        continue
    if " failed: " in l:
        failed.append(l)
        continue
    kv = dict(re.findall(r"(\w+)=(\S+)", m.group(3)))
    runs.setdefault(m.group(1), []).append(kv)
for mon in ("starling", "qemu"):
    if not runs.get(mon):
        sys.exit(f"no successful {mon} rounds in {log}: {failed}")
hz = 100
m = re.search(r"bench: hz (\d+)", text)
if m:
    hz = int(m.group(1))
med = statistics.median
def mib(x, way):
    return float(x.get(f"{way}_guest_mib", 16))
def fig(mon):
    r = runs[mon]
    to_mib, from_mib = mib(r[0], "to"), mib(r[0], "from")
    to = med([float(x["to_guest_secs"]) for x in r])
    frm = med([float(x["from_guest_secs"]) for x in r])
    rtt = med([float(x["rtt_ms"]) for x in r if x.get("rtt_ms", "none") != "none"])
    http = med([float(x["http20_secs"]) for x in r]) / 20 * 1000
    cpu = med([int(x["cpu_ticks"]) / hz for x in r])
    return {"to_mbs": to_mib / to, "from_mbs": from_mib / frm, "rtt_ms": rtt, "http_ms": http,
            "cpu_s_per_gib": cpu / ((to_mib + from_mib) / 1024), "to_mib": to_mib,
            "from_mib": from_mib}
s, q = fig("starling"), fig("qemu")
f = {
    "to_guest_vs_qemu": round(s["to_mbs"] / q["to_mbs"], 2),
    "from_guest_vs_qemu": round(s["from_mbs"] / q["from_mbs"], 2),
    "rtt_vs_qemu": round(s["rtt_ms"] / q["rtt_ms"], 2),
    "http_vs_qemu": round(s["http_ms"] / q["http_ms"], 2),
    "cpu_per_gib_vs_qemu": round(s["cpu_s_per_gib"] / q["cpu_s_per_gib"], 2),
    "rounds": min(len(runs["starling"]), len(runs["qemu"])),
}
def rounds_table():
    rows = []
    for mon in ("starling", "qemu"):
        cells = [f"{mib(x, 'to') / float(x['to_guest_secs']):.1f} / {mib(x, 'from') / float(x['from_guest_secs']):.1f}"
                 for x in runs[mon]]
        rows.append(f"- {mon}: " + ", ".join(cells))
    return "\n".join(rows)
ok = lambda c: "✓" if c else "✗"
# Sections written by hand after the generated part (from the first "## ") are kept.
try:
    old = open(out).read()
    tail = old[old.index("\n## "):] if "\n## " in old else ""
except FileNotFoundError:
    tail = ""
with open(out, "w") as fh:
    fh.write(f"""# virtio-net: Starling's monitor vs QEMU's userspace virtio-net

`sudo bench/vm_net.sh` ({datetime.date.today()}), in the tier-2 QEMU test host (TCG, nested
KVM): the same Debian cloud kernel and busybox guest (`bench/vm/inner-net.sh`), 1 vCPU,
256 MiB, on a TAP of the test host; Starling's `vm run --net tap=tap0` and QEMU
`-M microvm -netdev tap,vhost=off -device virtio-net-device`, taking turns,
{f['rounds']} rounds each, medians. Absolute figures are those of an emulated host; the ratios are
the result.

| measure | Starling | QEMU | Starling / QEMU | goal |
|---|---|---|---|---|
| TCP host → guest, {s['to_mib']:.0f} MiB (nc) | {s['to_mbs']:.1f} MB/s | {q['to_mbs']:.1f} MB/s | **{f['to_guest_vs_qemu']:.2f}** | ≥ 1.0 {ok(f['to_guest_vs_qemu'] >= 1.0)} |
| TCP guest → host, {s['from_mib']:.0f} MiB (wget) | {s['from_mbs']:.1f} MB/s | {q['from_mbs']:.1f} MB/s | **{f['from_guest_vs_qemu']:.2f}** | ≥ 1.0 {ok(f['from_guest_vs_qemu'] >= 1.0)} |
| ping round trip | {s['rtt_ms']:.2f} ms | {q['rtt_ms']:.2f} ms | **{f['rtt_vs_qemu']:.2f}** | ≤ 1.0 {ok(f['rtt_vs_qemu'] <= 1.0)} |
| HTTP request, 1 KiB (wget, sequential) | {s['http_ms']:.1f} ms | {q['http_ms']:.1f} ms | **{f['http_vs_qemu']:.2f}** | ≤ 1.0 {ok(f['http_vs_qemu'] <= 1.0)} |
| monitor CPU per GiB moved | {s['cpu_s_per_gib']:.1f} s | {q['cpu_s_per_gib']:.1f} s | **{f['cpu_per_gib_vs_qemu']:.2f}** | — |

Round by round (MB/s host → guest / guest → host):
{rounds_table()}

Failed rounds: {len(failed)}{''.join(chr(10) + '- ' + x for x in failed)}

<!-- figures {json.dumps(f)} -->
""" + tail)
print(open(out).read())
PY
