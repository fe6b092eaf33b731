#!/usr/bin/env python3
"""Snapshot, restore, fork and lazy memory on this host's /dev/kvm (tier 1), with the project's
test guest at 256 MiB, side by side with QEMU's -incoming restore of the same guest.

  cargo build --release && sudo python3 bench/vm_snapshot.py [target/release]

Measures, each in one run:
  - restore in a new process: Starling (starling-vmm --restore) vs QEMU (-incoming
    "exec:cat FILE"), wall time from spawn (20 runs each, snapshot files on tmpfs) until the
    monitor's API says running (QMP query-status for QEMU), and until all of the guest's
    memory with data is resident in the monitor: QEMU has read its whole stream into RAM by
    the time it runs; Starling maps its memory file MAP_PRIVATE and faults pages in as the
    guest touches them, so its clock also runs on until every page with data has been
    faulted in (read through /proc/PID/mem, the host's own equivalent of a guest's touch);
  - fork latency: one clone at a time (20 runs), the parent's pause and request-to-running;
  - 100 clones of a 256 MiB idle guest in one fork, 5 times: request to all running, and
    host memory per idle clone (MemAvailable drop, PSS of every mapping but guest RAM, guest
    pages each clone holds privately);
  - lazy restore through a memory server: the bytes that crossed its socket (counted by a
    relay in between, both ways) vs the bytes of the pages the guest touched.
Every run's figures are in the results file. Writes bench/results/vm-snapshot.md.
"""
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

from vmbench import api, ended, wait

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/release"))
VMM = os.path.join(BIN, "starling-vmm")
STARLING = os.path.join(BIN, "starling")
MEM_MIB = 256
RUNS = 20
HUNDRED_ROUNDS = 5
# Every monitor and clone started, so that a failing run leaves none behind (a spinning guest
# would eat a core of whatever runs next).
STARTED = []
CLONES = []


def spawn(args, **kw):
    p = subprocess.Popen(args, **kw)
    STARTED.append(p)
    return p


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


def data_page_runs(snap):
    """Runs (first page, count) of the pages with data, from the snapshot's page map."""
    m = open(os.path.join(snap, "memory.map"), "rb").read()
    pages = sorted(struct.unpack_from("<Q", m, i)[0] for i in range(0, len(m), 40))
    runs = []
    for p in pages:
        if runs and runs[-1][0] + runs[-1][1] == p:
            runs[-1][1] += 1
        else:
            runs.append([p, 1])
    return runs


def make_resident(pid, memory_file, runs):
    """Faults every page with data into the monitor's mapping of its memory file (one read
    per run of pages through /proc/PID/mem); returns the pages read."""
    maps = []
    for line in open(f"/proc/{pid}/maps"):
        f = line.split()
        if len(f) >= 6 and f[5] == memory_file:
            start, end = (int(x, 16) for x in f[0].split("-"))
            maps.append((start, end, int(f[2], 16)))
    assert maps, f"no mapping of {memory_file} in {pid}"
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    read = 0
    try:
        for first, count in runs:
            lo, hi = first * 4096, (first + count) * 4096
            for start, end, off in maps:
                a, b = max(lo, off), min(hi, off + end - start)
                if a < b:
                    read += len(os.pread(fd, b - a, start + a - off)) // 4096
    finally:
        os.close(fd)
    return read


def starling_restore(snap, work):
    out = []
    runs = data_page_runs(snap)
    memory_file = os.path.realpath(os.path.join(snap, "memory"))
    for i in range(RUNS):
        d = os.path.join(work, f"r{i}")
        sock = os.path.join(d, "api.sock")
        spec = {"dir": snap, "run_dir": d, "api_socket": sock, "console": "off"}
        t = time.monotonic()
        p = spawn([VMM, "--restore-json", json.dumps(spec)], stderr=subprocess.DEVNULL)
        st = wait("restored VM", lambda: (lambda r: r[1] if r[1]["state"] == "running" else None)(api(sock, "GET", "/v1/vm")))
        running = (time.monotonic() - t) * 1e3
        pages = make_resident(p.pid, memory_file, runs)
        resident = (time.monotonic() - t) * 1e3
        assert pages == sum(c for _, c in runs), (pages, runs)
        out.append((running, st["restored_in_us"] / 1e3, resident))
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
        CLONES.extend(cl["pid"] for cl in r["clones"])
        for cl in r["clones"]:
            api(cl["api_socket"], "POST", "/v1/vm/stop")
    time.sleep(1.0)
    hundreds = []
    for round_ in range(HUNDRED_ROUNDS):
        # Host-wide, so anything else moving (writeback after a build, other tenants) shows up:
        # flush first, take medians of a few samples on each side, and repeat the whole
        # measurement.
        os.sync()
        avail_before = mem_available_kib()
        code, r = api(sock, "POST", "/v1/vm/fork", {"count": 100, "dir": os.path.join(work, f"f100-{round_}")})
        assert code == 200, r
        CLONES.extend(cl["pid"] for cl in r["clones"])
        time.sleep(1.0)
        per_clone_host_kib = (avail_before - mem_available_kib()) / 100
        mem = [smaps(cl["pid"]) for cl in r["clones"]]
        for cl in r["clones"]:
            api(cl["api_socket"], "POST", "/v1/vm/stop")
        # The clones are the parent monitor's children: wait until they are gone.
        wait("100 clones to end", lambda: all(ended(cl["pid"]) for cl in r["clones"]), timeout=30, step=0.05)
        time.sleep(1.0)
        hundreds.append({"paused_ms": r["paused_us"] / 1e3, "total_ms": r["total_us"] / 1e3,
                         "host_kib": per_clone_host_kib,
                         "overhead_kib": statistics.median(m[0] for m in mem),
                         "guest_private_kib": statistics.median(m[1] for m in mem)})
    api(sock, "POST", "/v1/vm/stop")
    p.wait()
    return one, hundreds


def mem_available_kib():
    samples = []
    for _ in range(5):
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                samples.append(int(line.split()[1]))
        time.sleep(0.1)
    return statistics.median(samples) if samples else 0


class Relay:
    """A unix socket in front of a memory server that counts every byte crossing it, both
    ways: what a lazy restore really moves, not what its counters say."""

    def __init__(self, path, upstream):
        self.upstream = upstream
        self.bytes = 0
        self.lock = threading.Lock()
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(path)
        self.listener.listen(64)
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX)
            server.connect(self.upstream)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self.pump, args=(a, b), daemon=True).start()

    def pump(self, a, b):
        try:
            while True:
                data = a.recv(1 << 16)
                if not data:
                    break
                with self.lock:
                    self.bytes += len(data)
                b.sendall(data)
        except OSError:
            pass
        finally:
            try:
                b.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def counted(self):
        with self.lock:
            return self.bytes

    def close(self):
        self.listener.close()


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
    relay_path = os.path.join(work, f"relay-{tag}.sock")
    relay = Relay(relay_path, addr[5:])
    through_relay = f"unix:{relay_path}#{pinned.split('#', 1)[1]}"
    fixed = os.path.getsize(os.path.join(snap, "state")) + os.path.getsize(os.path.join(snap, "memory.map"))
    runs = []
    for i in range(5):
        rd = os.path.join(work, f"lazy-{tag}-{i}")
        sock = os.path.join(rd, "api.sock")
        spec = {"dir": snap, "lazy": through_relay, "run_dir": rd, "api_socket": sock,
                "console": {"file": os.path.join(rd, "console.log")}}
        os.makedirs(rd)
        before = relay.counted()
        cp = spawn([VMM, "--restore-json", json.dumps(spec)], stderr=subprocess.DEVNULL)
        wait("lazy ticks", lambda: ticks(os.path.join(rd, "console.log")) >= 10, step=0.01)
        st = api(sock, "GET", "/v1/vm")[1]["lazy"]
        api(sock, "POST", "/v1/vm/stop")
        cp.wait()
        time.sleep(0.1)  # the relay's last bytes
        wire = relay.counted() - before
        touched = st["pages_fetched"] + st["zero_pages"]
        runs.append({"pages_fetched": st["pages_fetched"], "zero_pages": st["zero_pages"],
                     "wire_bytes": wire, "client_bytes_received": st["bytes_received"],
                     "touched_bytes": touched * 4096})
    relay.close()
    server.kill()
    server.wait()
    data_pages = os.path.getsize(os.path.join(snap, "memory.map")) // 40
    return runs, data_pages, fixed


def med(xs):
    return statistics.median(xs)


def main():
    work = tempfile.mkdtemp(prefix="starling-snap-bench-", dir="/dev/shm")
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
        data_pages_restore = sum(n for _, n in data_page_runs(snap))
        ours = starling_restore(snap, work)
        qemu, qemu_state = qemu_restore(kernel, work)
        one, hundreds = forks(kernel, work)
        lazy_runs, data_pages, fixed = lazy(kernel, work, "counter ballast", "idle")
        lazy_runs2, data_pages2, fixed2 = lazy(kernel, work, "counter ballast reread", "reread")
    finally:
        for p in STARTED:
            if p.poll() is None:
                p.kill()
                p.wait()
        # Clones are the monitors' children, in process groups of their own.
        for pid in CLONES:
            try:
                # Only ours: a pid of an ended clone may belong to another process by now.
                if work.encode() in open(f"/proc/{pid}/cmdline", "rb").read():
                    os.kill(pid, 9)
            except (FileNotFoundError, ProcessLookupError):
                pass
        shutil.rmtree(work, ignore_errors=True)

    def p90(xs):
        return sorted(xs)[int(len(xs) * 0.9) - 1]

    def listed(xs, fmt="{:.1f}"):
        return ", ".join(fmt.format(x) for x in xs)

    o_run = [x[0] for x in ours]
    o_res = [x[2] for x in ours]
    o_inner = med(x[1] for x in ours)
    f_pause = med(x[0] for x in one)
    f_total = med(x[1] for x in one)
    host_kib = [h["host_kib"] for h in hundreds]
    ovh = med(h["overhead_kib"] for h in hundreds) / 1024
    gpriv = med(h["guest_private_kib"] for h in hundreds) / 1024

    def lazy_row(name, runs, data, fix):
        ratio = med(r["wire_bytes"] / r["touched_bytes"] for r in runs)
        return (f"| {name} | {data} | {med(r['pages_fetched'] for r in runs):.0f} | "
                f"{med(r['zero_pages'] for r in runs):.0f} | {fix} B | {med(r['wire_bytes'] for r in runs):.0f} B | "
                f"**{ratio:.3f}x** | {listed([r['wire_bytes'] for r in runs], '{:.0f}')} |"), ratio

    lazy1, ratio_touched = lazy_row("counter, 512 KiB of ballast never read again", lazy_runs, data_pages, fixed)
    lazy2, ratio_touched2 = lazy_row("same, reading the ballast every tick", lazy_runs2, data_pages2, fixed2)
    beyond = med((r["wire_bytes"] - r["client_bytes_received"]) for r in lazy_runs + lazy_runs2)
    host = subprocess.run(["uname", "-r"], capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    figures = {
        "restore_running_ms": round(med(o_run), 1),
        "restore_resident_ms": round(med(o_res), 1),
        "qemu_restore_ms": round(med(qemu), 1),
        "restore_running_vs_qemu": round(med(o_run) / med(qemu), 2),
        "restore_resident_vs_qemu": round(med(o_res) / med(qemu), 2),
        "restore_inner_ms": round(o_inner, 2),
        "state_bytes": snap_info["state_bytes"],
        "fork_paused_ms": round(f_pause, 2),
        "fork_one_ms": round(f_total, 2),
        "fork_100_ms": round(med(h["total_ms"] for h in hundreds), 1),
        "clone_host_mib": round(med(host_kib) / 1024, 2),
        "lazy_moved_vs_touched": round(ratio_touched, 3),
    }
    out = f"""# Snapshot, restore, fork and lazy memory (tier 1)

Command: `cargo build --release && sudo python3 bench/vm_snapshot.py` (commit {commit}, {time.strftime('%Y-%m-%d')}).
Host: /dev/kvm is `{flavour}` (kernel {host}), 2 cores. Guest: the project's test guest
(`crates/vmm/tests/guest`) with {MEM_MIB} MiB of RAM. Snapshot files on tmpfs. Medians of {RUNS} runs
unless said otherwise, every run listed; absolute times on these shared machines are noisy, ratios less so.

## Restore in a new process, vs QEMU `-incoming`

Same guest, same memory size, no virtio devices on either side (QEMU `-M microvm -cpu qemu64`;
QEMU restores from its migration stream via `exec:cat`, Starling maps its memory file
MAP_PRIVATE). Wall time from spawning the monitor until its API reports the guest running, and
until all {data_pages_restore} pages with data are resident in the monitor. QEMU has read its
whole stream into guest RAM before it runs, so its two times are one; Starling runs before any
page is in, so its second time adds faulting every page with data in (the host reads each run
of them through `/proc/PID/mem`, as a guest's first touch would).

| | to running, median ms | p90 | to all memory resident, median ms | p90 |
|---|---:|---:|---:|---:|
| Starling `starling-vmm --restore` | {med(o_run):.1f} | {p90(o_run):.1f} | {med(o_res):.1f} | {p90(o_res):.1f} |
| QEMU 7.2 `-incoming` | {med(qemu):.1f} | {p90(qemu):.1f} | {med(qemu):.1f} | {p90(qemu):.1f} |
| **ratio Starling / QEMU** | **{med(o_run) / med(qemu):.2f}x** | | **{med(o_res) / med(qemu):.2f}x** | |

Every run (ms): Starling to running {listed(o_run)}; Starling to resident {listed(o_res)}; QEMU {listed(qemu)}.

Inside the restoring monitor (state file read to vCPUs running, as it reports): median
{o_inner:.2f} ms (goal ≤ 5 ms). The snapshot: {snap_info['state_bytes']} bytes of state,
{snap_info['memory_bytes']} bytes of memory written (pages with data only); QEMU's stream:
{qemu_state} bytes. The guest was paused {snap_info['paused_us'] / 1e3:.1f} ms to take it.

## Fork (a running {MEM_MIB} MiB idle guest with vsock)

| | median ms | every run |
|---|---:|---|
| one clone: parent paused | {f_pause:.2f} | {listed([x[0] for x in one], '{:.2f}')} |
| one clone: request to the clone running | {f_total:.2f} (goal ≤ 5) | {listed([x[1] for x in one], '{:.2f}')} |
| 100 clones in one fork: parent paused | {med(h['paused_ms'] for h in hundreds):.1f} | {listed([h['paused_ms'] for h in hundreds])} |
| 100 clones in one fork: request to all running | {med(h['total_ms'] for h in hundreds):.1f} (goal ≤ 1000) | {listed([h['total_ms'] for h in hundreds])} |

Host memory per idle clone (100 clones, 1 s after the fork; {HUNDRED_ROUNDS} forks of 100):

| | MiB per clone, median | every fork of 100 |
|---|---:|---|
| the host's MemAvailable drop / 100 (everything: monitor, page tables, KVM, guest pages) | **{med(host_kib) / 1024:.2f}** (goal ≤ 3 beyond touched pages) | {listed([k / 1024 for k in host_kib], '{:.2f}')} |
| monitor process, PSS of every mapping except guest RAM | {ovh:.2f} | {listed([h['overhead_kib'] / 1024 for h in hundreds], '{:.2f}')} |
| guest pages the clone holds privately | {gpriv:.2f} | {listed([h['guest_private_kib'] / 1024 for h in hundreds], '{:.2f}')} |

The rest of each clone's {MEM_MIB} MiB is the parent's frozen memfd, shared by all.

## Lazy restore (userfaultfd, memory server on a unix socket)

Bytes moved = every byte that crossed the memory server's socket, both ways (counted by a relay
between the restoring monitor and the server), against the bytes of the pages the guest
touched after the restore (fetched, or zero and filled in place). 5 runs per workload.

| workload | pages with data | pages fetched | zero pages | state + map files | moved (median) | moved / touched | every run (bytes) |
|---|---:|---:|---:|---:|---:|---:|---|
{lazy1}
{lazy2}

Beyond the page bytes the client counts, a restore moves {beyond:.0f} bytes (median): the state
file, the page map (every page with data and its BLAKE3, so that every fetched page is checked)
and the requests, which weigh most when the guest touches only a few pages (goal ≤ 1.1 for
moved / touched).

The cross-host path (TCP between network namespaces) moves the same bytes; it is exercised by
`crates/vmm/tests/snapshot.rs::lazy_clone_on_another_host_over_tcp`.

<!-- figures {json.dumps(figures)} -->
"""
    path = os.path.join(ROOT, "bench/results/vm-snapshot.md")
    open(path, "w").write(out)
    print(out)


if __name__ == "__main__":
    main()
