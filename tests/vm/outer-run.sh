#!/bin/sh
# Runs in the QEMU test host (tier 2) once its init has loaded the KVM modules: boots the
# inner guest with Starling's VMM and reports. Lines start with "host:"; the inner guest's
# console passes through.
echo "host: kvm modules: $(ls /sys/module | grep -E '^kvm' | tr '\n' ' ')"
[ -e /dev/kvm ] || { echo "host: no /dev/kvm"; exit 1; }
mkdir -p /tmp
echo "hello from the host" > /tmp/reply
/bin/starling vm vsock listen /tmp/v.sock 5000 < /tmp/reply > /tmp/from-guest &
sleep 0.2
read up _ < /proc/uptime
echo "host: starting the VMM at uptime $up"
STARLING_VM_QUIET=1 /bin/starling vm run --kernel /vm/vmlinuz --initrd /vm/inner.img \
  --disk /vm/disk.img,ro --vsock 3,/tmp/v.sock --vcpus 2 --mem 256M \
  --cmdline "console=ttyS0 reboot=k panic=-1 pci=off quiet"
echo "host: vm exit status $?"
read up _ < /proc/uptime
echo "host: VMM ended at uptime $up"
wait
echo "host: vsock got: $(cat /tmp/from-guest)"
# The same kernel uncompressed (from `vm kernel fetch`), entered through its PVH note.
STARLING_VM_QUIET=1 /bin/starling vm run --kernel /vm/vmlinux --initrd /vm/inner.img \
  --disk /vm/disk.img,ro --vcpus 2 --mem 256M --console /tmp/pvh.log \
  --cmdline "console=ttyS0 reboot=k panic=-1 pci=off quiet"
echo "host: pvh vm exit status $?"
echo "host: pvh $(grep 'inner: marker' /tmp/pvh.log)"
