#!/usr/bin/env bash
# Installs the Debian packages Starling's demo and tests use, when any is missing.
# Sourced by demo.sh and test.sh; safe to run again.
set -euo pipefail

# What the demo needs (build: libnftnl and libmnl for VM networks, the guest agent compiled
# statically; debootstrap fixtures;
# mtree verification; the nested test host that boots `starling run`).
starling_deps=(libclang-dev libnftnl-dev libmnl-dev pkg-config gcc libc6-dev binutils debootstrap libarchive-tools attr zstd tar gzip util-linux python3 e2fsprogs busybox-static qemu-system-x86)
# The format owners' tools and servers the tests use as judges and peers.
starling_test_deps=(groff-base python3-prometheus-client python3-cryptography openssl docker-registry apache2-utils iproute2 iputils-ping systemd bsdutils qemu-utils qemu-system-x86 busybox-static cpio libc6-dev binutils fdisk erofs-utils umoci skopeo rpm curl python3-venv nginx squid dmsetup)

install_deps() {
  local missing p round sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  # Installs twice at most: apt may remove an installed package to satisfy another's dependencies (a newer
  # qemu-utils from backports, say, that Debian's qemu-system-x86 conflicts with); the second
  # round installs Debian's version of what the first removed.
  for round in 1 2 3; do
    missing=()
    for p in "${starling_deps[@]}" "$@"; do
      dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$round" = 3 ]; then
      echo "install_deps: still missing after installing: ${missing[*]}" >&2
      return 1
    fi
    echo "installing: ${missing[*]}" >&2
    [ "$round" = 1 ] && $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  done
}

need_cargo() {
  if ! command -v cargo >/dev/null; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null || {
    echo "cargo not found: install a Rust toolchain (rustup, https://rustup.rs) first" >&2
    exit 1
  }
}
