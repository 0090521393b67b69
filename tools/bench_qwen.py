#!/usr/bin/env python3
"""candle (remote-reasoner) vs PyTorch transformers on the same random weights and
inputs: Qwen2.5-VL-7B geometry at reduced depth (every 7B width; 2 language layers,
4 vision layers with one full-attention block), an 896x896 image (1024 visual
tokens, the training budget) under the grounding prompt, then greedy decoding.
Prints a Markdown report for BENCHMARKS.md.

    .venv/bin/python tools/bench_qwen.py [--decode 32] [--threads 2] [--work /tmp/rr-qwen-bench]

Needs the release binary (cargo build --release) and about 14 GB of free memory
(the f32 checkpoint is 6.7 GB; the two frameworks run one after the other).
"""

import argparse
import gc
import json
import os
import re
import resource
import subprocess
import sys
import time

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

import transformers
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from make_qwen_fixtures import legacy_name  # same directory: the published tensor names

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_TOKEN = 151655


def config_7b_reduced():
    """The published Qwen2.5-VL-7B config.json with fewer layers."""
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
        "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652,
        "vision_end_token_id": 151653, "vision_token_id": 151654, "image_token_id": IMAGE_TOKEN,
        "video_token_id": 151656, "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02,
        "intermediate_size": 18944, "max_position_embeddings": 128000, "max_window_layers": 28,
        "num_attention_heads": 28, "num_hidden_layers": 2, "num_key_value_heads": 4, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": False, "torch_dtype": "float32",
        "use_cache": True, "use_sliding_window": False, "vocab_size": 152064,
        "vision_config": {"depth": 4, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
                          "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14,
                          "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
                          "fullatt_block_indexes": [3], "tokens_per_second": 2, "temporal_patch_size": 2},
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    }


def prepare(work):
    os.makedirs(work, exist_ok=True)
    cfg = config_7b_reduced()
    weights = os.path.join(work, "model.safetensors")
    if not os.path.exists(weights):
        with open(os.path.join(work, "config.json"), "w") as f:
            json.dump(cfg, f, indent=1)
        torch.manual_seed(0)
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig.from_pretrained(work))
        state = {legacy_name(k): v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, weights, metadata={"format": "pt"})
        del model, state
        gc.collect()
    # 896x896 (= 802 816 pixels, no resize): the bundled sample scaled up.
    sample = Image.open(os.path.join(ROOT, "assets", "samples", "rotterdam_port_rgb_4p5m_spacenet6.tif")).convert("RGB")
    image = sample.resize((896, 896), Image.BICUBIC)
    proc = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=802816)
    px = proc(images=[image], return_tensors="pt")
    grid = px["image_grid_thw"][0].tolist()
    n_image = grid[0] * grid[1] * grid[2] // 4
    # A prompt as long as the grounding prompt (~200 text tokens around the image).
    rng = np.random.default_rng(0)
    before = rng.integers(0, 151000, 190).tolist() + [151652]
    after = [151653] + rng.integers(0, 151000, 20).tolist()
    ids = before + [IMAGE_TOKEN] * n_image + after
    inputs = os.path.join(work, "inputs.safetensors")
    save_file({"pixel_values": px["pixel_values"].contiguous(), "input_ids": torch.tensor(ids, dtype=torch.int64)}, inputs)
    return cfg, inputs, grid


def bench_torch(work, inputs, grid, dtype, decode):
    from safetensors.torch import load_file
    t0 = time.perf_counter()
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(work, attn_implementation="sdpa", dtype=dtype)
    model.eval()
    load_ms = (time.perf_counter() - t0) * 1e3
    data = load_file(inputs)
    ids = data["input_ids"][None]
    grid_t = torch.tensor([grid])
    with torch.inference_mode():
        t0 = time.perf_counter()
        feats = model.model.get_image_features(data["pixel_values"].to(dtype), image_grid_thw=grid_t).pooler_output[0]
        vision_ms = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        embeds = model.model.get_input_embeddings()(ids)
        mask = (ids == IMAGE_TOKEN)
        embeds = embeds.masked_scatter(mask[..., None], feats.to(embeds.dtype))
        pos, delta = model.model.get_rope_index(ids, mm_token_type_ids=mask.int(), image_grid_thw=grid_t)
        out = model(inputs_embeds=embeds, position_ids=pos, use_cache=True, logits_to_keep=1)
        prefill_ms = (time.perf_counter() - t0) * 1e3
        first = out.logits[0, -1].float()
        cache, logits = out.past_key_values, out.logits[:, -1]
        tokens = []
        step = ids.shape[1] + int(delta[0, 0])
        t0 = time.perf_counter()
        for i in range(decode):
            nxt = int(logits[0].argmax())
            tokens.append(nxt)
            p = torch.full((3, 1, 1), step + i, dtype=torch.long)
            out = model(input_ids=torch.tensor([[nxt]]), cache=cache, position_ids=p, use_cache=True, logits_to_keep=1)
            cache, logits = out.past_key_values, out.logits[:, -1]
        decode_ms = (time.perf_counter() - t0) * 1e3
    report = {"framework": "transformers", "dtype": str(dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
              "load_ms": load_ms, "vision_ms": vision_ms, "prefill_ms": prefill_ms, "prompt_tokens": ids.shape[1],
              "decode_tokens": decode, "decode_ms_per_token": decode_ms / decode, "tokens": tokens,
              "first_logits": first.tolist(),
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}
    del model, cache, out
    gc.collect()
    return report


def bench_candle(binary, work, inputs, grid, dtype, decode, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = subprocess.run([binary, "reasoner", "--model", work, "--inputs", inputs, "--grid",
                          ",".join(map(str, grid)), "--precision", dtype, "--decode", str(decode)],
                         check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout)


def membw_gbs():
    """Sustained read bandwidth with the benchmark's threads (torch sum over 2 GiB)."""
    x = torch.ones(1 << 29, dtype=torch.float32)
    x.sum()
    t0 = time.perf_counter()
    for _ in range(5):
        x.sum()
    return 5 * x.numel() * 4 / (time.perf_counter() - t0) / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--work", default="/tmp/rr-qwen-bench")
    ap.add_argument("--binary", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(
        os.path.expanduser("~"), ".cache", "remote-reasoner", "target")), "release", "rr-bench"))
    ap.add_argument("--pairs", default="f32:f32,bf16:bf16,bf16:q8_0",
                    help="transformers dtype : candle precision, comma separated")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg, inputs, grid = prepare(args.work)
    rows = []
    torch_runs = {}
    for pair in args.pairs.split(","):
        tname, cname = pair.split(":")
        name = tname if tname == cname else f"{tname} / {cname}"
        dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[tname]
        if tname not in torch_runs:
            torch_runs[tname] = bench_torch(args.work, inputs, grid, dtype, args.decode)
        t = torch_runs[tname]
        c = bench_candle(args.binary, args.work, inputs, grid, cname, args.decode, args.threads)
        diff = float(np.max(np.abs(np.array(t["first_logits"]) - np.array(c["first_logits"]))))
        same = sum(a == b for a, b in zip(t["tokens"], c["tokens"]))
        rows.append((name, t, c, diff, same))
        print(f"# {name}: torch {t['vision_ms']:.0f}/{t['prefill_ms']:.0f}/{t['decode_ms_per_token']:.0f} ms, "
              f"candle {c['vision_ms']:.0f}/{c['prefill_ms']:.0f}/{c['decode_ms_per_token']:.0f} ms", file=sys.stderr)
    bw = membw_gbs()
    lm_params = 28 * (3584 * 3584 * 2 + 2 * 3584 * 512 + 3 * 3584 * 18944) + 152064 * 3584
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, {args.threads} threads; "
          f"prompt {rows[0][1]['prompt_tokens']} tokens (1024 visual), {args.decode} decoded tokens.\n")
    print("| transformers / candle | stage | transformers | candle | candle speed ÷ transformers |")
    print("|---|---|---|---|---|")
    for name, t, c, diff, same in rows:
        for stage, key in [("vision tower (896×896)", "vision_ms"), ("LM prefill", "prefill_ms"),
                           ("decode, per token", "decode_ms_per_token")]:
            print(f"| {name} | {stage} | {t[key]:.0f} ms | {c[key]:.0f} ms | {t[key] / c[key]:.2f}× |")
        total_t, total_c = t["vision_ms"] + t["prefill_ms"], c["vision_ms"] + c["prefill_ms"]
        print(f"| {name} | vision + prefill | {total_t:.0f} ms | {total_c:.0f} ms | {total_t / total_c:.2f}× |")
        print(f"| {name} | peak RSS | {t['peak_rss_mib']} MiB | {c['peak_rss_mib']} MiB | |")
        print(f"| {name} | agreement | first-logit max abs Δ {diff:.2e}; {same}/{args.decode} greedy tokens equal | | |")
    reduced = 2 * (3584 * 3584 * 2 + 2 * 3584 * 512 + 3 * 3584 * 18944) + 152064 * 3584
    print(f"\nMemory read bandwidth here ({args.threads} threads): {bw:.1f} GB/s. The real 28-layer language model "
          f"reads {lm_params / 1e9:.2f} B parameters per decoded token, {lm_params / reduced:.1f}× this benchmark's: "
          f"bandwidth bound ≥ {lm_params * 4 / bw / 1e6:.0f} ms/token in f32, ≥ {lm_params * 2 / bw / 1e6:.0f} in bf16, "
          f"≥ {lm_params * 34 / 32 / bw / 1e6:.0f} in q8_0.")
    for name, t, c, _, _ in rows:
        scale = lm_params / reduced
        print(f"Scaled by weight bytes, {name} decode of the real model: transformers ≈ "
              f"{t['decode_ms_per_token'] * scale:.0f} ms/token, candle ≈ {c['decode_ms_per_token'] * scale:.0f} ms/token.")


if __name__ == "__main__":
    main()
