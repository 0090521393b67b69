#!/usr/bin/env bash
# The whole test suite: sets up what is missing, then one release build serves
# every test (unit, integration, CLI, headless GUI, real window under Xvfb, doc tests).
# Needs the shared sample rasters in ../shared/data (or $RR_SHARED_DATA).
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/env.sh
bash tools/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --all-targets
cargo test --release --workspace "$@"
