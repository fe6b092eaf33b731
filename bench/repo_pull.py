#!/usr/bin/env python3
"""Pull over loopback: `starling pull` vs `curl` fetching the same objects in parallel.

Builds a ~1 GiB image (a Debian rootfs plus incompressible files), pushes it to a fresh
repository, serves it with `starling repo serve` on 127.0.0.1, then in one run:
- `starling pull` into an empty store (TUF verification, hash checks, store writes);
- `curl --parallel --parallel-max 16` of every object URL into a directory (no checks);
- a second version with a small change: how many objects the second pull fetches.

    sudo python3 bench/repo_pull.py          # writes bench/results/repo-pull.md

Needs a release build, curl >= 7.66, and the Debian fixtures (tests/fixtures/debian-rootfs.sh).
"""
import json, os, shutil, statistics, subprocess, sys, tempfile, time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(TOP, "target/release/starling")
GIB = int(os.environ.get("SIZE_MIB", "1024")) << 20
REPEAT = int(os.environ.get("REPEAT", "3"))


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw).stdout


def main():
    cache = run(["bash", os.path.join(TOP, "tests/fixtures/debian-rootfs.sh")]).decode().strip()
    work = tempfile.mkdtemp(prefix="starling-pull-", dir="/var/tmp")
    server = None
    try:
        tree = os.path.join(work, "tree")
        # cp -a, not copytree: the rootfs holds device nodes (copytree would read /dev/zero).
        run(["cp", "-a", os.path.join(cache, "rootfs-b"), tree])
        size = int(run(["du", "-sb", tree]).split()[0])
        os.makedirs(os.path.join(tree, "data"))
        i = 0
        while size < GIB:
            n = min(64 << 20, GIB - size)
            with open(os.path.join(tree, "data", f"blob{i}"), "wb") as fh:
                fh.write(os.urandom(n))
            size += n
            i += 1
        src, repo = os.path.join(work, "src"), os.path.join(work, "repo")
        run([BIN, "--store", src, "image", "import", tree, "big:v1"])
        run([BIN, "repo", "init", repo])
        run([BIN, "--store", src, "push", "big:v1", repo])
        server = subprocess.Popen([BIN, "repo", "serve", repo, "--listen", "127.0.0.1:0"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        url = server.stdout.readline().decode().split()[-1]
        objs = []
        for d in os.listdir(os.path.join(repo, "objects")):
            for f in os.listdir(os.path.join(repo, "objects", d)):
                objs.append(f"objects/{d}/{f}")
        obj_bytes = int(run(["du", "-sb", os.path.join(repo, "objects")]).split()[0])
        root = os.path.join(repo, "metadata/1.root.json")
        urls = os.path.join(work, "urls")
        out = os.path.join(work, "curl")
        with open(urls, "w") as fh:
            for o in objs:
                fh.write(f'url = "{url}{o}"\noutput = "{out}/{o.replace("/", "_")}"\n')
        t_pull, t_curl = [], []
        for _ in range(REPEAT):
            dst = os.path.join(work, "dst")
            shutil.rmtree(dst, ignore_errors=True)
            t = time.monotonic()
            run([BIN, "--store", dst, "pull", url, "big:v1", "--root", root])
            t_pull.append(time.monotonic() - t)
            shutil.rmtree(out, ignore_errors=True)
            os.makedirs(out)
            t = time.monotonic()
            run(["curl", "-sS", "--fail", "--parallel", "--parallel-max", "16", "-K", urls])
            t_curl.append(time.monotonic() - t)
        tp, tc = statistics.median(t_pull), statistics.median(t_curl)
        # Second version: a small change.
        with open(os.path.join(tree, "etc", "motd"), "a") as fh:
            fh.write("second version\n")
        run([BIN, "--store", src, "image", "import", tree, "big:v1"])
        run([BIN, "--store", src, "push", "big:v1", repo])
        r = json.loads(run([BIN, "--store", dst, "pull", "--json", url, "big:v1"]))
        lines = [
            "# Pull over loopback: starling vs curl in parallel",
            "",
            f"Command: `sudo python3 bench/repo_pull.py` (run {time.strftime('%Y-%m-%d')}, 2 cores, shared VM; "
            f"median of {REPEAT}; absolute times are noisy, ratios are the result).",
            "",
            f"Image: Debian rootfs-b plus incompressible files, {size / 2**30:.2f} GiB of files; "
            f"{len(objs)} objects, {obj_bytes / 2**20:.0f} MiB in the repository. Server: `starling repo serve` on 127.0.0.1.",
            "",
            "| way | time (s) | vs curl |",
            "|---|---|---|",
            f"| curl --parallel --parallel-max 16, every object URL, to files (no verification) | {tc:.2f} | 1.00x |",
            f"| starling pull into an empty store (TUF, hash checks, store writes, 16 parallel) | {tp:.2f} | {tp / tc:.2f}x |",
            "",
            f"- starling pull / curl: **{tp / tc:.2f}** (goal <= 1.5)",
            f"- second version (one file changed): {r['fetched']} of {r['objects']} objects fetched, {r['fetched_bytes']} bytes",
            "",
        ]
        with open(os.path.join(TOP, "bench/results/repo-pull.md"), "w") as fh:
            fh.write("\n".join(lines))
        print("\n".join(lines))
    finally:
        if server:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
