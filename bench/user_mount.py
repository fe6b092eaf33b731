#!/usr/bin/env python3
"""Another user's mount against an administrator's, on the same image, in one run.

starlingd serves other local users (`users = "all"`) by reading their store with their
identity: every object read switches the serving thread's ids to theirs and back (six
system calls). This measures what that costs a reader: the same image from the same local
store mounted by root and by user 65534, each read by user 65534 (root's mount lets others
in), interleaved:
- sequential read of 4 x 64 MiB data files (MB/s), page cache dropped before every run;
- a metadata walk (`find` stats every entry user 65534 may see) of a Debian root, the mount
  made afresh and caches dropped before every run.

    sudo python3 bench/user_mount.py          # writes bench/results/user-mount.md

Needs a release build (starling) and the Debian fixtures (tests/fixtures/debian-rootfs.sh).
"""
import os, shutil, statistics, subprocess, tempfile, time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(TOP, "target/release/starling")
REPEAT = int(os.environ.get("REPEAT", "5"))
NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw).stdout


def drop_caches():
    run(["sync"])
    with open("/proc/sys/vm/drop_caches", "w") as fh:
        fh.write("3\n")


def timed(cmd, check=True):
    drop_caches()
    t = time.monotonic()
    subprocess.run(cmd, check=check, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - t


def main():
    assert os.geteuid() == 0, "run as root (sudo): it acts as user 65534 and drops caches"
    cache = run(["bash", os.path.join(TOP, "tests/fixtures/debian-rootfs.sh")], text=True).strip()
    work = tempfile.mkdtemp(prefix="starling-user-mount-")
    os.chmod(work, 0o755)
    try:
        src = os.path.join(work, "src")
        os.makedirs(src)
        # cp -a: device nodes stay nodes (a copy that reads /dev/full never ends).
        run(["cp", "-a", os.path.join(cache, "rootfs-b"), os.path.join(src, "root")])
        data = os.path.join(src, "data")
        os.makedirs(data)
        for i in range(4):
            with open(os.path.join(data, f"d{i}"), "wb") as fh:
                fh.write(os.urandom(64 << 20))
        store = os.path.join(work, "store")
        run([BIN, "--store", store, "image", "import", src, "bench:v1"])
        run(["chmod", "-R", "a+rX", store])
        config = os.path.join(work, "starlingd.toml")
        with open(config, "w") as fh:
            fh.write('users = "all"\n')
        state = os.path.join(work, "state")
        sock = os.path.join(work, "api.sock")
        d = subprocess.Popen([BIN, "daemon", "--config", config, "--state", state, "--socket", sock],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert d.stdout.readline().startswith(b"ready")
        env = {**os.environ, "STARLING_SOCKET": sock}
        mps = {"root": os.path.join(work, "root-mp"), "user": os.path.join(work, "user-mp")}
        for who, mp in mps.items():
            os.makedirs(mp)
            if who == "user":
                os.chown(mp, 65534, 65534)

        def mount(who):
            prefix = NOBODY if who == "user" else []
            subprocess.run(prefix + [BIN, "--store", store, "mount", "bench:v1", mps[who]],
                           check=True, env=env, stdout=subprocess.DEVNULL)

        def umount(who):
            prefix = NOBODY if who == "user" else []
            subprocess.run(prefix + [BIN, "umount", mps[who]], check=True, env=env,
                           stdout=subprocess.DEVNULL)

        files = [os.path.join("data", f"d{i}") for i in range(4)]
        read = {"root": [], "user": []}
        walk = {"root": [], "user": []}
        entries = 0
        try:
            for _ in range(REPEAT):
                for who in ("root", "user"):
                    mount(who)
                    walk[who].append(timed(NOBODY + ["find", os.path.join(mps[who], "root"),
                                                     "-printf", "%s %m %u\n"], check=False))
                    read[who].append(timed(NOBODY + ["cat", *[os.path.join(mps[who], f) for f in files]]))
                    if not entries:
                        entries = len(subprocess.run(NOBODY + ["find", os.path.join(mps[who], "root")],
                                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout.splitlines())
                    umount(who)
        finally:
            for who in ("root", "user"):
                subprocess.run([BIN, "umount", mps[who]], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
            d.terminate()
            d.wait()
        mb = 4 * 64 * (1 << 20) / 1e6
        rate = {w: mb / statistics.median(t) for w, t in read.items()}
        walk_s = {w: statistics.median(t) for w, t in walk.items()}
        fmt = lambda ts: ", ".join(f"{t:.3f}" for t in ts)
        out = [
            "# Another user's mount vs an administrator's (same image, same store)",
            "",
            f"Command: `sudo python3 bench/user_mount.py` (run {time.strftime('%Y-%m-%d')}, 2 cores, "
            f"shared VM; median of {REPEAT}, interleaved; absolute times are noisy, ratios are the result).",
            "",
            "The same image from one local store, mounted by root and by user 65534 (whose mount "
            "reads every object with their identity: the serving thread's ids switched and back), "
            f"each read by user 65534; page cache, dentries and inodes dropped before every run. "
            f"Walk: a Debian root, {entries} entries, each mount made afresh.",
            "",
            "| mount | sequential read, 256 MiB (MB/s) | every run (s) | metadata walk (s) | every run (s) |",
            "|---|---|---|---|---|",
        ]
        for w, name in (("root", "root's (the anchor)"), ("user", "user 65534's")):
            out.append(f"| {name} | {rate[w]:.0f} | {fmt(read[w])} | {walk_s[w]:.3f} | {fmt(walk[w])} |")
        out += [
            "",
            f"- **user's read throughput / root's: {rate['user'] / rate['root']:.2f}**",
            f"- user's walk time / root's: {walk_s['user'] / walk_s['root']:.2f}",
            "",
        ]
        os.makedirs(os.path.join(TOP, "bench/results"), exist_ok=True)
        with open(os.path.join(TOP, "bench/results/user-mount.md"), "w") as fh:
            fh.write("\n".join(out))
        print("\n".join(out))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
