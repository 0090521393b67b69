#!/usr/bin/env bash
# The whole test suite: sets up what is missing, then one release build serves
# every test (unit, integration, CLI, headless GUI, real window under Xvfb, doc tests).
# Needs the shared sample rasters in ../shared/data (or $RR_SHARED_DATA). Then every
# model port against its reference implementation (tools/parity_report.py) on weights
# the reference libraries initialise themselves; RR_SKIP_REFERENCE=1 skips that part.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/env.sh
bash tools/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --all-targets
cargo test --release --workspace "$@"

if [ "${RR_SKIP_REFERENCE:-0}" != 1 ]; then
  python="$(bash tools/setup_reference.sh)"
  # Two torch seeds, plain and with every weight matrix x1.5, every port; exits 1 on a missed goal.
  "$python" tools/parity_report.py --check --seeds 0,1 --scales 1,1.5
fi
