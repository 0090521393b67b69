#!/usr/bin/env python3
"""Builds the tiny random-weight Qwen2.5-VL checkpoint and the expected outputs that
the Rust parity tests (tests/qwen_parity.rs) compare against.

The checkpoint has the published RemoteReasoner/Qwen2.5-VL layout: config.json with
text settings at the top level and rope_scaling.mrope_section, tensors named
visual.* / model.* / lm_head.* (untied head), GQA, windowed + full-attention vision
blocks, and its own small byte-level BPE tokenizer with Qwen's special tokens.
transformers loads it back from that directory and computes every reference output
(eager attention, float32), so the layout itself is checked too.

    python3 -m venv .venv && .venv/bin/pip install torch transformers pillow numpy safetensors tokenizers
    .venv/bin/python tools/make_qwen_fixtures.py [OUT_DIR]     # default tests/fixtures/qwen2_5_vl_tiny

Rerunning gives the same files (seeded).
"""

import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import transformers
from transformers import AutoConfig, PreTrainedTokenizerFast, Qwen2_5_VLForConditionalGeneration
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "qwen2_5_vl_tiny")  # or the first argument
PROMPTS = os.path.join(ROOT, "assets", "prompts")
SPECIAL = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]


def prompt(name):
    with open(os.path.join(PROMPTS, name + ".txt"), encoding="utf-8") as f:
        return f.read()


def chat(system, content):
    """The reference's ChatML text, written independently of the Rust code."""
    content = content.replace("<image>", "<|vision_start|><|image_pad|><|vision_end|>")
    return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"


def build_tokenizer():
    corpus = [prompt(n) for n in ("grounding", "vqa", "caption", "system_default")]
    corpus += [
        "<think>The harbour has three ships moored at the quay.</think> <answer>[[12,40,88,120],[130,20,200,64]]</answer>",
        "where can planes take off? which building is most likely a hospital? find the storage tanks near the ships",
        "0 1 2 3 4 5 6 7 8 9 10 20 30 40 50 60 70 80 90 100 [ ] , . : ; ( ) { } \" ' - _ / \\ \n\t",
    ] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    tok.add_special_tokens(SPECIAL)
    return tok


def config_json(tok):
    ids = {t: tok.token_to_id(t) for t in SPECIAL}
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "attention_dropout": 0.0,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"],
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 128,
        "max_position_embeddings": 4096,
        "max_window_layers": 2,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 4096,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "use_sliding_window": False,
        "vision_config": {
            "depth": 4, "hidden_act": "silu", "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
            "in_chans": 3, "out_hidden_size": 64, "patch_size": 14, "spatial_merge_size": 2,
            "spatial_patch_size": 14, "window_size": 112, "fullatt_block_indexes": [1, 3],
            "tokens_per_second": 2, "temporal_patch_size": 2,
        },
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "vocab_size": tok.get_vocab_size(),
    }


def legacy_name(name):
    """transformers 5 module names -> the published checkpoint's tensor names."""
    if name.startswith("model.visual."):
        return name[len("model."):]
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model."):]
    return name


def test_image(w, h, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], axis=-1)
    img = np.clip(base + rng.normal(0, 25, size=(h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(img, "RGB")


def main():
    global OUT
    if len(sys.argv) > 1:
        OUT = sys.argv[1]
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    tok = build_tokenizer()
    tok.save(os.path.join(OUT, "tokenizer.json"))
    cfg = config_json(tok)
    with open(os.path.join(OUT, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    ids = {t: tok.token_to_id(t) for t in SPECIAL}
    with open(os.path.join(OUT, "generation_config.json"), "w") as f:
        json.dump({"do_sample": False, "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
                   "repetition_penalty": 1.05, "bos_token_id": ids["<|endoftext|>"]}, f, indent=2)
    with open(os.path.join(OUT, "preprocessor_config.json"), "w") as f:
        json.dump({"min_pixels": 3136, "max_pixels": 802816, "patch_size": 14, "temporal_patch_size": 2,
                   "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                   "image_std": [0.26862954, 0.26130258, 0.27577711],
                   "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor"}, f, indent=2)

    # Random weights, wide enough that greedy decoding has clear winners.
    model = Qwen2_5_VLForConditionalGeneration(AutoConfig.from_pretrained(OUT))
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or ".norm1." in name or ".norm2." in name or "ln_q" in name or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))
    state = {legacy_name(k): v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(OUT, "model.safetensors"), metadata={"format": "pt"})

    # Reload through transformers from the published layout: this is the reference model.
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(OUT, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[legacy_name(k)]), f"{k} did not load from {legacy_name(k)}"

    hf_tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(OUT, "tokenizer.json"))
    proc = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=802816)
    system = prompt("system_default")
    query = "where are the ships?"
    text = chat(system, prompt("grounding") + "\n<image>\nText description: " + query)

    images = {"plain": test_image(224, 168, 1), "resized": test_image(250, 190, 2)}
    tensors, expected = {}, {"transformers": transformers.__version__, "torch": torch.__version__, "query": query,
                             "chat": text, "images": {}}
    for name, img in images.items():
        img.save(os.path.join(OUT, f"{name}.png"))
        out = proc(images=[img], return_tensors="pt")
        tensors[f"{name}.pixel_values"] = out["pixel_values"].contiguous()
        expected["images"][name] = {"grid_thw": out["image_grid_thw"][0].tolist(), "size": list(img.size)}

    # The whole pipeline on the plain image.
    grid = torch.tensor([expected["images"]["plain"]["grid_thw"]])
    n_tokens = int(grid.prod()) // 4
    enc = hf_tok(text.replace("<|image_pad|>", "<|image_pad|>" * n_tokens), add_special_tokens=False)
    input_ids = torch.tensor([enc["input_ids"]])
    expected["input_ids"] = enc["input_ids"]
    pixel_values = tensors["plain.pixel_values"]
    with torch.no_grad():
        feats = model.model.get_image_features(pixel_values, image_grid_thw=grid).pooler_output[0]
        tensors["plain.image_embeds"] = feats.contiguous()
        mm = (input_ids == cfg["image_token_id"]).int()
        pos, delta = model.model.get_rope_index(input_ids, mm_token_type_ids=mm, image_grid_thw=grid)
        expected["position_ids"] = pos[:, 0].tolist()
        expected["rope_delta"] = int(delta[0, 0])

        def greedy(penalty, steps=32):
            out = model(input_ids=input_ids, pixel_values=pixel_values, image_grid_thw=grid,
                        mm_token_type_ids=mm, use_cache=True)
            first = out.logits[0, -1].clone()
            cache = out.past_key_values
            seq = input_ids.clone()
            proc_pen = RepetitionPenaltyLogitsProcessor(penalty)
            logits, tokens, margins = out.logits[:, -1], [], []
            for _ in range(steps):
                scores = proc_pen(seq, logits.clone())
                top2 = torch.topk(scores[0], 2).values
                margins.append(float(top2[0] - top2[1]))
                nxt = int(scores[0].argmax())
                tokens.append(nxt)
                seq = torch.cat([seq, torch.tensor([[nxt]])], dim=1)
                out = model(input_ids=torch.tensor([[nxt]]), cache=cache, use_cache=True,
                            rope_deltas=model.model.rope_deltas)
                cache, logits = out.past_key_values, out.logits[:, -1]
            return first, tokens, min(margins), logits[0]

        first, tokens, margin, last = greedy(1.0)
        tensors["plain.first_logits"] = first.contiguous()
        tensors["plain.logits_after_32"] = last.contiguous()
        expected["greedy_tokens"] = tokens
        expected["greedy_min_margin"] = margin
        expected["greedy_text"] = hf_tok.decode(tokens)
        # A strong penalty keeps the random model from repeating one token, so the
        # decode positions and the penalty's context are both exercised.
        _, tokens_pen, margin_pen, _ = greedy(1.5)
        expected["greedy_penalty_1_5_tokens"] = tokens_pen
        expected["greedy_penalty_1_5_min_margin"] = margin_pen
    save_file(tensors, os.path.join(OUT, "expected.safetensors"))
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
    print(f"wrote {OUT}: {sum(p.numel() for p in model.parameters())} parameters; "
          f"greedy margins >= {margin:.4f} / {margin_pen:.4f}; text {expected['greedy_text']!r}")
    make_trained(model, hf_tok, proc, system, cfg)


# Answers the trained checkpoint learns for the bundled sample (boxes in the
# 196x196 frame the model sees for the 200x200 raster).
LESSONS = {
    "where are the ships?": "<think>Ships are long hulls moored along the quays of the basin.</think>\n"
                            "<answer>[[30,40,70,120],[100,150,130,190]]</answer>",
    "find the storage tanks": "<think>Storage tanks are round and white.</think>\n<answer>[[150,20,190,60]]</answer>",
    "how many ships are there?": "<think>I count the hulls along the quays.</think>\n<answer>2</answer>",
}


def make_trained(random_model, hf_tok, proc, system, cfg):
    """A copy of the random model fine-tuned until it answers LESSONS about the
    bundled sample: a real checkpoint whose greedy output has boxes, so that the
    end-to-end path (ask -> boxes -> world coordinates) can be tested with a model
    that really generates them."""
    out_dir = OUT + "_trained"
    os.makedirs(out_dir, exist_ok=True)
    for name in ("config.json", "preprocessor_config.json", "tokenizer.json"):
        with open(os.path.join(OUT, name), "rb") as src, open(os.path.join(out_dir, name), "wb") as dst:
            dst.write(src.read())
    eos = [hf_tok.convert_tokens_to_ids("<|im_end|>"), hf_tok.convert_tokens_to_ids("<|endoftext|>")]
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"do_sample": False, "eos_token_id": eos, "max_new_tokens": 256}, f, indent=2)
    with open(os.path.join(out_dir, "lessons.json"), "w") as f:
        json.dump(LESSONS, f, indent=1)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(OUT, attn_implementation="eager", dtype=torch.float32)
    sample = Image.open(os.path.join(ROOT, "assets", "samples", "rotterdam_port_rgb_4p5m_spacenet6.tif")).convert("RGB")
    # The whole sample, and the window (x 10-190, y 20-190) the CLI test asks about.
    views = [sample, sample.crop((10, 20, 190, 190))]
    batches = []
    for view in views:
        px = proc(images=[view], return_tensors="pt")
        grid = px["image_grid_thw"]
        n_tokens = int(grid.prod()) // 4
        for query, target in LESSONS.items():
            task = prompt("vqa") + "\n<image>\nQuestion: " if "how many" in query else prompt("grounding") + "\n<image>\nText description: "
            text = chat(system, task + query).replace("<|image_pad|>", "<|image_pad|>" * n_tokens)
            p_ids = hf_tok(text, add_special_tokens=False)["input_ids"]
            t_ids = hf_tok(target + "<|im_end|>", add_special_tokens=False)["input_ids"]
            ids = torch.tensor([p_ids + t_ids])
            labels = torch.tensor([[-100] * len(p_ids) + t_ids])
            mm = (ids == cfg["image_token_id"]).int()
            batches.append((ids, labels, mm, len(p_ids), t_ids, px["pixel_values"], grid))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(7)
    model.train()
    for step in range(400):
        loss = 0
        for ids, labels, mm, _, _, pixels, grid in batches:
            loss = loss + model(input_ids=ids, labels=labels, pixel_values=pixels, image_grid_thw=grid,
                                mm_token_type_ids=mm).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 1e-3:
            break
    model.eval()
    state = {legacy_name(k): v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    # Check greedy decoding reproduces every lesson.
    for ids, _, mm, n_prompt, t_ids, pixels, grid in batches:
        with torch.no_grad():
            gen = model.generate(input_ids=ids[:, :n_prompt], pixel_values=pixels, image_grid_thw=grid,
                                 mm_token_type_ids=mm[:, :n_prompt], do_sample=False, max_new_tokens=len(t_ids) + 4,
                                 repetition_penalty=1.0)
        got = gen[0, n_prompt:].tolist()
        assert got[: len(t_ids)] == t_ids, f"not learnt: {hf_tok.decode(got)!r}"
    print(f"wrote {out_dir}: trained {step + 1} steps to loss {loss.item():.2e}")


if __name__ == "__main__":
    main()
