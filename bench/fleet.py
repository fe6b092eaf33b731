#!/usr/bin/env python3
"""Fleet chores on manifests vs the classic way (export the image, then run the tool on files).

Builds image versions from Debian bookworm minbase variants (a, b, c from
tests/fixtures/debian-rootfs.sh) and their updates, then measures in one run:

- inventory of every version (100, then scaled to 1,000): `starling image inventory`
  vs `starling image export` + `dpkg-query -W --admindir` per image;
- search for a package version range across all versions;
- diff of two variants: `starling image diff` vs `diff -r` of the two exported trees;
- update of 100 images with one .deb: `starling image update ... --apply-deb` vs export +
  `dpkg -i` in a chroot + re-import, per image.

The classic way is timed on a sample (CLASSIC_SAMPLE images) and scaled linearly, which is
generous to it: it ignores the disk space 100 exported trees would need.

    sudo python3 bench/fleet.py              # writes bench/results/fleet.md

Needs root (chroot, root-owned trees), dpkg, a release build, and the Debian archive for
`apt-get download less`.
"""
import os, shutil, statistics, subprocess, sys, tempfile, time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(TOP, "target/release/starling")
N = int(os.environ.get("VERSIONS", "100"))
BIG = int(os.environ.get("BIG", "1000"))
SAMPLE = int(os.environ.get("CLASSIC_SAMPLE", "3"))


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw).stdout


def timed(cmd, repeat=3):
    ts = []
    for _ in range(repeat):
        t = time.monotonic()
        run(cmd)
        ts.append(time.monotonic() - t)
    return statistics.median(ts)


def main():
    if os.geteuid() != 0:
        sys.exit("run as root")
    cache = run(["bash", os.path.join(TOP, "tests/fixtures/debian-rootfs.sh")]).decode().strip()
    work = tempfile.mkdtemp(prefix="starling-fleet-", dir="/var/tmp")
    store = os.path.join(work, "store")
    st = lambda *a: run([BIN, "--store", store, *a])
    try:
        debdir = os.path.join(work, "debs")
        os.makedirs(debdir)
        run(["apt-get", "download", "-q", "less"], cwd=debdir)
        less = os.path.join(debdir, os.listdir(debdir)[0])
        for v in "abc":
            st("image", "import", os.path.join(cache, f"rootfs-{v}"), f"base:{v}")
        # N images: variants of the three bases, each with its own overlay and hostname.
        t0 = time.monotonic()
        ov = os.path.join(work, "ov")
        for i in range(N):
            os.makedirs(os.path.join(ov, "etc"), exist_ok=True)
            with open(os.path.join(ov, "etc", "starling-build"), "w") as fh:
                fh.write(f"build {i}\n")
            st("image", "derive", f"base:{'abc'[i % 3]}", f"fleet:n{i:04}", "--overlay", ov,
               "--set-hostname", f"host{i}")
        build_time = time.monotonic() - t0
        tags = [f"fleet:n{i:04}" for i in range(N)]

        # Inventory of N.
        t_inv = timed([BIN, "--store", store, "image", "inventory", "--json", *tags])
        # Classic inventory: export + dpkg-query, on a sample.
        ts = []
        for t in tags[:SAMPLE]:
            out = os.path.join(work, "x")
            shutil.rmtree(out, ignore_errors=True)
            t1 = time.monotonic()
            st("image", "export", t, out)
            run(["dpkg-query", "-W", f"--admindir={out}/var/lib/dpkg"])
            ts.append(time.monotonic() - t1)
            shutil.rmtree(out)
        classic_inv_each = statistics.median(ts)

        # Update N images with one .deb (the versions also serve the scaled inventory below).
        t_upd = timed([BIN, "--store", store, "image", "update", *tags, "--apply-deb", less], repeat=1)
        ts = []
        for t in tags[:SAMPLE]:
            out = os.path.join(work, "x")
            shutil.rmtree(out, ignore_errors=True)
            t1 = time.monotonic()
            st("image", "export", t, out)
            shutil.copy(less, os.path.join(out, "tmp/p.deb"))
            run(["chroot", out, "dpkg", "-i", "/tmp/p.deb"])
            os.remove(os.path.join(out, "tmp/p.deb"))
            st("image", "import", out, t + "-classic")
            ts.append(time.monotonic() - t1)
            shutil.rmtree(out)
        classic_upd_each = statistics.median(ts)

        # Search across all versions (every tag's history).
        t_search = timed([BIN, "--store", store, "image", "search", "--json", "--package", "less",
                          "--version", ">= 590"])

        # Diff of two variants vs diff -r of exported trees (export time not counted).
        t_diff = timed([BIN, "--store", store, "image", "diff", "--json", "base:a", "base:b"], repeat=5)
        ea, eb = os.path.join(work, "ea"), os.path.join(work, "eb")
        st("image", "export", "base:a", ea)
        st("image", "export", "base:b", eb)
        t_diffr = timed(["bash", "-c", f"diff -r --no-dereference {ea} {eb} >/dev/null; true"])
        shutil.rmtree(ea)
        shutil.rmtree(eb)

        # Scale: BIG versions (updates of the N images, BIG/N rounds of one overlay each).
        rounds = max(1, BIG // N)
        big_refs = []
        for r in range(rounds - 1):
            with open(os.path.join(ov, "etc", "starling-build"), "w") as fh:
                fh.write(f"round {r}\n")
            st("image", "update", *tags, "--overlay", ov)
        for t in tags:
            hist = __import__("json").loads(st("image", "history", "--json", t))
            big_refs += [f"{t.split(':')[0]}@{h['version']}" for h in hist]
        big_refs = big_refs[:BIG]
        argfile = os.path.join(work, "refs")
        with open(argfile, "w") as fh:
            fh.write(" ".join(big_refs))
        t_big = timed(["bash", "-c", f"{BIN} --store {store} image inventory --json $(cat {argfile}) >/dev/null"])
        t_big_search = timed([BIN, "--store", store, "image", "search", "--json", "--package", "libc6",
                              "--version", "< 2.37"])

        lines = [
            "# Fleet chores on manifests: starling vs export + the classic tools",
            "",
            f"Command: `sudo python3 bench/fleet.py` (run {time.strftime('%Y-%m-%d')}, 2 cores, shared VM; "
            "medians of 3 runs unless noted; absolute times are noisy, ratios are the result).",
            "",
            f"Images: {N} tags derived from Debian bookworm minbase variants a/b/c (overlay + hostname each; "
            f"building them took {build_time:.1f} s, {build_time / N * 1000:.0f} ms per `image derive`), then "
            f"updated with `less`; {len(big_refs)} versions in all for the scaled inventory. The classic way "
            f"is timed on {SAMPLE} images and scaled linearly (generous to it: no disk for {N} exported trees).",
            "",
            "| chore | starling (s) | classic (s) | classic / starling | goal |",
            "|---|---|---|---|---|",
            f"| inventory of {N} versions | {t_inv:.3f} | {classic_inv_each * N:.1f} (export + dpkg-query) | {classic_inv_each * N / t_inv:.0f}x | |",
            f"| inventory of {len(big_refs)} versions | {t_big:.3f} | {classic_inv_each * len(big_refs):.0f} | {classic_inv_each * len(big_refs) / t_big:.0f}x | < 1 s |",
            f"| search `--package less --version '>= 590'`, all versions | {t_search:.3f} | {classic_inv_each * N:.1f} | {classic_inv_each * N / t_search:.0f}x | |",
            f"| search `--package libc6 --version '< 2.37'`, {len(big_refs)} versions | {t_big_search:.3f} | {classic_inv_each * len(big_refs):.0f} | {classic_inv_each * len(big_refs) / t_big_search:.0f}x | |",
            f"| diff of variants a and b | {t_diff:.3f} | {t_diffr:.3f} (diff -r of exported trees, export not counted) | {t_diffr / t_diff:.0f}x | < 0.020 s |",
            f"| update of {N} images with one .deb | {t_upd:.2f} (1 run) | {classic_upd_each * N:.0f} (export + chroot dpkg -i + import) | {classic_upd_each * N / t_upd:.0f}x | < 2 s |",
            "",
            "Starling times are whole command runs (process start, store open, locks, JSON output).",
            "",
        ]
        os.makedirs(os.path.join(TOP, "bench/results"), exist_ok=True)
        with open(os.path.join(TOP, "bench/results/fleet.md"), "w") as fh:
            fh.write("\n".join(lines))
        print("\n".join(lines))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
