#!/usr/bin/env python3
"""Import from an OCI registry on loopback: `starling image import docker://…` against the way
without it (`skopeo copy docker://… oci:DIR` then `starling image import oci:DIR`), and against
`skopeo copy` alone (a download into a layout, nothing stored).

The image is the Debian rootfs fixture (tests/fixtures/debian-rootfs.sh) as an OCI image that
skopeo copies into Debian's `docker-registry` serving on 127.0.0.1. Each way runs REPEAT times,
alternating, into a fresh store or layout; medians.

    sudo python3 bench/registry_import.py     # writes bench/results/registry-import.md

Needs a release build (`cargo build --release`), skopeo and docker-registry (scripts/deps.sh).
"""
import json, os, shutil, socket, statistics, subprocess, tempfile, time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(TOP, "target/release/starling")
REPEAT = int(os.environ.get("REPEAT", "5"))


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw).stdout


def timed(cmd):
    t = time.monotonic()
    run(cmd)
    return time.monotonic() - t


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    cache = run(["bash", os.path.join(TOP, "tests/fixtures/debian-rootfs.sh")]).decode().strip()
    work = tempfile.mkdtemp(prefix="starling-registry-", dir="/var/tmp")
    registry = None
    try:
        port = free_port()
        cfg = os.path.join(work, "config.yml")
        with open(cfg, "w") as fh:
            fh.write(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
                     f"    rootdirectory: {work}/registry\nhttp:\n  addr: 127.0.0.1:{port}\n")
        registry = subprocess.Popen(["docker-registry", "serve", cfg],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.05)
        seed = os.path.join(work, "seed")
        run([BIN, "--store", seed, "image", "import", os.path.join(cache, "rootfs-b"), "deb:v1"])
        layout = os.path.join(work, "layout")
        run([BIN, "--store", seed, "image", "export", "deb:v1", f"oci:{layout}:v1"])
        ref = f"docker://127.0.0.1:{port}/deb:v1"
        run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:v1", ref])
        blob_bytes = int(run(["du", "-sb", os.path.join(work, "registry")]).split()[0])
        files = json.loads(run([BIN, "--store", seed, "image", "inspect", "--json", "deb:v1"]))["stats"]["files"]

        t_direct, t_two, t_skopeo = [], [], []
        for i in range(REPEAT):
            for way in (["direct", "two", "skopeo"] if i % 2 == 0 else ["skopeo", "two", "direct"]):
                store = os.path.join(work, "store")
                out = os.path.join(work, "copied")
                shutil.rmtree(store, ignore_errors=True)
                shutil.rmtree(out, ignore_errors=True)
                if way == "direct":
                    t_direct.append(timed([BIN, "--store", store, "image", "import", ref, "deb:v1"]))
                elif way == "two":
                    t = time.monotonic()
                    run(["skopeo", "copy", "--src-tls-verify=false", ref, f"oci:{out}:v1"])
                    run([BIN, "--store", store, "image", "import", f"oci:{out}:v1", "deb:v1"])
                    t_two.append(time.monotonic() - t)
                else:
                    t_skopeo.append(timed(["skopeo", "copy", "--src-tls-verify=false", ref, f"oci:{out}:v1"]))
        d, w, k = (statistics.median(x) for x in (t_direct, t_two, t_skopeo))
        figures = {"direct_vs_two": round(d / w, 2), "direct_vs_skopeo": round(d / k, 2)}
        lines = [
            "# Import from an OCI registry on loopback",
            "",
            f"Command: `sudo python3 bench/registry_import.py` (run {time.strftime('%Y-%m-%d')}, 2 cores, "
            f"shared VM; median of {REPEAT}, the ways alternating; absolute times are noisy, ratios are the result).",
            "",
            f"Image: the Debian rootfs fixture, {files} files, one gzip layer; {blob_bytes / 2**20:.0f} MiB "
            "in the registry (Debian's `docker-registry` on 127.0.0.1, filled by skopeo).",
            "",
            "| way | time (s) | ratio |",
            "|---|---|---|",
            f"| `skopeo copy docker://… oci:DIR` (download only, nothing stored) | {k:.2f} | {d / k:.2f}x (starling / this) |",
            f"| `skopeo copy docker://… oci:DIR` + `starling image import oci:DIR` | {w:.2f} | {d / w:.2f}x (starling / this) |",
            f"| `starling image import docker://…` | {d:.2f} | 1.00x |",
            "",
            f"- starling import from the registry / skopeo copy + import: **{d / w:.2f}** (goal <= 1.0)",
            f"- starling import from the registry / skopeo copy alone: {d / k:.2f}",
            "",
            f"<!-- figures {json.dumps(figures)} -->",
            "",
        ]
        with open(os.path.join(TOP, "bench/results/registry-import.md"), "w") as fh:
            fh.write("\n".join(lines))
        print("\n".join(lines))
    finally:
        if registry:
            registry.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
