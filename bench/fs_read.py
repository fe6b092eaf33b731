#!/usr/bin/env python3
"""Lazy mounts: Starling's FUSE file system vs squashfuse and the kernel's EROFS (loop), on
the same tree, in one run.

Tree: Debian rootfs-b (with python3) plus 4 x 64 MiB of data files.
- Warm (content local: Starling's host cache filled by one earlier read; the squashfs and
  EROFS images on local disk), kernel page cache dropped before every run:
  sequential read of the data files (MB/s) and a metadata walk (`find -printf` stats every
  entry).
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
        mp = {k: os.path.join(work, "mp-" + k) for k in ["starling", "squashfuse", "squashfuse-ra", "erofs", "cold"]}
        for p in mp.values():
            os.makedirs(p)
        run(["squashfuse", sq, mp["squashfuse"]])
        mounts.append(mp["squashfuse"])
        # The same with the 1 MiB kernel read-ahead Starling gives its own mounts.
        run(["squashfuse", sq, mp["squashfuse-ra"]])
        mounts.append(mp["squashfuse-ra"])
        dev = os.stat(mp["squashfuse-ra"]).st_dev
        with open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb", "w") as fh:
            fh.write("1024\n")
        run(["mount", "-t", "erofs", "-o", "loop,ro", er, mp["erofs"]])
        mounts.append(mp["erofs"])

        warm = Daemon(os.path.join(work, "state-warm"))
        daemons.append(warm)
        warm.cli("mount", url, "b:v1", mp["starling"], "--root", root)
        mounts.append(mp["starling"])
        run(["tar", "-cf", "/dev/null", "-C", mp["starling"], "."])  # fills the host cache

        # Level 1 drops the page cache (file data); level 3 also inodes and dentries, so the
        # host cache's many object files must be looked up on disk again.
        results = {}
        for level in (1, 3):
            runs = {k: ([], []) for k in ["starling", "squashfuse", "squashfuse-ra", "erofs"]}
            for _ in range(REPEAT):  # interleaved, so load changes hit all three alike
                for k in runs:
                    runs[k][0].append(timed(f"cat {mp[k]}/data/* > /dev/null", level))
                    runs[k][1].append(timed(f"find {mp[k]} -printf '%s %m %u %T@\\n' > /dev/null", level))
            results[level] = {k: (statistics.median(r), statistics.median(w)) for k, (r, w) in runs.items()}

        # Cold start from the repository, empty cache.
        cold = Daemon(os.path.join(work, "state-cold"))
        daemons.append(cold)
        cold.cli("mount", url, "b:v1", mp["cold"], "--root", root)
        mounts.append(mp["cold"])
        run(["chroot", mp["cold"], "python3", "-c", PY])
        m = json.loads(cold.cli("mounts", "--json"))[0]["counters"]
        wire = json.loads(cold.cli("cache", "stats", "--json"))["fetched_bytes"]
        image_bytes = json.loads(run([BIN, "--store", store, "image", "inspect", "--json", "b:v1"]))["stats"]["bytes"]
        fetched, meta, served = m["fetched"], m["fetched_meta"], m["served"]
        data = fetched - meta

        mb = data_bytes / 1e6
        lines = [
            "# Lazy mounts: Starling vs squashfuse vs kernel EROFS",
            "",
            f"Command: `sudo python3 bench/fs_read.py` (run {time.strftime('%Y-%m-%d')}, 2 cores, shared VM; "
            f"median of {REPEAT}, the three interleaved; absolute times are noisy, ratios are the result).",
            "",
            f"Tree: Debian rootfs-b + 4 data files; {entries} entries, {tree_bytes / 2**20:.0f} MiB "
            f"({data_bytes / 2**20:.0f} MiB in the data files read sequentially). squashfs: zstd; EROFS: lz4hc, loop-mounted; "
            "Starling: a repository mount whose host cache holds every object (warm); it sets its mount's kernel "
            "read-ahead to 1 MiB, the others keep the default 128 KiB.",
        ]
        goals = {}
        for level, what in [(1, "page cache dropped before each run (`drop_caches=1`)"),
                            (3, "page cache, inodes and dentries dropped before each run (`drop_caches=3`)")]:
            r = results[level]
            q_read, q_walk = r["squashfuse"]
            lines += ["", f"Warm, {what}:", "",
                      "| file system | sequential read (MB/s) | vs squashfuse | metadata walk (s) | vs squashfuse |",
                      "|---|---|---|---|---|"]
            for k, name in [("squashfuse", "squashfuse"), ("squashfuse-ra", "squashfuse, read-ahead 1 MiB"),
                            ("erofs", "kernel EROFS (loop)"), ("starling", "Starling (FUSE, host cache, read-ahead 1 MiB)")]:
                rd, wk = r[k]
                lines.append(f"| {name} | {mb / rd:.0f} | {q_read / rd:.2f}x | {wk:.2f} | {wk / q_walk:.2f}x |")
            goals[level] = (q_read / r["starling"][0], r["starling"][1] / q_walk,
                            r["squashfuse-ra"][0] / r["starling"][0])
        lines += [
            "",
            f"- Starling read throughput / squashfuse: **{goals[1][0]:.2f}** (page cache dropped), "
            f"**{goals[3][0]:.2f}** (inodes and dentries too) (goal >= 0.8)",
            f"- Starling walk time / squashfuse: **{goals[1][1]:.2f}**, **{goals[3][1]:.2f}** (goal <= 1.5)",
            f"- against squashfuse given the same 1 MiB read-ahead: {goals[1][2]:.2f}, {goals[3][2]:.2f}",
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
