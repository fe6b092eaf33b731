#!/usr/bin/env bash
# The agent's `net` on a real kernel: run by tests/agent_net.rs under `unshare -n` (this
# namespace is the "host", a second one the "guest"). The guest's TCP connections from its
# old address (one it made, one a dual-stack server accepted) are aborted in the guest and
# the host's ends hear nothing (no reset reaches the peers of a clone's parent); the address, mask and default route are the new ones; a
# gratuitous ARP for the new address reaches the host's side.
set -euo pipefail
AGENT=$1
ip link set lo up
unshare -n sleep 60 & G=$!
trap 'kill $G 2>/dev/null' EXIT
for _ in $(seq 50); do [ "$(readlink /proc/$G/ns/net)" != "$(readlink /proc/self/ns/net)" ] && break; sleep 0.05; done
ip link add peer0 type veth peer name eth0 netns $G
ip addr add 10.9.0.1/24 dev peer0; ip link set peer0 up
nsenter -t $G -n sh -c 'ip addr add 10.9.0.5/24 dev eth0; ip link set eth0 up; ip link set lo up'
python3 - "$G" "$AGENT" <<'PY'
import socket, subprocess, sys
g, agent = sys.argv[1], sys.argv[2]
l = socket.socket(); l.bind(("10.9.0.1", 9000)); l.listen()
# The guest: a client connection from its address, and a dual-stack server's accepted
# connection (::ffff:10.9.0.5 on an IPv6 socket).
client = subprocess.Popen(["nsenter", "-t", g, "-n", "python3", "-c", """
import socket
srv = socket.socket(socket.AF_INET6); srv.bind(("::", 9001)); srv.listen()
c = socket.socket(); c.connect(("10.9.0.1", 9000)); print("connected", flush=True)
s, _ = srv.accept()
for name, k in (("client", c), ("server", s)):
    try:
        print(name, "read", k.recv(10), flush=True)
    except OSError as e: print(name, "error", e.errno, flush=True)
"""], stdout=subprocess.PIPE, text=True)
print(client.stdout.readline().strip(), flush=True)
a, peer = l.accept()
h2 = socket.create_connection(("10.9.0.5", 9001))
cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806)); cap.bind(("peer0", 0)); cap.settimeout(5)
r = subprocess.run(["nsenter", "-t", g, "-n", agent, "net", "10.9.0.6::10.9.0.1:255.255.255.0:h:eth0:off", "02:aa:bb:cc:dd:ee"], capture_output=True, text=True)
print("agent", r.returncode, r.stderr.strip(), flush=True)
print(client.stdout.readline().strip(), flush=True)
print(client.stdout.readline().strip(), flush=True)
while True:
    f = cap.recv(100)
    if f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x01" and f[28:32] == f[38:42]:
        print("garp", socket.inet_ntoa(f[28:32]), f[22:28].hex(":"), flush=True); break
for name, k in (("host end", a), ("host client", h2)):
    k.settimeout(1)
    try: print(name, "read", k.recv(10), flush=True)
    except socket.timeout: print(name, "quiet", flush=True)
    except OSError as e: print(name, "error", e.errno, flush=True)
PY
nsenter -t $G -n sh -c 'ip -4 -o addr show eth0; ip route; ip -o link show eth0'
# A malformed address changes nothing and says so.
nsenter -t $G -n "$AGENT" net "10.9.0.999::x" || echo "bad address refused $?"
nsenter -t $G -n sh -c 'ip -4 -o addr show eth0'
