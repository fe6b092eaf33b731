#!/bin/busybox sh
# /init of the run initramfs (`starling run`): the image, served read-only by the monitor's
# virtio-fs device (tag "root"), under an overlay whose upper layer is the VM's scratch disk
# (/dev/vda: /upper, /work, /starling/ for us), becomes the root. With a command in
# /scratch/starling/cmd the agent runs it as PID 1 and the VM ends with its status; otherwise
# the image's own /sbin/init takes over. Each failure prints one "starling-init:" line and ends
# the VM with its own status (docs/ARCHITECTURE.md, "Booting an image"):
#   249 basic mounts   250 a kernel module   251 the image (virtio-fs)   252 the scratch disk
#   253 the overlay    254 handing /dev, /proc, /sys to the image   126 no /sbin/init, no command
#   246 a pool's substrate was not activated
# With /scratch/starling/pool (a pool's substrate, `starling pool create --image`) the guest
# first says `ready` to the monitor's service and is docked there until activated.
/bin/busybox echo "starling-init: started"
/bin/busybox mkdir -p /proc /sys /dev /lower /scratch /newroot /run /tmp
/bin/busybox --install -s /bin
export PATH=/bin

# End the VM with status $1 after saying $2 (the agent writes the monitor's exit port).
fail() {
  echo "starling-init: $2"
  # The kernel's last words say why (a driver that did not bind, a bad superblock).
  dmesg 2>/dev/null | tail -n 8 | sed 's/^/starling-init: kernel: /'
  /bin/starling-agent exit "$1"
  poweroff -f
}

mount -t proc proc /proc || fail 249 "cannot mount /proc"
mount -t sysfs sysfs /sys || fail 249 "cannot mount /sys"
mount -t devtmpfs devtmpfs /dev || fail 249 "cannot mount /dev (devtmpfs)"
# In one process (an insmod each is an exec each); the agent names a module that fails.
/bin/starling-agent modules /etc/starling/modules /lib/modules ||
  fail 250 "the kernel modules did not all load"
# The address `--net nat` gives (ip= on the command line); the image sees the name servers
# through a bind mount over its own /etc/resolv.conf, as docker does, so a commit keeps the
# image's file.
# (Quiet when it works: the console is the command's output.)
/etc/starling/net-setup /run/resolv.conf > /dev/null

mount -t virtiofs root /lower -o ro ||
  fail 251 "cannot mount the image (virtio-fs tag root) at /lower"
# FUSE starts its read-ahead at the block layer's default, 128 KiB: one request (one exit, one
# round trip to the monitor) per 128 KiB read. The device answers READs of up to 1 MiB. The
# kernel lowers the read-ahead to what INIT's reply says when that reply arrives, which the
# mount does not wait for; the listing does (every request waits for INIT).
ls /lower > /dev/null
bdi=/sys/class/bdi/$(awk '$5 == "/lower" { print $3 }' /proc/self/mountinfo)/read_ahead_kb
if [ -w "$bdi" ]; then echo 1024 > "$bdi"; fi
if [ -b /dev/vda ]; then
  mount -t ext4 /dev/vda /scratch ||
    fail 252 "cannot mount the scratch disk /dev/vda (ext4) at /scratch"
  [ -d /scratch/upper ] && [ -d /scratch/work ] ||
    fail 252 "the scratch disk /dev/vda has no /upper and /work directories"
else
  # No scratch disk: changes live in memory and go with the VM.
  mount -t tmpfs -o mode=0755 scratch /scratch ||
    fail 252 "cannot mount a tmpfs at /scratch (no scratch disk /dev/vda)"
  mkdir -p /scratch/upper /scratch/work
fi
mount -t overlay overlay -o lowerdir=/lower,upperdir=/scratch/upper,workdir=/scratch/work /newroot ||
  fail 253 "cannot mount the overlay of the image and /scratch/upper at /newroot"

if [ -s /run/resolv.conf ] && [ -f /newroot/etc/resolv.conf ] && [ ! -L /newroot/etc/resolv.conf ]; then
  mount --bind /run/resolv.conf /newroot/etc/resolv.conf
fi

/bin/starling-agent serve /newroot &
# A restored VM or a clone (vm fork, a pool's activation) hears here that it is one, and the
# agent takes its identity and address on.
/bin/starling-agent watch >/dev/null &

if [ -f /scratch/starling/pool ]; then
  # The activation's answer is `activate K=V … [-- ARGS]`: the words join the command's
  # environment; ARGS, when given, replace its command (through /bin/sh -c).
  answer=$(/bin/starling-agent ready) || fail 246 "the monitor's service did not answer ready"
  words=${answer#activate}
  args=
  case "$words" in
    *" -- "*) args=${words#* -- }; words=${words%% -- *} ;;
  esac
  for w in $words; do printf '%s\0' "$w" >> /scratch/starling/env; done
  [ -z "$args" ] || printf '%s\0' /bin/sh -c "$args" > /scratch/starling/cmd
fi
if [ -f /scratch/starling/cmd ]; then
  exec /bin/starling-agent run /newroot /scratch/starling
fi
# /sbin/init is often an absolute symbolic link (to /lib/systemd/systemd): it resolves only
# inside the image, so a link is enough here.
if [ -L /newroot/sbin/init ] || [ -e /newroot/sbin/init ]; then
  for d in dev proc sys; do
    [ -d "/newroot/$d" ] || mkdir "/newroot/$d" ||
      fail 254 "cannot create /$d in the image"
    mount --move "/$d" "/newroot/$d" ||
      fail 254 "cannot move /$d into the image"
  done
  exec switch_root /newroot /sbin/init
fi
echo "starling-init: the image has no /sbin/init; give a command: starling run IMAGE -- CMD"
/bin/starling-agent exit 126
poweroff -f
