#!/bin/sh
# Runs in the QEMU test host (tier 2) once its init has loaded the KVM modules: boots the
# inner guest with Starling's VMM and reports. Lines start with "host:"; the inner guest's
# console passes through.
#
# The work is split into scenarios (boot, fork, pool, run, hold, power), run in the order given by
# `starling.scenarios=NAME:SECONDS,...` on the kernel command line, each framed by
# "host: scenario NAME begins" / "host: scenario NAME done" and given SECONDS in all: a
# scenario still running then has its processes killed and is reported done (and judged, so
# a hung Starling fails the test). Steps have shorter deadlines of their own.
#
# A heartbeat goes to the second serial port every 2 s (a file of its own outside): when this
# test host freezes or panics (its emulated SVM does, now and then) the heartbeat stops,
# which is how the test tells a dead test host (run the scenarios left in a new one) from a
# Starling that hangs (a failure). `starling.panic_after=N` panics this host after N seconds,
# to exercise that path.
( while :; do read up _ < /proc/uptime; echo "heartbeat $up" > /dev/ttyS1; sleep 2; done ) &
panic_after=$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^starling.panic_after=//p')
if [ -n "$panic_after" ]; then
  ( sleep "$panic_after"; echo "host: panicking on purpose (starling.panic_after)"; echo c > /proc/sysrq-trigger ) &
fi
echo "host: kvm modules: $(ls /sys/module | grep -E '^kvm' | tr '\n' ' ')"
[ -e /dev/kvm ] || { echo "host: no /dev/kvm"; exit 1; }
mkdir -p /tmp
# A step that outlives its deadline is killed (busybox `timeout` sends SIGTERM: status 143)
# and reported with that status.
wait_for() { # PID SECONDS: wait for a background job, killing it at the deadline
  (sleep "$2"; echo "host: pid $1 still running after $2 s; killed"; kill -9 "$1" 2>/dev/null) &
  watchdog=$!
  wait "$1"
  status=$?
  kill "$watchdog" 2>/dev/null
  return $status
}

threads() { # PID: each thread's name, state, kernel wait channel and system call number
  for t in /proc/"$1"/task/*; do
    echo "$(cat "$t/comm") $(cut -d' ' -f3 "$t/stat") $(cat "$t/wchan" 2>/dev/null) $(cut -d' ' -f1 "$t/syscall" 2>/dev/null)"
  done
}

kill_tree() { # PID: the process and all its descendants
  kill -STOP "$1" 2>/dev/null
  for stat in /proc/[0-9]*/stat; do
    read -r pid _ _ ppid _ < "$stat" 2>/dev/null || continue
    [ "$ppid" = "$1" ] && kill_tree "$pid"
  done
  kill -9 "$1" 2>/dev/null
}

scenario_boot() {
  echo "hello from the host" > /tmp/reply
  /bin/starling vm vsock listen /tmp/v.sock 5000 < /tmp/reply > /tmp/from-guest &
  listener=$!
  sleep 0.2
  read up _ < /proc/uptime
  echo "host: starting the VMM at uptime $up"
  STARLING_VM_QUIET=1 timeout 90 /bin/starling vm run --kernel /vm/vmlinuz --initrd /vm/inner.img \
    --disk /vm/disk.img,ro --vsock 3,/tmp/v.sock --vcpus 2 --mem 256M \
    --cmdline "console=ttyS0 reboot=k panic=-1 pci=off quiet"
  echo "host: vm exit status $?"
  read up _ < /proc/uptime
  echo "host: VMM ended at uptime $up"
  wait_for $listener 10
  echo "host: vsock got: $(cat /tmp/from-guest)"
  # The same kernel uncompressed (from `vm kernel fetch`), entered through its PVH note; its
  # guest forks itself into 2 clones with starling-agent and joins them (clone 1 powers off,
  # clone 2 resets); the clones' consoles are in the run directory the config names.
  echo '{"kernel": "/vm/vmlinux", "run_dir": "/tmp/pvh-run"}' > /tmp/pvh.json
  STARLING_VM_QUIET=1 /bin/starling vm run --config /tmp/pvh.json --kernel /vm/vmlinux \
    --initrd /vm/inner.img --disk /vm/disk.img,ro --vsock 3,/tmp/p.sock --vcpus 2 --mem 256M \
    --console /tmp/pvh.log --cmdline "console=ttyS0 reboot=k panic=-1 pci=off quiet starling.selffork" &
  pvh=$!
  # A monitor still running near its deadline: what each of its threads does (a vCPU thread
  # parked or blocked in the monitor, or in KVM_RUN), before it is killed.
  ( sleep 110; kill -0 $pvh 2>/dev/null && threads $pvh | sed 's/^/host: pvh stuck thread: /' ) &
  snoop=$!
  wait_for $pvh 120
  echo "host: pvh vm exit status $?"
  kill $snoop 2>/dev/null
  echo "host: pvh $(grep 'inner: marker' /tmp/pvh.log)"
  echo "host: pvh parent $(grep 'inner: agentfork' /tmp/pvh.log)"
  echo "host: pvh parent $(grep 'inner: agentjoin' /tmp/pvh.log)"
  for k in 1 2; do
    c=/tmp/pvh-run/fork-1/clone-$k
    echo "host: pvh clone $k $(grep 'inner: agentfork' $c/console.log 2>/dev/null)"
  done
  # What the PVH guest and its clones printed last, for when a check above comes up empty.
  for f in /tmp/pvh.log /tmp/pvh-run/fork-1/clone-1/console.log /tmp/pvh-run/fork-1/clone-1/monitor.log; do
    echo "host: tail of $f: $(tail -c 400 "$f" 2>&1 | tr -d '\r' | tr '\n' '|')"
  done
  ls -R /tmp/pvh-run 2>&1 | tr '\n' ' ' | sed 's/^/host: pvh run dir: /'; echo
}

scenario_fork() {
  # Fork: the guest agent answers vsock port 7000 with its clone id and 16 bytes of /dev/urandom.
  # The monitor runs jailed (STARLING_JAIL: a mount namespace showing its files, a user of its
  # own, no capabilities) in a cgroup v2 with memory and process limits; its clones are born
  # in the same jail and cgroup, and the restore below is jailed too. Forks and the snapshot
  # go in its run directory (the only place it writes).
  grep -q ' /sys/fs/cgroup cgroup2 ' /proc/mounts || mount -t cgroup2 none /sys/fs/cgroup \
    || echo "host: fork: cgroup2 cannot be mounted"
  mkdir -p /tmp/jr
  echo '{"kernel": "/vm/vmlinuz", "run_dir": "/tmp/jr"}' > /tmp/jr.json
  export STARLING_JAIL=on STARLING_JAIL_MEMORY_MAX=2G STARLING_JAIL_PIDS_MAX=400
  STARLING_VM_QUIET=1 /bin/starling vm run --config /tmp/jr.json --kernel /vm/vmlinuz --initrd /vm/inner.img \
    --vsock 3,/tmp/f.sock --api-socket /tmp/f.api --mem 256M --console /tmp/fork.log \
    --cmdline "console=ttyS0 reboot=k panic=-1 pci=off quiet starling.agent" &
  vm=$!
  i=0
  until grep -q "starling-agent: answering" /tmp/fork.log 2>/dev/null || [ $i -ge 600 ]; do sleep 0.1; i=$((i+1)); done
  echo "host: fork guest $(grep 'inner: agent' /tmp/fork.log)"
  ask() { timeout 20 /bin/starling vm vsock connect "$1" 7000 < /dev/null; }
  echo "host: fork parent before: $(ask /tmp/f.sock)"
  forked=$(timeout 60 /bin/starling vm fork /tmp/f.api -n 4 --dir /tmp/jr/forks 2>&1)
  echo "$forked" | sed 's/^/host: fork: /'
  # The monitors run under their seccomp filter: the parent's, and the clone's inherited one.
  jail() { awk '/^Seccomp:/{s=$2} /^Seccomp_filters:/{f=$2} /^NoNewPrivs:/{n=$2} END{print "seccomp " s " filters " f " no_new_privs " n}' "/proc/$1/status"; }
  echo "host: fork parent monitor $(jail $vm)"
  echo "host: fork clone 1 monitor $(jail "$(echo "$forked" | sed -n 's/^clone 1 pid \([0-9]*\).*/\1/p')")"
  # Who the monitors are and what holds them: user, capabilities, cgroup and its limits.
  who() {
    cg=$(sed -n 's/^0:://p' "/proc/$1/cgroup")
    echo "uid $(awk '/^Uid:/{print $2}' "/proc/$1/status") capeff $(awk '/^CapEff:/{print $2}' "/proc/$1/status") cgroup $cg memory.max $(cat "/sys/fs/cgroup$cg/memory.max" 2>&1) pids.max $(cat "/sys/fs/cgroup$cg/pids.max" 2>&1) mnt $(readlink "/proc/$1/ns/mnt")"
  }
  clone1=$(echo "$forked" | sed -n 's/^clone 1 pid \([0-9]*\).*/\1/p')
  echo "host: fork jail parent $(who $vm)"
  echo "host: fork jail clone 1 $(who "$clone1")"
  echo "host: fork jail host mnt $(readlink /proc/self/ns/mnt)"
  for k in 1 2 3 4; do
    echo "host: clone $k answers: $(ask /tmp/jr/forks/clone-$k/vsock.sock)"
    timeout 20 /bin/starling vm stop /tmp/jr/forks/clone-$k/api.sock
  done
  # The family's process limit holds for clones: with room for two more tasks, a fork fails
  # (its clone cannot start its threads) and the parent goes on.
  cg=$(sed -n 's/^0:://p' "/proc/$vm/cgroup")
  sleep 1
  echo $(( $(cat "/sys/fs/cgroup$cg/pids.current") + 2 )) > "/sys/fs/cgroup$cg/pids.max"
  beyond=$(timeout 60 /bin/starling vm fork /tmp/f.api -n 2 --dir /tmp/jr/forks2 2>&1)
  echo "host: fork beyond pids.max status $? $(echo "$beyond" | tail -n 1)"
  echo 400 > "/sys/fs/cgroup$cg/pids.max"
  echo "host: fork parent after: $(ask /tmp/f.sock)"
  # Snapshot the parent (it stops), restore it in a new monitor: it answers as itself.
  timeout 60 /bin/starling vm snapshot /tmp/f.api /tmp/jr/snap --stop 2>&1 | sed 's/^/host: snapshot: /'
  wait_for $vm 20
  echo "host: snapshotted vm exit status $?"
  STARLING_VM_QUIET=1 /bin/starling vm restore /tmp/jr/snap --api-socket /tmp/r.api \
    --vsock-path /tmp/r.sock --console /tmp/restored.log &
  vm=$!
  i=0
  until [ -S /tmp/r.api ] || [ $i -ge 100 ]; do sleep 0.1; i=$((i+1)); done
  echo "host: restored answers: $(ask /tmp/r.sock)"
  echo "host: restored status: $(timeout 20 /bin/starling vm status /tmp/r.api)"
  echo "host: fork jail restored $(who $vm)"
  timeout 20 /bin/starling vm stop /tmp/r.api
  wait_for $vm 20
  echo "host: restored vm exit status $?"
}

scenario_pool() {
  # Pool: a Debian guest booted to the agent's `ready`, docked, then activated twice without
  # booting, each with its own environment, on Starling's network: each activation answers
  # HTTP at the address it was given when activated.
  export STARLING_POOLS=/tmp/pools
  # The boot to `ready` has its own deadline (--timeout), so that a stuck boot reports its
  # console.
  read up _ < /proc/uptime
  echo "host: pool create at uptime $up"
  timeout 120 /bin/starling pool create deb --kernel /vm/vmlinuz --initrd /vm/inner.img --mem 256M --size 1 \
    --net nat --timeout 90 --cmdline "console=ttyS0 reboot=k panic=-1 pci=off quiet starling.pool" 2>&1 | sed 's/^/host: pool: /'
  read up _ < /proc/uptime
  echo "host: pool created at uptime $up"
  apis=
  for n in 1 2; do
    out=$(timeout 60 /bin/starling pool run deb --env N=$n --args "job $n" --json)
    console=$(echo "$out" | sed 's/.*"console":"\([^"]*\)".*/\1/')
    i=0
    # The whole line (the guest's console arrives a byte at a time).
    until grep -Eq "inner: pool .*urandom [0-9a-f]{16}" "$console" 2>/dev/null || [ $i -ge 300 ]; do sleep 0.1; i=$((i+1)); done
    echo "host: pool run $n: $(grep 'inner: pool' "$console")"
    echo "host: pool run $n booted again: $(grep -c 'starling-initramfs: /init started' "$console")"
    addr=$(echo "$out" | sed -n 's/.*"address":"\([0-9.]*\).*/\1/p')
    got=
    i=0
    until [ -n "$got" ] || [ $i -ge 60 ]; do
      got=$(timeout 3 wget -q -O - "http://$addr:8080/cgi-bin/who" 2>/dev/null)
      [ -n "$got" ] || sleep 0.5
      i=$((i+1))
    done
    echo "host: pool run $n at ${addr:-none} answers: $got"
    apis="$apis $(echo "$out" | sed -n 's/.*"api_socket":"\([^"]*\)".*/\1/p')"
  done
  # The activations end before the next scenario (their addresses go back to the leases).
  for a in $apis; do timeout 20 /bin/starling vm stop "$a" > /dev/null 2>&1; done
  timeout 60 /bin/starling pool rm deb --force 2>&1 | sed 's/^/host: pool: /'
}

run_setup() { # STATE: the run disk, a repository on loopback, starlingd keeping STATE
  state=$1
  mkdir -p /run-disk
  grep -q ' /run-disk ' /proc/mounts || mount -t ext4 -o ro,noload /dev/vda /run-disk || { echo "host: run: no run disk"; return 1; }
  ip link set lo up
  export STARLING_HOME=$state-store STARLING_SOCKET=$state.sock
  /bin/starling repo serve /run-disk/repo --listen 127.0.0.1:8080 > $state-serve.out 2> $state-serve.log &
  serve=$!
  # The daemon, and so every monitor it starts, on one CPU of this test host: a guest's
  # devices and its vCPU then never run at once on the two emulated CPUs, whose emulated SVM
  # triple-faulted 3 of 7 systemd boots otherwise (0 of 5 pinned; boots ~30 % slower).
  taskset -c 1 /bin/starling daemon --state $state --socket $state.sock > $state.out 2> $state.log &
  daemon=$!
  i=0
  until grep -q ready $state.out 2>/dev/null && grep -q http $state-serve.out 2>/dev/null || [ $i -ge 100 ]; do sleep 0.1; i=$((i+1)); done
  url=http://127.0.0.1:8080/
  root=/run-disk/repo/metadata/1.root.json
  # The emulated SVM of this test host (QEMU TCG) now and then triple-faults a guest that
  # boots fine otherwise (rip 0xfff0 after KVM's reset on AMD, nothing on the console; mostly
  # systemd boots, and this test host's own kernel has died in its KVM code the same way).
  # Such a boot is retried once and reported ("host: run retried ..."; the test counts and
  # notes them); a second one fails the step. A guest that asked for the reset itself (a
  # panicking or rebooting kernel: the monitor says so first) is not retried.
  triple() {
    grep -q 'triple-faulted' $state/vms/$1/monitor.log 2>/dev/null &&
      ! grep -q 'asked for a reset' $state/vms/$1/monitor.log
  }
  retried() { # NAME: report a triple-faulted guest and remove its VM
    echo "host: run retried $1: $(grep -o 'vCPU .*triple-faulted.*' $state/vms/$1/monitor.log | head -1)"
    tail -c 2500 $state/vms/$1/console.log | tr -d '\r' | sed "s/^/host: run retry-log $1 console: /"
    tail -c 1000 $state/vms/$1/monitor.log | tr -d '\r' | sed "s/^/host: run retry-log $1 monitor: /"
    /bin/starling rm --force "$1" > /dev/null 2>&1
  }
  run() { # NAME IMAGE CMD...: one line per output line, then the status
    name=$1 image=$2; shift 2
    for attempt in 1 2; do
      read up _ < /proc/uptime
      echo "host: run $name starts at uptime $up"
      timeout 150 /bin/starling run --name "$name" --kernel /run-disk/kernel --mem 256M --root $root \
        $url "$image" -- "$@" < /dev/null > /tmp/run-$name.out 2>&1
      status=$?
      [ $attempt = 1 ] && triple $name && { retried $name; continue; }
      break
    done
    read up _ < /proc/uptime
    tr -d '\r' < /tmp/run-$name.out | sed "s/^/host: run $name out: /"
    echo "host: run $name status $status at uptime $up"
    tail -c 600 $state/vms/$name/monitor.log 2>/dev/null | tr -d '\r' | sed "s/^/host: run $name monitor: /"
  }
  detach() { # NAME IMAGE [CMD...]: a detached VM
    name=$1 image=$2; shift 2
    [ $# -gt 0 ] && set -- -- "$@"
    /bin/starling run -d --name $name --kernel /run-disk/kernel --mem 256M --root $root $url "$image" \
      "$@" > /tmp/$name.out 2>&1
    echo "host: run $name detached: $(cat /tmp/$name.out)"
  }
  answers() { # NAME: waits until the VM's agent answers (or its guest triple-faulted)
    i=0
    until /bin/starling exec $1 -- /bin/true > /dev/null 2>&1 || triple $1 || [ $i -ge 120 ]; do sleep 1; i=$((i+1)); done
  }
}

scenario_run() {
  # starling run: a repository on loopback (from the run disk), starlingd, the Debian image
  # booted with its root over virtio-fs from the host cache, a command's status and output.
  run_setup /tmp/sd || return
  run one debian:bookworm /bin/sh -c 'python3 -c "print(6 * 7)"; echo debian $(cat /etc/debian_version); echo scratch > /root/written; cat /root/written; echo net $(hostname -I); exit 3'
  echo "host: run cache after one: $(/bin/starling cache stats --json | tr -d '\n ')"
  run two debian:bookworm /bin/sh -c 'echo second; test -e /root/written && echo leaked || echo own layer; echo net $(hostname -I)'
  echo "host: run cache after two: $(/bin/starling cache stats --json | tr -d '\n ')"
  # The old version (no python3, no less in it) boots as itself.
  old=$(sed -n 's/^\([0-9a-f]\{64\}\)$/\1/p' /run-disk/version-a.txt | head -1)
  run old "debian@$old" /bin/sh -c 'echo old $(cat /etc/debian_version) $(command -v python3 || echo no-python3); exit 4'
  # No command: the image's own init boots (systemd, to its default target); exec talks to
  # it and stop asks it to power off. systemd can be asked once it made /run/systemd/system
  # (sd_booted(3)) and its private bus socket (asked every 2 s: each exec while an
  # emulated-SVM guest boots is a risk of its own, see above).
  systemd_up() {
    detach sysd debian:systemd
    i=0
    until /bin/starling exec sysd -- /bin/sh -c 'test -d /run/systemd/system && test -S /run/systemd/private' > /dev/null 2>&1 || triple sysd || [ $i -ge 75 ]; do sleep 2; i=$((i+1)); done
    out=$(timeout 240 /bin/starling exec sysd -- /bin/sh -c \
      'systemctl is-system-running --wait; systemctl is-active multi-user.target; readlink /proc/1/exe' 2>&1 | tr '\n' ' ')
  }
  systemd_up
  triple sysd && { retried sysd; systemd_up; }
  read up _ < /proc/uptime
  echo "host: run systemd: $out at uptime $up"
  timeout 30 /bin/starling exec sysd -- /bin/sh -c 'echo root $(stat -c "%d:%i" /) pid1 $(stat -L -c "%d:%i" /proc/1/root) $(systemctl is-system-running 2>&1)' 2>&1 | sed 's/^/host: run systemd view: /'
  echo "host: run systemd failed units: $(timeout 30 /bin/starling exec sysd -- systemctl --failed --no-legend --plain 2>&1 | tr '\n' '|')"
  # A package installed through exec with the .deb on stdin (no less in this image), the VM's
  # layer committed as a new image, whose inventory has it.
  out=$(timeout 120 /bin/starling exec -i sysd -- /bin/sh -c \
    'cat > /tmp/less.deb && dpkg -i /tmp/less.deb > /dev/null && rm /tmp/less.deb && echo installed' \
    < /run-disk/less.deb 2>&1)
  echo "host: run exec dpkg: $out"
  timeout 200 /bin/starling commit sysd debian:with-less 2>&1 | sed 's/^/host: run commit: /'
  timeout 60 /bin/starling image inventory debian:with-less 2>&1 | grep -w less | sed 's/^/host: run inventory: /'
  timeout 60 /bin/starling stop sysd 2>&1 | sed 's/^/host: run systemd stopped: /'
  /bin/starling ps -a | grep '^sysd ' | sed 's/^/host: run systemd ps: /'
  tail -c 1500 $state/vms/sysd/console.log | tr -d '\r' | sed 's/^/host: run systemd console: /'
  kill $serve $daemon
  wait $serve $daemon
}

scenario_hold() {
  # A VM of the image snapshotted with a file held open, restored, forked; a pool of the
  # image; the repository taken away (a daemon and host cache of their own, so that this
  # scenario runs alike after `run` or alone in a new test host).
  run_setup /tmp/sh || return
  # A detached VM whose command holds a file open for the snapshot below: it reads the first
  # 4 KiB now and the rest once something is written to the FIFO /tmp/go. The result appears
  # whole (renamed into place): the shell creates a redirect's file before the pipeline
  # writes, and a reader polling for it once read it empty.
  held='exec 3< /usr/share/common-licenses/GPL-3; dd bs=4096 count=1 <&3 > /tmp/a 2> /dev/null
    mkfifo /tmp/go; touch /tmp/ready; read _ < /tmp/go
    cat <&3 > /tmp/b; cat /tmp/a /tmp/b | sha256sum | cut -d" " -f1 > /tmp/held.part
    mv /tmp/held.part /tmp/held; exec sleep 100000'
  detach held debian:bookworm /bin/sh -c "$held"
  answers held
  triple held && { retried held; detach held debian:bookworm /bin/sh -c "$held"; answers held; }
  # Snapshot and restore of a VM whose root is virtio-fs, with a file held open across them:
  # the guest's page cache is dropped after the restore, so that the rest of the file is read
  # through the device with the guest's old handle.
  i=0
  until /bin/starling exec held -- /bin/test -e /tmp/ready > /dev/null 2>&1 || [ $i -ge 60 ]; do sleep 1; i=$((i+1)); done
  timeout 120 /bin/starling vm snapshot $state/vms/held/api.sock /tmp/held-snap --stop 2>&1 | sed 's/^/host: run snapshot: /'
  taskset -c 1 /bin/starling vm restore /tmp/held-snap --api-socket /tmp/hr.api --vsock-path /tmp/hr.sock \
    --console /tmp/hr.log --run-dir /tmp/hr-run > /tmp/hr.out 2>&1 &
  i=0
  until [ -S /tmp/hr.api ] || [ $i -ge 100 ]; do sleep 0.1; i=$((i+1)); done
  # (The wait is long: in a slow run of this emulated host the snapshot alone paused the
  # guest 12 s, and twice 20 s were not enough for the held read.)
  out=$(timeout 120 /bin/starling exec /tmp/hr.sock -- /bin/sh -c 'echo 3 > /proc/sys/vm/drop_caches; echo go > /tmp/go
    i=0; until [ -e /tmp/held ] || [ $i -ge 900 ]; do sleep 0.1; i=$((i+1)); done
    echo $(cat /tmp/held) $(sha256sum < /usr/share/common-licenses/GPL-3)' 2>&1)
  echo "host: run restored held: $out"
  case $out in
    *" "*" "*) ;;
    *)
      echo "host: run restored held: its monitor: $(timeout 10 /bin/starling vm status /tmp/hr.api 2>&1 | tr -d '\n')"
      echo "host: run restored held: its processes: $(timeout 20 /bin/starling exec /tmp/hr.sock -- /bin/sh -c 'ps -o pid,stat,args' 2>&1 | tr '\n' '|')"
      tail -c 600 /tmp/hr.out | sed 's/^/host: run restored held monitor: /'
      ;;
  esac
  # The restored VM forked: each clone writes its own content to one path of its root and
  # reads it back from its own copy-on-write layer (synced, the page cache dropped).
  timeout 60 /bin/starling vm fork /tmp/hr.api -n 2 --dir /tmp/hforks 2>&1 | sed 's/^/host: run fork: /'
  for k in 1 2; do
    out=$(timeout 30 /bin/starling exec /tmp/hforks/clone-$k/vsock.sock -- /bin/sh -c "echo clone $k wrote > /root/same-path; sync" 2>&1)
    echo "host: run clone $k write: status $? $out"
  done
  for k in 1 2; do
    out=$(timeout 30 /bin/starling exec /tmp/hforks/clone-$k/vsock.sock -- /bin/sh -c \
      'echo 3 > /proc/sys/vm/drop_caches; cat /root/same-path; cat /usr/share/common-licenses/GPL-3 | wc -c' 2>&1)
    st=$?
    echo "host: run clone $k reads: $(echo "$out" | tr '\n' ' ')"
    if [ $st != 0 ]; then
      echo "host: run clone $k read status $st; its monitor: $(timeout 10 /bin/starling vm status /tmp/hforks/clone-$k/api.sock 2>&1 | tr -d '\n')"
      tail -c 1000 /tmp/hforks/clone-$k/monitor.log | sed "s/^/host: run clone $k monitor: /"
    fi
  done
  echo "host: run restored reads: $(timeout 30 /bin/starling exec /tmp/hr.sock -- /bin/sh -c 'cat /root/same-path 2>/dev/null || echo nothing')"
  for k in 1 2; do
    timeout 20 /bin/starling vm stop /tmp/hforks/clone-$k/api.sock
    tail -c 300 /tmp/hforks/clone-$k/console.log 2>/dev/null | tr -d '\r' | sed "s/^/host: run clone $k console: /"
    tail -c 300 /tmp/hforks/clone-$k/monitor.log 2>/dev/null | tr -d '\r' | sed "s/^/host: run clone $k monitor: /"
  done
  # A pool of the image, made by the daemon: booted once to the run init's `ready` and
  # docked; each activation runs the pool's command with its own environment, without booting.
  export STARLING_POOLS=/tmp/pools
  pool_create() {
    timeout 240 /bin/starling pool create deb --image $url debian:bookworm --root $root \
      --kernel /run-disk/kernel --mem 256M --size 1 --timeout 180 \
      -- /bin/sh -c 'echo pool job $JOB on $(cat /etc/debian_version)' > /tmp/pool.out 2>&1
  }
  pool_create
  if grep -q 'triple-faulted' /tmp/pool.out && ! grep -q 'asked for a reset' /tmp/pool.out; then
    echo "host: run retried pool: $(grep -o 'vCPU .*triple-faulted.*' /tmp/pool.out | head -1)"
    timeout 60 /bin/starling pool rm deb --force > /dev/null 2>&1
    pool_create
  fi
  sed 's/^/host: run pool: /' /tmp/pool.out
  for n in 1 2; do
    # An activated substrate the emulated SVM triple-faulted is retried once, as a boot is.
    for attempt in 1 2; do
      out=$(timeout 60 /bin/starling pool run deb --env JOB=$n --json 2>&1)
      console=$(echo "$out" | sed -n 's/.*"console":"\([^"]*\)".*/\1/p')
      slot=$(echo "$out" | sed -n 's/.*"slot":"\([^"]*\)".*/\1/p')
      i=0
      until grep -aq "pool job" "$console" 2>/dev/null || grep -q 'VM ended' "$slot/monitor.log" 2>/dev/null ||
        [ $i -ge 600 ]; do sleep 0.1; i=$((i+1)); done
      if [ $attempt = 1 ] && ! grep -aq "pool job" "$console" 2>/dev/null &&
        grep -q 'triple-faulted' "$slot/monitor.log" 2>/dev/null &&
        ! grep -q 'asked for a reset' "$slot/monitor.log"; then
        echo "host: run retried pool run $n: $(grep -o 'vCPU .*triple-faulted.*' "$slot/monitor.log" | head -1)"
        continue
      fi
      break
    done
    echo "host: run pool job $n: $(grep -a 'pool job' "$console" 2>/dev/null | tr -d '\r') booted again: $(grep -ac 'starling-init: started' "$console" 2>/dev/null)"
    if ! grep -aq "pool job" "$console" 2>/dev/null; then
      echo "host: run pool run $n said: $out"
      tail -c 1500 "$console" 2>/dev/null | tr -d '\r' | sed "s/^/host: run pool run $n console: /"
      tail -c 1000 "$slot/monitor.log" 2>/dev/null | tr -d '\r' | sed "s/^/host: run pool run $n monitor: /"
    fi
  done
  timeout 60 /bin/starling pool rm deb --force 2>&1 | sed 's/^/host: run pool: /'
  # The repository goes away under the restored VM: files the host cache holds still read
  # (the guest's page cache dropped), files it does not fail with EIO once a stalled server
  # sent nothing for 5 s, at once when it is gone.
  gone() { # WHAT FILE
    read t0 _ < /proc/uptime
    out=$(timeout 90 /bin/starling exec /tmp/hr.sock -- /bin/sh -c "echo 3 > /proc/sys/vm/drop_caches
      cat /etc/debian_version; f=\$(echo $2); cat \$f | wc -c" 2>&1 | tr '\n' ' ')
    read t1 _ < /proc/uptime
    echo "host: run repo $1: $out in $(echo "$t0 $t1" | awk '{printf "%d", $2 - $1 + 0.5}') s"
  }
  kill -STOP $serve
  gone stalled '/usr/lib/python3.*/argparse.py'
  kill -9 $serve
  gone gone '/usr/lib/python3.*/zipfile.py'
  # (through the shell the guest already ran: its file is in the host cache)
  echo "host: run restored still answers: $(timeout 30 /bin/starling exec /tmp/hr.sock -- /bin/sh -c 'echo yes' 2>&1)"
  timeout 20 /bin/starling vm stop /tmp/hr.api
  tail -c 600 /tmp/hr.log | tr -d '\r' | sed 's/^/host: run restored console: /'
  /bin/starling ps -a 2>&1 | sed 's/^/host: run ps: /'
  tail -5 $state.log | sed 's/^/host: run daemon log: /'
  kill $daemon
  wait $daemon
}

scenario_net() {
  # virtio-net: the Debian guest on a TAP of this host. The host pings it, fetches a file
  # from its httpd and sends it one with nc (TCP both ways, with the offloads its driver
  # took); snapshot --stop and restore in a new monitor on the same TAP: the guest keeps its
  # address and takes new connections. A clone of it comes up off the TAP.
  tunctl -t tap0 > /dev/null && ip addr add 10.77.0.1/24 dev tap0 && ip link set tap0 up
  STARLING_VM_QUIET=1 /bin/starling vm run --kernel /vm/vmlinuz --initrd /vm/inner.img \
    --api-socket /tmp/n.api --mem 256M --console /tmp/net.log --net tap=tap0,mac=02:00:0a:4d:00:02 \
    --cmdline "console=ttyS0 reboot=k panic=-1 pci=off quiet starling.net" &
  vm=$!
  i=0
  until grep -q "inner: net serving" /tmp/net.log 2>/dev/null || [ $i -ge 900 ]; do sleep 0.1; i=$((i+1)); done
  grep 'inner: net' /tmp/net.log | tr -d '\r' | sed 's/^/host: net guest /'
  echo "host: net ping $(timeout 30 ping -c 3 -W 5 10.77.0.2 2>&1 | grep 'packets')"
  fetch() { # WHAT
    rm -f /tmp/got
    timeout 60 wget -q -O /tmp/got http://10.77.0.2:8080/blob 2>&1 | sed "s/^/host: net $1 wget: /"
    echo "host: net $1 http $(md5sum < /tmp/got | cut -c1-32) $(wc -c < /tmp/got)"
  }
  fetch first
  head -c 1000000 /dev/urandom > /tmp/up
  echo "host: net sent $(md5sum < /tmp/up | cut -c1-32)"
  timeout 60 nc 10.77.0.2 9000 < /tmp/up
  i=0
  until grep -q "inner: net upload" /tmp/net.log || [ $i -ge 300 ]; do sleep 0.1; i=$((i+1)); done
  grep 'inner: net upload' /tmp/net.log | tr -d '\r' | sed 's/^/host: net guest /'
  timeout 60 /bin/starling vm fork /tmp/n.api -n 1 --dir /tmp/nforks > /dev/null 2>&1
  echo "host: net clone status $(timeout 20 /bin/starling vm status /tmp/nforks/clone-1/api.sock)"
  timeout 20 /bin/starling vm stop /tmp/nforks/clone-1/api.sock
  echo "host: net status $(timeout 20 /bin/starling vm status /tmp/n.api)"
  timeout 60 /bin/starling vm snapshot /tmp/n.api /tmp/nsnap --stop 2>&1 | sed 's/^/host: net snapshot: /'
  wait_for $vm 20
  STARLING_VM_QUIET=1 /bin/starling vm restore /tmp/nsnap --api-socket /tmp/nr.api \
    --console /tmp/net-restored.log &
  vm=$!
  i=0
  until [ -S /tmp/nr.api ] || [ $i -ge 100 ]; do sleep 0.1; i=$((i+1)); done
  echo "host: net restored ping $(timeout 30 ping -c 2 -W 5 10.77.0.2 2>&1 | grep 'packets')"
  fetch restored
  timeout 20 /bin/starling vm stop /tmp/nr.api
  wait_for $vm 20
  echo "host: net restored vm exit status $?"
  # --net nat: Starling's bridge, an address from its leases handed over as ip=, which the
  # initramfs applies; the host reaches the guest's httpd at that address and through the
  # published port (at localhost and at its own address), the guest its gateway and a
  # server on this host outside its network; the VM's TAP goes with it.
  ip link set lo up
  mkdir -p /tmp/hostwww && echo "hello from the host" > /tmp/hostwww/hello
  httpd -p 10.77.0.1:8099 -h /tmp/hostwww
  /bin/starling vm run --kernel /vm/vmlinuz --initrd /vm/inner.img --vsock 3,/tmp/nn.sock \
    --api-socket /tmp/nn.api --mem 256M --console /tmp/nat.log --net nat -p 8088:8080 \
    --cmdline "console=ttyS0 reboot=k panic=-1 pci=off quiet starling.net" 2> /tmp/nat.err &
  vm=$!
  i=0
  until grep -q "inner: net serving" /tmp/nat.log 2>/dev/null || [ $i -ge 900 ]; do sleep 0.1; i=$((i+1)); done
  echo "host: nat said $(cat /tmp/nat.err)"
  grep -E 'starling-net: eth0|inner: net (addr|gateway|host|blob|who)' /tmp/nat.log | tr -d '\r' | sed 's/^/host: nat guest /'
  addr=$(sed -n 's/.*inner: net addr \([0-9.]*\).*/\1/p' /tmp/nat.log | head -1)
  rm -f /tmp/got
  timeout 60 wget -q -O /tmp/got "http://$addr:8080/blob" 2>&1 | sed 's/^/host: nat wget: /'
  echo "host: nat http $(md5sum < /tmp/got | cut -c1-32) $(wc -c < /tmp/got)"
  for at in 127.0.0.1 10.77.0.1; do
    rm -f /tmp/got
    timeout 60 wget -q -O /tmp/got "http://$at:8088/blob" 2>&1 | sed "s/^/host: nat published $at wget: /"
    echo "host: nat published $at http $(md5sum < /tmp/got | cut -c1-32) $(wc -c < /tmp/got)"
  done
  echo "host: nat bridge ports $(ls /sys/class/net/starling0/brif | tr "\n" " ")"
  # Ten clones of the serving VM, each with an address, TAP and MAC of its own (its agent
  # hears `watch` answered and takes them on): the time from the fork to all ten answering
  # HTTP at their addresses, then who answered at each.
  # A TCP connection the fork copies into every clone: the host's end to the parent's nc
  # (port 9000) stays idle through the fork, then sends; each clone's agent aborts its copy
  # (no reset may reach the host), and the parent gets the data.
  head -c 100000 /dev/urandom > /tmp/up2
  ( sleep 25; cat /tmp/up2 ) | timeout 90 nc "$addr" 9000 &
  held=$!
  sleep 2
  # Milliseconds since boot (busybox's date has no %N; uptime has two decimals).
  ms() { read up _ < /proc/uptime; echo $(( ${up%.*}${up#*.} * 10 )); }
  t0=$(ms)
  timeout 120 /bin/starling vm fork /tmp/nn.api -n 10 --dir /tmp/nnforks > /tmp/nnfork.out 2> /tmp/nnfork.err
  addrs=$(sed -n 's/.* address //p' /tmp/nnfork.out)
  echo "host: nat fork addresses $(echo $addrs)"
  sed 's/^/host: nat fork said: /' /tmp/nnfork.err
  for k in $(seq 10); do
    grep -q "^clone $k .* address " /tmp/nnfork.out && continue
    echo "host: nat clone $k: $(grep "^clone $k " /tmp/nnfork.out)"
    tail -5 /tmp/nnforks/clone-$k/monitor.log 2>&1 | sed "s/^/host: nat clone $k monitor: /"
    tail -c 400 /tmp/nnforks/clone-$k/console.log 2>&1 | tr -d '\r' | sed "s/^/host: nat clone $k console: /"
  done
  left=$addrs
  i=0
  while [ -n "$left" ] && [ $i -lt 300 ]; do
    next=
    for a in $left; do
      # (busybox 1.35's wget crashes with -T: timeout bounds it)
      timeout 3 wget -q -O /tmp/who.got "http://$a:8080/cgi-bin/who" 2>/dev/null || next="$next $a"
    done
    left=$next
    i=$((i+1))
  done
  t1=$(ms)
  echo "host: nat clones answering $(( $(echo $addrs | wc -w) - $(echo $left | wc -w) )) of $(echo $addrs | wc -w) in $((t1 - t0)) ms"
  for a in $addrs 10.213.0.2; do
    echo "host: nat who $a $(timeout 10 wget -q -O - "http://$a:8080/cgi-bin/who" 2>&1)"
  done
  wait $held
  echo "host: nat held connection ended $? sent $(md5sum < /tmp/up2 | cut -c1-32)"
  i=0
  until grep -q "inner: net upload" /tmp/nat.log || [ $i -ge 300 ]; do sleep 0.1; i=$((i+1)); done
  grep 'inner: net upload' /tmp/nat.log | tr -d '\r' | sed 's/^/host: nat guest /'
  grep -h 'starling-agent: eth0' /tmp/nnforks/clone-1/console.log | tr -d '\r' | sed 's/^/host: nat clone 1 said /'
  rm -f /tmp/got
  timeout 60 wget -q -O /tmp/got "http://$(echo $addrs | cut -d' ' -f1):8080/blob" 2>&1 | sed 's/^/host: nat clone wget: /'
  echo "host: nat clone http $(md5sum < /tmp/got | cut -c1-32) $(wc -c < /tmp/got)"
  echo "host: nat bridge ports with clones $(ls /sys/class/net/starling0/brif | wc -l)"
  for k in $(seq 10); do timeout 20 /bin/starling vm stop /tmp/nnforks/clone-$k/api.sock > /dev/null 2>&1; done
  sleep 1
  echo "host: nat bridge ports after the clones $(ls /sys/class/net/starling0/brif | tr "\n" " ")"
  timeout 20 /bin/starling vm stop /tmp/nn.api
  wait_for $vm 20
  echo "host: nat vm exit status $?"
  echo "host: nat tap after the VM: $(ip link show stap1 > /dev/null 2>&1 && echo still there || echo gone)"
}

# A power cut under the store (issue 18): the store on ext4 on device-mapper's flakey target
# over a loop device. At a point of an import the device starts dropping every write while
# telling the kernel it wrote it (nothing after the cut reaches the disk), the import runs on
# to its end, and the file system is mounted again from what the disk holds (its journal
# replayed). The store must then be whole — `store fsck` clean: every object whole, every
# tagged version complete —, a version cut mid-import absent or whole, an import that had
# returned before the cut there, and the next round's import taken. Rounds 1-6 cut at sixths
# of the time a first, uncut import took; rounds 7-8 cut the moment the import returns.
scenario_power() {
  export DM_DISABLE_UDEV=1
  loop=$(losetup -f)
  losetup "$loop" /vm/power.img || { echo "host: power no loop device"; return; }
  sectors=$(blockdev --getsz "$loop")
  up="0 $sectors flakey $loop 0 100000 0"
  cut="0 $sectors flakey $loop 0 0 100000 1 drop_writes"
  dmsetup create power --table "$up" || { echo "host: power no dm-flakey"; return; }
  mkdir -p /mnt/power
  # What is imported: the test host's own programs and modules (the starling binary among
  # them: tens of MiB, some seconds of chunking here).
  mkdir -p /tmp/power-src && cp -a /bin /lib /tmp/power-src/ 2>/dev/null
  centis() { read up _ < /proc/uptime; echo "${up%.*}${up#*.}"; }
  store=/mnt/power/store
  mount /dev/mapper/power /mnt/power
  t0=$(centis)
  /bin/starling --store $store image import /tmp/power-src power:r0 > /dev/null 2>&1
  took=$(( ($(centis) - t0) * 10 ))
  umount /mnt/power
  echo "host: power an uncut import took $took ms"
  for round in 1 2 3 4 5 6 7 8; do
    mount /dev/mapper/power /mnt/power || { echo "host: power round $round mount failed"; break; }
    echo "round $round" > /tmp/power-src/round
    ( /bin/starling --store $store image import /tmp/power-src "power:r$round" > /dev/null 2>&1
      echo $? > /tmp/power-import ) &
    imp=$!
    if [ "$round" -le 6 ]; then
      ms=$(( took * round / 7 + RANDOM % 200 ))
      sleep "$((ms / 1000)).$(printf %03d $((ms % 1000)))"
      at="$ms ms"
    else
      wait_for $imp 120
      at="the import's return"
    fi
    dmsetup suspend power && dmsetup load power --table "$cut" && dmsetup resume power
    wait_for $imp 120
    umount /mnt/power
    dmsetup suspend power && dmsetup load power --table "$up" && dmsetup resume power
    mount /dev/mapper/power /mnt/power || { echo "host: power round $round remount failed"; break; }
    timeout 120 /bin/starling --store $store store fsck > /tmp/power-fsck 2>&1
    fsck=$?
    timeout 60 /bin/starling --store $store image ls > /tmp/power-ls 2>&1
    echo "host: power round $round cut at $at: import status $(cat /tmp/power-import) fsck status $fsck versions $(grep -c '^power ' /tmp/power-ls) this round's $(grep -c " r$round " /tmp/power-ls)"
    [ "$fsck" = 0 ] || sed 's/^/host: power fsck: /' /tmp/power-fsck | head -20
    umount /mnt/power
  done
  dmsetup remove power
  losetup -d "$loop"
}

run_scenario() { # NAME SECONDS
  echo "host: scenario $1 begins"
  ( "scenario_$1" ) &
  job=$!
  ( sleep "$2"
    echo "host: scenario $1 overran its $2 s; its processes killed"
    kill_tree $job
    killall -9 starling starling-vmm 2>/dev/null ) &
  dog=$!
  wait $job
  kill_tree $dog
  echo "host: scenario $1 done"
}

scenarios=$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^starling.scenarios=//p' | tr ',' ' ')
for s in ${scenarios:-boot:240 fork:180 pool:180}; do
  run_scenario "${s%%:*}" "${s#*:}"
done
