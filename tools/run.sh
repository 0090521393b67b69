#!/usr/bin/env bash
# Sets up what is missing, builds RemoteReasoner (release) and opens the workbench
# on the bundled sample, or on the raster given as argument.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/env.sh
bash tools/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --bin remote-reasoner
exec "$CARGO_TARGET_DIR/release/remote-reasoner" "${@:-assets/samples/rotterdam_port_rgb_4p5m_spacenet6.tif}"
