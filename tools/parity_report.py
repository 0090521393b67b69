#!/usr/bin/env python3
"""Parity report: every model port against its reference implementation, stage by stage.

Weights come from the reference libraries' own builders with their default
initialisation (a torch seed; no weights of ours), plus the same weights with every
weight matrix scaled (x1.5 by default) to stress the numerics. Images are non-square
crops of the bundled sample at sizes drawn from the seed. For each case the reference
runs in-process with forward hooks on its modules, our port runs through `rr-parity`
(the dev binary in tools/parity, loading the checkpoint file through the same code a
user's checkpoint goes through) and every stage is compared: one line per stage with
max |Δ| and the reference's own magnitude.

Ports and references:
  sam2_tiny, sam2_base_plus  sam2 1.1.0  build_sam2("configs/sam2.1/sam2.1_hiera_{t,b+}.yaml", ckpt_path=None)
                             -> {"model": state_dict}.pt -> SAM2ImagePredictor
  sam_vit_b                  segment-anything 1.0  sam_model_registry["vit_b"]() -> state_dict .pth -> SamPredictor
  mobile_sam                 MobileSAM's TinyViT-5M (ultralytics' module, MobileSAM's names) in segment-anything's Sam
  qwen2_5_vl                 transformers Qwen2_5_VLForConditionalGeneration(config): its _init_weights
  sam3                       transformers Sam3Model(Sam3Config()): the released geometry (1008² input, ViT 1024
                             wide with 24-px windows, CLIP text tower 1024 wide, 200 queries) at reduced depth (ViT
                             2 layers, the second global; text 2; fusion encoder 1; decoder 2; exemplar encoder 1),
                             its _init_weights; CLIP's full tokenizer (tools/clip_tokenizer.py); Sam3Processor in,
                             post_process_instance_segmentation out
  sam3_meta                  Meta's sam3 0.1.4 build_sam3_image_model (tools/sam3_meta.py: on CPU, ViT and text
                             tower cut to 2 blocks, the rest the released geometry), its own init, saved as Meta
                             ships sam3.pt ({"model": {"detector.*"}}); its Sam3Processor (text, boxes as normalised
                             cx cy w h, both; masks resampled as logits); token ids from its SimpleTokenizer

Cases per SAM: one box + centre point (single mask, the dynamic stability fallback),
three boxes batched, one box with multimask output, points only, and a refinement
(box + centre + a negative and a positive click + the previous low-res logits).
Qwen: pixel values, prompt ids, vision tower, first-step logits, greedy tokens and
the logits after them. SAM 3: a text prompt, a positive and a negative exemplar box
("visual"), and text + one box; pixel values, token ids, ViT tokens, query logits,
presence, boxes, mask logits, scores and the masks at the image's size.

--check holds each case to the goals (exit status 1 otherwise): SAM masks equal on
every pixel whose reference logit is farther than 1e-4 from 0 and on >= 99.99 % of all
pixels, predicted IoU within 1e-5, object score within 1e-4; Qwen prompt ids and
greedy tokens identical, pixel values within 1e-5; SAM 3 token ids identical, pixel
values within 1e-5, scores within 1e-4, boxes within 1e-4 (of the image side), masks
equal on >= 99.9 % of pixels.

    bash tools/setup_reference.sh                   # the pinned references, in a venv
    ~/.cache/remote-reasoner/reference/bin/python tools/parity_report.py [--seeds 0,1,2] [--scales 1,1.5] \
        [--ports sam2_tiny,qwen2_5_vl] [--check] [--fresh]      # --fresh: seeds drawn at random
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "assets", "samples", "rotterdam_port_rgb_4p5m_spacenet6.tif")
QWEN_TEMPLATE = os.path.join(ROOT, "tests", "fixtures", "qwen2_5_vl_tiny")
PORTS = ("sam2_tiny", "sam2_base_plus", "sam_vit_b", "mobile_sam", "qwen2_5_vl", "sam3", "sam3_meta")
NEAR_ZERO = 1e-4  # logits this close to 0 may flip either way in f32


def rr_parity():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/remote-reasoner/target"))
    exe = os.path.join(target, "release", "rr-parity")
    if not os.path.exists(exe):
        sys.exit(f"parity_report: {exe} is missing: cargo build --release -p rr-parity")
    return exe


class Report:
    """Lines of the report and the goals missed."""

    def __init__(self):
        self.failures = []
        self.cases = 0
        self.failed_cases = set()

    def stage(self, tag, name, ours, ref):
        ours = np.asarray(ours, dtype=np.float64)
        ref = np.asarray(ref, dtype=np.float64)
        if ours.size != ref.size:
            self.fail(tag, f"{name}: {ours.shape} elements vs the reference's {ref.shape}")
            return float("inf")
        d = float(np.max(np.abs(ours.reshape(-1) - ref.reshape(-1)))) if ref.size else 0.0
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
        print(f"{tag:44s} {name:28s} max|Δ| {d:9.3e}   max|ref| {scale:9.3e}")
        return d

    def line(self, tag, text):
        print(f"{tag:44s} {text}")

    def fail(self, tag, text):
        self.failures.append(f"{tag}: {text}")
        self.failed_cases.add(tag.split(" ")[0] + " " + " ".join(tag.split(" ")[1:4]))
        print(f"{tag:44s} MISS {text}")


# ---------------------------------------------------------------------------- images and prompts


def test_image(rng):
    """A non-square crop of the bundled sample, resized to a non-square size."""
    sample = Image.open(SAMPLE).convert("RGB")
    sw, sh = sample.size
    cw, ch = rng.randint(sw // 3, sw), rng.randint(sh // 3, sh)
    x, y = rng.randint(0, sw - cw), rng.randint(0, sh - ch)
    w = rng.randint(260, 720)
    h = rng.randint(200, 620)
    if abs(w - h) < 20:
        h += 40
    return sample.crop((x, y, x + cw, y + ch)).resize((w, h), Image.BICUBIC)


def random_box(rng, w, h):
    bw, bh = rng.uniform(0.15, 0.6) * w, rng.uniform(0.15, 0.6) * h
    x1, y1 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
    return [round(x1, 1), round(y1, 1), round(x1 + bw, 1), round(y1 + bh, 1)]


def centre(b):
    return [(b[0] + b[2]) / 2, (b[1] + b[3]) / 2]


def sam_cases(rng, w, h):
    """name -> {"boxes": [...] or None, "points": per prompt [[x, y, label], ...], "multimask", "mask_from"}."""
    one = random_box(rng, w, h)
    three = [random_box(rng, w, h) for _ in range(3)]
    inside = lambda b: [rng.uniform(b[0], b[2]), rng.uniform(b[1], b[3])]  # noqa: E731
    return {
        "single": {"boxes": [one], "points": [[centre(one) + [1]]], "multimask": False},
        "multi": {"boxes": three, "points": [[centre(b) + [1]] for b in three], "multimask": False},
        "multimask": {"boxes": [one], "points": [[centre(one) + [1]]], "multimask": True},
        "points_only": {"boxes": None, "points": [[inside(one) + [1], [rng.uniform(0, w), rng.uniform(0, h), 0]]],
                        "multimask": True},
        "refine": {"boxes": [one], "points": [[centre(one) + [1], inside(one) + [0], inside(one) + [1]]],
                   "multimask": False, "mask_from": "single"},
    }


def cases_json(cases):
    out = {}
    for name, c in cases.items():
        prompts = []
        for i, pts in enumerate(c["points"]):
            prompts.append({"box": c["boxes"][i] if c["boxes"] else None,
                            "points": [[p[0], p[1], int(p[2])] for p in pts]})
        out[name] = {"prompts": prompts, "multimask": c["multimask"], "mask_from": c.get("mask_from")}
    return {"cases": out}


def scale_weights(state, k):
    """Every weight matrix (rank >= 2) times k: larger activations, sharper logits."""
    return {n: (t * k if t.dim() >= 2 and t.is_floating_point() else t) for n, t in state.items()}


# ---------------------------------------------------------------------------- SAM references


class Hooks:
    """Forward hooks writing named outputs into `self.out`."""

    def __init__(self):
        self.out, self.handles = {}, []

    def on(self, module, name, pick=lambda o: o):
        def hook(_m, _i, o):
            self.out[name] = pick(o).detach().clone()
        self.handles.append(module.register_forward_hook(hook))

    def wrap(self, obj, attr, names):
        """Records a method's returned tuple under `names` (None: skip that element)."""
        fn = getattr(obj, attr)

        def wrapped(*a, **kw):
            res = fn(*a, **kw)
            for n, v in zip(names, res):
                if n is not None and v is not None:
                    self.out[n] = v.detach().clone()
            return res
        setattr(obj, attr, wrapped)

    def take(self):
        out, self.out = self.out, {}
        return out


def build_sam2(port, seed, scale, tmp):
    from sam2.build_sam import build_sam2
    cfg = {"sam2_tiny": "sam2.1_hiera_t.yaml", "sam2_base_plus": "sam2.1_hiera_b+.yaml"}[port]
    torch.manual_seed(seed)
    model = build_sam2("configs/sam2.1/" + cfg, ckpt_path=None, device="cpu")
    path = os.path.join(tmp, f"{port}.pt")
    torch.save({"model": scale_weights(model.state_dict(), scale)}, path)
    # The reference is sam2 loading that same file, as a user's checkpoint.
    return build_sam2("configs/sam2.1/" + cfg, ckpt_path=path, device="cpu"), path


def build_sam_v1(port, seed, scale, tmp):
    from segment_anything import sam_model_registry
    torch.manual_seed(seed)
    if port == "sam_vit_b":
        model = sam_model_registry["vit_b"]()
    else:
        model = mobile_sam()
    state = {k: v for k, v in model.state_dict().items()
             if not k.startswith(("image_encoder.head.", "image_encoder.norm_head."))}
    path = os.path.join(tmp, f"{port}.pth")
    torch.save(scale_weights(state, scale), path)
    model.load_state_dict(torch.load(path), strict=False)
    return model.eval(), path


def mobile_sam():
    """MobileSAM as its repository builds it: TinyViT-5M in segment-anything's Sam."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
    from ultralytics.models.sam.modules.tiny_encoder import TinyViT
    encoder = TinyViT(img_size=1024, in_chans=3, num_classes=1000, embed_dims=[64, 128, 160, 320],
                      depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0,
                      drop_rate=0.0, drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0,
                      local_conv_size=3, layer_lr_decay=0.8)
    return Sam(image_encoder=encoder,
               prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(64, 64),
                                            input_image_size=(1024, 1024), mask_in_chans=16),
               mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048,
                                                                      num_heads=8),
                                        transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256),
               pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])


def prompt_and_decoder_hooks(h, prompt_encoder, dec):
    """The stages both SAM generations share: prompt embeddings and the two-way transformer."""
    h.on(prompt_encoder, "sparse", lambda o: o[0])
    h.on(prompt_encoder, "dense", lambda o: o[1])
    for i, layer in enumerate(dec.transformer.layers):
        h.on(layer, f"decoder.block{i}.queries", lambda o: o[0])
        h.on(layer, f"decoder.block{i}.keys", lambda o: o[1])
    h.on(dec.transformer, "decoder.queries", lambda o: o[0])


def sam2_hooks(model):
    h = Hooks()
    trunk = model.image_encoder.trunk
    h.on(trunk.patch_embed, "trunk.patch_embed")
    for i, b in enumerate(trunk.blocks):
        h.on(b, f"trunk.block{i}")
    for i in range(4):
        h.on(model.image_encoder.neck, f"neck.level{i}", lambda o, i=i: o[0][i])
    dec = model.sam_mask_decoder
    prompt_and_decoder_hooks(h, model.sam_prompt_encoder, dec)
    # SAM 2 unpacks `output_upscaling` and calls its parts one by one: hook the last activation.
    h.on(dec.output_upscaling[4], "decoder.upscaled")
    h.wrap(dec, "predict_masks", ["decoder.masks_all", "decoder.iou_all", None, "decoder.object_score"])
    return h


def sam_v1_hooks(model):
    h = Hooks()
    h.on(model.image_encoder, "image_embed")
    dec = model.mask_decoder
    prompt_and_decoder_hooks(h, model.prompt_encoder, dec)
    h.on(dec.output_upscaling, "decoder.upscaled")
    h.wrap(dec, "predict_masks", ["decoder.masks_all", "decoder.iou_all"])
    return h


def run_sam_reference(port, model, img, cases):
    """Encoder stages, then per case: hooked stages, masks (logits), IoU, low-res logits."""
    v2 = port.startswith("sam2")
    if v2:
        from sam2.sam2_image_predictor import SAM2ImagePredictor
        predictor, hooks = SAM2ImagePredictor(model), sam2_hooks(model)
    else:
        from segment_anything import SamPredictor
        predictor, hooks = SamPredictor(model), sam_v1_hooks(model)
    arr = np.array(img)
    with torch.no_grad():
        predictor.set_image(arr)
        ref = hooks.take()
        if v2:
            f = predictor._features
            ref["image_embed"] = f["image_embed"]
            ref["conv_s0"], ref["conv_s1"] = f["high_res_feats"]
            ref["trunk.pos_embed"] = model.image_encoder.trunk._get_pos_embed((256, 256)).permute(0, 2, 3, 1)
        results = {}
        for name in sorted(cases, key=lambda n: cases[n].get("mask_from") is not None):
            c = cases[name]
            # The previous call's returned low-res logits, (1, 256, 256), as a user feeds them back.
            mask_input = results[c["mask_from"]]["low_res"][0] if c.get("mask_from") else None
            masks, ious, low = sam_predict(predictor, c, mask_input, v2)
            stages = hooks.take()
            results[name] = {"masks": masks, "iou": ious, "low_res": low, "stages": stages}
    return ref, results


def sam_predict(predictor, c, mask_input, v2):
    pts = np.array(c["points"], dtype=np.float32)  # (B, N, 3)
    coords, labels = pts[..., :2], pts[..., 2].astype(np.int64)
    boxes = np.array(c["boxes"], dtype=np.float32) if c["boxes"] else None
    if len(c["points"]) == 1:
        masks, ious, low = predictor.predict(point_coords=coords[0], point_labels=labels[0],
                                             box=None if boxes is None else boxes[0], mask_input=mask_input,
                                             multimask_output=c["multimask"], return_logits=True)
        return masks[None], ious[None], low[None]
    if v2:
        masks, ious, low = predictor.predict(point_coords=coords, point_labels=labels, box=boxes,
                                             multimask_output=c["multimask"], return_logits=True)
        return masks, ious, low
    t = predictor.transform
    size = predictor.original_size
    masks, ious, low = predictor.predict_torch(
        point_coords=t.apply_coords_torch(torch.as_tensor(coords), size), point_labels=torch.as_tensor(labels),
        boxes=t.apply_boxes_torch(torch.as_tensor(boxes), size), multimask_output=c["multimask"], return_logits=True)
    return masks.numpy(), ious.numpy(), low.numpy()


def compare_sam(rep, tag, port, ours, ref, results, cases):
    for name in ref:
        if name in ours:
            rep.stage(tag, name, ours[name], ref[name])
    v2 = port.startswith("sam2")
    for name, c in cases.items():
        r = results[name]
        t = f"{tag} {name}"
        for stage, want in r["stages"].items():
            key = f"{name}.{stage}"
            if key in ours:
                rep.stage(t, stage, ours[key], want)
        low = ours[f"{name}.low_res"].numpy()
        if v2:
            low = np.clip(low, -32.0, 32.0)  # what SAM2ImagePredictor returns
        rep.stage(t, "low_res (returned)", low, r["low_res"])
        d_iou = rep.stage(t, "iou (returned)", ours[f"{name}.iou"].numpy(), r["iou"])
        if d_iou > 1e-5:
            rep.fail(t, f"predicted IoU differs by {d_iou:.2e} (goal 1e-5)")
        if v2 and "decoder.object_score" in r["stages"]:
            d = float(np.max(np.abs(ours[f"{name}.decoder.object_score"].numpy().reshape(-1)
                                    - r["stages"]["decoder.object_score"].numpy().reshape(-1))))
            if d > 1e-4:
                rep.fail(t, f"object score differs by {d:.2e} (goal 1e-4)")
        logits = r["masks"]  # (B, M, h, w), upscaled logits
        if c["multimask"]:
            best = np.argmax(r["iou"], axis=1)
            logits = np.stack([logits[i, k] for i, k in enumerate(best)])
        else:
            logits = logits[:, 0]
        mine = ours[f"{name}.mask"].numpy() > 0.5
        want = logits > 0
        equal = mine == want
        sure = np.abs(logits) > NEAR_ZERO
        agree, agree_sure = float(equal.mean()), float(equal[sure].mean()) if sure.any() else 1.0
        rep.line(t, f"{'mask':28s} agreement {agree * 100:.4f} % ({int((~equal).sum())} of {equal.size} px differ;"
                    f" {agree_sure * 100:.4f} % where |logit| > {NEAR_ZERO:g})")
        if agree_sure < 1.0 or agree < 0.9999:
            rep.fail(t, f"masks agree on {agree * 100:.4f} % ({agree_sure * 100:.4f} % away from 0)")


def sam_case(rep, exe, port, seed, scale, tmp):
    rng = random.Random(seed * 7919 + int(scale * 1000))
    img = test_image(rng)
    w, h = img.size
    tag = f"{port} seed={seed} x{scale:g} {w}x{h}"
    rep.cases += 1
    img_path = os.path.join(tmp, "image.png")
    img.save(img_path)
    cases = sam_cases(rng, w, h)
    with open(os.path.join(tmp, "cases.json"), "w") as f:
        json.dump(cases_json(cases), f)
    build = build_sam2 if port.startswith("sam2") else build_sam_v1
    model, ckpt = build(port, seed, scale, tmp)
    t0 = time.time()
    ref, results = run_sam_reference(port, model, img, cases)
    t1 = time.time()
    out = os.path.join(tmp, "ours.safetensors")
    sub = "sam2" if port.startswith("sam2") else "sam-v1"
    subprocess.run([exe, sub, "--checkpoint", ckpt, "--image", img_path, "--cases", os.path.join(tmp, "cases.json"),
                    "--out", out], check=True)
    t2 = time.time()
    rep.line(tag, f"reference {t1 - t0:.1f} s, ours {t2 - t1:.1f} s")
    compare_sam(rep, tag, port, load_file(out), ref, results, cases)


# ---------------------------------------------------------------------------- Qwen2.5-VL


def qwen_case(rep, exe, seed, scale, tmp):
    import transformers
    from transformers import AutoConfig, PreTrainedTokenizerFast, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from make_qwen_fixtures import chat, legacy_name, prompt

    rng = random.Random(seed * 104729 + int(scale * 1000))
    model_dir = os.path.join(tmp, "qwen")
    os.makedirs(model_dir, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "generation_config.json", "preprocessor_config.json"):
        shutil.copy(os.path.join(QWEN_TEMPLATE, name), model_dir)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(AutoConfig.from_pretrained(model_dir))  # transformers' own init
    state = {legacy_name(k): v.contiguous() for k, v in scale_weights(model.state_dict(), scale).items()}
    save_file(state, os.path.join(model_dir, "model.safetensors"), metadata={"format": "pt"})
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, attn_implementation="eager",
                                                               dtype=torch.float32).eval()
    img = test_image(rng).resize((rng.randint(150, 420), rng.randint(120, 380)), Image.BICUBIC)
    w, h = img.size
    tag = f"qwen2_5_vl seed={seed} x{scale:g} {w}x{h}"
    rep.cases += 1
    img_path = os.path.join(tmp, "qwen.png")
    img.save(img_path)
    query = rng.choice(["where are the ships?", "where can planes take off?", "which tanks hold oil?"])
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(model_dir, "tokenizer.json"))
    out = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=802816)(images=[img], return_tensors="pt")
    pixels, grid = out["pixel_values"], out["image_grid_thw"]
    text = chat(prompt("system_default"), prompt("grounding") + "\n<image>\nText description: " + query)
    n_img = int(grid.prod()) // 4
    ids = torch.tensor([tok(text.replace("<|image_pad|>", "<|image_pad|>" * n_img), add_special_tokens=False)
                        ["input_ids"]])
    steps = 32
    t0 = time.time()
    with torch.no_grad():
        embeds = model.model.get_image_features(pixels, image_grid_thw=grid).pooler_output[0]
        mm = (ids == model.config.image_token_id).int()
        res = model(input_ids=ids, pixel_values=pixels, image_grid_thw=grid, mm_token_type_ids=mm, use_cache=True)
        first, cache, logits = res.logits[0, -1].clone(), res.past_key_values, res.logits[:, -1]
        tokens, margins = [], []
        for _ in range(steps):
            top2 = torch.topk(logits[0], 2).values
            margins.append(float(top2[0] - top2[1]))
            nxt = int(logits[0].argmax())
            tokens.append(nxt)
            res = model(input_ids=torch.tensor([[nxt]]), cache=cache, use_cache=True,
                        rope_deltas=model.model.rope_deltas)
            cache, logits = res.past_key_values, res.logits[:, -1]
    t1 = time.time()
    path = os.path.join(tmp, "qwen_ours.safetensors")
    subprocess.run([exe, "qwen", "--model", model_dir, "--image", img_path, "--query", query,
                    "--steps", str(steps), "--out", path], check=True)
    t2 = time.time()
    ours = load_file(path)
    rep.line(tag, f"transformers {transformers.__version__}; reference {t1 - t0:.1f} s, ours {t2 - t1:.1f} s")
    if ours["grid_thw"].long().tolist() != grid[0].tolist():
        rep.fail(tag, f"grid {ours['grid_thw'].long().tolist()} vs {grid[0].tolist()}")
        return
    d = rep.stage(tag, "pixel_values", ours["pixel_values"], pixels)
    if d > 1e-5:
        rep.fail(tag, f"pixel values differ by {d:.2e}")
    if ours["input_ids"].long().tolist() != ids[0].tolist():
        rep.fail(tag, "prompt ids differ from the tokenizer's")
        return
    rep.line(tag, f"{'input_ids':28s} identical ({ids.shape[1]} tokens, {n_img} image tokens)")
    rep.stage(tag, "image_embeds", ours["image_embeds"], embeds)
    rep.stage(tag, "first_logits", ours["first_logits"], first)
    got = ours["greedy_tokens"].long().tolist()
    same = got == tokens
    rep.line(tag, f"{'greedy_tokens':28s} {'identical' if same else 'DIFFER'} ({steps} tokens; smallest top-2 "
                  f"margin {min(margins):.2e})")
    if same:
        rep.stage(tag, f"logits_after_{steps}", ours["last_logits"], logits[0])
    else:
        rep.fail(tag, f"greedy tokens differ: first at {next(i for i, (a, b) in enumerate(zip(got, tokens)) if a != b)}")


def sam3_inputs(rng, tmp, tag_prefix, seed, scale):
    """The image (saved for rr-parity) and the three prompts of a SAM 3 case."""
    img = test_image(rng)
    w, h = img.size
    img_path = os.path.join(tmp, "sam3.png")
    img.save(img_path)
    b1, b2 = random_box(rng, w, h), random_box(rng, w, h)
    cases = {
        "text": {"text": rng.choice(["ship", "storage tank", "Planes on the apron!"]), "exemplars": []},
        "boxes": {"text": "", "exemplars": [b1 + [1], b2 + [0]]},
        "both": {"text": "harbour crane", "exemplars": [b1 + [1]]},
    }
    with open(os.path.join(tmp, "sam3_cases.json"), "w") as f:
        json.dump(cases, f)
    return img, img_path, cases, f"{tag_prefix} seed={seed} x{scale:g} {w}x{h}"


def sam3_ours(exe, model_dir, img_path, tmp):
    path = os.path.join(tmp, "sam3_ours.safetensors")
    subprocess.run([exe, "sam3", "--model", model_dir, "--image", img_path, "--cases",
                    os.path.join(tmp, "sam3_cases.json"), "--out", path], check=True)
    return load_file(path)


def sam3_compare(rep, tag, cases, ours, ref, same_ids):
    """Every stage of every prompt against the reference; `same_ids(ours, ref)` judges the token ids."""
    d = rep.stage(tag, "pixel_values", ours["pixel_values"], ref["pixel_values"]) if "pixel_values" in ref else 0
    if d > 1e-5:
        rep.fail(tag, f"pixel values differ by {d:.2e}")
    tokens = ref["vision.tokens"]
    rep.stage(tag, "vision.tokens", ours["vision.tokens"].reshape(tokens.shape[0], -1, tokens.shape[-1])
              if tokens.dim() == 3 else ours["vision.tokens"].reshape(tokens.shape[0], tokens.shape[2],
                                                                      tokens.shape[3], -1).permute(0, 3, 1, 2),
              tokens)
    for name in cases:
        t = f"{tag} {name}"
        if not same_ids(ours[f"{name}.input_ids"].long().tolist(), ref[f"{name}.input_ids"].tolist()):
            rep.fail(t, "token ids differ from the tokenizer's")
            continue
        for key in ("pred_logits", "presence_logits", "pred_masks"):
            rep.stage(t, key, ours[f"{name}.{key}"].reshape(ref[f"{name}.{key}"].shape), ref[f"{name}.{key}"])
        if rep.stage(t, "pred_boxes", ours[f"{name}.pred_boxes"], ref[f"{name}.pred_boxes"]) > 1e-4:
            rep.fail(t, "boxes differ by more than 1e-4 of the image side")
        if rep.stage(t, "scores", ours[f"{name}.scores"], ref[f"{name}.scores"]) > 1e-4:
            rep.fail(t, "scores differ by more than 1e-4")
        a, b = ours[f"{name}.masks"].numpy() > 0.5, ref[f"{name}.masks"].numpy() > 0
        agree = float((a == b).mean())
        rep.line(t, f"{'masks':28s} {agree * 100:.4f} % of {a.size} pixels agree")
        if agree < 0.999:
            rep.fail(t, f"masks agree on {agree * 100:.3f} % of pixels")


def sam3_case(rep, exe, seed, scale, tmp):
    import transformers
    from transformers import Sam3ImageProcessor, Sam3Model, Sam3Processor

    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import clip_tokenizer
    import make_sam3_checkpoint

    rng = random.Random(seed * 7919 + int(scale * 1000))
    torch.manual_seed(seed)
    model = Sam3Model(make_sam3_checkpoint.config("reduced")).eval()  # transformers' own init
    model.load_state_dict(scale_weights(model.state_dict(), scale))
    model_dir = os.path.join(tmp, "sam3")
    model.save_pretrained(model_dir)
    tokenizer = clip_tokenizer.build(model_dir)
    processor = Sam3Processor(Sam3ImageProcessor(), tokenizer)
    img, img_path, cases, tag = sam3_inputs(rng, tmp, "sam3", seed, scale)
    w, h = img.size
    rep.cases += 1
    t0 = time.time()
    ref = {}
    with torch.no_grad():
        for name, c in cases.items():
            kwargs = {}
            if c["text"]:
                kwargs["text"] = c["text"]
            if c["exemplars"]:
                kwargs["input_boxes"] = [[e[:4] for e in c["exemplars"]]]
                kwargs["input_boxes_labels"] = [[e[4] for e in c["exemplars"]]]
            inputs = processor(images=img, return_tensors="pt", **kwargs)
            if "pixel_values" not in ref:
                ref["pixel_values"] = inputs["pixel_values"]
                ref["vision.tokens"] = model.vision_encoder(inputs["pixel_values"]).last_hidden_state
            outputs = model(**{k: v for k, v in inputs.items() if k != "original_sizes"})
            post = processor.post_process_instance_segmentation(outputs, threshold=0.0, target_sizes=[(h, w)])[0]
            ref[f"{name}.input_ids"] = inputs["input_ids"][0]
            for key in ("pred_logits", "presence_logits", "pred_boxes", "pred_masks"):
                ref[f"{name}.{key}"] = getattr(outputs, key)
            ref[f"{name}.scores"] = post["scores"]
            ref[f"{name}.masks"] = post["masks"]
    t1 = time.time()
    ours = sam3_ours(exe, model_dir, img_path, tmp)
    rep.line(tag, f"transformers {transformers.__version__}; reference {t1 - t0:.1f} s, ours {time.time() - t1:.1f} s")
    sam3_compare(rep, tag, cases, ours, ref, lambda a, b: a == b)


def sam3_meta_case(rep, exe, seed, scale, tmp):
    """Meta's `sam3` package: its builder and init at reduced depth, its `sam3.pt` layout, its
    Sam3Processor (tools/sam3_meta.py)."""
    from importlib.metadata import version

    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import clip_tokenizer
    import sam3_meta

    rng = random.Random(seed * 6271 + int(scale * 1000) + 17)
    torch.manual_seed(seed)
    model = sam3_meta.build(depth=2)
    model.load_state_dict(scale_weights(model.state_dict(), scale))
    model_dir = os.path.join(tmp, "sam3_meta")
    os.makedirs(model_dir)
    sam3_meta.save_pt(model, os.path.join(model_dir, "sam3.pt"))
    clip_tokenizer.build(model_dir)
    img, img_path, cases, tag = sam3_inputs(rng, tmp, "sam3_meta", seed, scale)
    rep.cases += 1
    t0 = time.time()
    ref = sam3_meta.predict(model, img, cases)
    tok = model.backbone.language_backbone.tokenizer
    for name, c in cases.items():
        ref[f"{name}.input_ids"] = tok([c["text"] or "visual"], context_length=32)[0]
    del model
    t1 = time.time()
    ours = sam3_ours(exe, model_dir, img_path, tmp)
    rep.line(tag, f"sam3 {version('sam3')} (Meta); reference {t1 - t0:.1f} s, ours {time.time() - t1:.1f} s")

    def same_ids(a, b):
        # Meta pads with 0 after its end token, transformers' tokenizer with the end token.
        n = b.index(49407) + 1
        return a[:n] == b[:n] and all(v == 49407 for v in a[n:])

    sam3_compare(rep, tag, cases, ours, ref, same_ids)


# ---------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ports", default=",".join(PORTS), help="comma-separated: " + ", ".join(PORTS))
    ap.add_argument("--seeds", default="0,1", help="comma-separated torch seeds")
    ap.add_argument("--fresh", type=int, default=0, help="add N seeds drawn at random")
    ap.add_argument("--scales", default="1,1.5", help="weight-matrix scales")
    ap.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    exe = rr_parity()
    seeds = [int(s) for s in args.seeds.split(",") if s]
    seeds += [random.SystemRandom().randrange(1 << 31) for _ in range(args.fresh)]
    scales = [float(s) for s in args.scales.split(",") if s]
    rep = Report()
    for port in args.ports.split(","):
        if port not in PORTS:
            sys.exit(f"parity_report: unknown port {port!r} (one of {', '.join(PORTS)})")
        for seed in seeds:
            for scale in scales:
                with tempfile.TemporaryDirectory(prefix="rr-parity-") as tmp:
                    if port == "qwen2_5_vl":
                        qwen_case(rep, exe, seed, scale, tmp)
                    elif port == "sam3":
                        sam3_case(rep, exe, seed, scale, tmp)
                    elif port == "sam3_meta":
                        sam3_meta_case(rep, exe, seed, scale, tmp)
                    else:
                        sam_case(rep, exe, port, seed, scale, tmp)
    print(f"\n{rep.cases} cases, {len(rep.failures)} goals missed")
    for f in rep.failures:
        print("  " + f)
    failed = len(rep.failed_cases)
    print(f"parity: {rep.cases - failed} passed, {failed} failed")
    if args.check and rep.failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
