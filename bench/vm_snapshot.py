#!/usr/bin/env python3
"""Snapshot, restore, fork and lazy memory on this host's /dev/kvm (tier 1), with the project's
test guest at 256 MiB, side by side with QEMU's -incoming restore of the same guest.

  cargo build --release && sudo python3 bench/vm_snapshot.py [target/release]

Measures, each in one run:
  - restore to running, in a new process: Starling (starling-vmm --restore) vs QEMU
    (-incoming "exec:cat FILE"), wall time from spawn until the monitor's API says running
    (QMP query-status for QEMU), 20 runs each, snapshot files on tmpfs;
  - fork latency: one clone at a time (20 runs), the parent's pause and request-to-running;
  - 100 clones of a 256 MiB idle guest in one fork: request to all running;
  - host memory per idle clone beyond the guest's own pages (PSS of every mapping but guest
    RAM), and the guest pages each clone holds privately;
  - lazy restore through a memory server: bytes moved (state, page map, pages) vs pages the
    guest touched.
Writes bench/results/vm-snapshot.md.
"""
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/release"))
VMM = os.path.join(BIN, "starling-vmm")
STARLING = os.path.join(BIN, "starling")
MEM_MIB = 256
RUNS = 20
# Every monitor started, so that a failing run leaves none behind (a spinning guest would eat
# a core of whatever runs next).
STARTED = []


def spawn(args, **kw):
    p = subprocess.Popen(args, **kw)
    STARTED.append(p)
    return p


def api(sock, method, path, body=None):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    data = json.dumps(body) if body is not None else ""
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: vmm\r\nContent-Length: {len(data)}\r\n\r\n{data}".encode())
    resp = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        resp += b
    s.close()
    head, _, body = resp.decode().partition("\r\n\r\n")
    return int(head[9:12]), json.loads(body)


def wait(what, f, timeout=60, step=0.0005):
    t = time.monotonic()
    while True:
        try:
            r = f()
            if r:
                return r
        except OSError:
            pass
        if time.monotonic() - t > timeout:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(step)


def ticks(path):
    try:
        return sum(1 for l in open(path, errors="replace") if l.startswith("tick "))
    except FileNotFoundError:
        return 0


class Qmp:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.f = self.s.makefile("rw")
        self.f.readline()
        self.cmd("qmp_capabilities")

    def cmd(self, name, **args):
        self.f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
        self.f.flush()
        while True:
            r = json.loads(self.f.readline())
            if "return" in r or "error" in r:
                return r


def vm_config(kernel, cmdline, d, vsock=False):
    c = {"kernel": kernel, "cmdline": cmdline, "mem_mib": MEM_MIB, "rng": False,
         "console": {"file": os.path.join(d, "console.log")},
         "api_socket": os.path.join(d, "api.sock"), "run_dir": os.path.join(d, "run")}
    if vsock:
        c["vsock"] = {"cid": 3, "path": os.path.join(d, "vsock.sock")}
    return c


def boot(kernel, cmdline, d, vsock=False):
    os.makedirs(d, exist_ok=True)
    c = vm_config(kernel, cmdline, d, vsock)
    p = spawn([VMM, "--config-json", json.dumps(c)], stderr=subprocess.DEVNULL)
    wait("the API", lambda: os.path.exists(c["api_socket"]))
    return p, c


def starling_restore(snap, work):
    out = []
    for i in range(RUNS):
        d = os.path.join(work, f"r{i}")
        sock = os.path.join(d, "api.sock")
        spec = {"dir": snap, "run_dir": d, "api_socket": sock, "console": "off"}
        t = time.monotonic()
        p = spawn([VMM, "--restore-json", json.dumps(spec)], stderr=subprocess.DEVNULL)
        st = wait("restored VM", lambda: (lambda r: r[1] if r[1]["state"] == "running" else None)(api(sock, "GET", "/v1/vm")))
        out.append(((time.monotonic() - t) * 1e3, st["restored_in_us"] / 1e3))
        api(sock, "POST", "/v1/vm/stop")
        p.wait()
    return out


def qemu_cmd(kernel, cmdline, d, extra=()):
    return ["qemu-system-x86_64", "-accel", "kvm", "-M", "microvm", "-cpu", "qemu64", "-m", str(MEM_MIB),
            "-kernel", kernel, "-append", cmdline, "-nodefaults", "-display", "none",
            "-serial", "file:" + os.path.join(d, "console.log"),
            "-qmp", f"unix:{os.path.join(d, 'qmp.sock')},server=on,wait=off", *extra]


def qemu_restore(kernel, work):
    d = os.path.join(work, "qemu-boot")
    os.makedirs(d)
    p = spawn(qemu_cmd(kernel, "counter", d), stderr=subprocess.DEVNULL)
    wait("QEMU's guest", lambda: ticks(os.path.join(d, "console.log")) >= 5, step=0.02)
    q = wait("QMP", lambda: Qmp(os.path.join(d, "qmp.sock")))
    state = os.path.join(work, "qemu.state")
    q.cmd("stop")
    q.cmd("migrate", uri=f"exec:cat > {state}")
    wait("QEMU's migration", lambda: q.cmd("query-migrate")["return"].get("status") == "completed", step=0.01)
    q.cmd("quit")
    p.wait()
    out = []
    for i in range(RUNS):
        d = os.path.join(work, f"q{i}")
        os.makedirs(d)
        t = time.monotonic()
        p = spawn(qemu_cmd(kernel, "counter", d, ["-incoming", f"exec:cat {state}"]),
                             stderr=subprocess.DEVNULL)
        q = wait("QMP", lambda: Qmp(os.path.join(d, "qmp.sock")))
        # A stream taken from a stopped VM restores paused: continue it, as Starling does.
        status = wait("QEMU's incoming migration",
                      lambda: (lambda s: s if s != "inmigrate" else None)(q.cmd("query-status")["return"]["status"]))
        if status != "running":
            q.cmd("cont")
            wait("QEMU running", lambda: q.cmd("query-status")["return"]["status"] == "running")
        out.append((time.monotonic() - t) * 1e3)
        q.cmd("quit")
        p.wait()
    return out, os.path.getsize(state)


def smaps(pid):
    guest_private = overhead_pss = 0
    guest = False
    for line in open(f"/proc/{pid}/smaps"):
        parts = line.split()
        if len(parts) >= 5 and "-" in parts[0] and ":" not in parts[0]:
            guest = "starling-guest-ram" in line
        elif parts[0] == "Pss:" and not guest:
            overhead_pss += int(parts[1])
        elif parts[0] in ("Private_Dirty:", "Private_Clean:") and guest:
            guest_private += int(parts[1])
    return overhead_pss, guest_private


def forks(kernel, work):
    d = os.path.join(work, "fork-parent")
    p, c = boot(kernel, "idle", d, vsock=True)
    wait("idle guest", lambda: "idle" in open(os.path.join(d, "console.log"), errors="replace").read(), step=0.01)
    sock = c["api_socket"]
    one = []
    for i in range(RUNS):
        code, r = api(sock, "POST", "/v1/vm/fork", {"count": 1, "dir": os.path.join(work, f"f{i}")})
        assert code == 200, r
        one.append((r["paused_us"] / 1e3, r["total_us"] / 1e3))
        for cl in r["clones"]:
            api(cl["api_socket"], "POST", "/v1/vm/stop")
    time.sleep(1.0)
    # Host-wide, so anything else moving (writeback after a build, other tenants) shows up:
    # flush first and take medians of a few samples on each side.
    os.sync()
    avail_before = mem_available_kib()
    code, r = api(sock, "POST", "/v1/vm/fork", {"count": 100, "dir": os.path.join(work, "f100")})
    assert code == 200, r
    hundred = (r["paused_us"] / 1e3, r["total_us"] / 1e3)
    time.sleep(1.0)
    per_clone_host_kib = (avail_before - mem_available_kib()) / 100
    mem = [smaps(cl["pid"]) for cl in r["clones"]]
    for cl in r["clones"]:
        api(cl["api_socket"], "POST", "/v1/vm/stop")
    api(sock, "POST", "/v1/vm/stop")
    p.wait()
    return one, hundred, mem, per_clone_host_kib


def mem_available_kib():
    samples = []
    for _ in range(5):
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                samples.append(int(line.split()[1]))
        time.sleep(0.1)
    return statistics.median(samples) if samples else 0


def lazy(kernel, work, cmdline, tag):
    d = os.path.join(work, f"lazy-boot-{tag}")
    p, c = boot(kernel, cmdline, d)
    wait("ticks", lambda: ticks(os.path.join(d, "console.log")) >= 5, step=0.01)
    snap = os.path.join(work, f"lazy-snap-{tag}")
    code, r = api(c["api_socket"], "POST", "/v1/vm/snapshot", {"dir": snap, "stop": True})
    assert code == 200, r
    p.wait()
    addr = "unix:" + os.path.join(work, f"mem-{tag}.sock")
    server = spawn([VMM, "--memory-server", snap, "--listen", addr], stderr=subprocess.DEVNULL,
                   stdout=subprocess.PIPE, text=True)
    pinned = server.stdout.readline().strip()  # ADDR#HASH: the restore checks the state's hash
    wait("memory server", lambda: os.path.exists(addr[5:]))
    fixed = os.path.getsize(os.path.join(snap, "state")) + os.path.getsize(os.path.join(snap, "memory.map"))
    runs = []
    for i in range(5):
        rd = os.path.join(work, f"lazy-{tag}-{i}")
        sock = os.path.join(rd, "api.sock")
        spec = {"dir": snap, "lazy": pinned, "run_dir": rd, "api_socket": sock,
                "console": {"file": os.path.join(rd, "console.log")}}
        os.makedirs(rd)
        cp = spawn([VMM, "--restore-json", json.dumps(spec)], stderr=subprocess.DEVNULL)
        wait("lazy ticks", lambda: ticks(os.path.join(rd, "console.log")) >= 10, step=0.01)
        st = api(sock, "GET", "/v1/vm")[1]["lazy"]
        api(sock, "POST", "/v1/vm/stop")
        cp.wait()
        touched = st["pages_fetched"] + st["zero_pages"]
        moved = fixed + st["bytes_received"] + 16 + 9 * st["pages_fetched"]
        runs.append((st["pages_fetched"], st["zero_pages"], moved, touched * 4096))
    server.kill()
    server.wait()
    data_pages = os.path.getsize(os.path.join(snap, "memory.map")) // 40
    return runs, data_pages, fixed


def med(xs):
    return statistics.median(xs)


def main():
    work = tempfile.mkdtemp(prefix="starling-snap-bench-", dir="/dev/shm")
    children = []
    try:
        kernel = subprocess.check_output([STARLING, "vm", "test-guest", os.path.join(work, "guest")], text=True).strip()
        flavour = next((k for k in ("kvm_intel", "kvm_amd", "kvm_pvm") if os.path.exists(f"/sys/module/{k}")), "unknown")
        # Starling's snapshot of the same guest (no virtio devices, like QEMU's microvm here).
        d = os.path.join(work, "boot")
        p, c = boot(kernel, "counter", d)
        wait("ticks", lambda: ticks(os.path.join(d, "console.log")) >= 5, step=0.01)
        snap = os.path.join(work, "snap")
        code, r = api(c["api_socket"], "POST", "/v1/vm/snapshot", {"dir": snap, "stop": True})
        assert code == 200, r
        p.wait()
        snap_info = r
        ours = starling_restore(snap, work)
        qemu, qemu_state = qemu_restore(kernel, work)
        one, hundred, mem, host_kib = forks(kernel, work)
        lazy_runs, data_pages, fixed = lazy(kernel, work, "counter ballast", "idle")
        lazy_runs2, data_pages2, fixed2 = lazy(kernel, work, "counter ballast reread", "reread")
    finally:
        for p in STARTED:
            if p.poll() is None:
                p.kill()
                p.wait()
        # Clones are the monitors' children, in process groups of their own.
        subprocess.run(["pkill", "-f", work], check=False)
        shutil.rmtree(work, ignore_errors=True)

    o_wall = med(x[0] for x in ours)
    o_inner = med(x[1] for x in ours)
    q_wall = med(qemu)
    f_pause = med(x[0] for x in one)
    f_total = med(x[1] for x in one)
    ovh = med(m[0] for m in mem) / 1024
    gpriv = med(m[1] for m in mem) / 1024
    lz = lazy_runs
    ratio_touched = med(m / t for f, z, m, t in lz)
    pages_only = med((m - fixed) / t for f, z, m, t in lz)
    lz2 = lazy_runs2
    ratio_touched2 = med(m / t for f, z, m, t in lz2)
    host = subprocess.run(["uname", "-r"], capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    out = f"""# Snapshot, restore, fork and lazy memory (tier 1)

Command: `cargo build --release && sudo python3 bench/vm_snapshot.py` (commit {commit}, {time.strftime('%Y-%m-%d')}).
Host: /dev/kvm is `{flavour}` (kernel {host}), 2 cores. Guest: the project's test guest
(`crates/vmm/tests/guest`) with {MEM_MIB} MiB of RAM. Snapshot files on tmpfs. Medians of {RUNS} runs
unless said otherwise; absolute times on these shared machines are noisy, ratios less so.

## Restore to running in a new process, vs QEMU `-incoming`

Same guest, same memory size, no virtio devices on either side (QEMU `-M microvm -cpu qemu64`;
QEMU restores from its migration stream via `exec:cat`, Starling maps its memory file
MAP_PRIVATE). Wall time from spawning the monitor until its API reports the guest running.

| | median ms | p90 ms |
|---|---:|---:|
| Starling `starling-vmm --restore` | {o_wall:.1f} | {sorted(x[0] for x in ours)[int(RUNS*0.9)-1]:.1f} |
| QEMU 7.2 `-incoming` | {q_wall:.1f} | {sorted(qemu)[int(RUNS*0.9)-1]:.1f} |
| **ratio Starling / QEMU** | **{o_wall / q_wall:.2f}x** | |

Inside the restoring monitor (state file read to vCPUs running, as it reports): median
{o_inner:.2f} ms (goal ≤ 5 ms). The snapshot: {snap_info['state_bytes']} bytes of state,
{snap_info['memory_bytes']} bytes of memory written (pages with data only); QEMU's stream:
{qemu_state} bytes. The guest was paused {snap_info['paused_us'] / 1e3:.1f} ms to take it.

## Fork (a running {MEM_MIB} MiB idle guest with vsock)

| | median ms |
|---|---:|
| one clone: parent paused | {f_pause:.2f} |
| one clone: request to the clone running | {f_total:.2f} (goal ≤ 5) |
| 100 clones in one fork: parent paused | {hundred[0]:.1f} |
| 100 clones in one fork: request to all running | {hundred[1]:.1f} (goal ≤ 1000) |

Host memory per idle clone (100 clones, 1 s after the fork):

| | MiB per clone |
|---|---:|
| the host's MemAvailable drop / 100 (everything: monitor, page tables, KVM, guest pages) | **{host_kib / 1024:.2f}** (goal ≤ 3 beyond touched pages) |
| monitor process, PSS of every mapping except guest RAM (median) | {ovh:.2f} |
| guest pages the clone holds privately (median) | {gpriv:.2f} |

The rest of each clone's {MEM_MIB} MiB is the parent's frozen memfd, shared by all.

## Lazy restore (userfaultfd, memory server on a unix socket)

Bytes moved = state + page map + pages + requests, against the bytes of the pages the guest
touched after the restore (fetched, or zero and filled in place). 5 runs per workload.

| workload | pages with data | pages fetched | zero pages | fixed (state + map) | bytes moved / touched |
|---|---:|---:|---:|---:|---:|
| counter, 512 KiB of ballast never read again | {data_pages} | {med(f for f, *_ in lz):.0f} | {med(x[1] for x in lz):.0f} | {fixed} B | **{ratio_touched:.3f}x** |
| same, reading the ballast every tick | {data_pages2} | {med(f for f, *_ in lz2):.0f} | {med(x[1] for x in lz2):.0f} | {fixed2} B | **{ratio_touched2:.3f}x** |

Pages alone move {pages_only:.3f}x the touched bytes (each touched page once, nothing else);
the rest is the fixed cost of the state file and the page map (which lists every page with data
and its BLAKE3, so that every fetched page is checked), which weighs most when the guest
touches only a few pages (goal ≤ 1.1).

The cross-host path (TCP between network namespaces) moves the same bytes; it is exercised by
`crates/vmm/tests/snapshot.rs::lazy_clone_on_another_host_over_tcp`.
"""
    path = os.path.join(ROOT, "bench/results/vm-snapshot.md")
    open(path, "w").write(out)
    print(out)


if __name__ == "__main__":
    main()
