#!/usr/bin/env bash
# `starling run` against the same image on virtio-blk: cold fetch, warm boot to a command,
# metadata walk, sequential read and the boot artifact's size, in one run inside the QEMU test
# host of tier 2 (tests/vm/tier2.sh), where Starling's VMM and QEMU boot the same kernel.
# Writes bench/results/vm-run.md.
#
#   cargo build --release && sudo [ROUNDS=N] [TRACE=1] bench/vm_run.sh [target/release/starling]
#
# The image: Debian bookworm minbase + python3-minimal (the fixture rootfs-b) with a 128 MiB
# file of random bytes and the guest's bench command (bench/vm/io.sh) in /var/bench; published
# to a TUF repository served on loopback in the test host (what `starling run` boots), and
# exported to ext4 with `starling image export` (what the virtio-blk side boots, read-only,
# from an initramfs of the same kernel with virtio_blk: bench/vm/blk-run.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
starling=$(realpath "${1:-$root/target/release/starling}")
work=${WORK:-/var/tmp/starling-run-bench}
export STARLING_HOME=${STARLING_HOME:-/var/cache/starling-test/vm/store}
cache=$("$root/tests/fixtures/debian-rootfs.sh")
# REPARSE=1: write the results again from the last run's console (WORK kept).
if [ -z "${REPARSE:-}" ]; then
rm -rf "$work" && mkdir -p "$work"

echo "vm_run: the bench image" >&2
cp -a "$cache/rootfs-b" "$work/rootfs"
mkdir -p "$work/rootfs/var/bench"
head -c $((128 << 20)) /dev/urandom > "$work/rootfs/var/bench/big"
install -m 0755 "$root/bench/vm/io.sh" "$work/rootfs/var/bench/io.sh"
"$starling" image import "$work/rootfs" bench-run:root > /dev/null
mkdir -p "$work/run-add/bench"
"$starling" image export bench-run:root "$work/run-add/bench/root.ext4" --size 1G > /dev/null
"$starling" vm kernel fetch --json > "$work/kernel.json"
kimage=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["image"])' "$work/kernel.json")
"$starling" vm initramfs --kernel-image "$kimage" --modules virtio_mmio,virtio_blk \
  --add "$root/bench/vm/blk-run.sh:/etc/starling/run" -o "$work/run-add/bench/blk.img" > /dev/null

# Settings for the test host's side (bench/vm/outer-run-bench.sh): ROUNDS (3), and TRACE=1
# for one more boot of each side with the kernel's messages on.
printf 'ROUNDS=%s\nTRACE=%s\n' "${ROUNDS:-3}" "${TRACE:-}" > "$work/run-add/bench/env"
add=()
. "$root/bench/vm/qemu-files.sh"
echo "vm_run: the test host (a few minutes)" >&2
OUTER_RUN="$root/bench/vm/outer-run-bench.sh" OUTER_ADD="${add[*]}" TIER2_TIMEOUT=2400 \
  TIER2_RUN_ROOTFS="$cache/rootfs-a $work/rootfs" TIER2_RUN_ADD="$work/run-add" \
  "$root/tests/vm/tier2.sh" "$starling" "$work" || echo "vm_run: the test host failed; what it measured is kept" >&2
fi
image_bytes=$(du -sb --apparent-size "$work/rootfs" | cut -f1)
python3 - "$work/console.log" "$root/bench/results/vm-run.md" "$image_bytes" <<'PY'
import datetime, re, statistics, sys
log, out, image_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3])
lines = [l.strip().replace("\r", "") for l in open(log, errors="replace") if "bench:" in l]
def find(prefix):
    for l in lines:
        i = l.find("bench: " + prefix)
        if i >= 0:
            return l[i + len("bench: "):]
    sys.exit(f"no 'bench: {prefix}' line in {log}")
runs, failed = {}, []
asked = [l[l.find("requests: ") + 10:] for l in lines if re.search(r"starling-run-io round=\d+ requests: ", l)]
counts = [re.search(r"; (\d+) requests \(", a) for a in asked]
requests_now = ", ".join(sorted({c.group(1) for c in counts if c})) or "(not in this run's log)"
thp = next((l[l.find("bench: host thp ") + 16:] for l in lines if "bench: host thp " in l), "unknown")
for l in lines:
    m = re.search(r"bench: (\S+)-(true|io) round=\d+ status=(\d+) secs=(\S+)(.*)", l)
    if not m:
        continue
    mon, kind, status, secs, rest = m.groups()
    if status != "0":
        failed.append(l[l.find("bench: ") + 7:])
        continue
    io = dict(kv.split("=") for kv in re.findall(r"\w+=\d+", rest))
    runs.setdefault((mon, kind), []).append((float(secs), io))
host_died = "Kernel panic" in open(log, errors="replace").read()
mons = ["starling-run", "starling-blk", "qemu-blk"]
for mon in mons:
    for kind in ["true", "io"]:
        if (mon, kind) not in runs:
            sys.exit(f"no successful {mon}-{kind} runs in {log}")
med = lambda xs: statistics.median(xs)
boot = {m: med([s for s, _ in runs[(m, "true")]]) for m in mons}
walk = {m: med([int(io["walk_ms"]) for _, io in runs[(m, "io")]]) for m in mons}
read = {m: med([int(io["read_ms"]) for _, io in runs[(m, "io")]]) for m in mons}
entries = {m: runs[(m, "io")][0][1]["entries"] for m in mons}
big = int(runs[("starling-run", "io")][0][1]["bytes"])
mbs = {m: big / 1e6 / (read[m] / 1000) for m in mons}
cold = find("cold monitor: ")
m = re.search(r"the guest read (\d+) bytes.*?(\d+) bytes fetched, (\d+) bytes from the host cache", cold)
if not m:
    sys.exit(f"no virtio-fs figures in {cold!r}")
guest_read, fetched, cached = map(int, m.groups())
wire = re.search(r'"fetched_bytes":(\d+)', find("cold cache: "))
if not wire:
    sys.exit("no fetched_bytes in the cold cache line")
wire = int(wire.group(1))
art = {}
for l in lines:
    a = re.search(r"bench: artifact (\S+) (\d+)", l)
    if a:
        art[a.group(1)] = int(a.group(2))
art_total = sum(art.values())
timelines = [l[l.find("bench: timeline ") + 16:] for l in lines if "bench: timeline " in l]
every = lambda m, k, f: ", ".join(f(x) for x in runs[(m, k)])
rows_boot = "\n".join(f"| {m} | {boot[m]:.2f} | {every(m, 'true', lambda x: f'{x[0]:.2f}')} |" for m in mons)
rows_io = "\n".join(
    f"| {m} | {entries[m]} | {walk[m]} | {every(m, 'io', lambda x: x[1]['walk_ms'])} | {mbs[m]:.0f} | {every(m, 'io', lambda x: x[1]['read_ms'])} |"
    for m in mons)
text = f"""# starling run: a root over virtio-fs from the host cache vs the same image on virtio-blk

Run {datetime.date.today()} with `sudo bench/vm_run.sh` (release build), inside the QEMU test host of
tier 2 (TCG, nested SVM: see shared/MACHINES.md), every monitor in one run, alternating,
{len(runs[("starling-run", "true")])} rounds; medians of the runs that ended well. Absolute times are those of a nested, emulated machine: the ratios are
the result. Image: Debian bookworm minbase + python3-minimal + a {big >> 20} MiB file
({image_bytes / 2**20:.1f} MiB of files). Guests: the same Debian cloud kernel (bzImage), 1 vCPU,
256 MiB. `starling run` boots its boot artifact (kernel + run initramfs) with the root over
virtio-fs from the daemon's host cache and a scratch disk for the overlay's writes; the
virtio-blk side boots the image exported by `starling image export` to ext4, read-only,
from an initramfs with virtio_blk that mounts it and enters it with chroot, under Starling's
monitor (`vm run`) and under QEMU (`-M microvm`).

## Cold: empty host cache, origin on loopback

`starling run … -- python3 -c 'import argparse, datetime, email.parser'`:

- the guest read {guest_read} bytes through virtio-fs (its read-ahead included); the objects
  behind them: {fetched} bytes fetched for it (uncompressed, manifests included; {cached} more
  read again from the host cache), {wire} bytes on the wire (the daemon's `fetched_bytes`:
  objects travel zstd-compressed)
- **fetched / read: {fetched / guest_read:.2f}** uncompressed, {wire / guest_read:.2f} on the wire (goal ≤ 1.5)
- **fetched / image: {100 * fetched / image_bytes:.1f} %** uncompressed, {100 * wire / image_bytes:.1f} % on the wire (goal ≤ 10 %)

## Warm: boot to a command, host cache full

Time from starting the command to its end (`starling run -- /bin/true`; `vm run` / QEMU until
the guest powered off after `chroot /mnt /bin/true`):

| monitor, root | time (s, median) | every run (s) |
|---|---|---|
{rows_boot}

- **starling run / Starling virtio-blk: {boot['starling-run'] / boot['starling-blk']:.2f}x**; / QEMU virtio-blk: {boot['starling-run'] / boot['qemu-blk']:.2f}x (goal ≤ 1.2x)

Where the time goes: each console line of the `/bin/true` runs, stamped with when it reached
the host (seconds after the command started; the guests run with `quiet loglevel=3`, so the
lines are the inits' own):

{chr(10).join("- " + t for t in timelines) if timelines else "(no timelines in this run's log)"}

## Metadata walk and sequential read, in the guest (bench/vm/io.sh)

`find / -xdev -printf '%s %m\\n' | wc -l` (stats every entry; a fresh guest, its caches
empty), then `cat` of the {big >> 20} MiB file:

| monitor, root | entries | walk (ms, median) | every walk (ms) | read (MB/s, median) | every read (ms) |
|---|---|---|---|---|---|
{rows_io}

- **walk, starling run / Starling virtio-blk: {walk['starling-run'] / walk['starling-blk']:.2f}x**; / QEMU: {walk['starling-run'] / walk['qemu-blk']:.2f}x (goal ≤ 2x)
- **sequential read, starling run / Starling virtio-blk: {mbs['starling-run'] / mbs['starling-blk']:.2f}**; / QEMU: {mbs['starling-run'] / mbs['qemu-blk']:.2f} (goal ≥ 0.8)

## What the guest asked (the walk-and-read run, from the monitor's log)

{chr(10).join("- round " + str(k + 1) + ": " + a for k, a in enumerate(asked)) if asked else "(no request figures in this run's log)"}

Host: transparent huge pages {thp} (the test host is given `shmem_enabled` at `advise`, so
Starling's guest RAM is a memfd with huge pages; with `never` it would be anonymous memory with
huge pages, as QEMU's is: docs/ARCHITECTURE.md).

## What this says

In this nested, emulated host every guest exit and every thread wake-up costs about a
millisecond, so virtio-fs is as fast as its request count is small. What was done for it
(docs/ARCHITECTURE.md, "The root"): every listing is a READDIRPLUS (no LOOKUP per name); a
kernel that can do without OPENDIR/RELEASEDIR is told so; an image whose commit counts no
xattrs answers GETXATTR with ENOSYS once, so overlayfs's `trusted.overlay.metacopy` question
on every file it looks up stops reaching the device (it was half of the walk's requests); the
run init raises the mount's read-ahead to 1 MiB (READs of 1 MiB, not 128 KiB); what waits
on no object is answered on the vCPU thread, sparing two thread wake-ups each: READs of data
in memory, and (since 2026-11-27) listings and LOOKUPs in a directory already loaded and
GETATTR/OPEN/READLINK of a node already numbered (every tree of this image is loaded at
mount, as it has hard links: the walk's every READDIRPLUS; the walk went from 2.5x, 5.7 s,
to the figure above). The walk-and-read run went from 14,102 requests (2026-11-26, before)
to {requests_now}; what is left is mostly one READDIRPLUS per 4 KiB of directory listing
and one more per directory for its end (FUSE's readdir asks one page per getdents).

A sequential READ (2026-11-27): the monitor's read-ahead used to load a chunk a second time
when the reader caught up with it (17% of a large file's chunks were decoded and hashed
twice), it asked the daemon for one 64 KiB chunk per round trip, and the daemon read and
decoded every cached object once more before sending its envelope. The reader now waits for
the chunk being loaded, the read-ahead asks for up to 16 chunks per request, and the daemon
sends the cached record as it read it (the monitor still hashes every object before a byte
reaches the guest). The read went from 0.74 to the figure above.

A warm boot: the timelines above show where it goes. Since 2026-11-27 the run initramfs is
not compressed (the guest copied and gunzipped it at every boot), its modules load in one
process, and the trees an image with hard links needs at mount come many per request (828
round trips to the daemon before the monitor could start): the run init's part went from
1.2–1.9 s to 0.9–1.1 s. Of `starling run`'s extra time over
`vm run`, part is on the host before the guest starts (the daemon resolves the version
through the repository's metadata, finds the boot artifact and writes the VM's scratch disk,
whose ext4 writer built and scanned 128 MiB of empty inode tables for every VM until
2026-11-27), and part is the run init (more modules, the overlay, the agent) before the
command runs. Run-to-run spread here is large: compare the every-run columns.

## Runs that did not end well

{chr(10).join("- " + f for f in failed) if failed else "none"}{chr(10) + chr(10) + "The test host itself panicked before the last rounds ended (its emulated SVM does, now and then): those rounds are missing." if host_died else ""}
Status 3 is a reset of the guest: it printed nothing after the run init's first line.

## The boot artifact

{", ".join(f"`{k}` {v / 2**20:.1f} MiB" for k, v in sorted(art.items()))}: **{art_total / 2**20:.1f} MiB** together
(Micro-CernVM's: 10–20 MB), {100 * art_total / image_bytes:.0f} % of this image; built once per kernel,
it boots any image and version.
"""
open(out, "w").write(text)
print(text)
PY
