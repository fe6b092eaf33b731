#!/bin/sh
# Runs inside the Linux guest our VMM boots (tier 2): every check prints one "inner:" line.
echo "inner: vcpus $(grep -c ^processor /proc/cpuinfo)"
if mount -t ext4 -o ro /dev/vda /mnt; then echo "inner: marker $(cat /mnt/marker)"; else echo "inner: mount failed"; fi
echo "inner: hwrng $(head -c 16 /dev/hwrng | od -An -tx1 | tr -d ' \n')"
echo "inner: urandom $(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
/bin/vsock-hello 5000 "hello from the inner guest" | sed 's/^/inner: /'
