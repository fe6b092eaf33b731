#!/bin/sh
# Runs in the QEMU test host for bench/vm_run.sh. The run disk (/dev/vda) holds a TUF
# repository with the bench image (Debian bookworm + python3 + a 128 MiB file), the kernel
# tree, and in bench/ the same image exported to ext4 with a small initramfs that boots it on
# virtio-blk (blk-run.sh). Reports, one "bench:" line each:
# - cold: `starling run` of a python3 command with an empty host cache, the origin on
#   loopback: what the guest read through virtio-fs and what was fetched for it;
# - the boot artifact's files;
# - warm (host cache full after one priming run), ROUNDS rounds, alternating: `starling run --
#   /bin/true` and the walk-and-read command (io.sh), against the ext4 export booted on
#   virtio-blk by Starling's monitor and by QEMU (microvm), same kernel, 1 vCPU, 256 MiB.
ROUNDS=${ROUNDS:-3}
mkdir -p /run-disk /tmp
# Guest RAM: QEMU's is anonymous memory, Starling's a memfd (shmem), so that a snapshot can
# take it without a copy. Huge pages (KVM then maps guest memory 2 MiB at a time; in this
# nested host 4 KiB mappings cost a guest exit each) reach shmem only with this host setting,
# the one docs/ARCHITECTURE.md asks operators for; anonymous memory has them already.
echo advise > /sys/kernel/mm/transparent_hugepage/shmem_enabled
echo "bench: host thp enabled=$(cat /sys/kernel/mm/transparent_hugepage/enabled) shmem=$(cat /sys/kernel/mm/transparent_hugepage/shmem_enabled)"
mount -t ext4 -o ro,noload /dev/vda /run-disk || { echo "bench: no run disk"; exit 1; }
# ROUNDS and TRACE as bench/vm_run.sh was given them.
[ -f /run-disk/bench/env ] && . /run-disk/bench/env
ip link set lo up
export STARLING_HOME=/tmp/run-store STARLING_SOCKET=/tmp/sd.sock
/bin/starling repo serve /run-disk/repo --listen 127.0.0.1:8080 > /tmp/serve.out 2> /tmp/serve.log &
/bin/starling daemon --state /tmp/sd --socket /tmp/sd.sock > /tmp/sd.out 2> /tmp/sd.log &
i=0
until grep -q ready /tmp/sd.out 2>/dev/null && grep -q http /tmp/serve.out 2>/dev/null || [ $i -ge 100 ]; do sleep 0.1; i=$((i+1)); done
url=http://127.0.0.1:8080/
root=/run-disk/repo/metadata/1.root.json
kernel=$(ls /run-disk/kernel/boot/vmlinuz-* | head -1)
cmdline="console=ttyS0 reboot=k panic=-1 pci=off quiet loglevel=3"
now() { read up _ < /proc/uptime; echo "$up"; }
srun() { # NAME CMD...: starling run of the bench image, 1 vCPU, 256 MiB
  name=$1; shift
  timeout 300 /bin/starling run --name "$name" --kernel /run-disk/kernel --vcpus 1 --mem 256M \
    --root $root $url debian:bookworm -- "$@" < /dev/null
}

t0=$(now)
srun cold /usr/bin/python3 -c 'import argparse, datetime, email.parser' > /tmp/cold.out 2>&1
st=$?
t1=$(now)
echo "bench: cold status=$st secs=$(echo "$t0 $t1" | awk '{print $2 - $1}')"
grep -a 'virtio-fs' /tmp/sd/vms/cold/monitor.log | sed 's/^/bench: cold monitor: /'
echo "bench: cold cache: $(/bin/starling cache stats --json | tr -d '\n ')"
for f in /tmp/sd/boot/*/*; do echo "bench: artifact $(basename "$f") $(wc -c < "$f")"; done
/bin/starling rm cold > /dev/null

# Fill the host cache with what the measured commands read (again if the test host's
# emulated SVM reset the guest on the way: the later runs must find the cache full).
srun prime /bin/sh /var/bench/io.sh > /tmp/prime.out 2>&1
st=$?
if [ $st != 0 ]; then
  echo "bench: prime status=$st (once more)"
  /bin/starling rm prime > /dev/null
  srun prime /bin/sh /var/bench/io.sh > /tmp/prime.out 2>&1
  st=$?
fi
echo "bench: prime status=$st $(grep -a 'bench-io' /tmp/prime.out | tr -d '\r')"
[ $st = 0 ] || tail -c 600 /tmp/prime.out | tr -d '\r' | sed 's/^/bench: prime failed: /'
tail -c 300 /tmp/sd/vms/prime/monitor.log 2>/dev/null | sed 's/^/bench: prime monitor: /'
/bin/starling rm prime > /dev/null

# Each console line with when it arrived (seconds since the command started): where a
# boot's time goes, from the host's side.
stamp() {
  while IFS= read -r l; do echo "$(now) $l"; done
}
one() { # MONITOR KIND COMMAND...: time a boot to the end of the command
  mon=$1 kind=$2; shift 2
  t0=$(now)
  { "$@" < /dev/null 2>&1; echo $? > /tmp/one.status; } | stamp > /tmp/one.out
  st=$(cat /tmp/one.status)
  t1=$(now)
  echo "bench: $mon-$kind round=$r status=$st secs=$(echo "$t0 $t1" | awk '{print $2 - $1}') $(grep -a 'bench-io' /tmp/one.out | tr -d '\r' | cut -d' ' -f2-)"
  if [ "$kind" = true ]; then
    tr -d '\r' < /tmp/one.out | awk -v t0="$t0" -v t1="$t1" -v who="$mon" -v r="$r" '
      { t = $1; $1 = ""; line = line sprintf("%.2f%s; ", t - t0, substr($0, 1, 60)) }
      END { printf "bench: timeline %s round=%s: %s%.2f end\n", who, r, line, t1 - t0 }'
  fi
  [ "$st" = 0 ] || tail -c 400 /tmp/one.out | tr -d '\r' | sed "s/^/bench: $mon-$kind failed: /"
}
for r in $(seq 1 $ROUNDS); do
  for kind in true io; do
    case $kind in true) cmd=/bin/true ;; io) cmd="/bin/sh /var/bench/io.sh" ;; esac
    one starling-run $kind srun "r$r$kind" $cmd
    # What the guest asked the device, by opcode (the monitor's last word on virtio-fs).
    grep -a 'virtio-fs' "/tmp/sd/vms/r$r$kind/monitor.log" | tail -1 |
      sed "s/^/bench: starling-run-$kind round=$r requests: /"
    /bin/starling rm "r$r$kind" > /dev/null
    one starling-blk $kind env STARLING_VM_QUIET=1 /bin/starling vm run --kernel "$kernel" \
      --initrd /run-disk/bench/blk.img --disk /run-disk/bench/root.ext4,ro --vcpus 1 --mem 256M \
      --no-rng --console stdio --cmdline "$cmdline bench.cmd=$kind"
    one qemu-blk $kind /usr/bin/qemu-system-x86_64 -M microvm -enable-kvm -cpu host -m 256 -smp 1 \
      -nodefaults -no-user-config -nographic -serial stdio -no-reboot \
      -kernel "$kernel" -initrd /run-disk/bench/blk.img -append "$cmdline bench.cmd=$kind" \
      -drive id=root,file=/run-disk/bench/root.ext4,format=raw,if=none,readonly=on \
      -device virtio-blk-device,drive=root
  done
done
# Where a boot's time goes, in the kernel's own words and timestamps: one more boot of each
# side with the kernel's messages on (not among the measured runs: printing slows a boot).
if [ -n "${TRACE:-}" ]; then
  t0=$(now)
  { timeout 300 /bin/starling run --name trace --kernel /run-disk/kernel --vcpus 1 --mem 256M \
      --kernel-args "loglevel=7" --root $root $url debian:bookworm -- /bin/true < /dev/null 2>&1; } |
    stamp | tr -d '\r' | awk -v t0="$t0" '{ t = $1; $1 = ""; printf "bench: trace starling-run %.2f%s\n", t - t0, $0 }'
  /bin/starling rm trace > /dev/null 2>&1
  t0=$(now)
  { env STARLING_VM_QUIET=1 /bin/starling vm run --kernel "$kernel" \
      --initrd /run-disk/bench/blk.img --disk /run-disk/bench/root.ext4,ro --vcpus 1 --mem 256M \
      --no-rng --console stdio --cmdline "console=ttyS0 reboot=k panic=-1 pci=off loglevel=7 bench.cmd=true" < /dev/null 2>&1; } |
    stamp | tr -d '\r' | awk -v t0="$t0" '{ t = $1; $1 = ""; printf "bench: trace starling-blk %.2f%s\n", t - t0, $0 }'
fi
echo "bench: done"
