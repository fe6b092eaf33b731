#!/usr/bin/env python3
"""Disk images: starling vs the classic tools, side by side in one run.

1. Import of a 1 GiB Debian-based ext4 qcow2 into the store, vs the classic way of getting at
   its files: `qemu-img convert` to raw, loop-mount it, copy the tree out (`cp -a`).
2. Store growth when a second qcow2 that differs by a few packages is imported, vs the bytes
   of the files that actually changed (goal: grows by about the changed bytes only).
3. Export to an ext4 image vs `mkfs.ext4 -d` on the same tree (goal <= 1.2x).

    sudo python3 bench/disk_convert.py         # writes bench/results/disk-convert.md

Needs root (loop mounts, root-owned trees), e2fsprogs, qemu-utils and a release build.
Each timing is the median of REPEAT runs with a warm page cache.
"""
import hashlib, os, shutil, statistics, subprocess, sys, tempfile, time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(TOP, "target/release/starling")
REPEAT = int(os.environ.get("REPEAT", "3"))


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw).stdout


def once(cmds):
    """Wall time of one run of the command list (its setup excluded)."""
    steps = cmds()
    t = time.monotonic()
    for c in steps:
        run(c) if isinstance(c, list) else c()
    return time.monotonic() - t


def timed(cmds):
    """Median wall time of REPEAT runs, and every run's time."""
    times = [once(cmds) for _ in range(REPEAT)]
    return statistics.median(times), times


def timed_pair(a, b):
    """Two ways measured alternately (a, b, a, b, ...), so a noisy moment hits both: medians
    and every run's times."""
    ta, tb = [], []
    for _ in range(REPEAT):
        ta.append(once(a))
        tb.append(once(b))
    return (statistics.median(ta), ta), (statistics.median(tb), tb)


def runs(ts):
    return ", ".join(f"{t:.2f}" for t in ts)


def du(path):
    return int(run(["du", "-sb", path]).split()[0])


def file_digests(tree):
    out = {}
    for dirpath, dirs, files in os.walk(tree):
        for f in files:
            p = os.path.join(dirpath, f)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            with open(p, "rb") as fh:
                out[os.path.relpath(p, tree)] = (hashlib.sha256(fh.read()).hexdigest(), os.path.getsize(p))
    return out


def main():
    if os.geteuid() != 0:
        sys.exit("run as root (loop mounts)")
    cache = run(["bash", os.path.join(TOP, "tests/fixtures/debian-rootfs.sh")]).decode().strip()
    b, c = os.path.join(cache, "rootfs-b"), os.path.join(cache, "rootfs-c")
    work = tempfile.mkdtemp(prefix="starling-bench-", dir="/var/tmp")
    try:
        images = {}
        for v, tree in (("b", b), ("c", c)):
            raw = os.path.join(work, f"{v}.raw")
            run(["mkfs.ext4", "-q", "-d", tree, raw, "1G"])
            q = os.path.join(work, f"{v}.qcow2")
            run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, q])
            os.remove(raw)
            images[v] = q
        for q in images.values():
            run(["cat", q])  # warm

        # 1. import vs convert + mount + copy
        store = os.path.join(work, "store")

        def starling_import():
            shutil.rmtree(store, ignore_errors=True)
            return [[BIN, "--store", store, "image", "import", images["b"], "deb:b"]]

        mnt, out_raw, copy = (os.path.join(work, n) for n in ("mnt", "classic.raw", "copy"))
        os.makedirs(mnt, exist_ok=True)

        def classic():
            shutil.rmtree(copy, ignore_errors=True)
            return [
                ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", images["b"], out_raw],
                ["mount", "-o", "loop,ro", out_raw, mnt],
                ["cp", "-a", mnt + "/.", copy],
                ["umount", mnt],
                lambda: os.remove(out_raw),
            ]

        (t_starling, r_starling), (t_classic, r_classic) = timed_pair(starling_import, classic)
        objects = int(run([BIN, "--store", store, "store", "stats", "--json"]).decode().split('"objects":')[1].split(",")[0])
        files = sum(len(f) for _, _, f in os.walk(store))

        # 2. store growth for the second image
        shutil.rmtree(store, ignore_errors=True)
        run([BIN, "--store", store, "image", "import", images["b"], "deb:b"])
        before = du(os.path.join(store, "packs"))
        run([BIN, "--store", store, "image", "import", images["c"], "deb:c"])
        growth = du(os.path.join(store, "packs")) - before
        db, dc = file_digests(b), file_digests(c)
        changed = [p for p in dc if db.get(p, (None,))[0] != dc[p][0]]
        changed_bytes = sum(dc[p][1] for p in changed)
        zst = os.path.join(work, "changed.tar.zst")
        lst = os.path.join(work, "changed.list")
        with open(lst, "w") as fh:
            fh.write("\n".join(changed) + "\n")
        run(["tar", "-C", c, "--zstd", "-cf", zst, "-T", lst])
        changed_zst = os.path.getsize(zst)

        # 3. export to ext4 vs mkfs.ext4 -d (same size, both from a warm cache)
        run(["tar", "-cf", "/dev/null", "-C", b, "."])
        e1, e2 = os.path.join(work, "s.ext4"), os.path.join(work, "m.ext4")

        def starling_export():
            if os.path.exists(e1):
                os.remove(e1)
            return [[BIN, "--store", store, "image", "export", "deb:b", e1, "--size", "1G"]]

        def mkfs():
            if os.path.exists(e2):
                os.remove(e2)
            return [["mkfs.ext4", "-q", "-d", b, e2, "1G"]]

        (t_export, r_export), (t_mkfs, r_mkfs) = timed_pair(starling_export, mkfs)
        run(["e2fsck", "-fn", e1])

        gib = 1 << 30
        mib = 1 << 20
        lines = [
            "# Disk images: starling vs qemu-img + loop mount, and vs mkfs.ext4 -d",
            "",
            f"Command: `sudo python3 bench/disk_convert.py` (run {time.strftime('%Y-%m-%d')}, 2 cores, shared VM; "
            f"median of {REPEAT} runs, the two ways alternating, warm page cache; absolute times are noisy, ratios are the result).",
            "",
            "Inputs: Debian bookworm minbase + a few packages (rootfs-b) and a variant that differs by a few "
            "packages (rootfs-c), each made into a 1 GiB ext4 with `mkfs.ext4 -d` and converted to qcow2 "
            f"(b.qcow2 {os.path.getsize(images['b']) / mib:.1f} MiB, c.qcow2 {os.path.getsize(images['c']) / mib:.1f} MiB).",
            "",
            "## Import of a qcow2",
            "",
            "| way | time (s) | vs starling |",
            "|---|---|---|",
            f"| starling image import b.qcow2 (userspace ext4 reader, into the store) | {t_starling:.2f} | 1.00x |",
            f"| qemu-img convert to raw + loop mount + cp -a | {t_classic:.2f} | {t_classic / t_starling:.2f}x |",
            "",
            f"- starling import time / classic: **{t_starling / t_classic:.2f}** (goal <= 1.0)",
            f"- every run (s): starling {runs(r_starling)}; classic {runs(r_classic)}",
            f"- the store after the import: {objects} objects in {files} files (pack segments, their indexes, refs)",
            "",
            "## Store growth for the second image (c.qcow2 after b.qcow2)",
            "",
            "| measure | MiB |",
            "|---|---|",
            f"| store growth (packs/, zstd-compressed) | {growth / mib:.2f} |",
            f"| files that changed between b and c ({len(changed)} files), raw | {changed_bytes / mib:.2f} |",
            f"| the same changed files as tar.zst (zstd -3) | {changed_zst / mib:.2f} |",
            "",
            f"- growth / changed bytes (raw): **{growth / changed_bytes:.2f}**; growth / changed files compressed: **{growth / changed_zst:.2f}**",
            "",
            "## Export to ext4 (1 GiB)",
            "",
            "| way | time (s) | vs mkfs.ext4 -d |",
            "|---|---|---|",
            f"| mkfs.ext4 -d rootfs-b (from the directory) | {t_mkfs:.2f} | 1.00x |",
            f"| starling image export deb:b out.ext4 (from the store) | {t_export:.2f} | {t_export / t_mkfs:.2f}x |",
            "",
            f"- starling export / mkfs.ext4 -d: **{t_export / t_mkfs:.2f}** (goal <= 1.2); e2fsck -fn clean.",
            f"- every run (s): starling {runs(r_export)}; mkfs.ext4 -d {runs(r_mkfs)}",
            "",
        ]
        os.makedirs(os.path.join(TOP, "bench/results"), exist_ok=True)
        with open(os.path.join(TOP, "bench/results/disk-convert.md"), "w") as fh:
            fh.write("\n".join(lines))
        print("\n".join(lines))
    finally:
        subprocess.run(["umount", os.path.join(work, "mnt")], stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
