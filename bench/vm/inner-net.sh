#!/bin/sh
# The guest of bench/vm_net.sh (its /etc/starling/run), the same under Starling's monitor and
# QEMU: eth0 at 10.77.0.2/24; a sink for TCP on port 9000 (what the host sends is counted and
# dropped), a 48 MiB file and a 1 KiB file on HTTP port 8080 (busybox httpd).
ip link set lo up
ip addr add 10.77.0.2/24 dev eth0 && ip link set eth0 up
mkdir -p /www
head -c $((48 << 20)) /dev/zero > /www/big
head -c 1024 /dev/zero > /www/small
httpd -p 8080 -h /www
echo "inner-net: ready $(cat /sys/class/net/eth0/address)"
while :; do nc -l -p 9000 > /dev/null; done
