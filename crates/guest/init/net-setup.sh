#!/bin/busybox sh
# Applies the kernel's ip=ADDR::GATEWAY:NETMASK:HOST:DEV:off[:DNS0[:DNS1]] parameter (what
# `--net nat` adds) to the guest: the kernel's own autoconfiguration runs before the virtio_net
# module is loaded, so Starling's inits call this once their modules are in. Writes the name
# servers to $1 (default /etc/resolv.conf). Prints one "starling-net:" line (on stderr when
# the address could not be set).
resolv=${1:-/etc/resolv.conf}
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    ip=*::*)
      old_ifs=$IFS; IFS=:; set -- ${arg#ip=}; IFS=$old_ifs
      addr=$1 gw=$3 mask=$4 host=$5 dev=${6:-eth0} dns0=$8 dns1=$9
      ip link set lo up
      if ifconfig "$dev" "$addr" netmask "$mask" up; then
        [ -n "$gw" ] && ip route add default via "$gw" dev "$dev"
        [ -n "$host" ] && hostname "$host"
        : > "$resolv"
        for d in $dns0 $dns1; do echo "nameserver $d" >> "$resolv"; done
        echo "starling-net: $dev $addr via ${gw:-no gateway}"
      else
        echo "starling-net: could not configure $dev as $addr" >&2
      fi
      ;;
  esac
done
