#!/usr/bin/env bash
# The standing campaign (issue 18), one command: every fuzz target for a fixed time with its
# corpus kept between runs; 200 SIGKILLs across import, tag, rm, gc, push, pull, commit and
# the daemon, each followed by fsck and a clean pull from the repository; the daemon under
# concurrent mounts, reads and unmounts for minutes, with no mount, descriptor or thread left.
# `./test.sh` (CI) runs the same tests bounded: 56 kills, 15 s of load, and the fuzz corpus
# replayed with truncations and byte flips on stable Rust.
#
#   scripts/campaign.sh [SECONDS_PER_FUZZ_TARGET]     (default 120; 0 skips fuzzing)
#
# Environment: STARLING_CRASH_ITERATIONS (200), STARLING_LOAD_SECS (300),
# STARLING_CAMPAIGN_DIR (~/.cache/starling-campaign: the grown corpora).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
install_deps "${starling_test_deps[@]}"
need_cargo

fuzz_secs=${1:-120}
dir=${STARLING_CAMPAIGN_DIR:-$HOME/.cache/starling-campaign}
log() { printf '\n== campaign: %s ==\n' "$*"; }

if [ "$fuzz_secs" -gt 0 ]; then
  # cargo-fuzz builds with sanitizers, which only a nightly toolchain has.
  if cargo +nightly --version >/dev/null 2>&1; then
    if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
      log "installing cargo-fuzz"
      cargo install --locked cargo-fuzz
    fi
    log "building the fuzz targets (nightly, sanitizers)"
    (cd fuzz && cargo +nightly fuzz build) ||
      { echo "campaign: the fuzz targets do not build (see above)" >&2; exit 1; }
    for target in fuzz/fuzz_targets/*.rs; do
      t=$(basename "$target" .rs)
      mkdir -p "$dir/corpus/$t"
      cp -n fuzz/corpus/"$t"/* "$dir/corpus/$t/" 2>/dev/null || true
      log "fuzzing $t for $fuzz_secs s (corpus $dir/corpus/$t: $(ls "$dir/corpus/$t" | wc -l) inputs)"
      (cd fuzz && cargo +nightly fuzz run "$t" "$dir/corpus/$t" -- \
        -max_total_time="$fuzz_secs" -print_final_stats=1) ||
        { echo "campaign: fuzz target $t found a failing input: it is under fuzz/artifacts/$t" >&2; exit 1; }
    done
  else
    echo "SKIP timed fuzzing: no nightly Rust toolchain (cargo-fuzz needs its sanitizers); the corpus is replayed below instead" >&2
  fi
fi

log "fuzz corpora replayed on stable (truncations and byte flips of every input)"
cargo test --quiet -p starling-disk -p starling-image -p starling-vmm --test fuzz_corpus

log "SIGKILLs: ${STARLING_CRASH_ITERATIONS:=200} per crash test"
export STARLING_CRASH_ITERATIONS
cargo test -p starling-cli --test crash -- --nocapture --test-threads 1

log "the daemon under load for ${STARLING_LOAD_SECS:=300} s"
export STARLING_LOAD_SECS
cargo test -p starling-cli --test mount the_daemon_under_concurrent_load -- --nocapture

log "passed"
