#!/usr/bin/env bash
# Builds and installs Starling's three programs: `starling` (the command line), `starlingd`
# (the host daemon) and `starling-vmm` (the monitor, one per VM; `starling` finds it beside
# itself; linked statically, see scripts/build-release.sh), with `starling`'s man pages and
# its bash, zsh and fish completions. Installed binaries carry no debug info: it goes to
# separate files under PREFIX/lib/debug (found by gdb and debuginfod-style tools through each binary's
# .gnu_debuglink and build id), as Debian's -dbgsym packages do.
#
#   scripts/install.sh [PREFIX]        (default /usr/local; DESTDIR is honoured for packaging)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
need_cargo
for tool in objcopy install; do
  command -v "$tool" >/dev/null || { echo "install.sh: $tool not found (Debian: binutils, coreutils)" >&2; exit 1; }
done
prefix=${1:-/usr/local}
case "$prefix" in
  /*) ;;
  *) echo "install.sh: PREFIX must be an absolute path, not $prefix" >&2; exit 2 ;;
esac
dest=${DESTDIR:-}
bins=(starling starlingd starling-vmm)

scripts/build-release.sh target/dist

bindir=$dest$prefix/bin
debugdir=$dest$prefix/lib/debug$prefix/bin
mkdir -p "$bindir" "$debugdir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for b in "${bins[@]}"; do
  built=target/dist/$b
  objcopy --only-keep-debug --compress-debug-sections=zlib "$built" "$tmp/$b.debug"
  objcopy --strip-debug --add-gnu-debuglink="$tmp/$b.debug" "$built" "$tmp/$b"
  install -m 0755 "$tmp/$b" "$bindir/$b"
  install -m 0644 "$tmp/$b.debug" "$debugdir/$b.debug"
  awk -v b="$b" -v s="$(stat -c %s "$bindir/$b")" -v d="$(stat -c %s "$debugdir/$b.debug")" \
    'BEGIN { printf "%-13s %6.1f MiB   (debug info %6.1f MiB)\n", b, s / 1048576, d / 1048576 }'
done
# Man pages and shell completions, generated from the command line's own definitions.
mandir=$dest$prefix/share/man/man1
"$bindir/starling" man "$mandir" 2>/dev/null
gzip -9nf "$mandir"/starling*.1
comp=$dest$prefix/share
mkdir -p "$comp/bash-completion/completions" "$comp/zsh/site-functions" "$comp/fish/vendor_completions.d"
"$bindir/starling" completions bash > "$comp/bash-completion/completions/starling"
"$bindir/starling" completions zsh > "$comp/zsh/site-functions/_starling"
"$bindir/starling" completions fish > "$comp/fish/vendor_completions.d/starling.fish"
echo "installed into $bindir (debug info in $debugdir; man pages in $mandir, completions for bash, zsh and fish under $comp)" >&2
