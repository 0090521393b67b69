#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ (nightly, AddressSanitizer) and runs
# each for SECONDS (default 600). Seeds: fuzz/seeds/TARGET (committed); the
# growing corpus, crash artifacts and logs stay outside the clone, under
# ~/.cache/remote-reasoner/fuzz/. Inputs that found bugs are committed to
# tests/fixtures/fuzz/TARGET and replayed by `cargo test` (tests/fuzz_regressions.rs).
#
#   bash tools/fuzz.sh [SECONDS] [TARGET…]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tools/env.sh
source tools/env.sh
secs="${1:-600}"
shift || true
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
work="$HOME/.cache/remote-reasoner/fuzz"
export CARGO_TARGET_DIR="$work/target"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir fuzz)
fi
# Build once, then run the binaries: every target fuzzes the same code.
cargo +nightly fuzz build --fuzz-dir fuzz
bin="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release"
for t in "${targets[@]}"; do
    mkdir -p "$work/corpus/$t" "$work/artifacts/$t" "$work/logs"
    log="$work/logs/$t-$(date +%Y%m%dT%H%M%S).log"
    echo "== $t: ${secs} s, log $log"
    # -rss_limit_mb: a target that allocates past 2 GiB for an input is a finding.
    "$bin/$t" "$work/corpus/$t" "fuzz/seeds/$t" -max_total_time="$secs" -rss_limit_mb=2048 -max_len=262144 \
        -timeout=20 -artifact_prefix="$work/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1 \
        || echo "   $t stopped early: see $log"
    grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|Done [0-9]+ runs|ERROR|panicked" "$log" | head -8 || true
done
