#!/usr/bin/env python3
"""Reference outputs of transformers' `Sam3Model` (SAM 3 image model) for the Rust
SAM 3 parity tests (issue 16).

Why transformers and not Meta's `sam3` package: `Sam3Model(Sam3Config(...))` builds
on a CPU from a config with the library's own default initialisation, while `sam3`
0.1.4 allocates on CUDA while building, imports triton and ships no tokenizer
vocabulary. transformers' layout is also what `facebook/sam3`'s safetensors use.

For each seed the model is built by transformers at a tiny geometry that still runs
every component (windowed and global ViT layers, the four-level FPN, text tower,
geometry encoder with ROI pooling, fusion encoder, decoder with box refinement and
presence token, mask head); seed 2 has every weight matrix scaled ×4 (peaked
attention). transformers' default init leaves biases at 0 and norms
at 1/0, which would hide bias and LayerNorm bugs, so after building, every bias and
norm parameter is moved by 0.1·N(0, 1) (seeded). The weights are saved with
`save_pretrained` (config.json + model.safetensors, the hub's names) and the
outputs of each stage go to expected.safetensors:

    vision.last_hidden_state          ViT output [B, T, C]
    vision.fpn.{i}, vision.pos.{i}    FPN levels and their sine position encodings
    text.features                     projected text tokens [B, 32, 256-ish]
    {case}.geometry.*, {case}.encoder.last_hidden_state, {case}.decoder.*
                                      each stage's output as the whole model runs
    {case}.pred_logits / pred_boxes / presence_logits / pred_masks / semantic_seg
        for case in text (text only), boxes ("visual" + boxes), both (text + boxes)

Through transformers' `Sam3Processor` as well (its image processor at this model's
size, CLIP's tokenizer with the first 126 of its merges — `tools/clip_tokenizer.py`,
saved beside the weights as tokenizer.json): a non-square crop of the bundled sample
and, per case `e2e_text` (a phrase with capitals, double spaces and punctuation),
`e2e_boxes` (a positive and a negative box in image pixels, no text) and `e2e_both`:

    {case}.input_ids / attention_mask / pixel_values   what the processor made
    {case}.input_boxes / input_boxes_labels            (box cases)
    {case}.scores / boxes / masks                      post_process_instance_segmentation
        at threshold 0 (every query, boxes in image pixels, masks at the image's size, u8)

    .venv/bin/python tools/make_sam3_fixtures.py [OUT_DIR]   # default tests/fixtures/sam3_tiny
"""

import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import Sam3Config, Sam3ImageProcessor, Sam3Model, Sam3Processor
from transformers.models.sam3.configuration_sam3 import (
    Sam3DETRDecoderConfig,
    Sam3DETREncoderConfig,
    Sam3GeometryEncoderConfig,
    Sam3MaskDecoderConfig,
    Sam3ViTConfig,
    Sam3VisionConfig,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import clip_tokenizer  # noqa: E402

SAMPLE = os.path.join(ROOT, "assets", "samples", "rotterdam_port_rgb_4p5m_spacenet6.tif")
TINY_MERGES = 126  # 512 byte symbols + 126 merges + 2 specials = the text vocabulary (640)
SEEDS = [0, 1, 2]
# Seed 2 is a stressed variant: every weight matrix ×4, so attention is peaked rather than
# nearly uniform (at transformers' init scale a wrong position encoding barely shows).
STRESS = {2: 4.0}
IMAGE = 112


def tiny_config():
    """Every component at a small width; the ViT sees an 8×8 grid in 6×6 windows
    (padded to 12) with one global layer, the position table (4×4) is tiled 2×2."""
    vit = Sam3ViTConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                        image_size=IMAGE, patch_size=14, window_size=6, global_attn_indexes=[1],
                        pretrain_image_size=56)
    return Sam3Config(
        vision_config=Sam3VisionConfig(backbone_config=vit, fpn_hidden_size=32, scale_factors=[4.0, 2.0, 1.0, 0.5]),
        text_config=dict(vocab_size=512 + TINY_MERGES + 2, hidden_size=32, intermediate_size=64, projection_dim=16,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=32, hidden_act="gelu"),
        geometry_encoder_config=Sam3GeometryEncoderConfig(hidden_size=32, num_layers=2, num_attention_heads=4,
                                                          intermediate_size=64, roi_size=7),
        detr_encoder_config=Sam3DETREncoderConfig(hidden_size=32, num_layers=2, num_attention_heads=4,
                                                  intermediate_size=64),
        detr_decoder_config=Sam3DETRDecoderConfig(hidden_size=32, num_layers=2, num_queries=8, num_attention_heads=4,
                                                  intermediate_size=64),
        mask_decoder_config=Sam3MaskDecoderConfig(hidden_size=32, num_upsampling_stages=3, num_attention_heads=4),
    )


def perturb(model, gen):
    """Moves biases and norm parameters off 0 and 1 (default init hides their bugs)."""
    norms = {n for n, m in model.named_modules() if isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm))}
    with torch.no_grad():
        for name, p in model.named_parameters():
            module = name.rsplit(".", 1)[0]
            if name.endswith(".bias") or module in norms:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))


def prompts(gen, vocab):
    """Two rows of text ids of different lengths (start 1, end 2, pad 2) and their masks,
    and two rows of boxes: a positive and a negative one, and one padded box (label -10)."""
    ids = torch.full((2, 32), 2, dtype=torch.long)
    mask = torch.zeros((2, 32), dtype=torch.long)
    for row, n in enumerate((5, 9)):
        ids[row, 0] = 1
        ids[row, 1:n - 1] = torch.randint(3, vocab, (n - 2,), generator=gen)
        mask[row, :n] = 1
    boxes = torch.tensor([[[15.0, 20.0, 60.0, 75.0], [50.0, 10.0, 100.0, 45.0], [0.0, 0.0, 1.0, 1.0]],
                          [[5.0, 30.0, 45.0, 105.0], [75.0, 65.0, 110.0, 100.0], [0.0, 0.0, 1.0, 1.0]]])
    labels = torch.tensor([[1, 0, -10], [1, 1, -10]])
    # The model takes normalised cxcywh boxes.
    xyxy = boxes / IMAGE
    cxcywh = torch.stack([(xyxy[..., 0] + xyxy[..., 2]) / 2, (xyxy[..., 1] + xyxy[..., 3]) / 2,
                          xyxy[..., 2] - xyxy[..., 0], xyxy[..., 3] - xyxy[..., 1]], dim=-1)
    return ids, mask, cxcywh, labels


def run_seed(seed, out_dir):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(1000 + seed)
    config = tiny_config()
    config._attn_implementation = "eager"
    model = Sam3Model(config).eval()
    perturb(model, gen)
    if seed in STRESS:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2:
                    p.mul_(STRESS[seed])
    model.save_pretrained(out_dir, safe_serialization=True)
    pixels = torch.randn((2, 3, IMAGE, IMAGE), generator=gen)
    ids, mask, boxes, labels = prompts(gen, config.text_config.vocab_size)
    expected = {"inputs.pixel_values": pixels, "inputs.input_ids": ids, "inputs.attention_mask": mask,
                "inputs.input_boxes": boxes, "inputs.input_boxes_labels": labels}
    with torch.no_grad():
        vision = model.vision_encoder(pixels)
        expected["vision.last_hidden_state"] = vision.last_hidden_state
        for i, (f, p) in enumerate(zip(vision.fpn_hidden_states, vision.fpn_position_encoding)):
            expected[f"vision.fpn.{i}"] = f
            expected[f"vision.pos.{i}"] = p
        expected["text.features"] = model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
        # Boxes alone: the prompt text is one word ("visual" in transformers' processor).
        visual = torch.full_like(ids, 2)
        visual[:, 0], visual[:, 1] = 1, 3
        visual_mask = torch.zeros_like(mask)
        visual_mask[:, :3] = 1
        expected["inputs.visual_ids"], expected["inputs.visual_mask"] = visual, visual_mask
        cases = {
            "text": dict(input_ids=ids, attention_mask=mask),
            "boxes": dict(input_ids=visual, attention_mask=visual_mask, input_boxes=boxes, input_boxes_labels=labels),
            "both": dict(input_ids=ids, attention_mask=mask, input_boxes=boxes, input_boxes_labels=labels),
        }
        # Each stage's output, captured as the whole model runs.
        captured = {}

        def keep(name, fields):
            def hook(_module, _args, out):
                for field in fields:
                    value = getattr(out, field, None)
                    if isinstance(value, torch.Tensor):
                        captured[f"{name}.{field}"] = value
            return hook

        hooks = [
            model.geometry_encoder.register_forward_hook(keep("geometry", ["last_hidden_state", "attention_mask"])),
            model.detr_encoder.register_forward_hook(keep("encoder", ["last_hidden_state"])),
            model.detr_decoder.register_forward_hook(
                keep("decoder", ["intermediate_hidden_states", "reference_boxes", "presence_logits"])),
        ]
        for case, kwargs in cases.items():
            captured.clear()
            out = model(pixel_values=pixels, **kwargs)
            for key, value in captured.items():
                expected[f"{case}.{key}"] = value.float() if value.dtype == torch.bool else value
            for key in ("pred_logits", "pred_boxes", "presence_logits", "pred_masks", "semantic_seg"):
                value = getattr(out, key, None)
                if value is not None:
                    expected[f"{case}.{key}"] = value
    for h in hooks:
        h.remove()
    expected.update(through_processor(model, out_dir, seed))
    save_file({k: v.clone().contiguous().float() if v.is_floating_point() else v.clone().contiguous()
               for k, v in expected.items()}, os.path.join(out_dir, "expected.safetensors"))
    return {k: list(v.shape) for k, v in expected.items()}


def through_processor(model, out_dir, seed):
    """The model as an analyst runs it in transformers: processor in, post-processing out."""
    tokenizer = clip_tokenizer.build(out_dir, TINY_MERGES)
    processor = Sam3Processor(Sam3ImageProcessor(size={"height": IMAGE, "width": IMAGE}), tokenizer)
    w, h = 150 + 23 * seed, 97 + 41 * seed
    image = Image.open(SAMPLE).convert("RGB").crop((60 + 9 * seed, 40, 60 + 9 * seed + w, 40 + h))
    boxes = [[[12.5, 20.0, 70.0, 61.0], [90.0, 8.0, 140.0, 50.5]]]
    cases = {
        "e2e_text": dict(text="  Storage   Tanks, the SHIPS!"),
        "e2e_boxes": dict(input_boxes=boxes, input_boxes_labels=[[1, 0]]),
        "e2e_both": dict(text="ship", input_boxes=boxes, input_boxes_labels=[[1, 0]]),
    }
    out = {}
    with torch.no_grad():
        for case, kwargs in cases.items():
            inputs = processor(images=image, return_tensors="pt", **kwargs)
            for key in ("input_ids", "attention_mask", "pixel_values", "input_boxes", "input_boxes_labels"):
                if key in inputs:
                    out[f"{case}.{key}"] = inputs[key]
            outputs = model(**{k: v for k, v in inputs.items() if k != "original_sizes"})
            result = processor.post_process_instance_segmentation(outputs, threshold=0.0, target_sizes=[(h, w)])[0]
            out[f"{case}.scores"], out[f"{case}.boxes"] = result["scores"], result["boxes"]
            out[f"{case}.masks"] = result["masks"].to(torch.uint8)
    out["e2e.image"] = torch.from_numpy(np.array(image))
    return out


def main():
    base = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests/fixtures/sam3_tiny")
    import transformers
    summary = {"transformers": transformers.__version__, "torch": torch.__version__, "seeds": {}}
    for seed in SEEDS:
        out_dir = os.path.join(base, f"seed{seed}")
        os.makedirs(out_dir, exist_ok=True)
        summary["seeds"][seed] = run_seed(seed, out_dir)
    with open(os.path.join(base, "fixtures.json"), "w") as f:
        json.dump(summary, f, indent=1, sort_keys=True)
    print(json.dumps(summary["seeds"][SEEDS[0]], indent=1))


if __name__ == "__main__":
    main()
