#!/bin/sh
# Runs in the QEMU test host: one Debian guest booted and snapshotted by Starling, the same by
# QEMU (migration to a file), then each restored ROUNDS times, alternating; restore-timer
# measures from spawning the monitor until its API (QMP for QEMU) says the guest runs, and until
# all of its memory with data is resident (for Starling, every such page faulted in).
ROUNDS=${ROUNDS:-5}
CMDLINE="console=ttyS0 reboot=k panic=-1 pci=off quiet"
T=/bin/restore-timer
wait_ready() { i=0; until grep -q bench-ready "$1" 2>/dev/null || [ $i -ge 1200 ]; do sleep 0.1; i=$((i+1)); done; }

STARLING_VM_QUIET=1 /bin/starling vm run --kernel /vm/vmlinux --initrd /vm/inner.img --mem 256M --no-rng \
  --api-socket /tmp/s.api --console /tmp/s.log --cmdline "$CMDLINE" &
wait_ready /tmp/s.log
/bin/starling vm snapshot /tmp/s.api /tmp/ssnap --stop 2>&1 | sed 's/^/bench-snap: starling /'
wait
echo "bench-size: starling $(du -k /tmp/ssnap | tail -1 | cut -f1)"

/usr/bin/qemu-system-x86_64 -M microvm -enable-kvm -cpu host -m 256 -nodefaults -no-user-config \
  -display none -serial file:/tmp/q.log -no-reboot -kernel /vm/vmlinux -initrd /vm/inner.img \
  -append "$CMDLINE" -qmp unix:/tmp/q.qmp,server=on,wait=off &
wait_ready /tmp/q.log
$T qemu-save /tmp/q.qmp /tmp/q.state | sed 's/^/bench-snap: /'
wait
echo "bench-size: qemu $(du -k /tmp/q.state | cut -f1)"

for r in $(seq 1 $ROUNDS); do
  out=$($T starling /tmp/r.api /tmp/ssnap -- /bin/starling-vmm --restore-json \
    "{\"dir\":\"/tmp/ssnap\",\"api_socket\":\"/tmp/r.api\",\"console\":\"off\",\"run_dir\":\"/tmp/run$r\"}")
  echo "bench: starling $out"
  /bin/starling vm stop /tmp/r.api
  sleep 0.5
  out=$($T qemu /tmp/rq.qmp -- /usr/bin/qemu-system-x86_64 -M microvm -enable-kvm -cpu host -m 256 \
    -nodefaults -no-user-config -display none -serial null -no-reboot -kernel /vm/vmlinux \
    -initrd /vm/inner.img -append "$CMDLINE" -qmp unix:/tmp/rq.qmp,server=on,wait=off \
    -incoming "exec:cat /tmp/q.state")
  echo "bench: qemu $out"
  kill "${out##*pid=}" 2>/dev/null
  sleep 0.5
done
echo "host: vm exit status 0"
