#!/usr/bin/env python3
"""What the `starling` command line adds on the VM path, over the monitor alone (tier 1, this
host's /dev/kvm, the project's test guest at 256 MiB). Each pair alternates, RUNS runs each:

  - `starling vm restore DIR` vs `starling-vmm --restore-json SPEC` (the same spec; the CLI
    runs the monitor in its own process): spawn until the API reports the guest running;
  - `starling vm run --kernel K` vs `starling-vmm --config-json CONFIG`: spawn until the first
    line of the guest's serial console is in its file;
  - `starling pool run NAME` on a pool of one waiting substrate: the command's wall time less
    the activation time it reports itself (what is left: process start, finding the pool, and
    starting the replacement substrate before it returns), and that less the start of
    `starling-vmm --version` (a process start any client pays);
  - process start alone: `starling --version` vs `starling-vmm --version` (and /bin/true);
  - memory: resident and private memory beyond guest RAM of an idle guest's monitor, run by
    `starling vm run` vs `starling-vmm`.

Also the sizes of the release binaries. Writes bench/results/cli-overhead.md.

  scripts/build-release.sh && sudo python3 bench/cli_overhead.py [target/dist]

(target/dist: the release programs as shipped: `starling` linked dynamically, `starling-vmm`
statically.)
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from vmbench import (alternate, api, checked_out, has_line, kill_started, kvm_flavour, resident_beyond, running, spawn,
                     stop_vm, wait)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/dist"))
if not os.path.isfile(os.path.join(BIN, "starling-vmm")):
    sys.exit(f"{os.path.basename(__file__)}: no starling-vmm in {BIN}: run scripts/build-release.sh first")
VMM = os.path.join(BIN, "starling-vmm")
STARLING = os.path.join(BIN, "starling")
RUNS = int(os.environ.get("RUNS", "60"))
def restore_once(snap, d, via_cli):
    os.makedirs(d)
    sock = os.path.join(d, "api.sock")
    run_dir = os.path.join(d, "run")
    if via_cli:
        args = [STARLING, "vm", "restore", snap, "--api-socket", sock, "--run-dir", run_dir, "--console", "off"]
    else:
        spec = {"dir": snap, "run_dir": run_dir, "api_socket": sock, "console": "off"}
        args = [VMM, "--restore-json", json.dumps(spec)]
    t = time.monotonic()
    p = spawn(args)
    wait("restored VM running", lambda: running(sock))
    ms = (time.monotonic() - t) * 1e3
    stop_vm(sock, p)
    return ms


def boot_once(kernel, d, via_cli):
    os.makedirs(d)
    sock = os.path.join(d, "api.sock")
    console = os.path.join(d, "console.log")
    if via_cli:
        args = [STARLING, "vm", "run", "--kernel", kernel, "--cmdline", "counter", "--mem", "256M",
                "--no-rng", "--console", console, "--api-socket", sock]
    else:
        config = {"kernel": kernel, "cmdline": "counter", "mem_mib": 256, "rng": False,
                  "console": {"file": console}, "api_socket": sock}
        args = [VMM, "--config-json", json.dumps(config)]
    t = time.monotonic()
    p = spawn(args)
    wait("the first console line", lambda: has_line(console))
    ms = (time.monotonic() - t) * 1e3
    wait("the API", lambda: os.path.exists(sock))
    stop_vm(sock, p)
    return ms


def memory_once(kernel, d, via_cli):
    """(resident, private) KiB beyond guest RAM of an idle guest's monitor."""
    os.makedirs(d)
    sock = os.path.join(d, "api.sock")
    if via_cli:
        args = [STARLING, "vm", "run", "--kernel", kernel, "--cmdline", "idle", "--mem", "256M",
                "--no-rng", "--console", "off", "--api-socket", sock]
    else:
        config = {"kernel": kernel, "cmdline": "idle", "mem_mib": 256, "rng": False,
                  "console": "off", "api_socket": sock}
        args = [VMM, "--config-json", json.dumps(config)]
    p = spawn(args)
    wait("the API", lambda: running(sock) if os.path.exists(sock) else False)
    time.sleep(0.3)
    m = resident_beyond(p.pid, 256)
    stop_vm(sock, p)
    return m


def start_once(args):
    t = time.monotonic()
    subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return (time.monotonic() - t) * 1e3


def pool_run_once(env, pool_dir):
    # Every run activates a docked substrate: the previous run's replacement first docks.
    slots = os.path.join(pool_dir, "slots")
    wait("a docked substrate", lambda: any(os.path.exists(os.path.join(slots, s, "free")) for s in os.listdir(slots)),
         timeout=60, step=0.005)
    t = time.monotonic()
    out = subprocess.run([STARLING, "pool", "run", "warm", "--env", "code=0", "--json"], env=env,
                         capture_output=True, text=True, check=True)
    wall = (time.monotonic() - t) * 1e3
    a = json.loads(out.stdout)
    # The activated substrate exits by itself (code=0); wait so runs do not overlap.
    sock = a["api_socket"]
    wait("the activated VM to end", lambda: not os.path.exists(sock) or not _alive(sock), timeout=60, step=0.005)
    return wall - a["activated_us"] / 1e3


def _alive(sock):
    try:
        api(sock, "GET", "/v1/vm")
        return True
    except OSError:
        return False


def med(xs):
    return statistics.median(xs)


def main():
    work = tempfile.mkdtemp(prefix="starling-cli-bench-", dir="/dev/shm")
    try:
        kernel = subprocess.check_output([STARLING, "vm", "test-guest", os.path.join(work, "guest")], text=True).strip()
        # A booted guest's snapshot to restore.
        d = os.path.join(work, "boot")
        os.makedirs(d)
        sock = os.path.join(d, "api.sock")
        config = {"kernel": kernel, "cmdline": "counter", "mem_mib": 256, "rng": False,
                  "console": {"file": os.path.join(d, "console.log")}, "api_socket": sock}
        p = spawn([VMM, "--config-json", json.dumps(config)])
        wait("ticks", lambda: open(os.path.join(d, "console.log")).read().count("tick ") >= 3, step=0.01)
        snap = os.path.join(work, "snap")
        code, r = api(sock, "POST", "/v1/vm/snapshot", {"dir": snap, "stop": True})
        assert code == 200, r
        p.wait(timeout=30)

        restores = alternate(lambda cli, i: restore_once(snap, os.path.join(work, f"r{i}{'c' if cli else 'd'}"), cli), RUNS)
        boots = alternate(lambda cli, i: boot_once(kernel, os.path.join(work, f"b{i}{'c' if cli else 'd'}"), cli), RUNS)
        starts = alternate(lambda cli, i: start_once([STARLING if cli else VMM, "--version"]), RUNS)
        true_ms = [start_once(["/bin/true"]) for _ in range(RUNS)]
        mems = alternate(lambda cli, i: memory_once(kernel, os.path.join(work, f"m{i}{'c' if cli else 'd'}"), cli), RUNS)

        pools = os.path.join(work, "pools")
        env = dict(os.environ, STARLING_POOLS=pools, STARLING_HOME=os.path.join(work, "no-store"))
        subprocess.run([STARLING, "pool", "create", "warm", "--mem", "32M", "--cmdline", "substrate", "--size", "1",
                        "--kernel", kernel], env=env, check=True, stdout=subprocess.DEVNULL)
        pool_runs = [pool_run_once(env, os.path.join(pools, "warm")) for _ in range(RUNS)]
        subprocess.run([STARLING, "pool", "rm", "warm", "--force"], env=env, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        kill_started()
        shutil.rmtree(work, ignore_errors=True)

    sizes = {b: os.path.getsize(os.path.join(BIN, b)) for b in ("starling", "starling-vmm", "starlingd")
             if os.path.exists(os.path.join(BIN, b))}
    commit = checked_out(ROOT)
    flavour = kvm_flavour()
    rows = [
        ("`vm restore` → API reports running", restores),
        ("`vm run` → first console line", boots),
        ("process start (`--version`)", starts),
    ]
    listed = lambda xs: ", ".join(f"{x:.2f}" for x in xs)
    table = "\n".join(
        f"| {name} | {med(c):.2f} | {med(d):.2f} | **{med(c) - med(d):+.2f}** | {med(c) / med(d):.2f} |"
        for name, (c, d) in rows)
    every = "\n".join(f"- {name}: starling {listed(c)}; starling-vmm {listed(d)}" for name, (c, d) in rows)
    figures = {
        "restore_cli_over_vmm_ms": round(med(restores[0]) - med(restores[1]), 2),
        "run_cli_over_vmm_ms": round(med(boots[0]) - med(boots[1]), 2),
        "pool_run_outside_activation_ms": round(med(pool_runs), 2),
        "pool_run_over_vmm_start_ms": round(med(pool_runs) - med(starts[1]), 2),
        "cli_monitor_private_kib": med(m[1] for m in mems[0]),
        "vmm_private_kib": med(m[1] for m in mems[1]),
        "starling_bytes": sizes.get("starling"),
    }
    text = f"""# What the command line adds on the VM path (tier 1)

Command: `scripts/build-release.sh && sudo python3 bench/cli_overhead.py` (commit {commit},
{time.strftime('%Y-%m-%d')}). Host: /dev/kvm is `{flavour}`, 2 cores. Guest: the project's test
guest (`crates/vmm/tests/guest`), 256 MiB. {RUNS} runs of each, the two sides alternating;
medians in ms. `starling vm run`/`vm restore` parse their flags and run the monitor in their
own process from the same configuration the direct side passes as JSON, so the difference is
the front end's own cost: a bigger program to start, linked dynamically (libnftnl and libmnl,
for VM networks, come only as shared libraries on Debian) where the released `starling-vmm` is
linked statically, and its flags to parse.

| | `starling` | `starling-vmm` | difference (goal ≤ +0.5) | ratio |
|---|---:|---:|---:|---:|
{table}

`starling pool run` on a pool with one substrate waiting, wall time less the activation time
the command reports (what is left: process start, finding the pool, starting the replacement
substrate before it returns): median **{med(pool_runs):.2f} ms**; less the start of
`starling-vmm --version` ({med(starts[1]):.2f} ms, a process start any client of the
substrate's API pays): **{med(pool_runs) - med(starts[1]):+.2f} ms** (goal ≤ +0.5). Every run:
{listed(pool_runs)}.

Memory of an idle guest's monitor beyond guest RAM (KiB, medians of {RUNS}): run by
`starling vm run`, {med(m[0] for m in mems[0]):.0f} resident of which
**{med(m[1] for m in mems[0]):.0f}** private; run by `starling-vmm`,
{med(m[0] for m in mems[1]):.0f} resident of which **{med(m[1] for m in mems[1]):.0f}** private.
The rest of the resident memory is the program's pages, shared with every other process that
runs it.

`/bin/true`, for scale: {med(true_ms):.2f} ms.

Release binaries (bytes): {", ".join(f"`{k}` {v:,}" for k, v in sizes.items())}.

Every run (ms):
{every}

<!-- figures {json.dumps(figures)} -->
"""
    out = os.path.join(ROOT, "bench/results/cli-overhead.md")
    open(out, "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
