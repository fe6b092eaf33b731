#!/usr/bin/env python3
"""What the monitor's namespace jail costs a VM start (tier 1, this host's /dev/kvm, the
project's test guest at 256 MiB): the same `starling-vmm` jailed (STARLING_JAIL=on: cgroup
left out, mount namespace, pivot_root, privilege drop; its seccomp filter as always) and not
jailed (its seccomp filter only, the default), the two sides alternating, RUNS runs each:

  - restore: `starling-vmm --restore-json SPEC` spawned until the API reports the guest running
    (the snapshot is a jailed VM's, so that both sides may read it);
  - boot: `starling-vmm --config-json CONFIG` spawned until the guest's first console line;
  - fork: `POST /v1/vm/fork {"count": 1}` to a running counter guest, the clone running (the
    API's `total_us`); a jailed parent's clone is started inside its jail.

The jailed side runs as STARLING_JAIL_USER=JAIL_UID (default 4242). Writes
bench/results/jail-namespace.md.

  cargo build --release && sudo python3 bench/jail_namespace.py [target/release]
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
JAIL_UID = os.environ.get("JAIL_UID", "4242")


def env(jailed):
    e = dict(os.environ, STARLING_VMM=VMM)
    for k in ("STARLING_SECCOMP", "STARLING_SECCOMP_INHERITED", "STARLING_JAIL_MEMORY_MAX",
              "STARLING_JAIL_PIDS_MAX", "STARLING_JAIL_SHOW"):
        e.pop(k, None)
    if jailed:
        e.update(STARLING_JAIL="on", STARLING_JAIL_USER=JAIL_UID)
    else:
        e["STARLING_JAIL"] = "off"
    return e


def restore_once(snap, d, jailed):
    os.makedirs(d)
    sock = os.path.join(d, "api.sock")
    spec = {"dir": snap, "run_dir": os.path.join(d, "run"), "api_socket": sock, "console": "off"}
    t = time.monotonic()
    p = spawn([VMM, "--restore-json", json.dumps(spec)], env=env(jailed))
    wait("restored VM running", lambda: running(sock))
    ms = (time.monotonic() - t) * 1e3
    stop_vm(sock, p)
    return ms


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


def parent(kernel, d, jailed):
    os.makedirs(d)
    sock = os.path.join(d, "api.sock")
    console = os.path.join(d, "console.log")
    config = {"kernel": kernel, "cmdline": "counter", "mem_mib": 256, "rng": False,
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


def med(xs):
    return statistics.median(xs)


def main():
    if os.geteuid() != 0:
        sys.exit("bench/jail_namespace.py: the jail needs root (sudo)")
    work = tempfile.mkdtemp(prefix="starling-jail-ns-bench-", dir="/dev/shm")
    try:
        kernel = subprocess.check_output([STARLING, "vm", "test-guest", os.path.join(work, "guest")], text=True).strip()
        sock, console, p = parent(kernel, os.path.join(work, "boot"), True)
        wait("ticks", lambda: open(console).read().count("tick ") >= 3, step=0.01)
        snap = os.path.join(work, "boot", "run", "snap")
        code, r = api(sock, "POST", "/v1/vm/snapshot", {"dir": snap, "stop": True})
        assert code == 200, r
        p.wait(timeout=30)

        restores = alternate(lambda j, i: restore_once(snap, os.path.join(work, f"r{i}{j}"), j), RUNS)
        boots = alternate(lambda j, i: boot_once(kernel, os.path.join(work, f"b{i}{j}"), j), RUNS)
        parents = {j: parent(kernel, os.path.join(work, f"p{j}"), j) for j in (True, False)}
        forks = alternate(lambda j, i: fork_once(parents[j][0]), RUNS)
        for j, (s, _, pp) in parents.items():
            stop_vm(s, pp)
    finally:
        kill_started()
        shutil.rmtree(work, ignore_errors=True)

    commit = checked_out(ROOT)
    flavour = kvm_flavour()
    rows = [
        ("restore → API reports running", restores),
        ("boot → first console line", boots),
        ("fork of 1 → clone running (API `total_us`)", forks),
    ]
    listed = lambda xs: ", ".join(f"{x:.2f}" for x in xs)
    table = "\n".join(
        f"| {name} | {med(a):.2f} | {med(b):.2f} | **{med(a) - med(b):+.2f}** | {med(a) / med(b):.2f} |"
        for name, (a, b) in rows)
    every = "\n".join(f"- {name}: jailed {listed(a)}; not jailed {listed(b)}" for name, (a, b) in rows)
    figures = {
        "restore_ms": round(med(restores[0]) - med(restores[1]), 2),
        "boot_ms": round(med(boots[0]) - med(boots[1]), 2),
        "fork_ms": round(med(forks[0]) - med(forks[1]), 2),
    }
    text = f"""# What the monitor's namespace jail costs a VM start (tier 1)

Command: `cargo build --release && sudo python3 bench/jail_namespace.py` (commit {commit},
{time.strftime('%Y-%m-%d')}). Host: /dev/kvm is `{flavour}`, 2 cores. Guest: the project's test
guest (`crates/vmm/tests/guest`), 256 MiB. The same `starling-vmm` jailed (`STARLING_JAIL=on`,
`STARLING_JAIL_USER={JAIL_UID}`: a mount namespace with its files bound in, `pivot_root`, a
`/proc` of its own, the privilege drop; no cgroup, which this host's cgroup v1 does not give)
and not jailed, both with their seccomp filter, {RUNS} runs of each, the sides alternating;
medians in ms. A fork's clone is started inside its parent's jail and enters none itself.

| | jailed | not jailed | difference (goal ≤ +1 ms) | ratio |
|---|---:|---:|---:|---:|
{table}

Every run (ms):
{every}

<!-- figures {json.dumps(figures)} -->
"""
    out = os.path.join(ROOT, "bench/results/jail-namespace.md")
    open(out, "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
