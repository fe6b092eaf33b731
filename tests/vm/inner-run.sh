#!/bin/sh
# Runs inside the Linux guest our VMM boots (tier 2): every check prints one "inner:" line.
# With starling.agent on the kernel command line it serves vsock port 7000 with the guest agent
# instead, for the fork and snapshot checks, and never returns; with starling.selffork it also
# forks itself and joins its clones through the agent.
if grep -qE '(^| )starling[.]pool( |$)' /proc/cmdline; then
  # A pool's substrate: booted, page cache dropped, docked at `ready` until activated.
  answer=$(/bin/starling-agent ready)
  echo "inner: pool $answer hostname $(hostname) urandom $(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  exit 0
fi
if grep -qE '(^| )starling[.]agent( |$)' /proc/cmdline; then
  echo 3 > /proc/sys/vm/drop_caches
  echo "inner: agent $(/bin/starling-agent identity)"
  exec /bin/starling-agent answer 7000
fi
echo "inner: vcpus $(grep -c ^processor /proc/cpuinfo)"
if mount -t ext4 -o ro /dev/vda /mnt; then echo "inner: marker $(cat /mnt/marker)"; else echo "inner: mount failed"; fi
echo "inner: hwrng $(head -c 16 /dev/hwrng | od -An -tx1 | tr -d ' \n')"
echo "inner: urandom $(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
/bin/vsock-hello 5000 "hello from the inner guest" | sed 's/^/inner: /'
# The PVH boot forks itself into 2 clones through the guest agent and joins them; clone 1 ends
# by powering off (status 0), clone 2 by a reset (reboot=k: status 3), so that join's answer
# tells the clones apart.
if grep -qE '(^| )starling[.]selffork( |$)' /proc/cmdline; then
  id=$(/bin/starling-agent fork 2) || id=failed
  echo "inner: agentfork id=$id hostname=$(hostname) urandom=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  case $id in
    0) echo "inner: agentjoin $(/bin/starling-agent join)" ;;
    1) poweroff -f ;;
    2) reboot -f ;;
  esac
fi
