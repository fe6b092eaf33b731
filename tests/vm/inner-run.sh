#!/bin/sh
# Runs inside the Linux guest our VMM boots (tier 2): every check prints one "inner:" line.
# With starling.agent on the kernel command line it serves vsock port 7000 with the guest agent
# instead, for the fork and snapshot checks, and never returns; with starling.selffork it also
# forks itself and joins its clones through the agent.
write_who() {
  # Who answers: each clone or activation of this VM says its own hostname, address and MAC
  # (a CGI, so looked up when the request comes).
  mkdir -p /www/cgi-bin
  cat > /www/cgi-bin/who <<'WHO'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
echo "$(hostname) $(ip -4 -o addr show dev eth0 | awk '{print $4}') $(cat /sys/class/net/eth0/address)"
WHO
  chmod +x /www/cgi-bin/who
}
if grep -qE '(^| )starling[.]pool( |$)' /proc/cmdline; then
  # A pool's substrate: booted, page cache dropped, docked at `ready` until activated.
  answer=$(/bin/starling-agent ready)
  echo "inner: pool $answer hostname $(hostname) urandom $(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  if [ -e /sys/class/net/eth0 ]; then
    # On the network: say who answers (the address and MAC the activation gave) over HTTP.
    write_who
    httpd -p 8080 -h /www
    sleep 120
  fi
  exit 0
fi
if grep -qE '(^| )starling[.]net( |$)' /proc/cmdline; then
  # virtio-net: a static address on eth0, a file served over HTTP (8080) and files taken
  # with nc (9000), their MD5s printed.
  # (On Starling's network, --net nat, the initramfs has configured eth0 from ip=.)
  ip link set lo up
  if ! ip -4 addr show dev eth0 | grep -q inet; then
    ip addr add 10.77.0.2/24 dev eth0 && ip link set eth0 up
  fi
  echo "inner: net eth0 $(cat /sys/class/net/eth0/address) features $(cat /sys/bus/virtio/drivers/virtio_net/virtio*/features)"
  echo "inner: net addr $(ip -4 -o addr show dev eth0 | awk '{print $4}') route $(ip route | grep default)"
  gw=$(ip route | awk '/default/ {print $3}')
  [ -n "$gw" ] && echo "inner: net gateway $(ping -c 1 -W 5 "$gw" > /dev/null 2>&1 && echo answers || echo silent)"
  # A server on the host, outside the guest's network (routed through the gateway).
  [ -n "$gw" ] && echo "inner: net host server says $(timeout 10 wget -q -O - http://10.77.0.1:8099/hello 2>&1 | head -1)"
  write_who
  head -c 2000000 /dev/urandom > /www/blob
  echo "inner: net who $(/www/cgi-bin/who | tail -1)"
  echo "inner: net blob $(md5sum < /www/blob | cut -c1-32) $(wc -c < /www/blob)"
  httpd -p 8080 -h /www
  echo "inner: net serving"
  while :; do
    nc -l -p 9000 > /tmp/up
    echo "inner: net upload $(md5sum < /tmp/up | cut -c1-32) $(wc -c < /tmp/up)"
  done
fi
if grep -qE '(^| )starling[.]agent( |$)' /proc/cmdline; then
  echo 3 > /proc/sys/vm/drop_caches
  echo "inner: agent $(/bin/starling-agent identity)"
  exec /bin/starling-agent answer 7000
fi
echo "inner: vcpus $(grep -c ^processor /proc/cpuinfo)"
# The kernel's XSAVE setup agrees with the CPUID the monitor gave (else it disables XSAVE and
# warns "XSAVE consistency problem"), and AVX reaches the guest.
echo "inner: fpu $(dmesg | grep -c 'XSAVE consistency') inconsistencies, $(grep -qw avx /proc/cpuinfo && echo avx || echo no-avx), $(dmesg | grep -o 'x86/fpu: Enabled xstate features [^,]*, context size is [0-9]* bytes' | head -1)"
# The CPU the monitor shows (boot/cpuid.rs): the vendor's server line, not the host's model;
# one L3 for all vCPUs of the VM, whatever the host's cores share.
echo "inner: cpu $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), L3 shared by $(cat /sys/devices/system/cpu/cpu0/cache/index3/shared_cpu_list 2>/dev/null || echo none)"
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
