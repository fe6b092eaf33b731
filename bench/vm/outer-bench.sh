#!/bin/sh
# Runs in the QEMU test host: boots the same kernel (as bzImage, then as the uncompressed
# vmlinux through its PVH note) and initramfs with Starling's VMM and with QEMU (microvm, q35),
# alternating, ROUNDS times each. Every line of a guest's
# console is stamped with the test host's uptime as it arrives; boot time = stamp of the
# initramfs's first line minus the moment the monitor was started. While the guest idles, the
# monitor's RSS beyond guest RAM is read from /proc/PID/smaps.
ROUNDS=${ROUNDS:-3}
CMDLINE="console=ttyS0 reboot=k panic=-1 pci=off quiet"
stamp() { while IFS= read -r l; do read up _ < /proc/uptime; echo "$up $l"; done; }

run_one() {
  name=$1; shift
  rm -f /tmp/fifo /tmp/$name.log; mkfifo /tmp/fifo
  stamp < /tmp/fifo > /tmp/$name.log &
  spid=$!
  read t0 _ < /proc/uptime
  "$@" < /dev/null > /tmp/fifo 2>&1 &
  vpid=$!
  n=0
  while ! grep -q 'starling-initramfs: /init started' /tmp/$name.log 2>/dev/null; do
    sleep 0.05; n=$((n+1)); [ $n -gt 1200 ] && break
    kill -0 $vpid 2>/dev/null || break
  done
  sleep 1
  # The largest resident mappings, to see where overhead goes.
  awk -v n=$name '/^[0-9a-f]+-/ {m=$6} /^Rss:/ { if ($2 >= 512) print "bench-map: " n " " $2 " kB " m }' /proc/$vpid/smaps 2>/dev/null
  rss=$(awk '/^VmRSS/ {print $2}' /proc/$vpid/status 2>/dev/null)
  guest=$(awk '/^Size:/ {s=$2} /^Rss:/ { if (s >= 262144 && s <= 270336 && $2 > g) g=$2 } END {print g+0}' /proc/$vpid/smaps 2>/dev/null)
  wait $vpid; status=$?
  wait $spid
  t1=$(grep 'starling-initramfs: /init started' /tmp/$name.log | head -1 | cut -d' ' -f1)
  echo "bench: $name t0=$t0 init=$t1 rss_kb=$rss guest_rss_kb=$guest status=$status"
}

for r in $(seq 1 $ROUNDS); do
  for k in vmlinuz vmlinux; do
    run_one starling-$k env STARLING_VM_QUIET=1 /bin/starling vm run --kernel /vm/$k --initrd /vm/inner.img \
      --vcpus 2 --mem 256M --no-rng --console stdio --cmdline "$CMDLINE"
    run_one qemu-microvm-$k /usr/bin/qemu-system-x86_64 -M microvm -enable-kvm -cpu host -m 256 -smp 2 \
      -nodefaults -no-user-config -nographic -serial stdio -no-reboot \
      -kernel /vm/$k -initrd /vm/inner.img -append "$CMDLINE"
    run_one qemu-q35-$k /usr/bin/qemu-system-x86_64 -M q35 -enable-kvm -cpu host -m 256 -smp 2 \
      -nodefaults -no-user-config -nographic -serial stdio -no-reboot -nic none -vga none \
      -kernel /vm/$k -initrd /vm/inner.img -append "$CMDLINE"
  done
done
