#!/usr/bin/env bash
# Builds Starling's release programs into one directory (default target/dist): `starling` and
# `starlingd` as cargo builds them, and `starling-vmm`, the monitor every fork, pool substrate
# and daemon VM runs in, as a static PIE: glibc linked in (still position-independent, so its
# addresses stay randomised), no dynamic loader and no shared libraries to map and bind at each
# VM start. A monitor so built starts sooner and keeps less resident
# (bench/results/vm-firecracker.md; Firecracker ships its own statically linked too).
# scripts/install.sh installs what this builds; the monitor benchmarks measure it.
#
#   scripts/build-release.sh [OUT]     (STARLING_VMM_STATIC=off: the monitor linked dynamically)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
need_cargo
case ${1:-} in
  -h|--help) sed -n '2,10s/^# \{0,1\}//p' "$0"; exit 0 ;;
  -*) echo "build-release.sh: unknown option $1 (usage: scripts/build-release.sh [OUT])" >&2; exit 2 ;;
esac
out=${1:-target/dist}
host=$(rustc -vV | sed -n 's/^host: //p')

echo "building starling, starlingd (release)" >&2
cargo build --release --quiet --bin starling --bin starlingd
vmm=target/release/starling-vmm
# Static glibc needs its archive (libc6-dev); other targets (musl is static anyway) and
# STARLING_VMM_STATIC=off build the monitor as cargo does.
if [[ $host == *-linux-gnu && ${STARLING_VMM_STATIC:-on} != off ]]; then
  libc_a=$(cc -print-file-name=libc.a 2>/dev/null || true)
  [[ -f $libc_a ]] || { echo "build-release.sh: glibc's static libc.a not found (Debian: libc6-dev)" >&2; exit 1; }
  echo "building starling-vmm (release, static PIE)" >&2
  # A target of its own (--target) keeps the flag off build scripts and proc macros, which
  # cannot be static, and a target directory of its own keeps it from invalidating the rest.
  RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --quiet -p starling-vmm --bin starling-vmm --target "$host" --target-dir target/static
  vmm=target/static/$host/release/starling-vmm
else
  echo "building starling-vmm (release)" >&2
  cargo build --release --quiet --bin starling-vmm
fi
mkdir -p "$out"
for b in target/release/starling target/release/starlingd "$vmm"; do
  install -m 0755 "$b" "$out/$(basename "$b")"
done
linked=static
readelf -lW "$out/starling-vmm" | grep -q INTERP && linked=dynamic
echo "built into $out: starling, starlingd, starling-vmm ($linked)" >&2
