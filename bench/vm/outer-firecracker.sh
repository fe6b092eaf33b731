#!/bin/sh
# Runs in the QEMU test host: Starling's monitor (`starling-vmm`) and Firecracker side by side
# with Debian's kernel (the uncompressed vmlinux, PVH entry) and the tier-2 busybox initramfs,
# 1 vCPU, 256 MiB, no devices, both without seccomp filters; ROUNDS rounds, alternating (and
# /bin/firecracker-memory-first, when present, as a third).
#   boot: spawn until the initramfs's first line, each console line stamped with the test
#         host's uptime as it arrives; then, while the guest idles, RSS beyond guest RAM;
#   restore of a booted, idle guest: spawn until the API reports it running (restore-timer).
ROUNDS=$(cat /etc/starling/bench-rounds 2>/dev/null || echo 3)
CMDLINE="console=ttyS0 reboot=k panic=-1 pci=off quiet"
export STARLING_SECCOMP=off
T=/bin/restore-timer
FCS="firecracker"
[ -x /bin/firecracker-memory-first ] && FCS="$FCS firecracker-memory-first"
stamp() { while IFS= read -r l; do read up _ < /proc/uptime; echo "$up $l"; done; }
starling_config() { # API_SOCKET
  echo "{\"kernel\":\"/vm/vmlinux\",\"initrd\":\"/vm/inner.img\",\"cmdline\":\"$CMDLINE\",\"mem_mib\":256,\"vcpus\":1,\"rng\":false,\"console\":\"stdio\",\"api_socket\":\"$1\",\"run_dir\":\"/tmp/run-$$-$(date +%s%N)\"}"
}
cat > /tmp/fc.json <<EOF
{"boot-source":{"kernel_image_path":"/vm/vmlinux","initrd_path":"/vm/inner.img","boot_args":"$CMDLINE"},
 "drives":[],"machine-config":{"vcpu_count":1,"mem_size_mib":256}}
EOF

# Starts "$@" with its console stamped into /tmp/$name.log; waits for the initramfs's first line.
start_one() {
  name=$1; shift
  rm -f /tmp/fifo-$name /tmp/$name.log; mkfifo /tmp/fifo-$name
  stamp < /tmp/fifo-$name > /tmp/$name.log &
  read t0 _ < /proc/uptime
  "$@" < /dev/null > /tmp/fifo-$name 2>&1 &
  vpid=$!
  n=0
  while ! grep -q 'starling-initramfs: /init started' /tmp/$name.log 2>/dev/null; do
    sleep 0.05; n=$((n+1)); [ $n -gt 2400 ] && break
    kill -0 $vpid 2>/dev/null || break
  done
}

boot_one() {
  name=$1; shift
  start_one "$name" "$@"
  sleep 1
  rss=$(awk '/^VmRSS/ {print $2}' /proc/$vpid/status 2>/dev/null)
  guest=$(awk '/^Size:/ {s=$2} /^Rss:/ { if (s >= 262144 && s <= 270336 && $2 > g) g=$2 } END {print g+0}' /proc/$vpid/smaps 2>/dev/null)
  kill $vpid 2>/dev/null; wait $vpid 2>/dev/null
  t1=$(grep 'starling-initramfs: /init started' /tmp/$name.log | head -1 | cut -d' ' -f1)
  echo "bench-boot: $name t0=$t0 init=$t1 rss_kb=$rss guest_rss_kb=$guest"
}

for r in $(seq 1 $ROUNDS); do
  rm -f /tmp/b.api
  boot_one starling /bin/starling-vmm --config-json "$(starling_config /tmp/b.api)"
  for f in $FCS; do
    boot_one $f /bin/$f --no-seccomp --level Error --no-api --config-file /tmp/fc.json
  done
done

# One idle guest each, snapshotted.
wait_ready() { i=0; until grep -q bench-ready "$1" 2>/dev/null || [ $i -ge 2400 ]; do sleep 0.05; i=$((i+1)); done; }
rm -f /tmp/s.api /tmp/f.api
start_one s-idle /bin/starling-vmm --config-json "$(starling_config /tmp/s.api)"
wait_ready /tmp/s-idle.log
/bin/starling vm snapshot /tmp/s.api /tmp/ssnap --stop 2>&1 | sed 's/^/bench-snap: starling /'
wait $vpid
start_one f-idle /bin/firecracker --no-seccomp --level Error --api-sock /tmp/f.api --config-file /tmp/fc.json
wait_ready /tmp/f-idle.log
$T firecracker-save /tmp/f.api /tmp/fsnap.state /tmp/fsnap.mem | sed 's/^/bench-snap: /'
kill $vpid; wait $vpid 2>/dev/null
echo "bench-size: starling $(du -k /tmp/ssnap | tail -1 | cut -f1) firecracker $(du -kc /tmp/fsnap.state /tmp/fsnap.mem | tail -1 | cut -f1)"

for r in $(seq 1 $ROUNDS); do
  out=$($T starling /tmp/r.api /tmp/ssnap -- /bin/starling-vmm --restore-json \
    "{\"dir\":\"/tmp/ssnap\",\"api_socket\":\"/tmp/r.api\",\"console\":\"off\",\"run_dir\":\"/tmp/rrun$r\"}")
  echo "bench-restore: starling $out"
  /bin/starling vm stop /tmp/r.api > /dev/null 2>&1
  sleep 0.5
  for f in $FCS; do
    out=$($T firecracker /tmp/rf.api /tmp/fsnap.state /tmp/fsnap.mem -- /bin/$f --no-seccomp --level Error \
      --api-sock /tmp/rf.api)
    echo "bench-restore: $f $out"
    kill "${out##*pid=}" 2>/dev/null
    sleep 0.5
    rm -f /tmp/rf.api
  done
done
echo "host: vm exit status 0"
