#!/usr/bin/env python3
"""The benchmark figures quoted in README.md and docs/ARCHITECTURE.md, taken from bench/results.

Every figure in those two documents is written as

    <!--fig KEY-->VALUE<!--/fig-->

where KEY names a figure below (which results file, how it is read from it, how it is
printed). `--write` puts each figure's value from bench/results into the documents; `--check`
(run by the test suite, crates/cli/tests/doc_figures.rs) fails when a document's figure differs
from its results file, names an unknown figure, or quotes a performance number (ms, µs, a
ratio such as 0.5x, MB/s) outside such a marker, unless it is listed in NOT_FIGURES with the
reason it is not a benchmark result.

    python3 bench/figures.py --check | --write
"""
import json
import os
import re
import sys

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(TOP, "bench/results")
DOCS = ["README.md", "docs/ARCHITECTURE.md"]


def results(name):
    with open(os.path.join(RESULTS, name)) as fh:
        return fh.read()


def block(name, key):
    """A value from the results file's `<!-- figures {...} -->` line (written by its bench)."""
    m = re.search(r"<!-- figures (\{.*\}) -->", results(name))
    if not m:
        raise KeyError(f"bench/results/{name} has no figures line")
    return json.loads(m.group(1))[key]


def block_or(name, key, pattern):
    """From the figures line if the results file has one, else found in its text (results
    written before their bench printed a figures line)."""
    try:
        return block(name, key)
    except KeyError:
        return find(name, pattern)


def find_any(name, *patterns):
    """The first of several ways a results file (of this or an earlier version of its bench)
    prints a figure."""
    for p in patterns[:-1]:
        try:
            return find(name, p)
        except KeyError:
            pass
    return find(name, patterns[-1])


def find(name, pattern, group=1):
    """A number the results file prints, found by a regular expression."""
    m = re.search(pattern, results(name))
    if not m:
        raise KeyError(f"bench/results/{name}: nothing matches {pattern!r}")
    return float(m.group(group))


def row(name, label, column):
    """Column `column` (0 = first after the label) of the table row starting with `label`."""
    for line in results(name).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == label:
            return float(re.sub(r"[^\d.]", "", cells[column + 1]))
    raise KeyError(f"bench/results/{name}: no row {label!r}")


def fixed(digits):
    return lambda v: f"{v:.{digits}f}"


# KEY: (how to get it, how to print it)
FIGURES = {
    # Tier 1 snapshots (bench/vm_snapshot.py).
    "vm-snapshot.restore_running_ms": (lambda: block_or("vm-snapshot.md", "restore_running_ms", r"\| Starling `starling-vmm --restore` \| ([\d.]+) \|"), fixed(1)),
    "vm-snapshot.restore_resident_ms": (lambda: block("vm-snapshot.md", "restore_resident_ms"), fixed(1)),
    "vm-snapshot.restore_inner_ms": (lambda: block_or("vm-snapshot.md", "restore_inner_ms", r"median\s+([\d.]+) ms \(goal"), fixed(1)),
    "vm-snapshot.restore_running_vs_qemu": (lambda: block_or("vm-snapshot.md", "restore_running_vs_qemu", r"\*\*ratio Starling / QEMU\*\* \| \*\*([\d.]+)x"), fixed(2)),
    "vm-snapshot.restore_resident_vs_qemu": (lambda: block("vm-snapshot.md", "restore_resident_vs_qemu"), fixed(2)),
    "vm-snapshot.state_kib": (lambda: block_or("vm-snapshot.md", "state_bytes", r"(\d+) bytes of state") / 1024, fixed(1)),
    "vm-snapshot.fork_paused_ms": (lambda: block_or("vm-snapshot.md", "fork_paused_ms", r"one clone: parent paused \| ([\d.]+)"), fixed(1)),
    "vm-snapshot.fork_one_ms": (lambda: block_or("vm-snapshot.md", "fork_one_ms", r"request to the clone running \| ([\d.]+)"), fixed(1)),
    "vm-snapshot.fork_100_ms": (lambda: block("vm-snapshot.md", "fork_100_ms"), fixed(0)),
    "vm-snapshot.clone_host_mib": (lambda: block("vm-snapshot.md", "clone_host_mib"), fixed(2)),
    "vm-snapshot.lazy_moved_vs_touched": (lambda: block("vm-snapshot.md", "lazy_moved_vs_touched"), fixed(2)),
    # Tier 2 restore of a booted Debian guest (bench/vm_restore.sh).
    "vm-restore.running_vs_qemu": (lambda: find("vm-restore.md", r"\*\*Starling / QEMU: ([\d.]+)x"), fixed(2)),
    # starling run against virtio-blk in the test host (bench/vm_run.sh).
    "vm-firecracker.boot_vs_fc": (lambda: block("vm-firecracker.md", "boot_vs_fc"), fixed(2)),
    "vm-firecracker.boot_vs_fc_memory_first": (lambda: block("vm-firecracker.md", "boot_vs_fc_memory_first"), fixed(2)),
    "vm-firecracker.restore_vs_fc": (lambda: block("vm-firecracker.md", "restore_vs_fc"), fixed(2)),
    "vm-firecracker.restore_vs_fc_memory_first": (lambda: block("vm-firecracker.md", "restore_vs_fc_memory_first"), fixed(2)),
    "vm-firecracker.snapshot_faster": (lambda: block("vm-firecracker.md", "snapshot_faster"), fixed(0)),
    "vm-firecracker.snapshot_smaller": (lambda: block("vm-firecracker.md", "snapshot_smaller"), fixed(0)),
    "vm-firecracker.copies_vs_fc": (lambda: block("vm-firecracker.md", "copies_vs_fc"), fixed(2)),
    "vm-firecracker.memory_vs_fc": (lambda: block("vm-firecracker.md", "memory_vs_fc"), fixed(2)),
    "vm-firecracker.private_memory_vs_fc": (lambda: block("vm-firecracker.md", "private_memory_vs_fc"), fixed(2)),
    "vm-firecracker-tier2.boot_vs_fc": (lambda: block("vm-firecracker-tier2.md", "boot_vs_fc"), fixed(2)),
    "vm-firecracker-tier2.boot_vs_fc_memory_first": (lambda: block("vm-firecracker-tier2.md", "boot_vs_fc_memory_first"), fixed(2)),
    "vm-firecracker-tier2.restore_vs_fc": (lambda: block("vm-firecracker-tier2.md", "restore_vs_fc"), fixed(2)),
    "vm-firecracker-tier2.restore_vs_fc_memory_first": (lambda: block("vm-firecracker-tier2.md", "restore_vs_fc_memory_first"), fixed(2)),
    "vm-firecracker-tier2.memory_vs_fc": (lambda: block("vm-firecracker-tier2.md", "memory_vs_fc"), fixed(2)),
    "jail.restore_inside_ms": (lambda: block("jail.md", "restore_inside_jail_ms"), fixed(2)),
    "jail.restore_ms": (lambda: block("jail.md", "restore_jail_ms"), fixed(2)),
    "jail.boot_ms": (lambda: block("jail.md", "boot_jail_ms"), fixed(2)),
    "jail.fork_ms": (lambda: block("jail.md", "fork_jail_ms"), fixed(2)),
    "jail_ns.restore_ms": (lambda: block("jail-namespace.md", "restore_ms"), fixed(2)),
    "jail_ns.boot_ms": (lambda: block("jail-namespace.md", "boot_ms"), fixed(2)),
    "jail_ns.fork_ms": (lambda: block("jail-namespace.md", "fork_ms"), fixed(2)),
    "cli-overhead.restore_ms": (lambda: block("cli-overhead.md", "restore_cli_over_vmm_ms"), fixed(2)),
    "cli-overhead.run_ms": (lambda: block("cli-overhead.md", "run_cli_over_vmm_ms"), fixed(2)),
    "cli-overhead.pool_run_ms": (lambda: block("cli-overhead.md", "pool_run_outside_activation_ms"), fixed(1)),
    "cli-overhead.pool_run_over_start_ms": (lambda: block("cli-overhead.md", "pool_run_over_vmm_start_ms"), fixed(1)),
    "cli-overhead.cli_private_kib": (lambda: block("cli-overhead.md", "cli_monitor_private_kib"), fixed(0)),
    "cli-overhead.vmm_private_kib": (lambda: block("cli-overhead.md", "vmm_private_kib"), fixed(0)),
    "vm-run.cold_fetched_vs_read": (lambda: find("vm-run.md", r"\*\*fetched / read: ([\d.]+)\*\*"), fixed(2)),
    "vm-run.warm_vs_qemu": (lambda: find("vm-run.md", r"/ QEMU virtio-blk: ([\d.]+)x"), fixed(2)),
    "vm-run.warm_vs_blk": (lambda: find("vm-run.md", r"\*\*starling run / Starling virtio-blk: ([\d.]+)x\*\*"), fixed(2)),
    "vm-run.walk_vs_blk": (lambda: find("vm-run.md", r"\*\*walk, starling run / Starling virtio-blk: ([\d.]+)x\*\*"), fixed(1)),
    "vm-net.to_guest_vs_qemu": (lambda: block("vm-net.md", "to_guest_vs_qemu"), fixed(2)),
    "vm-net.from_guest_vs_qemu": (lambda: block("vm-net.md", "from_guest_vs_qemu"), fixed(2)),
    "vm-net.rtt_vs_qemu": (lambda: block("vm-net.md", "rtt_vs_qemu"), fixed(2)),
    "vm-net.http_vs_qemu": (lambda: block("vm-net.md", "http_vs_qemu"), fixed(2)),
    "vm-net.cpu_per_gib_vs_qemu": (lambda: block("vm-net.md", "cpu_per_gib_vs_qemu"), fixed(2)),
    "vm-fork-net.answering_ms": (lambda: block("vm-fork-net.md", "answering_ms"), fixed(0)),
    "vm-run.read_vs_blk": (lambda: find("vm-run.md", r"\*\*sequential read, starling run / Starling virtio-blk: ([\d.]+)\*\*"), fixed(2)),
    # Pull (bench/repo_pull.py).
    # Lazy clones on other hosts (bench/vm_cross_host.py).
    "vm-cross-host.fanout_link_ratio": (lambda: block("vm-cross-host.md", "fanout_link_ratio"), fixed(3)),
    "vm-cross-host.direct_link_ratio": (lambda: block("vm-cross-host.md", "direct_link_ratio"), fixed(3)),
    # A site of hosts behind one cache (bench/site.py).
    "site.origin_over_unique_squid": (lambda: block("site.md", "origin_over_unique_squid"), fixed(3)),
    "site.origin_over_unique_direct": (lambda: block("site.md", "origin_over_unique_direct"), fixed(3)),
    "site.read_squid_vs_pulls": (lambda: block("site.md", "read_squid_vs_pulls"), fixed(2)),
    "site.pull_squid_vs_pulls": (lambda: block("site.md", "pull_squid_vs_pulls"), fixed(2)),
    "site.group_squid_vs_pulls": (lambda: block("site.md", "group_squid_vs_pulls"), fixed(2)),
    "repo-pull.pull_vs_curl": (lambda: find("repo-pull.md", r"starling pull / curl: \*\*([\d.]+)\*\*"), fixed(2)),
    "repo-pull.second_version_objects": (lambda: find("repo-pull.md", r"second version \(one file changed\): (\d+) of"), fixed(0)),
    # Registry import (bench/registry_import.py).
    "registry-import.direct_vs_two": (lambda: block("registry-import.md", "direct_vs_two"), fixed(2)),
    "registry-import.direct_vs_skopeo": (lambda: block("registry-import.md", "direct_vs_skopeo"), fixed(1)),
    # Lazy mounts (bench/fs_read.py).
    "fs-read.read_vs_squashfuse": (lambda: find_any("fs-read.md", r"Starling read throughput / squashfuse's, both at 1 MiB read-ahead: ([\d.]+)",
                                                    r"against squashfuse given the same 1 MiB read-ahead: ([\d.]+)"), fixed(2)),
    "fs-read.read_vs_squashfuse_128k": (lambda: find("fs-read.md", r"the same, both at the default 128 KiB: ([\d.]+)"), fixed(2)),
    "fs-read.walk_cold_vs_squashfuse": (lambda: find("fs-read.md", r"Starling walk time / squashfuse's, cold: ([\d.]+)"), fixed(2)),
    "fs-read.walk_warm_vs_squashfuse": (lambda: find("fs-read.md", r"the same, warm, same lifetimes: ([\d.]+)"), fixed(2)),
    "fs-read.fetched_vs_read": (lambda: find("fs-read.md", r"data fetched / data read: \*\*([\d.]+)\*\*"), fixed(2)),
    "fs-read.meta_mib": (lambda: find("fs-read.md", r"metadata \(commit, trees\): \d+ \(([\d.]+) MiB\)"), fixed(1)),
    "fs-read.wire_percent": (lambda: 100 * find("fs-read.md", r"= ([\d.]+) of the image"), fixed(1)),
    # Store import and the parameter sweep (bench/store_import.py).
    "store-import.bytes_vs_anchor": (lambda: find("store-import.md", r"smaller anchor's: \*\*([\d.]+)\*\*"), fixed(2)),
    "store-import.casync_bytes": (lambda: row("store-import.md", "casync", 4), fixed(2)),
    "store-import.time_vs_ostree": (lambda: find("store-import.md", r"import time / ostree's: \*\*([\d.]+)\*\*"), fixed(2)),
    "store-import.time_vs_casync": (lambda: find("store-import.md", r"/ casync's: \*\*([\d.]+)\*\*"), fixed(2)),
    # Disk images (bench/disk_convert.py).
    "disk-convert.import_vs_classic": (lambda: find("disk-convert.md", r"starling import time / classic: \*\*([\d.]+)\*\*"), fixed(2)),
    "store-import.zstd19_time": (lambda: row("store-import.md", "zstd 19", 0) / row("store-import.md", "zstd 9 (default)", 0), fixed(0)),
    "store-import.zstd19_saves_percent": (lambda: 100 * (1 - row("store-import.md", "zstd 19", 1) / row("store-import.md", "zstd 9 (default)", 1)), fixed(0)),
    "store-import.zstd3_costs_percent": (lambda: 100 * (row("store-import.md", "zstd 3", 1) / row("store-import.md", "zstd 9 (default)", 1) - 1), fixed(1)),
}

# Numbers with a performance unit in the documents that are not benchmark results, by the
# words around them, and why.
NOT_FIGURES = {
    "wait 40 ms for delayed ACKs": "how Linux TCP delays ACKs, not a measurement of ours",
    "a 10 ms status poll": "a polling interval, a parameter",
    "0 of 12 at 100 ms": "a polling interval (and a count of test-host boots, not a benchmark)",
}

MARK = re.compile(r"<!--fig ([\w.-]+)-->(.*?)<!--/fig-->", re.S)
UNIT = re.compile(r"\d+(?:\.\d+)?(?:\s*[–-]\s*\d+(?:\.\d+)?)?[ \t\n]{0,6}(?:ms|µs|x|MB/s|MiB/s|GB/s)(?![\w])")


def value(key):
    get, fmt = FIGURES[key]
    return fmt(get())


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "--check"
    if mode not in ("--check", "--write"):
        sys.exit(__doc__)
    problems = []
    for doc in DOCS:
        path = os.path.join(TOP, doc)
        text = open(path).read()

        def put(m):
            key, old = m.group(1), m.group(2)
            if key not in FIGURES:
                problems.append(f"{doc}: unknown figure {key!r}")
                return m.group(0)
            try:
                new = value(key)
            except KeyError as e:
                problems.append(f"{doc}: figure {key}: {e}")
                return m.group(0)
            if new != old:
                if mode == "--check":
                    problems.append(f"{doc}: figure {key} says {old}, bench/results says {new}")
                return f"<!--fig {key}-->{new}<!--/fig-->"
            return m.group(0)

        new_text = MARK.sub(put, text)
        unmarked = MARK.sub("FIGURE", text)
        for phrase in NOT_FIGURES:
            unmarked = unmarked.replace(phrase, "")
        for m in UNIT.finditer(unmarked):
            line = unmarked.count("\n", 0, m.start()) + 1
            context = unmarked[max(0, m.start() - 30):m.end() + 10].replace("\n", " ")
            problems.append(f"{doc}:{line}: {m.group(0)!r} is not from bench/results "
                            f"(mark it <!--fig KEY-->, or list it in NOT_FIGURES): ...{context}...")
        if mode == "--write" and new_text != text:
            open(path, "w").write(new_text)
    for p in problems:
        print(p)
    if problems:
        sys.exit(1)
    print(f"figures in {', '.join(DOCS)} match bench/results")


if __name__ == "__main__":
    main()
