#!/bin/sh
# The restore bench's guest: booted, caches dropped, idle until the host snapshots it.
echo 3 > /proc/sys/vm/drop_caches
echo bench-ready
exec sleep 100000
