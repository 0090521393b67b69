#!/usr/bin/env bash
# Run by test-install.sh inside a clean root, as an ordinary user: the installed RemoteReasoner does
# its everyday jobs on the bundled sample with the tiny test checkpoint.
#   bash test-commands.sh REMOTE_REASONER OUT_DIR
set -euo pipefail
rr=$1 out=$2
data=$(dirname "$0")
sample=$data/sample.tif
cd "$out"
export XDG_RUNTIME_DIR=$HOME/.runtime
mkdir -p -m 700 "$XDG_RUNTIME_DIR"

"$rr" --version | tee version.txt
grep -q '^GDAL 3\.' version.txt
"$rr" info "$sample" --json >info.json
grep -q '"epsg": *32631' info.json
"$rr" render "$sample" --out render.png --size 400x400
test -s render.png
"$rr" ask --task contour --model "$data/qwen2_5_vl_tiny_trained" --image "$sample" --window 10,20,180,170 \
  --out result.gpkg --mask-out mask.tif "where are the ships?" >ask.txt 2>ask.log
grep -q 'layer polygons: [1-9]' ask.txt
"$rr" polygonize --mask mask.tif --out polygons.geojson --json >polygonize.json
grep -q '"georeferenced": true' polygonize.json
grep -q '"type": *"Polygon"\|"type": *"MultiPolygon"' polygons.geojson
# The workbench itself, on a virtual display; it saves its window once the sample has loaded.
timeout 300 xvfb-run -a -s "-screen 0 1280x800x24" "$rr" "$sample" --screenshot workbench.png 2>gui.log
test -s workbench.png
echo "commands passed"
