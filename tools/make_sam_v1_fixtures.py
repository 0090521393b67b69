#!/usr/bin/env python3
"""Reference outputs of the original Segment Anything (`segment-anything` 1.0 from PyPI,
Meta's `SamPredictor`) for the Rust SAM v1 / MobileSAM parity tests (tests/sam_v1_parity.rs).

Two models, both with seeded weights made by the same counter-based generator as
tools/make_sam2_fixtures.py (the Rust tests rebuild them from `weights.json`):

- `vit`: a ViT image encoder with a small geometry (embed 96, depth 2, 2 heads,
  block 1 global) so the test runs in seconds; every module (patch embedding,
  absolute and relative positions, windowed and global attention, neck) is the
  one ViT-B/L/H use, only narrower. Built by `segment_anything.build_sam._build_sam`.
- `mobile`: MobileSAM's TinyViT-5M at its real geometry. MobileSAM is not on PyPI;
  its encoder is taken from `ultralytics` (the same module and tensor names as the
  MobileSAM repository, which checkpoints `mobile_sam.pt` load into) and put into
  `segment_anything`'s `Sam`, which is what MobileSAM itself does.

Each model is saved as a plain state dict (`torch.save(state_dict)`, the format of
`sam_vit_b_01ec64.pth` and `mobile_sam.pt`; not committed), reloaded from that file
and run through `SamPredictor` on the 500×340 image of the SAM 2.1 fixtures: one box
+ centre point, three boxes at once, and a refinement click with the previous
low-res logits fed back.

    .venv/bin/pip install segment-anything==1.0 ultralytics torch pillow numpy safetensors
    .venv/bin/python tools/make_sam_v1_fixtures.py [OUT_DIR]    # default tests/fixtures/sam_v1
"""

import json
import os
import sys
from functools import partial

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from segment_anything import SamPredictor
from segment_anything.build_sam import _build_sam
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_sam2_fixtures import GOLDEN, SEED, fill  # noqa: E402  (the same seeded generator)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = ("image_encoder.head.", "image_encoder.norm_head.")  # TinyViT's classifier, unused by SAM


def mobile_sam():
    from ultralytics.models.sam.modules.tiny_encoder import TinyViT

    encoder = TinyViT(img_size=1024, in_chans=3, num_classes=1000, embed_dims=[64, 128, 160, 320],
                      depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0,
                      drop_rate=0.0, drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0,
                      local_conv_size=3, layer_lr_decay=0.8)
    return Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                                     mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
                                 transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])


def vit_small():
    return _build_sam(encoder_embed_dim=96, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=[1])


def init_spec(model):
    """(name, shape, centre, amplitude) for every float tensor SAM uses."""
    norms, bns, convt = set(), set(), set()
    for mod_name, mod in model.named_modules():
        kind = type(mod).__name__
        if kind in ("LayerNorm", "LayerNorm2d"):
            norms.add(mod_name + ".weight")
        if kind == "BatchNorm2d":
            bns.add(mod_name)
        if kind == "ConvTranspose2d":
            convt.add(mod_name + ".weight")
    spec = []
    for name, t in sorted(model.state_dict().items()):
        if name.startswith(SKIP) or not t.is_floating_point():
            continue
        shape = list(t.shape)
        owner, _, leaf = name.rpartition(".")
        if name in norms or (owner in bns and leaf in ("weight", "running_var")):
            centre, amp = 1.0, 0.1
        elif owner in bns and leaf == "running_mean":
            centre, amp = 0.0, 0.1
        elif name.endswith(".bias") or "attention_biases" in name:
            centre, amp = 0.0, 0.02
        elif "positional_encoding_gaussian_matrix" in name:
            centre, amp = 0.0, 3 ** 0.5
        elif "pos_embed" in name or "rel_pos" in name:
            centre, amp = 0.0, 0.1
        elif len(shape) >= 2 and not name.endswith(("_token.weight", "_tokens.weight", "_embed.weight")) \
                and "point_embeddings" not in name:
            fan_in = shape[0] * int(np.prod(shape[2:])) if name in convt else int(np.prod(shape[1:]))
            centre, amp = 0.0, (3.0 / fan_in) ** 0.5
        else:
            centre, amp = 0.0, 1.0
        spec.append((name, shape, centre, amp))
    return spec



def run(kind, build, out, image):
    model = build()
    entries = fill(model, init_spec(model))
    json.dump({"seed": SEED, "golden": GOLDEN, "tensors": entries}, open(os.path.join(out, f"{kind}_weights.json"), "w"))
    ckpt = os.path.join(out, f"{kind}_random.pth")  # plain state dict, as the official files; not committed
    torch.save({k: v for k, v in model.state_dict().items() if not k.startswith(SKIP)}, ckpt)
    model = build()
    model.load_state_dict(torch.load(ckpt, map_location="cpu"), strict=False)
    model.eval()
    predictor = SamPredictor(model)
    predictor.set_image(np.array(image))
    resized = predictor.transform.apply_image(np.array(image))
    Image.fromarray(resized).save(os.path.join(out, "resized.png"))  # the same for both models

    tensors, expected = {}, {"segment_anything": "1.0", "torch": torch.__version__, "image": list(image.size),
                             "input_size": list(predictor.input_size), "cases": {}}
    h, w = image.size[1], image.size[0]

    def record(name, masks, ious, low_res, prompt):
        masks = np.asarray(masks).reshape(-1, h, w)
        tensors[f"{name}.low_res"] = torch.from_numpy(np.ascontiguousarray(low_res, dtype=np.float32))
        for i, m in enumerate(masks):
            Image.fromarray(m.astype(np.uint8) * 255).save(os.path.join(out, f"{kind}_{name}_mask{i}.png"))
        expected["cases"][name] = {"iou": np.asarray(ious).reshape(-1).tolist(), "masks": len(masks),
                                   "mask_pixels": [int(m.sum()) for m in masks], **prompt}

    box = [60.0, 40.0, 300.0, 250.0]
    centre = [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]
    masks, ious, low_res = predictor.predict(point_coords=np.array([centre]), point_labels=np.array([1]),
                                             box=np.array(box), multimask_output=False)
    record("single", masks, ious, low_res, {"boxes": [box], "points": [[centre]], "labels": [[1]]})

    boxes = [[20.0, 30.0, 160.0, 200.0], [200.0, 100.0, 480.0, 330.0], [300.0, 5.0, 420.0, 90.0]]
    centres = [[[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2]] for b in boxes]
    t = predictor.transform
    with torch.no_grad():
        masks, ious, low_res = predictor.predict_torch(
            point_coords=torch.as_tensor(t.apply_coords(np.array(centres), (h, w)), dtype=torch.float32),
            point_labels=torch.ones((3, 1), dtype=torch.int),
            boxes=torch.as_tensor(t.apply_boxes(np.array(boxes), (h, w)), dtype=torch.float32),
            multimask_output=False)
    record("multi", masks.numpy(), ious.numpy(), low_res.numpy(), {"boxes": boxes, "points": centres,
                                                                   "labels": [[1]] * 3})

    prev = tensors["single.low_res"].numpy()
    points = [centre, [100.0, 200.0], [250.0, 60.0]]
    labels = [1, 0, 1]
    masks, ious, low_res = predictor.predict(point_coords=np.array(points), point_labels=np.array(labels),
                                             box=np.array(box), mask_input=prev, multimask_output=False)
    record("refine", masks, ious, low_res, {"boxes": [box], "points": [points], "labels": [labels]})

    feats = predictor.features
    expected["image_embed_mean_abs"] = float(feats.abs().mean())
    expected["image_embed_sample"] = feats[0, :4, 10, 20].tolist()
    save_file(tensors, os.path.join(out, f"{kind}_expected.safetensors"))
    json.dump(expected, open(os.path.join(out, f"{kind}_expected.json"), "w"), indent=1)
    print(f"{kind}: {sum(int(np.prod(e['shape'])) for e in entries)} parameters; "
          f"ious {[expected['cases'][c]['iou'] for c in expected['cases']]}")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "fixtures", "sam_v1")
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    image = Image.open(os.path.join(ROOT, "tests", "fixtures", "sam2_tiny", "image.png")).convert("RGB")
    run("vit", vit_small, out, image)
    run("mobile", mobile_sam, out, image)


if __name__ == "__main__":
    main()
