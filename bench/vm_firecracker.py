#!/usr/bin/env python3
"""Starling's monitor side by side with Firecracker on this host's /dev/kvm (tier 1): the
project's test guest (crates/vmm/tests/guest, PVH entry), 256 MiB, 1 vCPU, no devices on
either side, both monitors alternating in one run, RUNS runs each, medians.

  scripts/build-release.sh && FIRECRACKER=/path/to/firecracker sudo -E python3 bench/vm_firecracker.py [target/dist]

(target/dist: the release programs as shipped, the monitor linked statically.)

Measures:
  - boot: spawn until the guest's first serial line (`starling-vmm --config-json` vs
    `firecracker --no-api --config-file`);
  - snapshot of an idle guest: pause + write, as the caller waits for it (Starling: one
    `POST /v1/vm/snapshot`; Firecracker: `PATCH /vm Paused` + `PUT /snapshot/create` Full),
    and the snapshot's size on disk;
  - restore: spawn until the API reports the guest running (Starling `--restore-json`;
    Firecracker `--api-sock`, `PUT /snapshot/load` with a File memory backend and
    resume_vm, then `GET /` until Running);
  - N copies of a running guest: Starling forks N clones of it (`POST /v1/vm/fork`), Firecracker
    (which has no fork) restores N processes from its snapshot at once; request until all run;
  - memory: each monitor's resident memory beyond guest RAM, for an idle booted guest.

How to build a Firecracker: `docs/ARCHITECTURE.md`, "Benchmarks against Firecracker". Both run
without seccomp filters (Firecracker's `--no-seccomp`: a gnu-target build has no default
filter; Starling's `STARLING_SECCOMP=off`, which its monitors and their clones inherit; what
Starling's filter costs is bench/jail.py's). Snapshots on tmpfs. Writes bench/results/vm-firecracker.md
(OUT= to write elsewhere).
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from vmbench import api as http, checked_out, ended, kill_started, kvm_flavour, resident_beyond, spawn, wait

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/dist"))
if not os.path.isfile(os.path.join(BIN, "starling-vmm")):
    sys.exit(f"{os.path.basename(__file__)}: no starling-vmm in {BIN}: run scripts/build-release.sh first")
VMM = os.path.join(BIN, "starling-vmm")
STARLING = os.path.join(BIN, "starling")
FC = os.environ.get("FIRECRACKER", "")
# Like for like with Firecracker's --no-seccomp (see above).
os.environ["STARLING_SECCOMP"] = "off"
# Optional: the same Firecracker reordered by bench/vm/firecracker-memory-first.py.
FC2 = os.environ.get("FIRECRACKER_MEMORY_FIRST", "")
MEM_MIB = 256
RUNS = int(os.environ.get("RUNS", "20"))
COPIES = int(os.environ.get("COPIES", "20"))
COPY_ROUNDS = int(os.environ.get("COPY_ROUNDS", "5"))
OUT = os.environ.get("OUT", os.path.join(ROOT, "bench/results/vm-firecracker.md"))
def linkage(path):
    """How `path` is linked: a static executable has no PT_INTERP (no dynamic loader)."""
    out = subprocess.run(["readelf", "-lW", path], capture_output=True, text=True).stdout
    return "dynamically" if "INTERP" in out else "statically"


def end(p):
    if p.poll() is None:
        p.kill()
    p.wait()


def read_until(p, needle, timeout=30):
    """Reads the monitor's stdout (the guest's serial console) until a line holds `needle`."""
    deadline = time.monotonic() + timeout
    for line in p.stdout:
        if needle in line:
            return
        if time.monotonic() > deadline:
            break
    raise SystemExit(f"no {needle!r} on the console")


def starling_config(kernel, cmdline, d, console="stdio"):
    return {"kernel": kernel, "cmdline": cmdline, "mem_mib": MEM_MIB, "rng": False,
            "console": console, "api_socket": os.path.join(d, "api.sock"),
            "run_dir": os.path.join(d, "run")}


def fc_config(kernel, cmdline, d):
    c = {"boot-source": {"kernel_image_path": kernel, "boot_args": cmdline},
         "drives": [], "machine-config": {"vcpu_count": 1, "mem_size_mib": MEM_MIB}}
    path = os.path.join(d, "fc.json")
    with open(path, "w") as f:
        json.dump(c, f)
    return path


def boot_starling(kernel, d, cmdline="idle", api=True):
    os.makedirs(d, exist_ok=True)
    c = starling_config(kernel, cmdline, d)
    if not api:
        del c["api_socket"]
    t = time.monotonic()
    p = spawn([VMM, "--config-json", json.dumps(c)], stdout=subprocess.PIPE, text=True, errors="replace")
    read_until(p, "entered through")
    return p, (time.monotonic() - t) * 1e3, c.get("api_socket")


def boot_fc(kernel, d, cmdline="idle", api=True, fc=None):
    os.makedirs(d, exist_ok=True)
    cfg = fc_config(kernel, cmdline, d)
    sock = os.path.join(d, "fc.sock")
    args = [fc or FC, "--no-seccomp", "--level", "Error", "--config-file", cfg]
    args += ["--api-sock", sock] if api else ["--no-api"]
    t = time.monotonic()
    p = spawn(args, stdout=subprocess.PIPE, text=True, errors="replace")
    read_until(p, "entered through")
    return p, (time.monotonic() - t) * 1e3, sock if api else None


def drain_until(p, needle):
    read_until(p, needle)
    # Keep the pipe from filling: the guest is idle and prints nothing more.


def disk_kib(d):
    total = 0
    for root, _, files in os.walk(d):
        for f in files:
            total += os.stat(os.path.join(root, f)).st_blocks * 512
    return total / 1024


def snapshot_starling(sock, snap):
    t = time.monotonic()
    code, r = http(sock, "POST", "/v1/vm/snapshot", {"dir": snap, "stop": False})
    ms = (time.monotonic() - t) * 1e3
    assert code == 200, r
    return ms


def snapshot_fc(sock, snap):
    os.makedirs(snap, exist_ok=True)
    t = time.monotonic()
    code, r = http(sock, "PATCH", "/vm", {"state": "Paused"})
    assert code == 204, (code, r)
    code, r = http(sock, "PUT", "/snapshot/create", {"snapshot_type": "Full",
                   "snapshot_path": os.path.join(snap, "state"), "mem_file_path": os.path.join(snap, "memory")})
    ms = (time.monotonic() - t) * 1e3
    assert code == 204, (code, r)
    code, r = http(sock, "PATCH", "/vm", {"state": "Resumed"})
    assert code == 204, (code, r)
    return ms


def starling_running(sock):
    code, st = http(sock, "GET", "/v1/vm")
    return code == 200 and st["state"] == "running"


def fc_running(sock):
    code, st = http(sock, "GET", "/")
    return code == 200 and st["state"] == "Running"


def restore_starling(snap, d):
    os.makedirs(d)
    sock = os.path.join(d, "api.sock")
    spec = {"dir": snap, "run_dir": os.path.join(d, "run"), "api_socket": sock, "console": "off"}
    t = time.monotonic()
    p = spawn([VMM, "--restore-json", json.dumps(spec)], stdout=subprocess.DEVNULL)
    wait("restored VM running", lambda: starling_running(sock))
    return p, (time.monotonic() - t) * 1e3


def fc_load(sock, snap):
    code, r = http(sock, "PUT", "/snapshot/load", {"snapshot_path": os.path.join(snap, "state"),
                   "mem_backend": {"backend_type": "File", "backend_path": os.path.join(snap, "memory")},
                   "resume_vm": True})
    assert code == 204, (code, r)


def restore_fc(snap, d, fc=None):
    os.makedirs(d)
    sock = os.path.join(d, "fc.sock")
    t = time.monotonic()
    p = spawn([fc or FC, "--no-seccomp", "--level", "Error", "--api-sock", sock], stdout=subprocess.DEVNULL)
    wait("Firecracker's API", lambda: os.path.exists(sock))
    wait("snapshot loaded", lambda: fc_load(sock, snap) or True)
    wait("restored VM running", lambda: fc_running(sock))
    return p, (time.monotonic() - t) * 1e3


def copies_starling(sock, work, i):
    t = time.monotonic()
    code, r = http(sock, "POST", "/v1/vm/fork", {"count": COPIES, "dir": os.path.join(work, f"sf{i}")}, timeout=120)
    ms = (time.monotonic() - t) * 1e3
    assert code == 200, r
    for cl in r["clones"]:
        http(cl["api_socket"], "POST", "/v1/vm/stop")
    for cl in r["clones"]:
        wait("a clone to end", lambda: ended(cl["pid"]), step=0.01)
    return ms


def copies_fc(snap, work, i):
    procs, socks = [], []
    t = time.monotonic()
    for k in range(COPIES):
        d = os.path.join(work, f"ff{i}-{k}")
        os.makedirs(d)
        sock = os.path.join(d, "fc.sock")
        procs.append(spawn([FC, "--no-seccomp", "--level", "Error", "--api-sock", sock], stdout=subprocess.DEVNULL))
        socks.append(sock)
    for sock in socks:
        wait("Firecracker's API", lambda: os.path.exists(sock))
        wait("snapshot loaded", lambda: fc_load(sock, snap) or True)
    for sock in socks:
        wait("restored VM running", lambda: fc_running(sock))
    ms = (time.monotonic() - t) * 1e3
    for p in procs:
        end(p)
    return ms


def overhead_kib(pid):
    """Resident memory of every mapping but guest RAM, and of that the private (anonymous)
    part: the program's pages are shared by every monitor on the host, the private ones are
    what each more VM costs."""
    return resident_beyond(pid, MEM_MIB)


def med(xs):
    return statistics.median(xs)


def alternate(n, *fs):
    """Runs each of `fs` n times, rotating which goes first; a list of results per function."""
    outs = [[] for _ in fs]
    for i in range(n):
        for k in range(len(fs)):
            j = (i + k) % len(fs)
            outs[j].append(fs[j](i))
    return outs


def main():
    if not FC or not os.access(FC, os.X_OK):
        sys.exit("bench/vm_firecracker.py: set FIRECRACKER to a Firecracker binary (how to build one: "
                 "docs/ARCHITECTURE.md, \"Benchmarks against Firecracker\")")
    fc_version = subprocess.run([FC, "--version"], capture_output=True, text=True).stdout.split("\n")[0].strip()
    work = tempfile.mkdtemp(prefix="starling-fc-bench-", dir="/dev/shm")
    try:
        kernel = subprocess.check_output([STARLING, "vm", "test-guest", os.path.join(work, "guest")], text=True).strip()

        def boot_once(booter, tag, **kw):
            def f(i):
                p, ms, _ = booter(kernel, os.path.join(work, f"boot-{tag}{i}"), api=False, **kw)
                end(p)
                return ms
            return f
        boot_fs = [boot_once(boot_starling, "s"), boot_once(boot_fc, "f")]
        if FC2:
            boot_fs.append(boot_once(boot_fc, "m", fc=FC2))
        boots = alternate(RUNS, *boot_fs)

        # Idle guests for snapshots, memory and copies (Starling's with vsock: forks need it).
        sp, _, ssock = boot_starling(kernel, os.path.join(work, "s-idle"))
        fp, _, fsock = boot_fc(kernel, os.path.join(work, "f-idle"))
        drain_until(sp, "idle")
        drain_until(fp, "idle")
        time.sleep(1.0)
        mem = (overhead_kib(sp.pid), overhead_kib(fp.pid))
        snaps = alternate(RUNS, lambda i: snapshot_starling(ssock, os.path.join(work, f"ss{i}")),
                          lambda i: snapshot_fc(fsock, os.path.join(work, f"fs{i}")))
        sizes = (disk_kib(os.path.join(work, "ss0")), disk_kib(os.path.join(work, "fs0")))
        ssnap, fsnap = os.path.join(work, "ss0"), os.path.join(work, "fs0")
        for i in range(1, RUNS):
            shutil.rmtree(os.path.join(work, f"ss{i}"))
            shutil.rmtree(os.path.join(work, f"fs{i}"))

        def restore_once(f, snap, tag, **kw):
            def g(i):
                p, ms = f(snap, os.path.join(work, f"r{tag}{i}"), **kw)
                end(p)
                return ms
            return g
        restore_fs = [restore_once(restore_starling, ssnap, "s"), restore_once(restore_fc, fsnap, "f")]
        if FC2:
            restore_fs.append(restore_once(restore_fc, fsnap, "m", fc=FC2))
        restores = alternate(RUNS, *restore_fs)
        copies = alternate(COPY_ROUNDS, lambda i: copies_starling(ssock, work, i), lambda i: copies_fc(fsnap, work, i))
        end(sp)
        end(fp)
    finally:
        kill_started()
        shutil.rmtree(work, ignore_errors=True)

    commit = checked_out(ROOT)
    flavour = kvm_flavour()
    listed = lambda xs: ", ".join(f"{x:.1f}" for x in xs)
    row = lambda name, pair, unit="ms": (
        f"| {name} | {med(pair[0]):.2f} | {med(pair[1]):.2f} | **{med(pair[0]) / med(pair[1]):.2f}** |")
    figures = {
        "boot_vs_fc": round(med(boots[0]) / med(boots[1]), 2),
        "snapshot_faster": round(med(snaps[1]) / med(snaps[0]), 1),
        "snapshot_smaller": round(sizes[1] / sizes[0], 1) if sizes[0] else None,
        "restore_vs_fc": round(med(restores[0]) / med(restores[1]), 2),
        "copies_vs_fc": round(med(copies[0]) / med(copies[1]), 2),
        "memory_vs_fc": round(mem[0][0] / mem[1][0], 2) if mem[1][0] else None,
        "private_memory_vs_fc": round(mem[0][1] / mem[1][1], 2) if mem[1][1] else None,
    }
    memory_first, extra_boot, extra_restore = "", "", ""
    if FC2:
        figures["boot_vs_fc_memory_first"] = round(med(boots[0]) / med(boots[2]), 2)
        figures["restore_vs_fc_memory_first"] = round(med(restores[0]) / med(restores[2]), 2)
        memory_first = f"""The same Firecracker with guest memory registered before its irqchip and vCPUs are created
(Starling's order; `bench/vm/firecracker-memory-first.py` reorders its source), in the same
alternation:

| | Starling | Firecracker, memory first | ratio |
|---|---:|---:|---:|
{row("boot: spawn → first serial line (ms)", (boots[0], boots[2]))}
{row("restore: spawn → API reports running (ms)", (restores[0], restores[2]))}
"""
        extra_boot = f"; Firecracker memory first {listed(boots[2])}"
        extra_restore = f"; Firecracker memory first {listed(restores[2])}"
    text = f"""# Starling's monitor vs Firecracker (tier 1)

Command: `scripts/build-release.sh && FIRECRACKER=… sudo -E python3 bench/vm_firecracker.py` (commit {commit},
{time.strftime('%Y-%m-%d')}), Firecracker `{fc_version}` built from its source (stable toolchain,
gnu target, its own release profile). Linked: Starling's monitor {linkage(VMM)}, Firecracker
{linkage(FC)}{f", memory first {linkage(FC2)}" if FC2 else ""} (Firecracker's releases are static musl builds; built here with
`RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p firecracker --target
x86_64-unknown-linux-gnu`). Host: /dev/kvm is `{flavour}`, 2 cores. Guest: the
project's test guest (PVH entry), {MEM_MIB} MiB, 1 vCPU, no devices on either side; both
monitors without seccomp filters (`--no-seccomp`). {RUNS} runs of each, alternating; medians.
Ratio = Starling / Firecracker (below 1: Starling takes less).

| | Starling | Firecracker | ratio |
|---|---:|---:|---:|
{row("boot: spawn → first serial line (ms)", boots)}
| snapshot of an idle guest: pause + write (ms) | {med(snaps[0]):.2f} | {med(snaps[1]):.2f} | **1/{med(snaps[1]) / med(snaps[0]):.0f}** |
| snapshot on disk (KiB) | {sizes[0]:.0f} | {sizes[1]:.0f} | **1/{sizes[1] / sizes[0]:.0f}** |
{row("restore: spawn → API reports running (ms)", restores)}
{row(f"{COPIES} copies of a running guest: Starling fork vs {COPIES} Firecracker restores, request → all running (ms)", copies)}
| monitor memory beyond guest RAM, idle booted guest (KiB RSS) | {mem[0][0]} | {mem[1][0]} | **{mem[0][0] / mem[1][0]:.2f}** |
| of which private (anonymous; the rest is the program's pages, shared by every monitor) (KiB) | {mem[0][1]} | {mem[1][1]} | **{mem[0][1] / mem[1][1]:.2f}** |

{memory_first}
Every run (ms):
- boot: Starling {listed(boots[0])}; Firecracker {listed(boots[1])}{extra_boot}
- snapshot: Starling {listed(snaps[0])}; Firecracker {listed(snaps[1])}
- restore: Starling {listed(restores[0])}; Firecracker {listed(restores[1])}{extra_restore}
- {COPIES} copies ({COPY_ROUNDS} rounds): Starling {listed(copies[0])}; Firecracker {listed(copies[1])}

<!-- figures {json.dumps(figures)} -->
"""
    with open(OUT, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
