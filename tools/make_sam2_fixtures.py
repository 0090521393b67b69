#!/usr/bin/env python3
"""Reference outputs of PyPI `sam2` 1.1.0's SAM2ImagePredictor for the Rust SAM 2.1
parity tests (tests/sam2_parity.rs).

A SAM 2.1 tiny checkpoint is 156 MB, too large to commit, so its weights are made
by a counter-based generator (splitmix64) that the Rust tests reproduce exactly:
`weights.json` lists every tensor the image predictor uses (name, shape, offset
into the stream, centre and amplitude); value i of a tensor is
    centre + amplitude * (2 * U(offset + i) - 1),   U(n) = (splitmix64(SEED + (n + 1) * GOLDEN) >> 11) / 2**53
The model is built by sam2 from `sam2.1_hiera_t.yaml` with those weights, saved in the
official checkpoint format ({"model": state_dict}, torch.save) next to the fixtures
(not committed), reloaded by `build_sam2` from that file, and run on a non-square
image that is not 1024 px: one box + centre point, three boxes at once, and a
refinement click fed the previous low-res logits.

It also writes `format_check.pt`: a small torch.save file with the layouts real
checkpoints contain (f32/f16/bf16/i64, a transposed view, two tensors sharing one
storage at an offset) and their values, to test the pickle-free reader.

    SAM2_BUILD_CUDA=0 .venv/bin/pip install sam2==1.1.0 torch pillow numpy safetensors
    .venv/bin/python tools/make_sam2_fixtures.py [OUT_DIR]    # default tests/fixtures/sam2_tiny
"""

import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from sam2.build_sam import build_sam2
from sam2.sam2_image_predictor import SAM2ImagePredictor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 20250718
GOLDEN = 0x9E3779B97F4A7C15
PREDICTOR_PREFIXES = ("image_encoder.", "sam_prompt_encoder.", "sam_mask_decoder.", "no_mem_embed")


def splitmix_uniform(start, n):
    """U(start), …, U(start + n - 1) in [0, 1), float64."""
    with np.errstate(over="ignore"):
        idx = np.arange(start + 1, start + n + 1, dtype=np.uint64)
        z = np.uint64(SEED) + idx * np.uint64(GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def init_spec(model):
    """(name, shape, centre, amplitude) for every predictor tensor."""
    norms = set()
    convt = set()
    for mod_name, mod in model.named_modules():
        kind = type(mod).__name__
        if kind in ("LayerNorm", "LayerNorm2d"):
            norms.add(mod_name + ".weight")
        if kind == "ConvTranspose2d":
            convt.add(mod_name + ".weight")
    spec = []
    for name, t in sorted(model.state_dict().items()):
        if not name.startswith(PREDICTOR_PREFIXES):
            continue
        shape = list(t.shape)
        if name in norms:
            centre, amp = 1.0, 0.1
        elif name.endswith(".bias"):
            centre, amp = 0.0, 0.02
        elif "positional_encoding_gaussian_matrix" in name:
            centre, amp = 0.0, 3 ** 0.5  # unit variance, like randn
        elif "pos_embed" in name or name == "no_mem_embed":
            centre, amp = 0.0, 0.1
        elif len(shape) >= 2 and not name.endswith(("_token.weight", "_tokens.weight", "_embed.weight")) \
                and "point_embeddings" not in name:
            fan_in = shape[0] * int(np.prod(shape[2:])) if name in convt else int(np.prod(shape[1:]))
            centre, amp = 0.0, (3.0 / fan_in) ** 0.5  # variance 1 / fan_in
        else:
            centre, amp = 0.0, 1.0  # embeddings and tokens
        spec.append((name, shape, centre, amp))
    return spec


def fill(model, spec):
    state = model.state_dict()
    offset, entries = 0, []
    for name, shape, centre, amp in spec:
        n = int(np.prod(shape))
        values = centre + amp * (2.0 * splitmix_uniform(offset, n) - 1.0)
        state[name] = torch.from_numpy(values.astype(np.float32).reshape(shape))
        entries.append({"name": name, "shape": shape, "offset": offset, "centre": centre, "amplitude": amp})
        offset += n
    model.load_state_dict(state)
    return entries


def format_check(out):
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10) / 7
    shared = torch.arange(100, dtype=torch.float32) * 0.5
    tensors = {
        "f32": base.clone(),
        "f16": (base * 3).half(),
        "bf16": (base - 2).bfloat16(),
        "i64": torch.arange(12, dtype=torch.int64).reshape(3, 4) - 5,
        "transposed": base.clone().t(),  # a non-contiguous view
        "shared_a": shared[10:40].view(5, 6),  # views into one storage, at offsets
        "shared_b": shared[50:80],
    }
    torch.save({"model": tensors, "epoch": 3}, os.path.join(out, "format_check.pt"))
    json.dump({k: {"shape": list(v.shape), "values": v.float().flatten().tolist()} for k, v in tensors.items()},
              open(os.path.join(out, "format_check.json"), "w"))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "fixtures", "sam2_tiny")
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    cfg = "configs/sam2.1/sam2.1_hiera_t.yaml"
    model = build_sam2(cfg, ckpt_path=None, device="cpu")
    spec = init_spec(model)
    entries = fill(model, spec)
    json.dump({"seed": SEED, "golden": GOLDEN, "tensors": entries}, open(os.path.join(out, "weights.json"), "w"))
    ckpt = os.path.join(out, "sam2.1_hiera_tiny_random.pt")  # 156 MB: not committed (.gitignore)
    torch.save({"model": model.state_dict()}, ckpt)
    # The reference: sam2's own builder loading that checkpoint, with its image-predictor settings.
    model = build_sam2(cfg, ckpt_path=ckpt, device="cpu")
    predictor = SAM2ImagePredictor(model)

    sample = Image.open(os.path.join(ROOT, "assets", "samples", "rotterdam_port_rgb_4p5m_spacenet6.tif")).convert("RGB")
    image = sample.resize((500, 340), Image.BICUBIC)
    image.save(os.path.join(out, "image.png"))
    predictor.set_image(np.array(image))

    tensors, expected = {}, {"sam2": "1.1.0", "torch": torch.__version__, "image": [500, 340], "cases": {}}

    def record(name, masks, ious, low_res, prompt):
        masks = np.asarray(masks).reshape(-1, 340, 500)
        tensors[f"{name}.low_res"] = torch.from_numpy(np.ascontiguousarray(low_res, dtype=np.float32))
        for i, m in enumerate(masks):
            Image.fromarray((m > 0).astype(np.uint8) * 255).save(os.path.join(out, f"{name}_mask{i}.png"))
        expected["cases"][name] = {"iou": np.asarray(ious).reshape(-1).tolist(), "masks": len(masks),
                                   "mask_pixels": [int((m > 0).sum()) for m in masks], **prompt}

    # One box with a positive point at its centre, single-mask output (RemoteReasoner's prompt).
    box = [60.0, 40.0, 300.0, 250.0]
    centre = [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]
    masks, ious, low_res = predictor.predict(point_coords=np.array([centre]), point_labels=np.array([1]),
                                             box=np.array(box), multimask_output=False)
    record("single", masks, ious, low_res, {"boxes": [box], "points": [[centre]], "labels": [[1]]})

    # Several boxes at once (batched prompts, one per box).
    boxes = [[20.0, 30.0, 160.0, 200.0], [200.0, 100.0, 480.0, 330.0], [300.0, 5.0, 420.0, 90.0]]
    centres = [[[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2]] for b in boxes]
    masks, ious, low_res = predictor.predict(point_coords=np.array(centres), point_labels=np.ones((3, 1)),
                                             box=np.array(boxes), multimask_output=False)
    record("multi", masks, ious, low_res, {"boxes": boxes, "points": centres, "labels": [[1]] * 3})

    # A refinement: the first box again, its low-res logits fed back, plus a negative and a positive click.
    prev = tensors["single.low_res"].numpy()
    points = [centre, [100.0, 200.0], [250.0, 60.0]]
    labels = [1, 0, 1]
    masks, ious, low_res = predictor.predict(point_coords=np.array(points), point_labels=np.array(labels),
                                             box=np.array(box), mask_input=prev, multimask_output=False)
    record("refine", masks, ious, low_res, {"boxes": [box], "points": [points], "labels": [labels]})

    # Object-score logits are not returned by predict(); read them from the same decoder call.
    with torch.no_grad():
        coords = torch.tensor([[box[:2], box[2:], centre]], dtype=torch.float32)
        coords = predictor._transforms.transform_coords(coords, normalize=True, orig_hw=predictor._orig_hw[-1])
        sparse, dense = model.sam_prompt_encoder(points=(coords, torch.tensor([[2, 3, 1]], dtype=torch.int)),
                                                 boxes=None, masks=None)
        feats = predictor._features
        _, _, _, obj = model.sam_mask_decoder(
            image_embeddings=feats["image_embed"], image_pe=model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False,
            repeat_image=False, high_res_features=feats["high_res_feats"])
        expected["cases"]["single"]["object_score"] = float(obj[0, 0])
        # Encoder outputs, summarised (the tensors themselves are 16 MB).
        expected["image_embed_mean_abs"] = float(feats["image_embed"].abs().mean())
        expected["image_embed_sample"] = feats["image_embed"][0, :4, 10, 20].tolist()

    save_file(tensors, os.path.join(out, "expected.safetensors"))
    json.dump(expected, open(os.path.join(out, "expected.json"), "w"), indent=1)
    format_check(out)
    print(f"wrote {out}: {sum(int(np.prod(e['shape'])) for e in entries)} predictor parameters; "
          f"ious {[expected['cases'][c]['iou'] for c in expected['cases']]}")


if __name__ == "__main__":
    main()
