#!/usr/bin/env bash
# Sweep throughput (tiles per minute) against `remote-reasoner serve` with 1, 2
# and 4 requests at a time, beside the same sweep on the local checkpoint (no
# HTTP), one run each. The scene is the bundled sample resampled to 4096² (real
# imagery, 81 tiles of 512 px with 64 px overlap); the model is the tiny trained
# checkpoint, so the figures measure the sweep machinery and the server, not a 7B.
#   bash tools/bench_sweep.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/env.sh
bin="$CARGO_TARGET_DIR/release/remote-reasoner"
model=tests/fixtures/qwen2_5_vl_tiny_trained
tmp="$(mktemp -d)"
trap 'kill "${server_pid:-0}" 2>/dev/null || true; rm -rf "$tmp"' EXIT
gdalwarp -q -ts 4096 4096 -r cubic assets/samples/rotterdam_port_rgb_4p5m_spacenet6.tif "$tmp/scene.tif"
"$bin" serve --model "$model" --addr 127.0.0.1:0 > "$tmp/serve.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do grep -q "listening on" "$tmp/serve.log" && break; sleep 0.1; done
url="$(sed -n 's/^listening on //p' "$tmp/serve.log")"
run() { # name, flags…
  local name="$1"; shift
  local t0 t1
  t0=$(date +%s.%N)
  "$bin" sweep --image "$tmp/scene.tif" --query "where are the ships?" --task region --tile 512 --overlap 64 \
    --out "$tmp/$(echo "$name" | tr -c "a-z0-9" _).gpkg" --json "$@" > "$tmp/out.json" 2> /dev/null
  t1=$(date +%s.%N)
  local tiles
  tiles=$(sed -n 's/^ *"tiles": \([0-9]*\).*/\1/p' "$tmp/out.json")
  awk -v n="$name" -v t="$tiles" -v a="$t0" -v b="$t1" \
    'BEGIN { s = b - a; printf "| %s | %d | %.1f | %.0f |\n", n, t, s, t / s * 60 }'
}
echo "| sweep | tiles | seconds | tiles/min |"
echo "|---|---:|---:|---:|"
run "local checkpoint (no HTTP)" --model "$model"
for c in 1 2 4; do
  run "serve, $c at a time" --endpoint "$url" --concurrency "$c"
done
