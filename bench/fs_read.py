#!/usr/bin/env python3
"""Lazy mounts: Starling's FUSE file system vs squashfuse and the kernel's EROFS (loop), on
the same tree, in one run.

Tree: Debian rootfs-b (with python3) plus 4 x 64 MiB of data files. Content is local
everywhere (Starling's host cache filled by one earlier read; the squashfs and EROFS images on
local disk); what differs between runs is the kernel's and the file systems' caches, made the
same on both sides of every ratio:
- sequential read of the data files (MB/s), page cache dropped before every run, each FUSE
  file system at the same kernel read-ahead as the one it is compared with (Starling sets 1 MiB
  on its mounts; squashfuse is also measured at 1 MiB, and Starling at the default 128 KiB);
- metadata walk (`find -printf` stats every entry), cold: every file system mounted afresh
  (its own inode tables empty) after dropping page cache, dentries and inodes;
- the same walk warm (a walk earlier, page cache dropped), squashfuse given Starling's
  one-year entry and attribute lifetimes (its default is one second).
Every run's figures are kept in the results file.
- Cold: a fresh daemon with an empty cache mounts the image from a repository served on
  loopback; `chroot MOUNT python3 -c 'import argparse, datetime, email.parser'` runs; report
  the bytes fetched against the bytes the kernel read from the mount, and the image size.

    sudo python3 bench/fs_read.py          # writes bench/results/fs-read.md

Needs a release build (starling), the Debian fixtures, squashfs-tools, squashfuse and
erofs-utils (installed here if missing).
"""
import json, os, shutil, statistics, subprocess, tempfile, time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(TOP, "target/release/starling")
REPEAT = int(os.environ.get("REPEAT", "5"))
PY = "import argparse, datetime, email.parser"


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw).stdout


def drop_caches(level):
    run(["sync"])
    with open("/proc/sys/vm/drop_caches", "w") as fh:
        fh.write(f"{level}\n")


def timed(cmd, level):
    drop_caches(level)
    t = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, shell=True)
    return time.monotonic() - t


class Daemon:
    def __init__(self, state):
        self.sock = os.path.join(state, "api.sock")
        self.p = subprocess.Popen([BIN, "daemon", "--state", state, "--socket", self.sock],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.p.stdout.readline().startswith(b"ready")

    def cli(self, *args):
        return run([BIN, *args], env={**os.environ, "STARLING_SOCKET": self.sock})

    def stop(self):
        self.p.terminate()
        self.p.wait()


def main():
    for pkg, tool in [("squashfs-tools", "mksquashfs"), ("squashfuse", "squashfuse"), ("erofs-utils", "mkfs.erofs")]:
        if not shutil.which(tool):
            run(["apt-get", "install", "-y", "-qq", pkg])
    cache = run(["bash", os.path.join(TOP, "tests/fixtures/debian-rootfs.sh")]).decode().strip()
    work = tempfile.mkdtemp(prefix="starling-fs-", dir="/var/tmp")
    procs, mounts, daemons = [], [], []
    try:
        tree = os.path.join(work, "tree")
        run(["cp", "-a", os.path.join(cache, "rootfs-b"), tree])
        os.makedirs(os.path.join(tree, "data"))
        for i in range(4):
            with open(os.path.join(tree, "data", f"blob{i}"), "wb") as fh:
                # Half random, half repeated text: compressible like real binaries, not trivially.
                for _ in range(32):
                    fh.write(os.urandom(1 << 20))
                    fh.write((b"starling lazy mount benchmark %d\n" % i) * ((1 << 20) // 33) + b"\0" * ((1 << 20) % 33))
        data_bytes = sum(os.path.getsize(os.path.join(tree, "data", f)) for f in os.listdir(os.path.join(tree, "data")))
        entries = int(run(["sh", "-c", f"find {tree} | wc -l"]).strip())
        tree_bytes = int(run(["du", "-sb", tree]).split()[0])

        # Starling: store, repository, served on loopback.
        store, repo = os.path.join(work, "store"), os.path.join(work, "repo")
        run([BIN, "--store", store, "image", "import", tree, "b:v1"])
        run([BIN, "repo", "init", repo])
        run([BIN, "--store", store, "push", "b:v1", repo])
        server = subprocess.Popen([BIN, "repo", "serve", repo, "--listen", "127.0.0.1:0"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        procs.append(server)
        url = server.stdout.readline().decode().split()[-1]
        root = os.path.join(repo, "metadata/1.root.json")

        # Anchors.
        sq = os.path.join(work, "img.sqfs")
        run(["mksquashfs", tree, sq, "-comp", "zstd", "-noappend", "-quiet", "-no-progress"])
        er = os.path.join(work, "img.erofs")
        run(["mkfs.erofs", "-zlz4hc", er, tree])
        os.makedirs(os.path.join(work, "mp"))

        warm = Daemon(os.path.join(work, "state-warm"))
        daemons.append(warm)
        seq = [0]

        def mount(kind):
            """A fresh mount of one kind; returns its mount point."""
            seq[0] += 1
            mp = os.path.join(work, "mp", f"{kind}-{seq[0]}")
            os.makedirs(mp)
            if kind.startswith("starling"):
                warm.cli("mount", url, "b:v1", mp, "--root", root)
            elif kind.startswith("squashfuse"):
                # Starling's FUSE lifetimes (imagefs.rs: one year), for a like-for-like warm walk.
                year = 86400 * 365
                run(["squashfuse", "-o", f"entry_timeout={year},attr_timeout={year}", sq, mp])
            else:
                run(["mount", "-t", "erofs", "-o", "loop,ro", er, mp])
            mounts.append(mp)
            ra = {"starling": None, "starling-128k": 128, "squashfuse": 128, "squashfuse-1m": 1024}.get(kind)
            if ra is not None:
                dev = os.stat(mp).st_dev
                with open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb", "w") as fh:
                    fh.write(f"{ra}\n")
            return mp

        def umount(mp):
            if mp.startswith(os.path.join(work, "mp", "starling")):
                warm.cli("umount", mp)
            else:
                run(["umount", mp])
            mounts.remove(mp)

        kinds = ["starling", "squashfuse-1m", "starling-128k", "squashfuse", "erofs"]
        mp = {k: mount(k) for k in kinds}
        run(["tar", "-cf", "/dev/null", "-C", mp["starling"], "."])  # fills the host cache
        for k in kinds:
            run(["find", mp[k], "-printf", "."])  # the warm walk's earlier walk

        runs = {k: {"read": [], "walk_cold": [], "walk_warm": []} for k in kinds}
        for _ in range(REPEAT):  # interleaved, so load changes hit all alike
            for k in kinds:
                runs[k]["read"].append(timed(f"cat {mp[k]}/data/* > /dev/null", 1))
                runs[k]["walk_warm"].append(timed(f"find {mp[k]} -printf '%s %m %u %T@\\n' > /dev/null", 1))
            for k in ("starling", "squashfuse", "erofs"):
                fresh = mount(k + "-cold" if k != "erofs" else "erofs")
                runs[k]["walk_cold"].append(timed(f"find {fresh} -printf '%s %m %u %T@\\n' > /dev/null", 3))
                umount(fresh)
        med = {k: {m: statistics.median(v) for m, v in r.items() if v} for k, r in runs.items()}

        # Cold start from the repository, empty cache.
        cold = Daemon(os.path.join(work, "state-cold"))
        daemons.append(cold)
        cold_mp = os.path.join(work, "mp", "cold")
        os.makedirs(cold_mp)
        cold.cli("mount", url, "b:v1", cold_mp, "--root", root)
        mounts.append(cold_mp)
        run(["chroot", cold_mp, "python3", "-c", PY])
        m = json.loads(cold.cli("mounts", "--json"))[0]["counters"]
        wire = json.loads(cold.cli("cache", "stats", "--json"))["fetched_bytes"]
        image_bytes = json.loads(run([BIN, "--store", store, "image", "inspect", "--json", "b:v1"]))["stats"]["bytes"]
        fetched, meta, served = m["fetched"], m["fetched_meta"], m["served"]
        data = fetched - meta

        mb = data_bytes / 1e6
        names = {"starling": "Starling (FUSE, host cache), read-ahead 1 MiB",
                 "squashfuse-1m": "squashfuse, read-ahead 1 MiB",
                 "starling-128k": "Starling, read-ahead 128 KiB",
                 "squashfuse": "squashfuse, read-ahead 128 KiB (default)",
                 "erofs": "kernel EROFS (loop), read-ahead 128 KiB"}
        read_ratio = med["squashfuse-1m"]["read"] / med["starling"]["read"]
        read_ratio_128 = med["squashfuse"]["read"] / med["starling-128k"]["read"]
        walk_cold = med["starling"]["walk_cold"] / med["squashfuse"]["walk_cold"]
        walk_warm = med["starling"]["walk_warm"] / med["squashfuse-1m"]["walk_warm"]
        lines = [
            "# Lazy mounts: Starling vs squashfuse vs kernel EROFS",
            "",
            f"Command: `sudo python3 bench/fs_read.py` (run {time.strftime('%Y-%m-%d')}, 2 cores, shared VM; "
            f"median of {REPEAT}, all interleaved; absolute times are noisy, ratios are the result).",
            "",
            f"Tree: Debian rootfs-b + 4 data files; {entries} entries, {tree_bytes / 2**20:.0f} MiB "
            f"({data_bytes / 2**20:.0f} MiB in the data files read sequentially). squashfs: zstd; EROFS: lz4hc, loop-mounted; "
            "Starling: a repository mount whose host cache holds every object. Content is local to every file system; "
            "each ratio compares the same kernel read-ahead and the same cache state on both sides.",
            "",
            "## Sequential read, page cache dropped before each run (`drop_caches=1`)",
            "",
            "| file system | MB/s (median) | every run (s) |",
            "|---|---|---|",
        ]
        for k in kinds:
            lines.append(f"| {names[k]} | {mb / med[k]['read']:.0f} | {', '.join(f'{x:.3f}' for x in runs[k]['read'])} |")
        lines += [
            "",
            f"- **Starling read throughput / squashfuse's, both at 1 MiB read-ahead: {read_ratio:.2f}** (goal >= 0.8)",
            f"- the same, both at the default 128 KiB: {read_ratio_128:.2f}",
            "",
            "## Metadata walk (`find` stats every entry)",
            "",
            "Cold: each file system mounted afresh before the walk (empty inode tables), page cache, dentries and "
            "inodes dropped (`drop_caches=3`). Warm: a walk done before, page cache dropped (`drop_caches=1`); "
            "squashfuse mounted with Starling's one-year entry and attribute lifetimes (`-o entry_timeout=,attr_timeout=`).",
            "",
            "| file system | cold (s, median) | every cold run (s) | warm (s, median) | every warm run (s) |",
            "|---|---|---|---|---|",
        ]
        for k in kinds:
            r = runs[k]
            cold = f"{med[k]['walk_cold']:.3f} | {', '.join(f'{x:.3f}' for x in r['walk_cold'])}" if r["walk_cold"] else "- | -"
            lines.append(f"| {names[k]} | {cold} | {med[k]['walk_warm']:.3f} | {', '.join(f'{x:.3f}' for x in r['walk_warm'])} |")
        lines += [
            "",
            f"- **Starling walk time / squashfuse's, cold: {walk_cold:.2f}** (goal <= 1.5)",
            f"- the same, warm, same lifetimes: {walk_warm:.2f}",
            f"- kernel EROFS / squashfuse, cold: {med['erofs']['walk_cold'] / med['squashfuse']['walk_cold']:.2f}",
            "",
            f"Cold start, empty host cache, origin on loopback: `python3 -c '{PY}'` in a chroot of the lazy mount.",
            "",
            f"- file data fetched (chunks, uncompressed): {data} ({data / 2**20:.2f} MiB); metadata (commit, trees): {meta} ({meta / 2**20:.2f} MiB)",
            f"- bytes the kernel read from the mount (files incl. its readahead): {served} ({served / 2**20:.2f} MiB)",
            f"- data fetched / data read: **{data / max(served, 1):.2f}** (goal <= 1.2, metadata on top)",
            f"- on the wire (compressed objects): {wire} ({wire / 2**20:.2f} MiB) = {wire / image_bytes:.4f} of the image ({image_bytes / 2**20:.0f} MiB)",
            "",
        ]
        text = "\n".join(lines)
        with open(os.path.join(TOP, "bench/results/fs-read.md"), "w") as fh:
            fh.write(text)
        print(text)
    finally:
        for p in reversed(mounts):
            subprocess.run(["umount", "-l", p], stderr=subprocess.DEVNULL)
        for d in daemons:
            d.stop()
        for p in procs:
            p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
