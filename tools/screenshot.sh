#!/usr/bin/env bash
# The README's screenshot: the real window (under Xvfb, wgpu on the CPU) with the
# tiny trained checkpoint's contour results on the bundled sample, saved as a
# project by `ask --save-project` and opened by the workbench.
#   bash tools/screenshot.sh [OUT.png]   (default docs/workbench.png)
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/env.sh
out="${1:-docs/workbench.png}"
bin="${CARGO_TARGET_DIR:-$HOME/.cache/remote-reasoner/target}/release/remote-reasoner"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$bin" ask --model tests/fixtures/qwen2_5_vl_tiny_trained \
  --image assets/samples/rotterdam_port_rgb_4p5m_spacenet6.tif --task contour \
  --save-project "$tmp/ships.gpkg" "where are the ships?" > /dev/null
XDG_RUNTIME_DIR="$tmp" xvfb-run -a -s "-screen 0 1280x800x24" "$bin" "$tmp/ships.gpkg" --screenshot "$out" 2> /dev/null
echo "wrote $out"
