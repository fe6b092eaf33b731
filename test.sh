#!/usr/bin/env bash
# Sets up and runs every Starling test: installs the Debian packages the tests use, checks
# formatting and lints, then runs the test suite. Needs root (or sudo) for apt and debootstrap.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/deps.sh
install_deps "${starling_test_deps[@]}"
need_cargo

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# Builds the cached Debian fixtures up front so their build time is not charged to one test.
tests/fixtures/debian-rootfs.sh >/dev/null || echo "WARNING: Debian fixtures could not be built; tests using them will skip" >&2
cargo test --workspace "$@"
