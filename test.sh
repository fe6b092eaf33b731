#!/usr/bin/env bash
# Sets up and runs every Starling test: installs the Debian packages the tests use, checks
# formatting and lints, then runs the test suite. Needs root (or sudo) for apt and debootstrap.
#
# A test that cannot run on this machine (no KVM, not root, a judge missing) skips loudly:
# every SKIP line, and every tier-2 test host that had to be replaced (RETRY), is listed at
# the end, since `cargo test` hides what passing tests print. With CI=true (as CI runs it)
# a skip is a failure instead: CI must have everything.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/deps.sh
install_deps "${starling_test_deps[@]}"
need_cargo

export STARLING_SKIP_LOG
STARLING_SKIP_LOG=$(mktemp "${TMPDIR:-/tmp}/starling-skips.XXXXXX")
summary() {
  local status=$?
  if [ -s "$STARLING_SKIP_LOG" ]; then
    echo
    echo "==== $(grep -c '^SKIP ' "$STARLING_SKIP_LOG" || true) tests skipped, $(grep -vc '^SKIP ' "$STARLING_SKIP_LOG" || true) other notes (see above for why) ===="
    sort "$STARLING_SKIP_LOG"
  else
    echo "==== no test skipped ===="
  fi
  rm -f "$STARLING_SKIP_LOG"
  exit "$status"
}
trap summary EXIT

# Builds the cached Debian fixtures up front so their build time is not charged to one test;
# meanwhile (they mostly wait on the mirror) the formatting and lint checks run.
fixtures_log=$(mktemp "${TMPDIR:-/tmp}/starling-fixtures.XXXXXX")
tests/fixtures/debian-rootfs.sh > "$fixtures_log" 2>&1 &
fixtures=$!
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The fuzz targets (a crate of their own, which cargo-fuzz builds on nightly) still compile.
cargo check --quiet --manifest-path fuzz/Cargo.toml --bins
if ! wait "$fixtures"; then
  cat "$fixtures_log" >&2
  if [ "${CI:-}" = true ]; then
    echo "ERROR: the Debian fixtures could not be built; CI needs them" >&2
    exit 1
  fi
  echo "WARNING: Debian fixtures could not be built; tests using them will skip" >&2
fi
rm -f "$fixtures_log"
cargo test --workspace "$@"
