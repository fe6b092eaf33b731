#!/usr/bin/env python3
"""Store size and import time: starling vs `ostree commit` (archive mode) vs `casync make`.

Imports the same Debian bookworm minbase variants (tests/fixtures/debian-rootfs.sh) into a
fresh store of each tool, in one run, and reports total store bytes after all variants and
import time, with ratios against the anchors. Then sweeps starling's chunking parameters.

    sudo python3 bench/store_import.py            # writes bench/results/store-import.md

Needs root (the trees hold root-owned files and devices), ostree, casync, and a release build
(`cargo build --release`).
"""
import os, shutil, statistics, subprocess, sys, tempfile, time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(TOP, "target/release/starling")
VARIANTS = ["a", "b", "c"]
REPEAT = int(os.environ.get("REPEAT", "3"))


def run(cmd, **kw):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


def du(path):
    apparent = int(subprocess.check_output(["du", "-sb", path]).split()[0])
    disk = int(subprocess.check_output(["du", "-s", "--block-size=1", path]).split()[0])
    return apparent, disk


def warm(tree):
    # Read every file once so each tool starts from the same page cache.
    run(["tar", "-cf", "/dev/null", "-C", tree, "."])


def timed(cmd):
    t = time.monotonic()
    run(cmd)
    return time.monotonic() - t


def starling(work, trees, extra=()):
    store = os.path.join(work, "starling")
    total = 0.0
    for v, tree in zip(VARIANTS, trees):
        warm(tree)
        total += timed([BIN, "--store", store, "image", "import", tree, f"debian:{v}", *extra])
    for lock in ("lock", "refs.lock"):
        p = os.path.join(store, lock)
        if os.path.exists(p):
            os.remove(p)
    return total, du(store)


def ostree(work, trees):
    repo = os.path.join(work, "ostree")
    run(["ostree", f"--repo={repo}", "init", "--mode=archive"])
    total = 0.0
    for v, tree in zip(VARIANTS, trees):
        warm(tree)
        total += timed(["ostree", f"--repo={repo}", "commit", f"--branch=debian/{v}", f"--tree=dir={tree}"])
    return total, du(repo)


def casync(work, trees):
    d = os.path.join(work, "casync")
    os.makedirs(d)
    total = 0.0
    for v, tree in zip(VARIANTS, trees):
        warm(tree)
        total += timed(["casync", "make", f"--store={d}/default.castr", f"{d}/{v}.caidx", tree])
    return total, du(d)


def mib(n):
    return f"{n / 2**20:.1f}"


def main():
    if os.geteuid() != 0:
        sys.exit("run as root: the Debian trees hold root-owned files and device nodes")
    for tool in ("ostree", "casync"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (apt-get install {tool})")
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")
    cache = subprocess.check_output(["bash", os.path.join(TOP, "tests/fixtures/debian-rootfs.sh")], text=True).strip()
    rows = {}
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="starling-bench-") as work:
        # ostree cannot store device nodes, fifos or sockets (a handful, all under /dev): every
        # tool gets the same copies without them.
        trees = []
        for v in VARIANTS:
            t = os.path.join(work, f"input-{v}")
            run(["cp", "-a", os.path.join(cache, f"rootfs-{v}"), t])
            run(["find", t, "(", "-type", "c", "-o", "-type", "b", "-o", "-type", "p", "-o", "-type", "s", ")", "-delete"])
            trees.append(t)
        logical = sum(du(t)[0] for t in trees)
        # The tools take turns, REPEAT rounds, each into a fresh store: a noisy moment on this
        # shared machine hits all of them. Medians, and every run kept.
        tools = (("starling", starling), ("ostree (archive)", ostree), ("casync", casync))
        times = {name: [] for name, _ in tools}
        for r in range(REPEAT):
            for name, fn in tools:
                sub = os.path.join(work, f"{name.split()[0]}-{r}")
                os.makedirs(sub)
                t, size = fn(sub, trees)
                times[name].append(t)
                rows[name] = (statistics.median(times[name]), size)
                shutil.rmtree(sub)
                print(name, t, size, file=sys.stderr)
        sweep = []
        for label, extra in (
            ("avg 16 KiB", ["--chunk-avg", "16384"]),
            ("avg 32 KiB", ["--chunk-avg", "32768"]),
            ("avg 64 KiB (default)", []),
            ("avg 128 KiB", ["--chunk-avg", "131072"]),
            ("avg 256 KiB", ["--chunk-avg", "262144"]),
            ("inline 0 B", ["--inline-max", "0"]),
            ("inline 64 B", ["--inline-max", "64"]),
            ("inline 1 KiB (default)", []),
            ("inline 4 KiB", ["--inline-max", "4096"]),
            ("zstd 3", ["--zstd-level", "3"]),
            ("zstd 6", ["--zstd-level", "6"]),
            ("zstd 9 (default)", []),
            ("zstd 19", ["--zstd-level", "19"]),
        ):
            sub = os.path.join(work, "sweep-" + str(len(sweep)))
            os.makedirs(sub)
            sweep.append((label, starling(sub, trees, extra)))
            print(label, sweep[-1][1], file=sys.stderr)

    s_time, (s_app, s_disk) = rows["starling"]
    out = []
    out.append("# Store import: starling vs ostree (archive) vs casync\n")
    out.append(f"Command: `sudo python3 bench/store_import.py` (run {time.strftime('%Y-%m-%d')}, "
               f"{os.cpu_count()} cores, shared VM: absolute times are noisy, ratios are the result).\n")
    out.append(f"Input: Debian bookworm minbase variants {', '.join(VARIANTS)} "
               f"(b and c add a few packages), {mib(logical)} MiB of files in all, imported in order "
               "into one fresh store per tool.\n")
    out.append("| tool | import time, all variants (s) | store bytes (MiB) | on disk (MiB) | time vs starling | bytes vs starling | disk vs starling |")
    out.append("|---|---|---|---|---|---|---|")
    for name, (t, (app, disk)) in rows.items():
        out.append(f"| {name} | {t:.2f} | {mib(app)} | {mib(disk)} | {t / s_time:.2f}x | {app / s_app:.2f}x | {disk / s_disk:.2f}x |")
    o_time = rows["ostree (archive)"][0]
    best_bytes = min(rows["ostree (archive)"][1][0], rows["casync"][1][0])
    out.append("")
    out.append(f"- starling store bytes / smaller anchor's: **{s_app / best_bytes:.2f}** (goal <= 1.00)")
    c_time = rows["casync"][0]
    out.append(f"- starling import time / ostree's: **{s_time / o_time:.2f}** (goal <= 1.00); / casync's: **{s_time / c_time:.2f}**")
    out.append(f"- times are medians of {REPEAT} rounds, the tools taking turns; every run (s): "
               + "; ".join(f"{n} " + ", ".join(f"{t:.2f}" for t in ts) for n, ts in times.items()) + "\n")
    out.append("## starling parameter sweep (same inputs)\n")
    out.append("| parameters | import time (s) | store bytes (MiB) | on disk (MiB) |")
    out.append("|---|---|---|---|")
    for label, (t, (app, disk)) in sweep:
        out.append(f"| {label} | {t:.2f} | {mib(app)} | {mib(disk)} |")
    text = "\n".join(out) + "\n"
    os.makedirs(os.path.join(TOP, "bench/results"), exist_ok=True)
    with open(os.path.join(TOP, "bench/results/store-import.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
