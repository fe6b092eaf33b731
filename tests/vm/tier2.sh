#!/usr/bin/env bash
# Tier 2: Starling's VMM boots the stock Debian cloud kernel under real KVM, inside a QEMU
# (TCG) test host whose CPU model exposes SVM (see shared/MACHINES.md).
#
#   tests/vm/tier2.sh STARLING WORKDIR
#
# Builds, with Starling's own commands: the kernel (`vm kernel fetch`), the inner guest's
# initramfs (virtio modules, a static vsock client, inner-run.sh), an ext4 disk with a marker,
# and the test host's initramfs (KVM modules, the starling binary and its libraries, all of the
# above, outer-run.sh). Then boots the test host and writes its console to WORKDIR/console.log.
# Needs: qemu-system-x86, busybox-static, e2fsprogs, a C compiler with static glibc, apt-get.
# The bench reuses it: INNER_RUN and OUTER_RUN replace the scripts the two inits run, and
# OUTER_ADD lists more SRC:DEST files for the test host. TIER2_SCENARIOS (e.g.
# "fork:180,pool:180") picks outer-run.sh's scenarios and their deadlines; TIER2_REUSE=1 boots
# the test host built by an earlier run in WORKDIR without building it again; TIER2_RUN_ROOTFS
# ("DIR_A DIR_B [DIR_SYSTEMD]") builds the run scenario's disk (below), with the contents of
# the directory TIER2_RUN_ADD added; TIER2_PANIC_AFTER=N
# panics the test host after N seconds (to exercise the test's replacement of dead hosts).
set -euo pipefail
starling=$(realpath "$1")
work=$(realpath -m "$2")
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$work"
cd "$work"
export STARLING_HOME="${STARLING_HOME:-$work/store}"

if [ -n "${TIER2_REUSE:-}" ] && [ -s outer.img ]; then
  echo "tier2: reusing the test host in $work" >&2
else
  if [ ! -s kernel.json ]; then
    "$starling" vm kernel fetch --json > kernel.json.tmp
    mv kernel.json.tmp kernel.json
  fi
  image=$(python3 -c 'import json,sys; print(json.load(open("kernel.json"))["image"])')

  cc -static -O2 -o vsock-hello "$here/vsock-hello.c"
  cc -static -O2 -o starling-agent "$here/../../crates/guest/agent/starling-agent.c"
  rm -rf disk-root && mkdir disk-root && echo "starling-tier2-marker" > disk-root/marker
  rm -f disk.img && mkfs.ext4 -q -F -d disk-root disk.img 4M

  # tcp_diag beside the default modules: a clone's agent aborts the TCP connections from its
  # parent's address with it (the net scenario checks).
  "$starling" vm initramfs --kernel-image "$image" --vmlinuz vmlinuz --vmlinux vmlinux \
    --modules virtio_mmio,virtio_blk,virtio_rng,vmw_vsock_virtio_transport,virtio_net,tcp_diag \
    --add "$work/vsock-hello:/bin/vsock-hello" --add "$work/starling-agent:/bin/starling-agent" --add "${INNER_RUN:-$here/inner-run.sh}:/etc/starling/run" \
    -o inner.img

  objcopy --strip-debug "$starling" starling.bin
  vmm_add=()
  if [ -x "$(dirname "$starling")/starling-vmm" ]; then
    objcopy --strip-debug "$(dirname "$starling")/starling-vmm" starling-vmm.bin
    vmm_add=(--add "$work/starling-vmm.bin:/bin/starling-vmm")
  fi
  libs=()
  # The HTTP client will not start without a CA bundle (rustls-platform-verifier), even for
  # the loopback http:// repository of the run scenario.
  [ -s /etc/ssl/certs/ca-certificates.crt ] &&
    libs+=(--add "/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt")
  for lib in $(ldd starling.bin | grep -o '/[^ ]*'); do
    libs+=(--add "$(realpath "$lib"):$lib")
  done
  # The run scenario's disk (TIER2_RUN_ROOTFS="DIR_A DIR_B [DIR_SYSTEMD]": two versions of a
  # Debian root, and one with systemd): a TUF repository holding debian:bookworm at both
  # versions (and debian:systemd), served inside the test host,
  # and the kernel tree `starling run --kernel` takes. Seen there as /dev/vda.
  if [ -n "${TIER2_RUN_ROOTFS:-}" ]; then
    set -- $TIER2_RUN_ROOTFS
    rm -rf run-disk && mkdir -p run-disk
    "$starling" repo init run-disk/repo > /dev/null
    "$starling" image import "$1" debian:bookworm > run-disk/version-a.txt
    "$starling" push debian:bookworm run-disk/repo > /dev/null
    "$starling" image import "$2" debian:bookworm > run-disk/version-b.txt
    "$starling" push debian:bookworm run-disk/repo > /dev/null
    if [ -n "${3:-}" ]; then # a root that boots with systemd
      "$starling" image import "$3" debian:systemd > /dev/null
      "$starling" push debian:systemd run-disk/repo > /dev/null
    fi
    "$starling" image export "$image" run-disk/kernel > /dev/null
    # A package for a VM to install through `starling exec` (and `commit` to keep).
    debs="${STARLING_TEST_CACHE:-/var/cache/starling-test}/debs"
    mkdir -p "$debs"
    ls "$debs"/less_*.deb > /dev/null 2>&1 || (cd "$debs" && apt-get download less > /dev/null)
    cp "$(ls "$debs"/less_*.deb | head -1)" run-disk/less.deb
    # More for the disk (the benchmark's ext4 export and its initramfs).
    [ -z "${TIER2_RUN_ADD:-}" ] || cp -a "$TIER2_RUN_ADD"/. run-disk/
    rm -f run.img && mkfs.ext4 -q -F -d run-disk run.img 2G
  fi

  # The power scenario: dmsetup and its libraries, and a blank ext4 for its store (mostly
  # zeros: little in the compressed initramfs).
  dm_add=()
  if command -v dmsetup > /dev/null; then
    dm_add=(--add "$(command -v dmsetup):/bin/dmsetup")
    for lib in $(ldd "$(command -v dmsetup)" | grep -o '/[^ ]*'); do
      dm_add+=(--add "$(realpath "$lib"):$lib")
    done
  fi
  rm -f power.img && mkfs.ext4 -q -F power.img 96M
  "$starling" vm initramfs --kernel-image "$image" --modules kvm_amd,kvm_intel,virtio_pci,virtio_blk,tun,bridge,nf_tables,nft_chain_nat,nft_nat,nft_masq,loop,dm_flakey \
    --add "$work/starling.bin:/bin/starling" "${vmm_add[@]}" "${libs[@]}" "${dm_add[@]}" \
    --add "$work/power.img:/vm/power.img" \
    --add "$work/vmlinuz:/vm/vmlinuz" --add "$work/vmlinux:/vm/vmlinux" --add "$work/inner.img:/vm/inner.img" \
    --add "$work/disk.img:/vm/disk.img" --add "${OUTER_RUN:-$here/outer-run.sh}:/etc/starling/run" \
    $(for f in ${OUTER_ADD:-}; do printf -- '--add %s ' "$f"; done) \
    -o outer.img
fi

# The test host's heartbeat (outer-run.sh, every 2 s) arrives on its second serial port. With
# TIER2_HEARTBEAT=1 (the test sets it; the benchmarks' own outer scripts beat no heart) a host
# that stops beating for 30 s (120 s before the first beat) is dead: it is stopped and
# WORKDIR/host-died says why, which is what the test takes as a dead host (and nothing else
# but panic text on its console).
rm -f heartbeat.log host-died
timeout "${TIER2_TIMEOUT:-400}" qemu-system-x86_64 -accel "tcg,thread=${TIER2_TCG_THREAD:-multi}" -M q35 -cpu max \
  -smp 2 -m 2048 -display none -no-reboot -kernel vmlinuz -initrd outer.img \
  -serial mon:stdio -serial file:heartbeat.log \
  $( [ -s run.img ] && echo "-drive file=run.img,if=virtio,format=raw,readonly=on" ) \
  -append "console=ttyS0 panic=-1 quiet${TIER2_SCENARIOS:+ starling.scenarios=$TIER2_SCENARIOS}${TIER2_PANIC_AFTER:+ starling.panic_after=$TIER2_PANIC_AFTER}" \
  < /dev/null > console.log 2>&1 &
qemu=$!
[ -n "${TIER2_HEARTBEAT:-}" ] && (
  started=$(date +%s)
  while sleep 5; do
    now=$(date +%s)
    if [ -s heartbeat.log ]; then
      last=$(stat -c %Y heartbeat.log) grace=30
    else
      last=$started grace=120
    fi
    if [ $((now - last)) -gt $grace ]; then
      echo "no heartbeat from the test host for $((now - last)) s" > host-died
      kill "$qemu" 2>/dev/null
      exit 0
    fi
  done
) &
watchdog=$!
[ -n "${TIER2_HEARTBEAT:-}" ] || watchdog=
status=0
wait "$qemu" || status=$?
if [ -n "$watchdog" ]; then
  kill "$watchdog" 2>/dev/null || true
  wait "$watchdog" 2>/dev/null || true
fi
if [ "$status" != 0 ]; then
  echo "qemu failed or timed out (status $status); console in $work/console.log" >&2
  exit 1
fi
