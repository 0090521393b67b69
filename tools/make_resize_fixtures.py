#!/usr/bin/env python3
"""Pillow's bicubic and bilinear resize on random size pairs, for the bit-exact
resize test (`pil_resize_equals_pillow` in tests/qwen_parity.rs): bicubic is what the
Qwen2-VL processor uses, bilinear what segment_anything's ResizeLongestSide uses.

One 97×71 RGB source (a crop of the bundled sample with noise) and Pillow's
`Image.resize((w, h), filter)` of it to 40 sizes: up, down, mixed, one axis
only, and the cases where Pillow 13 runs the vertical pass first (height shrinking
by more than twice the width), which round differently from horizontal first.
Outputs are PNGs named `W_H_bicubic.png` / `W_H_bilinear.png`; `cases.json` lists them with Pillow's version.

Also torchvision's antialiased bilinear resize of a uint8 tensor (what transformers'
SAM 3 processor does, `resize_rgb8_torch`): the same 40 sizes (`W_H_torchvision.png`)
and a 403×311 source (`large.png`) shrunk and grown to 8 sizes, 1008×1008 among them
(`large_W_H_torchvision.png`), so 16-bit weights at several precisions are exercised.

    bash tools/setup_reference.sh   # pinned Pillow and torchvision
    ~/.cache/remote-reasoner/reference/bin/python tools/make_resize_fixtures.py [OUT_DIR]   # default tests/fixtures/pillow_resize
"""

import json
import os
import random
import sys

import numpy as np
import PIL
import torch
import torchvision
import torchvision.transforms.v2.functional as TF
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "fixtures", "pillow_resize")
    os.makedirs(out, exist_ok=True)
    rng = random.Random(11)
    sample = Image.open(os.path.join(ROOT, "assets", "samples", "rotterdam_port_rgb_4p5m_spacenet6.tif")).convert("RGB")
    src = np.array(sample.crop((40, 30, 137, 101)), dtype=np.int16)
    src = np.clip(src + np.random.default_rng(11).integers(-40, 41, size=src.shape), 0, 255).astype(np.uint8)
    src = Image.fromarray(src, "RGB")
    src.save(os.path.join(out, "source.png"))
    w0, h0 = src.size
    sizes = [(w0, 30), (40, h0), (150, 110), (30, 20), (110, 40), (60, 90)]  # one axis, up, down, mixed
    while len(sizes) < 40:
        w, h = rng.randint(8, 160), rng.randint(8, 120)
        if (w, h) != (w0, h0):
            sizes.append((w, h))
    cases = []
    for w, h in sizes:
        for name, f in (("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR)):
            src.resize((w, h), f).save(os.path.join(out, f"{w}_{h}_{name}.png"))
        torchvision_resize(src, w, h).save(os.path.join(out, f"{w}_{h}_torchvision.png"))
        shrink = h0 - h
        cases.append({"size": [w, h], "vertical_first": shrink > 0 and shrink > (w0 - w) * 2})
    large = Image.fromarray(np.array(sample.crop((200, 150, 603, 461))), "RGB")
    large.save(os.path.join(out, "large.png"))
    large_sizes = [(1008, 1008), (100, 77), (37, 300), (403, 120), (160, 311), (211, 150), (64, 64), (500, 90)]
    for w, h in large_sizes:
        torchvision_resize(large, w, h).save(os.path.join(out, f"large_{w}_{h}_torchvision.png"))
    json.dump({"pillow": PIL.__version__, "torchvision": torchvision.__version__, "source": [w0, h0], "cases": cases,
               "large": [list(s) for s in large_sizes]}, open(os.path.join(out, "cases.json"), "w"), indent=1)
    print(f"{len(cases)} sizes, {sum(c['vertical_first'] for c in cases)} with the vertical pass first")


def torchvision_resize(img, w, h):
    """`resize(uint8 CHW tensor, [h, w], antialias=True)`, bilinear, back to an image."""
    t = torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()
    r = TF.resize(t, [h, w], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return Image.fromarray(r.permute(1, 2, 0).numpy(), "RGB")


if __name__ == "__main__":
    main()
