#!/usr/bin/env python3
"""Lazy clones on other hosts (issue 20): the bytes that cross the parent host's link,
divided by the bytes of the pages the clones touch times the number of hosts.

Topology, all on this machine: a bridge; host A (the parent's) and HOSTS other hosts, each
a network namespace. A's memory server serves the parent's snapshot on tls:// (mutual TLS,
certificates of a CA the bench makes). Two ways, alternating, ROUNDS rounds:

- fan-out (Starling's way): each host runs its own memory server, fetching from A's through
  TLS and serving its CLONES clones on a unix socket;
- direct: each clone fetches from A's server itself (the anchor: CLONES times the pages).

The guest is the tier-1 test guest with `counter ballast reread` (it rereads 128 pages of
ballast every tick, so each clone touches about 150 pages). Bytes on A's link are its
interface's transmitted bytes (TCP, TLS, the state and page map included); pages touched are
each clone's `lazy.pages_fetched`. Writes bench/results/vm-cross-host.md.

    cargo build --release && sudo python3 bench/vm_cross_host.py

Needs root, /dev/kvm, a C compiler (the test guest), openssl, iproute2 and nsenter.
"""
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("STARLING_BIN", os.path.join(ROOT, "target", "release"))
STARLING = os.path.join(BIN, "starling")
HOSTS = int(os.environ.get("HOSTS", "3"))
CLONES = int(os.environ.get("CLONES", "4"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
NET = "10.251.9"
TAG = f"xh{os.getpid() % 10000}"
PAGE = 4096


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


def quiet(*args):
    subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def in_ns(ns, args):
    return ["nsenter", f"--net=/run/netns/{ns}", "--", *args]


def ticks(path):
    try:
        return sum(1 for l in open(path) if l.startswith("tick ") and l.endswith("pattern ok\n"))
    except OSError:
        return 0


def wait(what, f, limit=60):
    t = time.monotonic()
    while not f():
        if time.monotonic() - t > limit:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)


def certs(d, ips):
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    sh("openssl", "req", "-x509", *ec, "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem",
       "-subj", "/CN=bench-ca", "-days", "2")
    san = ",".join(f"IP:{ip}" for ip in ips)
    with open(f"{d}/host.ext", "w") as f:
        f.write(f"subjectAltName={san}\nextendedKeyUsage=serverAuth,clientAuth\n")
    sh("openssl", "req", *ec, "-keyout", f"{d}/host.key", "-out", f"{d}/host.csr",
       "-subj", "/CN=bench-host")
    sh("openssl", "x509", "-req", "-in", f"{d}/host.csr", "-CA", f"{d}/ca.pem", "-CAkey",
       f"{d}/ca.key", "-CAcreateserial", "-out", f"{d}/host.pem", "-days", "2",
       "-extfile", f"{d}/host.ext")
    os.chmod(f"{d}/host.key", 0o600)
    return {"STARLING_TLS_CERT": f"{d}/host.pem", "STARLING_TLS_KEY": f"{d}/host.key",
            "STARLING_TLS_CA": f"{d}/ca.pem"}


class Site:
    def __init__(self):
        self.bridge = f"{TAG}br"
        self.names = [f"{TAG}a"] + [f"{TAG}h{i}" for i in range(HOSTS)]
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "link", "set", self.bridge, "up")
        for i, ns in enumerate(self.names):
            veth = f"{TAG}v{i}"
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "link", "set", veth, "master", self.bridge, "up")
            sh("ip", "-n", ns, "addr", "add", f"{NET}.{i + 1}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

    def a_tx(self):
        return int(sh("ip", "netns", "exec", self.names[0], "cat",
                      "/sys/class/net/eth0/statistics/tx_bytes"))

    def close(self):
        for ns in self.names:
            quiet("ip", "netns", "del", ns)
        quiet("ip", "link", "del", self.bridge)


def server(args, env, ns=None):
    cmd = [STARLING, "vm", "memory-server", *args]
    p = subprocess.Popen(in_ns(ns, cmd) if ns else cmd, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, env={**os.environ, **env}, text=True)
    line = p.stdout.readline().strip()
    if "#" not in line:
        p.kill()
        raise SystemExit(f"memory server {args} did not start")
    return p, line


def clones(work, tag, lazy_of, env_of, ns_of):
    """Starts CLONES clones on every host at once; returns (seconds until all tick, pages
    each fetched, per host)."""
    empty = os.path.join(work, "empty")
    os.makedirs(empty, exist_ok=True)
    procs = []
    t = time.monotonic()
    for h in range(HOSTS):
        for k in range(CLONES):
            name = os.path.join(work, f"{tag}-h{h}-c{k}")
            cmd = [STARLING, "vm", "restore", empty, "--lazy", lazy_of(h), "--console",
                   name + ".log", "--api-socket", name + ".sock", "--run-dir", name]
            ns = ns_of(h)
            p = subprocess.Popen(in_ns(ns, cmd) if ns else cmd, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, env={**os.environ, **env_of(h)})
            procs.append((h, name, p))
    wait("every clone ticking", lambda: all(ticks(n + ".log") >= 3 for _, n, _ in procs))
    took = time.monotonic() - t
    pages = {}
    for h, name, p in procs:
        st = json.loads(sh(STARLING, "vm", "status", name + ".sock"))
        pages.setdefault(h, []).append(st["lazy"]["pages_fetched"])
        quiet(STARLING, "vm", "stop", name + ".sock")
        p.wait(timeout=30)
    return took, pages


def main():
    if os.geteuid() != 0:
        sys.exit("run as root")
    work = tempfile.mkdtemp(prefix="starling-xhost-", dir="/var/tmp")
    site = None
    try:
        kernel = sh(STARLING, "vm", "test-guest", os.path.join(work, "g")).strip()
        api = os.path.join(work, "parent.sock")
        log = os.path.join(work, "parent.log")
        parent = subprocess.Popen([STARLING, "vm", "run", "--mem", "64M", "--cmdline",
                                   "counter ballast reread", "--api-socket", api, "--console",
                                   log, "--kernel", kernel])
        wait("the parent ticking", lambda: ticks(log) >= 5 and os.path.exists(api))
        snap = os.path.join(work, "snap")
        sh(STARLING, "vm", "snapshot", "--stop", api, snap)
        parent.wait(timeout=30)
        tls = os.path.join(work, "tls")
        os.makedirs(tls)
        env = certs(tls, [f"{NET}.{i + 1}" for i in range(HOSTS + 1)])
        site = Site()
        rows = {"fan-out": [], "direct": []}
        for r in range(ROUNDS):
            for way in rows:
                a, pinned = server([snap, "--listen", f"tls://{NET}.1:7070"], env, site.names[0])
                before = site.a_tx()
                hosts = []
                try:
                    if way == "fan-out":
                        for h in range(HOSTS):
                            sock = os.path.join(work, f"r{r}-h{h}.sock")
                            hosts.append(server([pinned, "--listen", f"unix:{sock}"], env,
                                                site.names[h + 1]))
                        took, pages = clones(work, f"r{r}-{way}", lambda h: hosts[h][1],
                                             lambda h: {}, lambda h: None)
                    else:
                        took, pages = clones(work, f"r{r}-{way}", lambda h: pinned,
                                             lambda h: env, lambda h: site.names[h + 1])
                finally:
                    for p, _ in hosts:
                        p.kill()
                        p.wait()
                    a.kill()
                    a.wait()
                sent = site.a_tx() - before
                touched = max(max(v) for v in pages.values())
                ratio = sent / (touched * PAGE * HOSTS)
                rows[way].append((ratio, took, sent, touched))
                print(f"round {r} {way}: {sent} bytes on A's link, clones touched {touched} "
                      f"pages: {ratio:.3f}; all ticking in {took:.2f} s", file=sys.stderr)
    finally:
        if site:
            site.close()
        shutil.rmtree(work, ignore_errors=True)

    med = {w: statistics.median(x[0] for x in v) for w, v in rows.items()}
    took = {w: statistics.median(x[1] for x in v) for w, v in rows.items()}
    touched = statistics.median(x[3] for v in rows.values() for x in v)
    commit = sh("git", "-C", ROOT, "rev-parse", "--short", "HEAD").strip()
    out = os.path.join(ROOT, "bench/results/vm-cross-host.md")
    with open(out, "w") as f:
        f.write(f"""# Lazy clones on other hosts: bytes on the parent's link (tier 1)

Command: `cargo build --release && sudo python3 bench/vm_cross_host.py` (commit {commit},
{datetime.date.today()}; 2 cores, shared VM). Hosts are network namespaces on a bridge; A
serves the parent's snapshot on tls:// (mutual TLS); {HOSTS} other hosts start {CLONES} lazy
clones each, at once. Guest: the tier-1 test guest, `counter ballast reread` (each clone
touches about {touched:.0f} pages). Bytes on A's link: its interface's transmitted bytes (TCP,
TLS, state and page map included). {ROUNDS} rounds, the ways alternating; medians.

| way | bytes on A's link ÷ (pages touched × 4 KiB × hosts) | all clones ticking (s) |
|---|---:|---:|
| each host's memory server fetching from A (fan-out) | **{med['fan-out']:.3f}** (goal ≤ 1.1) | {took['fan-out']:.2f} |
| every clone fetching from A itself | {med['direct']:.3f} | {took['direct']:.2f} |

Every round: {'; '.join(f"{w} " + ', '.join(f'{x[0]:.3f} ({x[2]} bytes, {x[3]} pages, {x[1]:.2f} s)' for x in v) for w, v in rows.items())}.

<!-- figures {{"fanout_link_ratio": {med['fan-out']:.3f}, "direct_link_ratio": {med['direct']:.3f}}} -->
""")
    print(open(out).read())


if __name__ == "__main__":
    main()
