#!/usr/bin/env python3
"""A SAM 3 checkpoint of the released geometry with transformers' own random
initialisation (`Sam3Model(Sam3Config())`), saved as `facebook/sam3`'s image model
is (config.json, model.safetensors) with CLIP's full tokenizer beside it: what the
benchmark (tools/bench_sam3.py) and anyone trying the CLI without the gated weights
can run. `--depth full` keeps every layer (≈ 840 M parameters, 3.4 GB in f32);
`--depth reduced` is the parity report's geometry (ViT 2 layers, text 2, fusion 1,
decoder 2, exemplar encoder 1).

    ~/.cache/remote-reasoner/reference/bin/python tools/make_sam3_checkpoint.py OUT_DIR [--depth full|reduced] [--seed 0]
"""

import argparse
import os
import sys

import torch
from transformers import Sam3Config, Sam3Model

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clip_tokenizer  # noqa: E402


def config(depth):
    c = Sam3Config()
    if depth == "reduced":
        vit = c.vision_config.backbone_config
        vit.num_hidden_layers, vit.global_attn_indexes = 2, [1]
        c.text_config.num_hidden_layers = 2
        c.detr_encoder_config.num_layers = 1
        c.detr_decoder_config.num_layers = 2
        c.geometry_encoder_config.num_layers = 1
    return c


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--depth", choices=["full", "reduced"], default="full")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    model = Sam3Model(config(args.depth)).eval()
    model.save_pretrained(args.out)
    clip_tokenizer.build(args.out)
    n = sum(p.numel() for p in model.parameters())
    print(f"{args.out}: {n / 1e6:.0f} M parameters")


if __name__ == "__main__":
    main()
