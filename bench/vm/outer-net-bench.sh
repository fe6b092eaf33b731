#!/bin/sh
# Runs in the QEMU test host for bench/vm_net.sh: the same Debian guest (bench/vm/inner-net.sh)
# on a TAP of this host, under Starling's monitor (virtio-net in userspace) and under QEMU
# (`-netdev tap,vhost=off`, virtio-net on virtio-mmio, microvm), same kernel, 1 vCPU, 256 MiB,
# taking turns (each going first every other round) for ROUNDS rounds. Each round, one
# "bench:" line per measure:
# - to-guest: 64 MiB sent by nc to the guest's sink (TCP, host -> guest);
# - from-guest: the guest's 48 MiB file fetched by wget (TCP, guest -> host; the file is in
#   the guest's RAM);
# - rtt: ping, 20 echoes 0.2 s apart, the average;
# - http: 20 wget of a 1 KiB file one after another, the time of each;
# - the monitor's CPU time (user + system) over the two transfers.
ROUNDS=${ROUNDS:-6}
# Large enough that a transfer takes seconds, not a few of /proc/uptime's 10 ms ticks.
TO_MIB=64
FROM_MIB=48
mkdir -p /tmp
now() { read up _ < /proc/uptime; echo "$up"; }
secs() { echo "$1 $2" | awk '{printf "%.3f", $2 - $1}'; }
cpu() { # PID: user + system clock ticks so far
  awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0
}
tunctl -t tap0 > /dev/null && ip addr add 10.77.0.1/24 dev tap0 && ip link set tap0 up
append="console=ttyS0 reboot=k panic=-1 pci=off quiet"
start() { # MONITOR: boots the guest under it in the background; its pid in $vm
  rm -f /tmp/guest.log
  case $1 in
    starling)
      STARLING_VM_QUIET=1 /bin/starling vm run --kernel /vm/vmlinuz --initrd /vm/inner.img \
        --mem 256M --vcpus 1 --net tap=tap0 --console /tmp/guest.log --cmdline "$append" &
      ;;
    qemu)
      /usr/bin/qemu-system-x86_64 -M microvm -enable-kvm -cpu host -m 256 -smp 1 \
        -nodefaults -no-user-config -nographic -serial file:/tmp/guest.log -no-reboot \
        -kernel /vm/vmlinuz -initrd /vm/inner.img -append "$append" \
        -netdev tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=off \
        -device virtio-net-device,netdev=n0 &
      ;;
  esac
  vm=$!
  i=0
  until grep -q "inner-net: ready" /tmp/guest.log 2>/dev/null || [ $i -ge 1200 ]; do sleep 0.1; i=$((i+1)); done
  grep -q "inner-net: ready" /tmp/guest.log || {
    echo "bench: $1 round=$r failed: $(tail -c 300 /tmp/guest.log | tr -d '\r' | tr '\n' '|')"
    return 1
  }
}
alive() { # MONITOR: whether the VM is still there (this emulated host has lost guests:
  # a vCPU found at the reset vector); a lost one is a failed round, said at once
  kill -0 $vm 2>/dev/null && return 0
  echo "bench: $1 round=$r failed: the VM ended mid-round: $(tail -c 300 /tmp/guest.log | tr -d '\r' | tr '\n' '|')"
  wait $vm 2>/dev/null
  return 1
}
stalled() { # MONITOR WHAT: a guest that answered but stopped moving data (seen with both
  # monitors' guests in this emulated host): a failed round
  echo "bench: $1 round=$r failed: $2 did not finish in its time"
  kill $vm 2>/dev/null
  wait $vm 2>/dev/null
}
for r in $(seq 1 $ROUNDS); do
  # Each round the other goes first: a monitor that always followed the other would carry
  # whatever the first left behind (the host's caches, the TAP's neighbours).
  order="qemu starling"
  [ $((r % 2)) -eq 0 ] && order="starling qemu"
  for mon in $order; do
    start $mon || { kill -9 $vm 2>/dev/null; wait $vm 2>/dev/null; continue; }
    # A guest that does not answer is a failed round, said at once (the transfers' timeouts
    # would take twenty minutes to say it): QEMU's guest came up without a network in some
    # runs of this emulated host.
    ping -c 3 -W 5 10.77.0.2 > /dev/null 2>&1 || ping -c 3 -W 5 10.77.0.2 > /dev/null 2>&1 || {
      echo "bench: $mon round=$r failed: the guest does not answer ping"
      kill $vm 2>/dev/null
      wait $vm 2>/dev/null
      continue
    }
    c0=$(cpu $vm)
    t0=$(now)
    head -c $((TO_MIB << 20)) /dev/zero | timeout 120 nc 10.77.0.2 9000
    [ $? -eq 124 ] && { stalled $mon "the transfer to the guest"; continue; }
    t1=$(now)
    alive $mon || continue
    timeout 120 wget -q -O /dev/null http://10.77.0.2:8080/big
    [ $? -eq 124 ] && { stalled $mon "the transfer from the guest"; continue; }
    t2=$(now)
    alive $mon || continue
    c1=$(cpu $vm)
    rtt=$(ping -c 20 -i 0.2 -W 5 10.77.0.2 | sed -n 's|.*min/avg/max = [0-9.]*/\([0-9.]*\)/.*|\1|p')
    h0=$(now)
    k=0
    while [ $k -lt 20 ]; do
      timeout 30 wget -q -O /dev/null http://10.77.0.2:8080/small
      [ $? -eq 124 ] && break
      k=$((k+1))
    done
    [ $k -lt 20 ] && { stalled $mon "an HTTP request"; continue; }
    h1=$(now)
    echo "bench: $mon round=$r to_guest_mib=$TO_MIB from_guest_mib=$FROM_MIB to_guest_secs=$(secs $t0 $t1) from_guest_secs=$(secs $t1 $t2) cpu_ticks=$((c1 - c0)) rtt_ms=${rtt:-none} http20_secs=$(secs $h0 $h1)"
    kill $vm 2>/dev/null
    wait $vm 2>/dev/null
  done
done
echo "bench: hz $(getconf CLK_TCK 2>/dev/null || echo 100)"
echo "bench: done"
