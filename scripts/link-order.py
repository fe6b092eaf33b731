#!/usr/bin/env python3
"""Writes the link order of the release binaries' hot code: the functions `starling-vmm` and
`starling` run on the VM path, found by running them under valgrind's callgrind, listed in
crates/vmm/link-order.txt and crates/cli/link-order.txt for the linker to place together
(lld's --symbol-ordering-file, given by each crate's build.rs for release builds).

Why: a VM's monitor touches a few hundred KiB of its program's code, spread over megabytes;
every page of it the kernel maps costs a page fault at start (dear on a host that is itself a
VM) and the fault-around pages stay resident. Placed together, the program starts with fewer
faults and keeps less of itself resident (bench/cli_overhead.py, bench/vm_firecracker.py).

Paths run (the project's test guest, 256 MiB): starling-vmm boots, answers its API, snapshots,
forks two clones, stops; restores the snapshot; `starling vm run`, `vm restore` and `pool run`
the same. Names are mangled symbols (legacy and v0): a function keeps its name when its body
changes (most of them; LLVM's `.llvm.N` suffixes on some local copies do change), and a name
the linker no longer finds is skipped, so the lists age slowly. Re-run after big changes to
the VM path, after dependency updates (a crate's symbols carry a hash of its dependencies) or
with a new toolchain (std's names carry its build). Run it on the programs as shipped: the
monitor's names are those of its static build (`--target`, which changes every crate's hash):

  scripts/build-release.sh && python3 scripts/link-order.py [target/dist]
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from vmbench import api, kill_started, spawn, stop_vm, wait  # noqa: E402

BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/dist"))
VMM = os.path.join(BIN, "starling-vmm")
STARLING = os.path.join(BIN, "starling")
OUTPUTS = {"starling-vmm": os.path.join(ROOT, "crates/vmm/link-order.txt"),
           "starling": os.path.join(ROOT, "crates/cli/link-order.txt")}


def traced(out_dir, name, args):
    """`args` under callgrind, each process (clones and substrates too) into its own file."""
    return ["valgrind", "--tool=callgrind", "--demangle=no", "--trace-children=yes",
            f"--callgrind-out-file={out_dir}/{name}.%p"] + args


def up(sock, p):
    wait("the VM's API", lambda: api(sock, "GET", "/v1/vm")[0] == 200, timeout=180, step=0.05)
    if p.poll() is not None:
        raise SystemExit(f"{p.args[-1]} ended early (exit {p.returncode})")


def functions(path, binary):
    """The functions with a cost in callgrind output `path` that belong to `binary`, in the
    order they first appear."""
    obs, fns, out, ob = {}, {}, [], None
    for line in open(path, errors="replace"):
        m = re.match(r"^(c?ob|c?fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
        if not m:
            continue
        kind, ident, name = m.groups()
        table = obs if kind.endswith("ob") else fns
        if name is not None:
            table[ident] = name
        if kind == "ob":
            ob = obs.get(ident)
        elif kind == "fn" and ob and os.path.basename(ob) == binary:
            out.append(fns[ident])
    # Symbols only: not callgrind's stand-ins for code without one ("0x…", "(below main)").
    return [f for f in out if re.fullmatch(r"[A-Za-z_.$][\w.$]*", f)]


def main():
    if not shutil.which("valgrind"):
        raise SystemExit("link-order: valgrind is needed (apt-get install valgrind)")
    work = tempfile.mkdtemp(prefix="starling-link-order-")
    traces = os.path.join(work, "traces")
    os.makedirs(traces)
    env = dict(os.environ, STARLING_SECCOMP="off", STARLING_POOLS=os.path.join(work, "pools"),
               STARLING_HOME=os.path.join(work, "home"))
    try:
        kernel = subprocess.check_output([STARLING, "vm", "test-guest", os.path.join(work, "guest")],
                                         text=True, env=env).strip()
        # The monitor by itself: boot, API, snapshot, fork, stop; then a restore.
        d = os.path.join(work, "vmm")
        os.makedirs(d)
        sock = os.path.join(d, "api.sock")
        config = {"kernel": kernel, "cmdline": "idle", "mem_mib": 256, "rng": False,
                  "console": {"file": os.path.join(d, "console.log")}, "api_socket": sock,
                  "run_dir": os.path.join(d, "run")}
        p = spawn(traced(traces, "vmm-boot", [VMM, "--config-json", json.dumps(config)]), env=env)
        up(sock, p)
        snap = os.path.join(work, "snap")
        code, r = api(sock, "POST", "/v1/vm/snapshot", {"dir": snap, "stop": False})
        assert code == 200, r
        code, r = api(sock, "POST", "/v1/vm/fork", {"count": 2, "dir": os.path.join(work, "clones")}, timeout=300)
        assert code == 200, r
        for c in r["clones"]:
            api(c["api_socket"], "POST", "/v1/vm/stop")
        stop_vm(sock, p)
        spec = {"dir": snap, "run_dir": os.path.join(work, "r1"), "api_socket": os.path.join(work, "r1.sock"),
                "console": "off"}
        p = spawn(traced(traces, "vmm-restore", [VMM, "--restore-json", json.dumps(spec)]), env=env)
        up(spec["api_socket"], p)
        stop_vm(spec["api_socket"], p)

        # The command line's VM paths.
        sock = os.path.join(work, "run.sock")
        p = spawn(traced(traces, "cli-run", [STARLING, "vm", "run", "--kernel", kernel, "--cmdline", "idle",
                                             "--mem", "256M", "--no-rng", "--console",
                                             os.path.join(work, "run.log"), "--api-socket", sock]), env=env)
        up(sock, p)
        stop_vm(sock, p)
        sock = os.path.join(work, "restore.sock")
        p = spawn(traced(traces, "cli-restore", [STARLING, "vm", "restore", snap, "--api-socket", sock,
                                                 "--run-dir", os.path.join(work, "r2"), "--console", "off"]), env=env)
        up(sock, p)
        stop_vm(sock, p)
        subprocess.run([STARLING, "pool", "create", "warm", "--mem", "32M", "--cmdline", "substrate", "--size", "1",
                        "--kernel", kernel], env=env, check=True, stdout=subprocess.DEVNULL)
        slots = os.path.join(work, "pools", "warm", "slots")
        wait("a docked substrate", lambda: any(os.path.exists(os.path.join(slots, s, "free"))
                                               for s in os.listdir(slots)), timeout=120, step=0.05)
        subprocess.run(traced(traces, "cli-pool-run", [STARLING, "pool", "run", "warm", "--env", "code=0"]),
                       env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        subprocess.run([STARLING, "pool", "rm", "warm", "--force"], env=env, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Every trace is written when its process exits (the clones' and substrates' too).
        time.sleep(2)

        order = ["vmm-boot", "vmm-restore", "cli-run", "cli-restore", "cli-pool-run"]
        files = sorted(os.listdir(traces), key=lambda f: (order.index(f.split(".")[0]), f))
        for binary, out in OUTPUTS.items():
            names, seen = [], set()
            for f in files:
                for n in functions(os.path.join(traces, f), binary):
                    if n not in seen:
                        seen.add(n)
                        names.append(n)
            if not names:
                raise SystemExit(f"link-order: no function of {binary} in the traces ({', '.join(files)})")
            with open(out, "w") as w:
                w.write("\n".join(names) + "\n")
            print(f"{os.path.relpath(out, ROOT)}: {len(names)} functions")
    finally:
        kill_started()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
