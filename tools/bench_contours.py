#!/usr/bin/env python3
"""Contour level, side by side in one run on the same data (one process each):

- a 4096² mask with ~1000 objects (holes, islands): ours (`rr-bench contours`,
  in-process) vs GDALPolygonize in the same process, vs OpenCV findContours
  (RETR_CCOMP = outer borders and holes, CHAIN_APPROX_SIMPLE), and end to end
  `remote-reasoner polygonize` vs `gdal_polygonize.py`, both to GeoPackage;
- 100k polygons with provenance: our GeoPackage export vs `ogr2ogr -f GPKG`
  from a GeoJSON of the same features.

    .venv/bin/pip install opencv-python-headless numpy
    .venv/bin/python tools/bench_contours.py [--runs 3] [--work /tmp/rr-contour-bench]

Prints a Markdown table with ratios (reference time / ours: > 1 means we are faster).
"""

import argparse
import json
import os
import shutil
import subprocess
import time

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/remote-reasoner/target"))
BIN = os.path.join(TARGET, "release", "remote-reasoner")
BENCH = os.path.join(TARGET, "release", "rr-bench")


def best(runs, f):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        f()
        times.append((time.perf_counter() - t) * 1e3)
    return min(times)


def run(cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", default="/tmp/rr-contour-bench")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    cv2.setNumThreads(1)

    ours = json.loads(subprocess.check_output([BENCH, "contours", "--work", a.work, "--runs", str(a.runs)]))
    mask = cv2.imread(ours["mask"], cv2.IMREAD_UNCHANGED)
    assert mask.shape == (ours["size"], ours["size"]), mask.shape

    contours = []

    def find():
        contours.clear()
        c, _ = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        contours.extend(c)

    cv_ms = best(a.runs, find)
    cv_ext_ms = best(a.runs, lambda: cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE))

    # Paper's line map: agreement of ours with cv2.drawContours(thickness=3) on the same mask.
    ext, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    ref = np.full(mask.shape, 255, np.uint8)
    cv2.drawContours(ref, ext, -1, 0, 3)
    lm = os.path.join(a.work, "lines.png")
    run([BIN, "polygonize", "--mask", ours["mask"], "--out", os.path.join(a.work, "lm.gpkg"), "--line-map", lm])
    mine = cv2.imread(lm, cv2.IMREAD_UNCHANGED)
    black_ref, black_mine = ref == 0, mine == 0
    line_iou = (black_ref & black_mine).sum() / max((black_ref | black_mine).sum(), 1)

    def cli_ours():
        run([BIN, "polygonize", "--mask", ours["mask"], "--out", os.path.join(a.work, "cli_ours.gpkg")])

    def cli_gdal():
        out = os.path.join(a.work, "cli_gdal.gpkg")
        if os.path.exists(out):
            os.remove(out)
        run(["gdal_polygonize.py", "-q", ours["mask"], "-mask", ours["mask"], "-f", "GPKG", out])

    cli_ours_ms = best(a.runs, cli_ours)
    cli_gdal_ms = best(a.runs, cli_gdal)

    def ogr2ogr():
        out = os.path.join(a.work, "ogr2ogr.gpkg")
        if os.path.exists(out):
            os.remove(out)
        run(["ogr2ogr", "-f", "GPKG", out, ours["geojson"]])

    ogr_ms = best(a.runs, ogr2ogr)

    rows = [
        ("Polygonize 4096² (in process)", ours["polygonize_ms"], "GDALPolygonize (same process)", ours["gdal_polygonize_ms"]),
        ("Polygonize 4096² (in process)", ours["polygonize_ms"], "OpenCV findContours RETR_CCOMP", cv_ms),
        ("Polygonize 4096² (in process)", ours["polygonize_ms"], "OpenCV findContours RETR_EXTERNAL", cv_ext_ms),
        ("`polygonize` CLI → GPKG", cli_ours_ms, "`gdal_polygonize.py` → GPKG", cli_gdal_ms),
        (f"Export {ours['export_features']} polygons → GPKG", ours["export_gpkg_ms"], "`ogr2ogr -f GPKG` from GeoJSON", ogr_ms),
    ]
    print(f"Mask {ours['size']}² with {ours['polygons']} polygons ({ours['holes']} holes, {ours['vertices']} vertices; "
          f"GDAL: {ours['gdal_polygons']} polygons; OpenCV CCOMP: {len(contours)} contours); "
          f"export: {ours['export_features']} polygons, {ours['export_vertices']} vertices; best of {a.runs}.\n")
    print("| ours | ms | reference | ms | reference / ours |")
    print("|---|---:|---|---:|---:|")
    for name, ms, ref_name, ref_ms in rows:
        print(f"| {name} | {ms:.1f} | {ref_name} | {ref_ms:.1f} | {ref_ms / ms:.2f}× |")
    print(f"\nLine map vs cv2.drawContours(thickness=3): IoU of the black pixels {line_iou:.4f}")


if __name__ == "__main__":
    main()
