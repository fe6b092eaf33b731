"""Helpers the VM benchmarks share: HTTP over a monitor's unix socket, polling, process state."""
import json
import os
import socket
import subprocess
import time


def api(sock, method, path, body=None, timeout=120):
    """One request on a new connection; returns (status, parsed JSON body or None). Reads
    exactly the response (by Content-Length: Firecracker keeps connections open)."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(sock)
    data = json.dumps(body) if body is not None else ""
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(data)}\r\n\r\n{data}".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        b = s.recv(65536)
        if not b:
            break
        buf += b
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    code = int(lines[0].split()[1])
    length = None
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v)
    if length is None and code in (204, 304):
        length = 0
    while length is None or len(rest) < length:
        b = s.recv(65536)
        if not b:
            break
        rest += b
    s.close()
    return code, json.loads(rest) if rest.strip() else None


def wait(what, f, timeout=60, step=0.0005):
    """Polls f until it returns something true (errors count as not yet); exits the bench
    after `timeout` seconds."""
    t = time.monotonic()
    while True:
        try:
            r = f()
            if r:
                return r
        except (OSError, ValueError):
            pass
        if time.monotonic() - t > timeout:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(step)


def ended(pid):
    """Whether a process is gone (or a zombie: its memory is freed)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def kvm_flavour():
    return next((k for k in ("kvm_intel", "kvm_amd", "kvm_pvm") if os.path.exists(f"/sys/module/{k}")), "unknown")


# Every monitor a bench started, so that a failing run leaves none behind (a spinning guest
# would eat a core of whatever runs next): `kill_started` in the bench's `finally`.
STARTED = []


def spawn(args, **kw):
    """Starts a process with no terminal I/O unless asked for, and remembers it."""
    for stream in ("stdin", "stdout", "stderr"):
        kw.setdefault(stream, subprocess.DEVNULL)
    p = subprocess.Popen(args, **kw)
    STARTED.append(p)
    return p


def kill_started():
    for p in STARTED:
        if p.poll() is None:
            p.kill()
            p.wait()


def checked_out(root):
    """The checked-out commit, for a results file."""
    return subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def resident_beyond(pid, guest_mib):
    """(resident KiB, of which private anonymous KiB) of every mapping of `pid` but guest RAM
    (the mappings of at least guest_mib MiB)."""
    rss = anon = size = 0
    for line in open(f"/proc/{pid}/smaps"):
        parts = line.split()
        if parts[0] == "Size:":
            size = int(parts[1])
        elif size < guest_mib * 1024 and parts[0] == "Rss:":
            rss += int(parts[1])
        elif size < guest_mib * 1024 and parts[0] == "Anonymous:":
            anon += int(parts[1])
    return rss, anon


def stop_vm(sock, p):
    """Stops the VM behind API socket `sock` (its monitor `p`), killing it if the API is gone."""
    try:
        api(sock, "POST", "/v1/vm/stop")
    except OSError:
        p.kill()
    p.wait(timeout=30)


def running(sock):
    """Whether the VM's API reports it running."""
    code, st = api(sock, "GET", "/v1/vm")
    return code == 200 and st["state"] == "running"


def has_line(path):
    """Whether the file holds a whole line (a guest's first console line)."""
    with open(path, "rb") as f:
        return b"\n" in f.read()


def alternate(f, runs):
    """Runs f(True, i) and f(False, i) `runs` times each, alternating which goes first so
    neither side always runs on a warmer machine; returns (the True side's, the False side's)."""
    yes, no = [], []
    for i in range(runs):
        order = [(True, yes), (False, no)] if i % 2 == 0 else [(False, no), (True, yes)]
        for side, out in order:
            out.append(f(side, i))
    return yes, no
