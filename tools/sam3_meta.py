"""Meta's own SAM 3 (`sam3` on PyPI) built and run on CPU, for parity fixtures in its
checkpoint layout (`sam3.pt`, names prefixed `detector.` as Meta ships them).

`sam3` 0.1.4 assumes CUDA in three places while building and predicting (two
position caches allocated on "cuda", a `pin_memory()` on box scales); `cpu_patches`
sends those to the CPU and changes nothing else. Depth is reduced by wrapping the
builder's ViT and text-encoder constructors (`build(depth=...)`); every other size is
the builder's own, and the weights are its default initialisation. Used by
tools/parity_report.py (port `sam3_meta`).
"""

import os

import torch


def cpu_patches():
    """Redirects the package's hard-coded `device="cuda"` allocations to the CPU."""
    if getattr(torch, "_rr_cpu_patched", False):
        return
    for name in ("zeros", "arange", "ones", "tensor", "empty", "linspace"):
        f = getattr(torch, name)

        def wrap(*a, _f=f, **kw):
            if str(kw.get("device", "")).startswith("cuda"):
                kw["device"] = "cpu"
            return _f(*a, **kw)

        setattr(torch, name, wrap)
    torch.Tensor.pin_memory = lambda self, *a, **k: self
    torch._rr_cpu_patched = True


def bpe_path():
    """CLIP's merge list as the package expects it (it ships none; open_clip does)."""
    import open_clip

    return os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")


def build(depth=None, checkpoint=None):
    """`build_sam3_image_model`: the released geometry, ViT and text tower cut to
    `depth` blocks when given; the builder's own init,
    or `checkpoint` loaded as the package loads it."""
    cpu_patches()
    import sam3.model_builder as mb

    vit, text = mb.ViT, mb.VETextEncoder
    if depth is not None:
        def small_vit(**kw):
            # Every eighth block global and the last, as the released 32 (7, 15, 23, 31) and as
            # the engine assumes for Meta's layout (its file does not say).
            kw["depth"] = depth
            kw["global_att_blocks"] = tuple(i for i in range(depth) if (i + 1) % 8 == 0 or i + 1 == depth)
            return vit(**kw)

        def small_text(**kw):
            kw["layers"] = depth
            return text(**kw)

        mb.ViT, mb.VETextEncoder = small_vit, small_text
    try:
        model = mb.build_sam3_image_model(bpe_path=bpe_path(), device="cpu", load_from_HF=False,
                                          checkpoint_path=checkpoint)
    finally:
        mb.ViT, mb.VETextEncoder = vit, text
    # The text tower's position table and CLIP projection are left `torch.empty` (the
    # package never calls open_clip's init_parameters): draw them as open_clip does,
    # else they hold whatever memory held (NaN included).
    enc = model.backbone.language_backbone.encoder
    with torch.no_grad():
        if checkpoint is not None:
            return model.eval()
        torch.nn.init.normal_(enc.positional_embedding, std=0.01)
        if isinstance(enc.text_projection, torch.nn.Parameter):
            torch.nn.init.normal_(enc.text_projection, std=enc.text_projection.shape[0] ** -0.5)
    return model.eval()


def save_pt(model, path):
    """The weights as Meta's release stores them: {"model": {"detector.<name>": tensor}}."""
    sd = {f"detector.{k}": v.contiguous() for k, v in model.state_dict().items()}
    torch.save({"model": sd}, path)


@torch.inference_mode()
def predict(model, image, cases):
    """Meta's Sam3Processor on `image` for each case {text, exemplars: [[x1,y1,x2,y2,label]]
    in image pixels}: the raw outputs of the last grounding and the processor's masks
    and scores (threshold 0: every query)."""
    from sam3.model.sam3_image_processor import Sam3Processor

    proc = Sam3Processor(model, device="cpu", confidence_threshold=-1.0)
    trunk_out = {}

    def keep(_module, _inputs, output):
        trunk_out["tokens"] = output[-1]  # (returning it would replace the output)

    hook = model.backbone.vision_backbone.trunk.register_forward_hook(keep)
    forward_image = model.backbone.forward_image

    def seen(pixels):
        trunk_out["pixels"] = pixels
        return forward_image(pixels)

    model.backbone.forward_image = seen
    try:
        state = proc.set_image(image)
    finally:
        hook.remove()
        model.backbone.forward_image = forward_image
    w, h = image.size
    raw = {}
    grounding = model.forward_grounding

    def capture(**kw):
        out = grounding(**kw)
        raw.update(out)
        return out

    model.forward_grounding = capture
    ref = {"pixel_values": trunk_out["pixels"], "vision.tokens": trunk_out["tokens"]}
    try:
        for name, case in cases.items():
            proc.reset_all_prompts(state)
            if case["text"]:
                out = proc.set_text_prompt(case["text"], state)
            for x1, y1, x2, y2, label in case["exemplars"]:
                box = [(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h]
                out = proc.add_geometric_prompt(box, bool(label), state)
            ref[f"{name}.pred_logits"] = raw["pred_logits"][..., 0]
            ref[f"{name}.presence_logits"] = raw["presence_logit_dec"].reshape(1, 1)
            cx, cy, bw, bh = raw["pred_boxes"].unbind(-1)
            ref[f"{name}.pred_boxes"] = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)
            ref[f"{name}.pred_masks"] = raw["pred_masks"]
            ref[f"{name}.scores"] = out["scores"]
            ref[f"{name}.masks"] = out["masks"][:, 0]
    finally:
        model.forward_grounding = grounding
    return ref


def write_test_fixtures(out_dir):
    """Small `torch.save` files for tests/sam3_parity.rs: Meta's layout with a complex
    RoPE buffer (which the reader must skip, not choke on) but not a whole model."""
    os.makedirs(out_dir, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    sd = {
        "detector.backbone.vision_backbone.trunk.ln_pre.weight": torch.randn(8, generator=g),
        "detector.backbone.vision_backbone.trunk.blocks.0.attn.freqs_cis":
            torch.polar(torch.ones(4, 2), torch.randn(4, 2, generator=g)),
        "tracker.maskmem_backbone.pix_feat_proj.weight": torch.randn(2, 2, generator=g),
    }
    torch.save({"model": sd}, os.path.join(out_dir, "partial.pt"))


def write_checkpoint(out_dir, depth=None):
    """A random-weight checkpoint in Meta's layout for benchmarks: sam3.pt + tokenizer.json."""
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import clip_tokenizer

    os.makedirs(out_dir, exist_ok=True)
    save_pt(build(depth), os.path.join(out_dir, "sam3.pt"))
    clip_tokenizer.build(out_dir)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Meta's SAM 3 on CPU: test fixtures or a random checkpoint")
    sub = ap.add_subparsers(dest="what", required=True)
    f = sub.add_parser("fixtures", help="tests/fixtures/sam3_meta")
    f.add_argument("dir", nargs="?", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                                          "tests", "fixtures", "sam3_meta"))
    c = sub.add_parser("checkpoint", help="sam3.pt (Meta's builder and init) + tokenizer.json in DIR")
    c.add_argument("dir")
    args = ap.parse_args()
    if args.what == "fixtures":
        write_test_fixtures(args.dir)
    else:
        write_checkpoint(args.dir)
