#!/usr/bin/env python3
"""candle (remote-reasoner) vs PyPI sam2 1.1.0 on this CPU, same weights, one run:
SAM 2.1 image-encoder time at 1024² and decoder time per click (box + centre point,
single-mask output), tiny and large geometries. Prints a Markdown report.

    SAM2_BUILD_CUDA=0 .venv/bin/pip install sam2==1.1.0 torch pillow numpy
    .venv/bin/python tools/bench_sam2.py [--threads 2] [--prompts 20] [--work /tmp/rr-sam2-bench]

The weights are the seeded ones of tools/make_sam2_fixtures.py, written once per
geometry as an official-format checkpoint that both frameworks load.
"""

import argparse
import json
import os
import statistics
import subprocess
import time

import numpy as np
import torch
from PIL import Image

from make_sam2_fixtures import fill, init_spec  # same directory: the seeded weights

from sam2.build_sam import build_sam2
from sam2.sam2_image_predictor import SAM2ImagePredictor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GEOMETRIES = {"tiny": "sam2.1_hiera_t", "large": "sam2.1_hiera_l"}


def prompts(n, w, h):
    out = []
    for i in range(n):
        f = i / n
        x1, y1 = f * w * 0.5, f * h * 0.5
        out.append(([x1, y1, x1 + w * 0.4, y1 + h * 0.4], [x1 + w * 0.2, y1 + h * 0.2]))
    return out


def bench_torch(cfg, ckpt, image, n):
    model = build_sam2(f"configs/sam2.1/{cfg}.yaml", ckpt_path=ckpt, device="cpu")
    predictor = SAM2ImagePredictor(model)
    arr = np.array(image)
    encode = []
    with torch.inference_mode():
        for _ in range(2):
            t = time.perf_counter()
            predictor.set_image(arr)
            encode.append((time.perf_counter() - t) * 1e3)
        decode = []
        for box, centre in prompts(n, *image.size):
            t = time.perf_counter()
            predictor.predict(point_coords=np.array([centre]), point_labels=np.array([1]), box=np.array(box),
                              multimask_output=False)
            decode.append((time.perf_counter() - t) * 1e3)
    return {"encode_ms_first": encode[0], "encode_ms": encode[1], "decode_ms": statistics.median(decode)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--work", default="/tmp/rr-sam2-bench")
    ap.add_argument("--geometries", default="tiny,large")
    ap.add_argument("--binary", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(
        os.path.expanduser("~"), ".cache", "remote-reasoner", "target")), "release", "rr-bench"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.work, exist_ok=True)
    sample = Image.open(os.path.join(ROOT, "assets", "samples", "rotterdam_port_rgb_4p5m_spacenet6.tif")).convert("RGB")
    image = sample.resize((1024, 1024), Image.BICUBIC)
    png = os.path.join(args.work, "image_1024.png")
    image.save(png)
    rows = []
    for name in args.geometries.split(","):
        cfg = GEOMETRIES[name]
        ckpt = os.path.join(args.work, f"{cfg}_seeded.pt")
        if not os.path.exists(ckpt):
            model = build_sam2(f"configs/sam2.1/{cfg}.yaml", ckpt_path=None, device="cpu")
            fill(model, init_spec(model))
            torch.save({"model": model.state_dict()}, ckpt)
            del model
        t = bench_torch(cfg, ckpt, image, args.prompts)
        env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
        out = subprocess.run([args.binary, "segmenter", "--sam", ckpt, "--image", png,
                              "--prompts", str(args.prompts), "--encodes", "2"],
                             check=True, capture_output=True, text=True, env=env)
        c = json.loads(out.stdout)
        rows.append((name, t, c))
    print(f"sam2 1.1.0 on torch {torch.__version__}, {args.threads} threads; 1024×1024 image; "
          f"{args.prompts} single-prompt decodes (box + centre point, single-mask output), median.\n")
    print("| geometry | stage | sam2 (PyTorch) | candle | candle speed ÷ PyTorch |")
    print("|---|---|---|---|---|")
    for name, t, c in rows:
        print(f"| {name} | image encoder, first call | {t['encode_ms_first']:.0f} ms | {c['encode_ms_first']:.0f} ms | "
              f"{t['encode_ms_first'] / c['encode_ms_first']:.2f}× |")
        print(f"| {name} | image encoder, again | {t['encode_ms']:.0f} ms | {c['encode_ms']:.0f} ms | "
              f"{t['encode_ms'] / c['encode_ms']:.2f}× |")
        print(f"| {name} | decoder per click (incl. mask upsampling) | {t['decode_ms']:.1f} ms | {c['decode_ms']:.1f} ms | "
              f"{t['decode_ms'] / c['decode_ms']:.2f}× |")


if __name__ == "__main__":
    main()
