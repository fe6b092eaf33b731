#!/usr/bin/env python3
"""Forking busy VMs: 100 clones in one fork of the project's test guest (256 MiB, vsock) when
its vCPU is idle (halted), spinning (a busy loop printing a tick now and then) or counting
(each tick also asks the monitor's service who it is), on this host's /dev/kvm (tier 1).

  cargo build --release && sudo python3 bench/vm_fork_busy.py [BIN] [BASELINE_BIN]

BIN defaults to target/release. With BASELINE_BIN (another build's binary directory, e.g. of
the commit before, built in a worktree of its own), both run in this one run, alternating.

Measured per fork (RUNS per mode and binary; medians):
  - the API's `total_us`: from the request to the parent knowing every clone runs, and the
    wall time until the answer reached this script;
  - wall time from the request until every clone's vCPU thread has spent over 1 ms on a CPU
    (its `schedstat`; a vCPU held paused spends about 0.1 ms): guest code ran in every clone,
    seen from outside the monitor; for the busy modes (an idle guest halts at once);
  - the parent's pause.
Writes bench/results/vm-fork-busy.md.
"""
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import vmbench
from vmbench import api

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/release"))
BASE = os.path.abspath(sys.argv[2]) if len(sys.argv) > 2 else None
MEM_MIB = 256
CLONES = 100
RUNS = int(os.environ.get("RUNS", "3"))
MODES = [("idle", "idle"), ("spin", "spin"), ("counter", "counter")]
# Every process started (monitors, and clones by pid), so that nothing is left spinning.
STARTED = []
CLONE_PIDS = []


def wait(what, f, timeout=60, step=0.005):
    # Polled gently: the clones being measured spin on both CPUs.
    return vmbench.wait(what, f, timeout, step)


def vcpu_stats(pid):
    """The schedstat files of a monitor's vCPU threads."""
    out = []
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            if open(f"/proc/{pid}/task/{t}/comm").read().startswith("vcpu"):
                out.append(f"/proc/{pid}/task/{t}/schedstat")
        except OSError:
            pass
    return out


def ran_ns(paths):
    """CPU time the threads behind these schedstat files have had, in ns."""
    total = 0
    for p in paths:
        try:
            total += int(open(p).read().split()[0])
        except OSError:
            pass
    return total


def observer(on):
    """The script itself watches at real-time priority while clones spin (otherwise, one
    thread among a hundred busy ones, it sees late what it measures). Its children (the
    monitors, started before) keep the normal policy."""
    if on:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    else:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def boot(vmm, kernel, cmdline, d):
    os.makedirs(d, exist_ok=True)
    c = {"kernel": kernel, "cmdline": cmdline, "mem_mib": MEM_MIB, "rng": False,
         "console": {"file": os.path.join(d, "console.log")},
         "api_socket": os.path.join(d, "api.sock"), "run_dir": os.path.join(d, "run"),
         "vsock": {"cid": 3, "path": os.path.join(d, "vsock.sock")}}
    p = subprocess.Popen([vmm, "--config-json", json.dumps(c)], stderr=subprocess.DEVNULL)
    STARTED.append(p)
    wait("the API", lambda: os.path.exists(c["api_socket"]))
    return p, c


def stop_clones(clones):
    for cl in clones:
        try:
            api(cl["api_socket"], "POST", "/v1/vm/stop", timeout=10)
        except (OSError, ValueError):
            pass
    for cl in clones:
        for _ in range(200):
            try:
                os.kill(cl["pid"], 0)
            except ProcessLookupError:
                break
            time.sleep(0.01)
        else:
            try:
                os.kill(cl["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass


def one_fork(vmm, kernel, mode, cmdline, work, tag):
    d = os.path.join(work, f"{tag}-{mode}")
    p, c = boot(vmm, kernel, cmdline, d)
    log = os.path.join(d, "console.log")
    ready_word = b"idle" if mode == "idle" else b"tick"
    wait("the guest", lambda: ready_word in open(log, "rb").read(), step=0.02)
    time.sleep(0.5)
    sock = c["api_socket"]
    observer(True)
    try:
        t = time.monotonic()
        code, r = api(sock, "POST", "/v1/vm/fork", {"count": CLONES, "dir": os.path.join(d, "forks")})
        answered = time.monotonic() - t
        assert code == 200, r
        CLONE_PIDS.extend(cl["pid"] for cl in r["clones"])
        seen = None
        if mode != "idle":
            left = [vcpu_stats(cl["pid"]) for cl in r["clones"]]
            while left:
                left = [v for v in left if ran_ns(v) < 1_000_000]
                if time.monotonic() - t > 120:
                    raise SystemExit(f"{mode}: {len(left)} clones never ran")
                if left:
                    time.sleep(0.02)
            seen = time.monotonic() - t
    finally:
        observer(False)
    stop_clones(r["clones"])
    api(sock, "POST", "/v1/vm/stop")
    p.wait()
    shutil.rmtree(d, ignore_errors=True)
    return {"total_ms": r["total_us"] / 1e3, "answered_ms": answered * 1e3,
            "paused_ms": r["paused_us"] / 1e3, "all_ran_ms": seen * 1e3 if seen else None}


def main():
    work = tempfile.mkdtemp(prefix="starling-fork-busy-", dir="/dev/shm")
    bins = [("after", BIN)] + ([("before", BASE)] if BASE else [])
    results = {(b, m): [] for b, _ in bins for m, _ in MODES}
    try:
        kernel = subprocess.check_output([os.path.join(BIN, "starling"), "vm", "test-guest",
                                          os.path.join(work, "guest")], text=True).strip()
        for i in range(RUNS):
            for mode, cmdline in MODES:
                for b, path in bins:
                    r = one_fork(os.path.join(path, "starling-vmm"), kernel, mode, cmdline, work, f"{b}{i}")
                    print(b, mode, r, flush=True)
                    results[(b, mode)].append(r)
    finally:
        for p in STARTED:
            if p.poll() is None:
                p.kill()
                p.wait()
        for pid in CLONE_PIDS:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(work, ignore_errors=True)

    def med(b, m, k):
        xs = [r[k] for r in results[(b, m)] if r[k] is not None]
        return statistics.median(xs) if xs else None

    def fmt(x):
        return "–" if x is None else f"{x:.0f}"

    flavour = next((k for k in ("kvm_intel", "kvm_amd", "kvm_pvm") if os.path.exists(f"/sys/module/{k}")), "unknown")
    host = subprocess.run(["uname", "-r"], capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    rows = []
    for mode, _ in MODES:
        for b, _ in bins:
            rows.append(f"| {mode} | {b} | {fmt(med(b, mode, 'total_ms'))} | {fmt(med(b, mode, 'answered_ms'))} "
                        f"| {fmt(med(b, mode, 'all_ran_ms'))} | {med(b, mode, 'paused_ms'):.1f} |")
    ratios = []
    if BASE:
        for mode, _ in MODES:
            a, z = med("after", mode, "total_ms"), med("before", mode, "total_ms")
            ratios.append(f"{mode} {a / z:.2f}x")
    out = f"""# Forking busy VMs: 100 clones to all running (tier 1)

Command: `cargo build --release && sudo python3 bench/vm_fork_busy.py target/release [BASELINE]`
(commit {commit}{', baseline ' + os.path.basename(os.path.dirname(BASE.rstrip('/'))) if BASE else ''}, {time.strftime('%Y-%m-%d')}).
Host: /dev/kvm is `{flavour}` (kernel {host}), 2 cores. Guest: the project's test guest with
{MEM_MIB} MiB of RAM and vsock; one fork of {CLONES} clones through the API. Modes: `idle` (its
vCPU halted), `spin` (a busy loop, a tick on the console now and then), `counter` (a tick per
loop, each asking the monitor's service `whoami`). Medians of {RUNS} forks per mode and build,
the builds alternating.

| guest | build | API `total_us`, ms (request to all running) | answer received, ms | every clone's vCPU ran > 1 ms, ms | parent paused, ms |
|---|---|---:|---:|---:|---:|
{chr(10).join(rows)}

{('Ratio after/before, API total: ' + ', '.join(ratios) + '.') if ratios else ''}
The last column is the outcome seen from outside the monitor: every clone's vCPU thread spent
over 1 ms on a CPU (a held vCPU spends about 0.1 ms), read from `/proc/PID/task/*/schedstat`
every 20 ms by this script at real-time priority (one thread among a hundred busy ones, it
would otherwise see late what it measures; the monitors keep the normal policy); an idle guest
halts at once, so it has none. Before: each clone's vCPUs ran as soon
as its own restore finished, so clones still restoring competed with clones already spinning on
the 2 cores. After: clones restore with their vCPUs paused, tell the parent, and are released
together once all have (one pipe closed), then confirm that they were released.
"""
    path = os.path.join(ROOT, "bench/results/vm-fork-busy.md")
    open(path, "w").write(out)
    print(out)


if __name__ == "__main__":
    main()
