#!/bin/sh
# /etc/starling/run of the virtio-blk side of bench/vm_run.sh: the image exported to ext4 is
# /dev/vda, mounted read-only and entered with chroot; `bench.cmd=true` runs /bin/true,
# `bench.cmd=io` the same walk-and-read command `starling run` is given (bench/vm/io.sh, in
# the image as /var/bench/io.sh). The initramfs's /init powers off afterwards.
mkdir -p /mnt
i=0
while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
mount -t ext4 -o ro /dev/vda /mnt || { echo "bench-blk: cannot mount /dev/vda"; exit 1; }
for d in proc sys dev; do mount --bind "/$d" "/mnt/$d"; done
case $(sed -n 's/.*bench\.cmd=\([a-z]*\).*/\1/p' /proc/cmdline) in
  true) chroot /mnt /bin/true ;;
  io) chroot /mnt /bin/sh /var/bench/io.sh ;;
  *) echo "bench-blk: no bench.cmd= on the kernel command line" ;;
esac
