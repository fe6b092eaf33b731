#!/usr/bin/env python3
"""What the monitor's seccomp jail costs (tier 1, this host's /dev/kvm, the project's test guest
at 256 MiB): the same `starling-vmm` with its filter (the default) and with STARLING_SECCOMP=off,
the two sides alternating, RUNS runs each:

  - restore: `starling-vmm --restore-json SPEC` spawned until the API reports the guest running;
  - boot: `starling-vmm --config-json CONFIG` spawned until the guest's first console line;
  - fork: `POST /v1/vm/fork {"count": 1}` to a running counter guest, the clone running (the
    API's `total_us`); the jailed parent's clone inherits its filter;
  - exits: a guest that makes 100,000 port writes to a port without a device (each a VM exit
    and a KVM_RUN ioctl, which the filter checks by request) and ends: the whole run's time.

Writes bench/results/jail.md.

  cargo build --release && sudo python3 bench/jail.py [target/release]
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from vmbench import alternate, api, checked_out, has_line, kill_started, kvm_flavour, running, spawn, stop_vm, wait

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/release"))
VMM = os.path.join(BIN, "starling-vmm")
STARLING = os.path.join(BIN, "starling")
RUNS = int(os.environ.get("RUNS", "60"))
EXITS = 100_000
EXIT_RUNS = 10


def env(jailed):
    e = dict(os.environ, STARLING_VMM=VMM)
    e.pop("STARLING_SECCOMP_INHERITED", None)
    if jailed:
        e.pop("STARLING_SECCOMP", None)
    else:
        e["STARLING_SECCOMP"] = "off"
    return e


def restore_once(snap, d, jailed):
    os.makedirs(d)
    sock = os.path.join(d, "api.sock")
    spec = {"dir": snap, "run_dir": os.path.join(d, "run"), "api_socket": sock, "console": "off"}
    t = time.monotonic()
    p = spawn([VMM, "--restore-json", json.dumps(spec)], env=env(jailed))
    wait("restored VM running", lambda: running(sock))
    ms = (time.monotonic() - t) * 1e3
    # The monitor's own measure, from reading the state file to its vCPUs running: the
    # filter is compiled and installed in between, without the noise of a process start.
    code, st = api(sock, "GET", "/v1/vm")
    stop_vm(sock, p)
    return ms, st["restored_in_us"] / 1e3


def boot_once(kernel, d, jailed):
    os.makedirs(d)
    sock = os.path.join(d, "api.sock")
    console = os.path.join(d, "console.log")
    config = {"kernel": kernel, "cmdline": "counter", "mem_mib": 256, "rng": False,
              "console": {"file": console}, "api_socket": sock, "run_dir": os.path.join(d, "run")}
    t = time.monotonic()
    p = spawn([VMM, "--config-json", json.dumps(config)], env=env(jailed))
    wait("the first console line", lambda: has_line(console))
    ms = (time.monotonic() - t) * 1e3
    wait("the API", lambda: os.path.exists(sock))
    stop_vm(sock, p)
    return ms


def parent(kernel, d, jailed, cmdline="counter"):
    os.makedirs(d)
    sock = os.path.join(d, "api.sock")
    console = os.path.join(d, "console.log")
    config = {"kernel": kernel, "cmdline": cmdline, "mem_mib": 256, "rng": False,
              "console": {"file": console}, "api_socket": sock, "run_dir": os.path.join(d, "run"),
              "vsock": {"cid": 3, "path": os.path.join(d, "vsock.sock")}}
    p = spawn([VMM, "--config-json", json.dumps(config)], env=env(jailed))
    wait("the guest", lambda: os.path.exists(sock) and running(sock), step=0.01)
    return sock, console, p


def fork_once(sock):
    code, r = api(sock, "POST", "/v1/vm/fork", {"count": 1})
    assert code == 200, r
    clone = r["clones"][0]
    try:
        api(clone["api_socket"], "POST", "/v1/vm/stop")
    except OSError:
        pass
    wait("the clone to end", lambda: not os.path.exists(f"/proc/{clone['pid']}")
         or open(f"/proc/{clone['pid']}/stat").read().split()[2] == "Z", step=0.005)
    return r["total_us"] / 1e3


def exits_once(kernel, d, jailed):
    """Seconds for a whole VM life whose guest makes EXITS port writes (VM exits to the
    monitor, each a KVM_RUN ioctl the filter checks) and then ends itself."""
    os.makedirs(d)
    config = {"kernel": kernel, "cmdline": f"exits={EXITS} exit=0", "mem_mib": 256, "rng": False,
              "console": "off", "run_dir": os.path.join(d, "run")}
    t = time.monotonic()
    subprocess.run([VMM, "--config-json", json.dumps(config)], env=env(jailed), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - t


def med(xs):
    return statistics.median(xs)


def main():
    work = tempfile.mkdtemp(prefix="starling-jail-bench-", dir="/dev/shm")
    try:
        kernel = subprocess.check_output([STARLING, "vm", "test-guest", os.path.join(work, "guest")], text=True).strip()
        sock, console, p = parent(kernel, os.path.join(work, "boot"), True)
        wait("ticks", lambda: open(console).read().count("tick ") >= 3, step=0.01)
        snap = os.path.join(work, "snap")
        code, r = api(sock, "POST", "/v1/vm/snapshot", {"dir": snap, "stop": True})
        assert code == 200, r
        p.wait(timeout=30)

        both = alternate(lambda j, i: restore_once(snap, os.path.join(work, f"r{i}{j}"), j), RUNS)
        restores = tuple([r[0] for r in side] for side in both)
        inside = tuple([r[1] for r in side] for side in both)
        boots = alternate(lambda j, i: boot_once(kernel, os.path.join(work, f"b{i}{j}"), j), RUNS)
        parents = {j: parent(kernel, os.path.join(work, f"p{j}"), j) for j in (True, False)}
        forks = alternate(lambda j, i: fork_once(parents[j][0]), RUNS)
        for j, (s, _, pp) in parents.items():
            stop_vm(s, pp)
        exits = alternate(lambda j, i: exits_once(kernel, os.path.join(work, f"e{i}{j}"), j), EXIT_RUNS)
    finally:
        kill_started()
        shutil.rmtree(work, ignore_errors=True)

    commit = checked_out(ROOT)
    flavour = kvm_flavour()
    rows = [
        ("restore → API reports running", restores),
        ("restore, as the monitor measures it (`restored_in_us`)", inside),
        ("boot → first console line", boots),
        ("fork of 1 → clone running (API `total_us`)", forks),
    ]
    listed = lambda xs: ", ".join(f"{x:.2f}" for x in xs)
    table = "\n".join(
        f"| {name} | {med(a):.2f} | {med(b):.2f} | **{med(a) - med(b):+.2f}** | {med(a) / med(b):.2f} |"
        for name, (a, b) in rows)
    every = "\n".join(f"- {name}: filtered {listed(a)}; unfiltered {listed(b)}" for name, (a, b) in rows)
    figures = {
        "restore_jail_ms": round(med(restores[0]) - med(restores[1]), 2),
        "restore_inside_jail_ms": round(med(inside[0]) - med(inside[1]), 2),
        "boot_jail_ms": round(med(boots[0]) - med(boots[1]), 2),
        "fork_jail_ms": round(med(forks[0]) - med(forks[1]), 2),
        "exits_ratio": round(med(exits[0]) / med(exits[1]), 3),
    }
    text = f"""# What the monitor's seccomp jail costs (tier 1)

Command: `cargo build --release && sudo python3 bench/jail.py` (commit {commit},
{time.strftime('%Y-%m-%d')}). Host: /dev/kvm is `{flavour}`, 2 cores. Guest: the project's test
guest (`crates/vmm/tests/guest`), 256 MiB. The same `starling-vmm` with its seccomp filter (the
default) and with `STARLING_SECCOMP=off`, {RUNS} runs of each, the sides alternating; medians
in ms.

| | filtered | unfiltered | difference (goal ≤ +1 ms) | ratio |
|---|---:|---:|---:|---:|
{table}

VM exits: a guest that makes {EXITS:,} writes to a port without a device (each a VM exit and
a KVM_RUN ioctl, which the filter checks by request), booted and run to its end, medians of
{len(exits[0])}: filtered {med(exits[0]):.3f} s, unfiltered {med(exits[1]):.3f} s (ratio
**{med(exits[0]) / med(exits[1]):.3f}**; {(med(exits[0]) - med(exits[1])) / EXITS * 1e9:+.0f} ns
an exit).

Every run (ms):
{every}

<!-- figures {json.dumps(figures)} -->
"""
    out = os.path.join(ROOT, "bench/results/jail.md")
    open(out, "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
