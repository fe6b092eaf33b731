#!/usr/bin/env python3
"""A site of 8 hosts behind one HTTP cache vs 8 hosts fetching from the origin (Stork's and
CernVM-FS's point: an object crosses the wide-area link once per site, not once per host).

Topology, all on this machine: a bridge; the origin (`starling repo serve`) in a network
namespace of its own whose link is shaped to ORIGIN_RATE (default 200mbit: a wide-area link);
Debian's squid on the bridge's host side (the site's cache); 8 host namespaces, each with
its own starlingd, host cache and address. Cold caches (hosts' and squid's) every round.
Measured in one run, ROUNDS rounds, the ways alternating:

- origin bytes / unique bytes: 8 hosts mount the image (starlingd, lazily) and read every
  file, through squid; the same with DIRECT connections to the origin (the anchor: 8.0);
- time until all 8 hosts hold the whole image: 8 hosts following a group that keeps it
  prefetched (until every starlingd reports it converged), and 8 hosts reading it through
  squid (mount + read every file), vs 8 `starling pull` from the origin at once (the
  issue's anchor), and 8 pulls through squid.

    sudo python3 bench/site.py               # writes bench/results/site.md

Needs root, a release build, squid, iproute2 (ip, tc), nsenter, /dev/fuse, and the Debian
fixtures (tests/fixtures/debian-rootfs.sh).
"""
import os, shutil, statistics, subprocess, sys, tempfile, threading, time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(TOP, "target/release/starling")
HOSTS = int(os.environ.get("HOSTS", "8"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
RATE = os.environ.get("ORIGIN_RATE", "200mbit")
NET = "10.250.77"
TAG = f"sb{os.getpid() % 10000}"


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw).stdout


def quiet(cmd):
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def in_ns(ns, cmd):
    return ["nsenter", f"--net=/run/netns/{ns}", "--", *cmd]


class Site:
    def __init__(self):
        self.bridge = f"{TAG}br"
        self.hosts = [f"{TAG}h{i}" for i in range(HOSTS)]
        self.origin = f"{TAG}o"
        run(["ip", "link", "add", self.bridge, "type", "bridge"])
        run(["ip", "addr", "add", f"{NET}.1/24", "dev", self.bridge])
        run(["ip", "link", "set", self.bridge, "up"])
        for i, ns in enumerate([self.origin] + self.hosts):
            veth = f"{TAG}v{i}"
            run(["ip", "netns", "add", ns])
            run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
            run(["ip", "link", "set", veth, "master", self.bridge, "up"])
            run(["ip", "-n", ns, "addr", "add", f"{NET}.{2 + i}/24", "dev", "eth0"])
            run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        # The origin's side of the wide-area link: what it sends is shaped.
        run(["ip", "netns", "exec", self.origin, "tc", "qdisc", "add", "dev", "eth0", "root",
             "tbf", "rate", RATE, "burst", "256kb", "latency", "200ms"])

    def close(self):
        for ns in [self.origin] + self.hosts:
            quiet(["ip", "netns", "del", ns])
        quiet(["ip", "link", "del", self.bridge])


class Squid:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="starling-squid-", dir="/tmp")
        run(["chown", "proxy:proxy", self.dir])
        conf = os.path.join(self.dir, "squid.conf")
        with open(conf, "w") as f:
            f.write(f"""http_port {NET}.1:3128
acl site src {NET}.0/24
http_access allow site
http_access deny all
cache_mem 1024 MB
maximum_object_size_in_memory 64 MB
maximum_object_size 64 MB
collapsed_forwarding on
access_log none
cache_log {self.dir}/cache.log
pid_filename {self.dir}/squid.pid
coredump_dir {self.dir}
cache_effective_user proxy
shutdown_lifetime 0 seconds
visible_hostname starling-bench-site
""")
        self.proc = subprocess.Popen(["squid", "-N", "-f", conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(f"{NET}.1", 3128)

    def close(self):
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_port(host, port):
    import socket
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"nothing listens on {host}:{port}")
            time.sleep(0.1)


class Origin:
    def __init__(self, site, repo, log):
        self.repo = repo
        self.log = log
        self.proc = subprocess.Popen(
            in_ns(site.origin, [BIN, "repo", "serve", repo, "--listen", f"{NET}.2:8080"]),
            stdout=subprocess.DEVNULL, stderr=open(log, "w"))
        self.url = f"http://{NET}.2:8080/"
        wait_port(f"{NET}.2", 8080)

    def served(self):
        """(bytes sent, bytes of the distinct files sent) from the access log."""
        total, seen = 0, {}
        for line in open(self.log):
            w = line.split()
            if len(w) < 3 or w[0] != "GET" or w[-2] != "200":
                continue
            p = os.path.join(self.repo, w[1].lstrip("/"))
            if os.path.isfile(p):
                n = os.path.getsize(p)
                total += n
                seen[w[1]] = n
        return total, sum(seen.values())

    def close(self):
        self.proc.terminate()
        self.proc.wait()


def hosts_read(site, work, origin, root, proxy, round_):
    """Each host's starlingd mounts the image and reads every file; returns seconds."""
    conf = os.path.join(work, f"starlingd-{round_}.toml")
    with open(conf, "w") as f:
        f.write(f'proxies = ["{proxy}"]\ntimeout = "60s"\n'
                f'[[repository]]\nurl = "{origin.url}"\nroot = "{root}"\n')
    daemons, mps = [], []
    try:
        for i, ns in enumerate(site.hosts):
            state = os.path.join(work, f"r{round_}-{proxy[:6]}-h{i}")
            os.makedirs(state)
            sock = os.path.join(state, "api.sock")
            d = subprocess.Popen(in_ns(ns, [BIN, "daemon", "--config", conf, "--state", state,
                                            "--socket", sock]),
                                 stdout=subprocess.PIPE, stderr=open(state + ".log", "w"),
                                 env={**os.environ, "STARLING_NET_STATE": state + "/net"})
            if not d.stdout.readline().startswith(b"ready"):
                sys.exit(f"daemon in {ns} did not start: {open(state + '.log').read()}")
            daemons.append((d, sock))
        start = time.monotonic()
        errors = []

        def one(i, sock):
            mp = os.path.join(work, f"mp-{round_}-{proxy[:6]}-{i}")
            os.makedirs(mp)
            mps.append((mp, sock))
            try:
                run([BIN, "mount", origin.url, "t:v1", mp], env={**os.environ, "STARLING_SOCKET": sock})
                subprocess.run(f"find {mp} -type f -print0 | xargs -0 -P 4 -n 64 cat > /dev/null",
                               shell=True, check=True)
            except subprocess.CalledProcessError as e:
                errors.append(e.stderr)

        ts = [threading.Thread(target=one, args=(i, s)) for i, (_, s) in enumerate(daemons)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        took = time.monotonic() - start
        if errors:
            sys.exit(f"reading failed: {errors[0]}")
        return took
    finally:
        for mp, sock in mps:
            subprocess.run([BIN, "umount", mp], env={**os.environ, "STARLING_SOCKET": sock},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for d, _ in daemons:
            d.terminate()
            d.wait()


def hosts_group(site, work, origin, root, proxy, round_):
    """Each host's starlingd follows group `site` (the image to keep prefetched); returns the
    seconds from starting the daemons until every one reports it converged."""
    conf = os.path.join(work, f"starlingd-group-{round_}.toml")
    with open(conf, "w") as f:
        f.write(f'proxies = ["{proxy}"]\ntimeout = "60s"\nlabels = {{ role = "bench" }}\n'
                f'[[repository]]\nurl = "{origin.url}"\nroot = "{root}"\n'
                f'[[group]]\nname = "site"\nrepository = "{origin.url}"\npoll = "1s"\n')
    daemons = []
    start = time.monotonic()
    try:
        for i, ns in enumerate(site.hosts):
            state = os.path.join(work, f"g{round_}-h{i}")
            os.makedirs(state)
            sock = os.path.join(state, "api.sock")
            d = subprocess.Popen(in_ns(ns, [BIN, "daemon", "--config", conf, "--state", state,
                                            "--socket", sock]),
                                 stdout=subprocess.PIPE, stderr=open(state + ".log", "w"),
                                 env={**os.environ, "STARLING_NET_STATE": state + "/net"})
            daemons.append((d, sock))
        for d, _ in daemons:
            if not d.stdout.readline().startswith(b"ready"):
                sys.exit("a daemon did not start")
        hosts = [a for _, sock in daemons for a in ("--host", sock)]
        while True:
            r = subprocess.run([BIN, "group", "status", "site", "--json", *hosts],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            import json as _json
            rows = _json.loads(r.stdout or b"[]")
            if rows and all(h.get("groups") and h["groups"][0].get("converged")
                            and h["groups"][0].get("generation") for h in rows):
                return time.monotonic() - start
            if time.monotonic() - start > 600:
                sys.exit(f"the hosts never converged: {rows}")
            time.sleep(0.1)
    finally:
        for d, _ in daemons:
            d.terminate()
            d.wait()


def hosts_pull(site, work, origin, root, proxy, round_):
    """8 `starling pull` at once, each host into its own store; returns seconds."""
    start = time.monotonic()
    procs = []
    for i, ns in enumerate(site.hosts):
        store = os.path.join(work, f"pull-{round_}-{proxy[:6]}-{i}")
        procs.append(subprocess.Popen(
            in_ns(ns, [BIN, "--store", store, "pull", origin.url, "t:v1", "--root", root,
                       "--proxy", proxy, "--timeout", "5m"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            sys.exit(f"pull failed: {err.decode()}")
    return time.monotonic() - start


def main():
    if os.geteuid() != 0:
        sys.exit("run as root")
    for tool in ["squid", "ip", "tc", "nsenter"]:
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing (scripts/deps.sh installs the test dependencies)")
    cache = run(["bash", os.path.join(TOP, "tests/fixtures/debian-rootfs.sh")]).decode().strip()
    work = tempfile.mkdtemp(prefix="starling-site-", dir="/var/tmp")
    store = os.path.join(work, "store")
    repo = os.path.join(work, "repo")
    run([BIN, "--store", store, "image", "import", os.path.join(cache, "rootfs-a"), "t:v1"])
    run([BIN, "--store", store, "repo", "init", repo])
    run([BIN, "--store", store, "push", "t:v1", repo])
    root = os.path.join(repo, "metadata", "1.root.json")
    spec = os.path.join(work, "site.toml")
    with open(spec, "w") as f:
        f.write('name = "site"\n[hosts]\nlabels = { role = "bench" }\n[[image]]\nref = "t:v1"\n')
    run([BIN, "--store", store, "group", "apply", spec, repo])
    repo_bytes = int(run(["du", "-sb", os.path.join(repo, "objects")]).split()[0])
    files = int(run(["bash", "-c", f"find {cache}/rootfs-a -type f | wc -l"]).strip())
    site = Site()
    ways = {"read-squid": [], "read-direct": [], "pull-direct": [], "pull-squid": [],
            "group-squid": []}
    ratios = {"read-squid": [], "read-direct": []}
    try:
        for r in range(ROUNDS):
            for way in ways:
                kind, via = way.split("-")
                log = os.path.join(work, f"origin-{r}-{way}.log")
                origin = Origin(site, repo, log)
                squid = Squid() if via == "squid" else None
                proxy = f"http://{NET}.1:3128" if squid else "DIRECT"
                try:
                    f = {"read": hosts_read, "pull": hosts_pull, "group": hosts_group}[kind]
                    ways[way].append(f(site, work, origin, root, proxy, f"{r}{way}"))
                finally:
                    if squid:
                        squid.close()
                    origin.close()
                sent, unique = origin.served()
                if way in ratios:
                    ratios[way].append(sent / unique)
                print(f"round {r} {way}: {ways[way][-1]:.2f} s, origin sent {sent} bytes "
                      f"({sent / max(unique, 1):.3f}x the unique bytes)", file=sys.stderr)
    finally:
        site.close()
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in ways.items()}
    rat = {k: statistics.median(v) for k, v in ratios.items()}
    commit = run(["git", "-C", TOP, "rev-parse", "--short", "HEAD"]).decode().strip()
    out = os.path.join(TOP, "bench/results/site.md")
    with open(out, "w") as f:
        f.write(f"""# A site of {HOSTS} hosts behind one HTTP cache (issue 20)

Command: `sudo python3 bench/site.py` (commit {commit}, {time.strftime('%Y-%m-%d')}; 2 cores,
shared VM). Each host is a network namespace with its own starlingd and host cache; the
origin (`starling repo serve`) is in a namespace of its own whose link is shaped to {RATE}
(a wide-area link); the site's cache is Debian's squid (memory cache, collapsed forwarding).
Image: Debian bookworm minbase (rootfs-a), {files} files, {repo_bytes / 2**20:.0f} MiB of
objects in the repository. Cold caches every round; {ROUNDS} rounds, the ways alternating;
medians.

| {HOSTS} hosts | origin bytes / unique bytes | time until every host holds the image (s) | vs {HOSTS} pulls from the origin |
|---|---:|---:|---:|
| mount + read every file, through squid | **{rat['read-squid']:.3f}** (goal ≤ 1.05) | {med['read-squid']:.2f} | **{med['read-squid'] / med['pull-direct']:.2f}** |
| mount + read every file, direct | {rat['read-direct']:.3f} | {med['read-direct']:.2f} | {med['read-direct'] / med['pull-direct']:.2f} |
| `starling pull`, through squid | — | {med['pull-squid']:.2f} | {med['pull-squid'] / med['pull-direct']:.2f} |
| following a group that keeps the image prefetched (starlingd), through squid: until all report converged | — | {med['group-squid']:.2f} | **{med['group-squid'] / med['pull-direct']:.2f}** |
| `starling pull` from the origin (the anchor) | — | {med['pull-direct']:.2f} | 1.00 |

Every round (s): {'; '.join(f"{k} {', '.join(f'{x:.2f}' for x in v)}" for k, v in ways.items())}.
Origin bytes / unique bytes, every round: {'; '.join(f"{k} {', '.join(f'{x:.3f}' for x in v)}" for k, v in ratios.items())}.

<!-- figures {{"origin_over_unique_squid": {rat['read-squid']:.3f}, "origin_over_unique_direct": {rat['read-direct']:.3f}, "read_squid_vs_pulls": {med['read-squid'] / med['pull-direct']:.2f}, "pull_squid_vs_pulls": {med['pull-squid'] / med['pull-direct']:.2f}, "group_squid_vs_pulls": {med['group-squid'] / med['pull-direct']:.2f}}} -->
""")
    print(open(out).read())


if __name__ == "__main__":
    main()
