#!/usr/bin/env bash
# The Starling demo: builds Starling, makes two real Debian bookworm root file systems that differ
# by a few packages, imports both as versions of one image into the default store, shows how little
# the second version costs, exports it back and checks the export against the original with
# bsdtar's mtree (every file's type, mode, owner, mtime, size, link target and SHA-256) and getfattr,
# publishes it to a signed repository, mounts it lazily, boots it with `starling run`, and forks VMs.
# Needs root (or sudo) for apt and debootstrap. Set STARLING_HOME to use another store.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/deps.sh
install_deps
need_cargo

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "building starling (release)"
cargo build --release --quiet --bin starling --bin starling-vmm
starling=$PWD/target/release/starling

step "making Debian bookworm minbase root file systems (cached after the first run)"
cache=$(tests/fixtures/debian-rootfs.sh)
a=$cache/rootfs-a b=$cache/rootfs-b
echo "a: minbase    b: minbase + less, netbase, python3-minimal"

echo "store: ${STARLING_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/starling}"

step "import a as debian:bookworm"
"$starling" image import --label variant=minbase "$a" debian:bookworm

step "import b as the next version of debian:bookworm: only what changed is stored"
"$starling" image import --label variant=python "$b" debian:bookworm

step "import b again: nothing new to store"
"$starling" image import --label variant=python "$b" debian:bookworm

step "history and store totals"
"$starling" image history debian:bookworm | head -6
"$starling" store stats

step "export debian:bookworm to a directory and a .tar.zst"
out=$(mktemp -d "${TMPDIR:-/tmp}/starling-demo.XXXXXX")
trap 'rm -rf "$out"' EXIT
"$starling" image export debian:bookworm "$out/tree" --format dir
"$starling" image export debian:bookworm "$out/bookworm.tar.zst" --format tar
ls -lh "$out/bookworm.tar.zst" | awk '{ print "tar: " $5 }'

step "verify: the exported tree equals b (bsdtar mtree + xattrs)"
manifest() { # dir: a sorted mtree line for every entry, then every xattr
  (cd "$1" && bsdtar --format=mtree \
    --options='!all,type,mode,uid,gid,time,size,link,sha256,device,nlink' -cf - . | sort
   getfattr -R -h -d -m - --absolute-names . 2>/dev/null | sed '/^$/d')
}
manifest "$b" >"$out/want"
manifest "$out/tree" >"$out/got"
if cmp -s "$out/want" "$out/got"; then
  echo "OK: $(grep -c '^\./' "$out/want") entries identical"
else
  diff "$out/want" "$out/got" | head -20
  echo "MISMATCH between $b and the export" >&2
  exit 1
fi

step "fsck: re-hash every object"
"$starling" store fsck

step "publish to a signed repository, serve it over HTTP, and run python3 from a lazy mount"
"$starling" repo init "$out/repo" --keys "$out/keys" >/dev/null 2>&1
"$starling" push debian:bookworm "$out/repo" --keys "$out/keys"
"$starling" repo serve "$out/repo" --listen 127.0.0.1:0 >"$out/serve.out" 2>/dev/null &
server=$!
"$starling" daemon --state "$out/state" --socket "$out/starlingd.sock" >"$out/daemon.out" 2>"$out/daemon.log" &
daemon=$!
export STARLING_SOCKET=$out/starlingd.sock
trap 'kill $daemon $server 2>/dev/null; wait $daemon 2>/dev/null; rm -rf "$out"' EXIT
for _ in $(seq 100); do [ -s "$out/serve.out" ] && [ -s "$out/daemon.out" ] && break; sleep 0.1; done
url=$(awk '{ print $NF }' "$out/serve.out")
mkdir "$out/mnt"
"$starling" mount "$url" debian:bookworm "$out/mnt" --root "$out/keys/1.root.json"
chroot "$out/mnt" python3 -c 'import sys; print("python", sys.version.split()[0], "ran from a lazy mount")'
"$starling" mounts
"$starling" umount "$out/mnt"

step "starling run: the published image boots as a VM, its root fetched on demand (in a nested test host)"
# This machine's KVM cannot boot Linux in useful time (shared/MACHINES.md), so a QEMU test host
# does: inside it, the repository above is served on loopback, starlingd runs, and `starling run`
# boots both versions of debian:bookworm and a systemd image from a kernel + small initramfs,
# runs commands in them, execs into one and commits its changes, snapshots, restores and forks
# one, docks a pool of the image, and takes the repository away under it
# (tests/vm/outer-run.sh, scenario run; about ten minutes).
work=$out/tier2
mkdir -p "$work"
if STARLING_HOME=$work/store TIER2_SCENARIOS=run:600,hold:420 TIER2_TIMEOUT=1150 TIER2_RUN_ROOTFS="$a $b $cache/rootfs-d" \
  tests/vm/tier2.sh "$starling" "$work" >"$work.out" 2>&1; then
  grep -a '^host: run ' "$work/console.log" | tr -d '\r' | grep -v 'PCI: Fatal' | sed 's/^host: //'
else
  echo "the test host failed: $(tail -1 "$work.out")"
fi

if [ ! -e /dev/kvm ]; then
  echo "(no /dev/kvm here: skipping the VM part of the demo)"
  exit 0
fi
step "VMs as processes: boot a small guest, fork it into 3 clones, snapshot it, restore it"
guest=$("$starling" vm test-guest "$out/guest")
"$starling" vm run --kernel "$guest" --cmdline counter --mem 64M --vsock "3,$out/v.sock" \
  --api-socket "$out/vm.api" --console "$out/vm.log" 2>/dev/null &
vm=$!
ticks() { cat "$1" 2>/dev/null | grep -c '^tick ' || true; }
for _ in $(seq 300); do [ "$(ticks "$out/vm.log")" -ge 3 ] && [ -S "$out/vm.api" ] && break; sleep 0.1; done
echo "the guest counts: $(grep '^tick ' "$out/vm.log" | tail -1)"
"$starling" vm fork "$out/vm.api" -n 3 --dir "$out/forks"
sleep 1
for k in 1 2 3; do
  echo "clone $k: $(grep '^tick ' "$out/forks/clone-$k/console.log" | tail -1)"
  "$starling" vm stop "$out/forks/clone-$k/api.sock"
done
echo "parent:  $(grep '^tick ' "$out/vm.log" | tail -1)"
"$starling" vm snapshot "$out/vm.api" "$out/snap" --stop
wait $vm || true
"$starling" vm restore "$out/snap" --api-socket "$out/r.api" --console "$out/restored.log" 2>/dev/null &
restored=$!
for _ in $(seq 300); do [ "$(ticks "$out/restored.log")" -ge 2 ] && break; sleep 0.1; done
echo "restored: $(grep '^tick ' "$out/restored.log" | head -1) (the snapshot's count goes on)"
"$starling" vm status "$out/r.api"
"$starling" vm stop "$out/r.api"
wait $restored
