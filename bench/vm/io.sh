#!/bin/sh
# The guest's side of bench/vm_run.sh, the same on every root (virtio-fs through
# `starling run`, ext4 on virtio-blk): a metadata walk that stats every entry of the root file
# system, then a sequential read of a 128 MiB file; times from the guest's own clock.
t0=$(date +%s%N)
n=$(find / -xdev -printf '%s %m\n' | wc -l)
t1=$(date +%s%N)
cat /var/bench/big > /dev/null
t2=$(date +%s%N)
echo "bench-io: entries=$n walk_ms=$(( (t1 - t0) / 1000000 )) read_ms=$(( (t2 - t1) / 1000000 )) bytes=$(wc -c < /var/bench/big)"
