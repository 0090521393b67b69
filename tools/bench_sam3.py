#!/usr/bin/env python3
"""SAM 3: candle (remote-reasoner's `rr-bench concept`) vs PyTorch transformers
(`Sam3Model`, what samgeo's SAM 3 and the Hugging Face examples run) on the same
checkpoint and the same image, in one run: load time, image encoding at the
model's native 1008², time per prompt (a noun phrase; a noun phrase + one exemplar
box) including post-processing to instances with masks at the image's size, and
peak memory. Each framework runs in its own process (peak RSS is per process);
they alternate for `--rounds` rounds and the medians are compared.

    bash tools/setup_reference.sh
    ~/.cache/remote-reasoner/reference/bin/python tools/make_sam3_checkpoint.py /tmp/sam3 --depth full
    ~/.cache/remote-reasoner/reference/bin/python tools/bench_sam3.py --model /tmp/sam3 --image scene.png \\
        [--threads 2] [--rounds 2] [--prompts 4]
    # Meta's package on its own layout (sam3.pt), ours reading the same file:
    ~/.cache/remote-reasoner/reference/bin/python tools/sam3_meta.py checkpoint /tmp/sam3_meta
    ~/.cache/remote-reasoner/reference/bin/python tools/bench_sam3.py --model /tmp/sam3_meta --image scene.png \\
        --reference meta

The checkpoint is transformers' own random initialisation of the released geometry
(the real weights are gated and cannot be downloaded here); the work per call does
not depend on the values.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ["ship", "storage tank", "airplane", "harbour crane", "car", "building"]


def torch_run(model_dir, image_path, prompts, encodes, threads):
    """One process's worth of transformers timings, as JSON on stdout."""
    import torch
    from PIL import Image
    from transformers import Sam3Model, Sam3Processor

    torch.set_num_threads(threads)
    t = time.perf_counter()
    model = Sam3Model.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = Sam3Processor.from_pretrained(model_dir) if os.path.exists(
        os.path.join(model_dir, "processor_config.json")) else None
    if processor is None:
        from transformers import AutoTokenizer, Sam3ImageProcessor
        processor = Sam3Processor(Sam3ImageProcessor(), AutoTokenizer.from_pretrained(model_dir))
    load_ms = (time.perf_counter() - t) * 1e3
    image = Image.open(image_path).convert("RGB")
    w, h = image.size
    encode_ms, text_ms, exemplar_ms = [], [], []
    with torch.inference_mode():
        for _ in range(max(1, encodes)):
            t = time.perf_counter()
            pixels = processor(images=image, return_tensors="pt")["pixel_values"]
            vision = model.get_vision_features(pixel_values=pixels)
            encode_ms.append((time.perf_counter() - t) * 1e3)
        for i in range(prompts):
            f = i / max(1, prompts)
            box = [f * w * 0.5, f * h * 0.5, f * w * 0.5 + w * 0.2, f * h * 0.5 + h * 0.2]
            kwargs = {"text": WORDS[i % len(WORDS)]}
            if i % 2 == 1:
                kwargs.update(input_boxes=[[box]], input_boxes_labels=[[1]])
            t = time.perf_counter()
            inputs = processor(images=image, return_tensors="pt", **kwargs)
            inputs.pop("pixel_values")
            inputs.pop("original_sizes", None)
            out = model(vision_embeds=vision, **inputs)
            processor.post_process_instance_segmentation(out, threshold=0.0, target_sizes=[(h, w)])
            (exemplar_ms if i % 2 == 1 else text_ms).append((time.perf_counter() - t) * 1e3)
    report(f"transformers {__import__('transformers').__version__} (torch {torch.__version__}, f32)", threads,
           load_ms, (w, h), encode_ms, text_ms, exemplar_ms)


def report(framework, threads, load_ms, size, encode_ms, text_ms, exemplar_ms):
    """One worker's timings as JSON on stdout (medians; later encodings without the first)."""
    later = encode_ms[1:] or encode_ms
    print(json.dumps({
        "framework": framework, "threads": threads, "load_ms": load_ms, "image": list(size),
        "encode_ms_first": encode_ms[0], "encode_ms": statistics.median(later),
        "text_prompt_ms": statistics.median(text_ms) if text_ms else 0.0,
        "exemplar_prompt_ms": statistics.median(exemplar_ms) if exemplar_ms else 0.0,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }))


def meta_run(model_dir, image_path, prompts, encodes, threads):
    """The same timings for Meta's `sam3` package on its own layout (sam3.pt): what its
    README does (build_sam3_image_model with the checkpoint, Sam3Processor)."""
    import torch
    from PIL import Image

    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import sam3_meta

    torch.set_num_threads(threads)
    t = time.perf_counter()
    model = sam3_meta.build(checkpoint=os.path.join(model_dir, "sam3.pt"))
    from sam3.model.sam3_image_processor import Sam3Processor

    processor = Sam3Processor(model, device="cpu", confidence_threshold=0.0)
    load_ms = (time.perf_counter() - t) * 1e3
    image = Image.open(image_path).convert("RGB")
    w, h = image.size
    encode_ms, text_ms, exemplar_ms = [], [], []
    with torch.inference_mode():
        for _ in range(max(1, encodes)):
            t = time.perf_counter()
            state = processor.set_image(image)
            encode_ms.append((time.perf_counter() - t) * 1e3)
        for i in range(prompts):
            f = i / max(1, prompts)
            processor.reset_all_prompts(state)
            t = time.perf_counter()
            if i % 2 == 1:
                # Box and text in one grounding (add_geometric_prompt after the text would run two).
                state["geometric_prompt"] = model._get_dummy_prompt()
                box = torch.tensor([[[f * 0.5 + 0.1, f * 0.5 + 0.1, 0.2, 0.2]]])
                state["geometric_prompt"].append_boxes(box, torch.tensor([[True]]))
            processor.set_text_prompt(WORDS[i % len(WORDS)], state)
            (exemplar_ms if i % 2 == 1 else text_ms).append((time.perf_counter() - t) * 1e3)
    from importlib.metadata import version

    report(f"Meta sam3 {version('sam3')} (torch {torch.__version__}, f32)", threads, load_ms, (w, h), encode_ms,
           text_ms, exemplar_ms)


def rr_bench():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/remote-reasoner/target"))
    exe = os.path.join(target, "release", "rr-bench")
    if not os.path.exists(exe):
        sys.exit(f"bench_sam3: {exe} is missing: cargo build --release -p rr-bench")
    return exe


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--encodes", type=int, default=2)
    ap.add_argument("--reference", choices=["transformers", "meta"], default="transformers",
                    help="what runs beside ours: transformers' Sam3Model on its layout, or Meta's sam3 on sam3.pt")
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_worker:
        run = meta_run if args.reference == "meta" else torch_run
        run(args.model, args.image, args.prompts, args.encodes, args.threads)
        return
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    runs = {"candle": [], "torch": []}
    for _ in range(args.rounds):
        ours = subprocess.run([rr_bench(), "concept", "--sam3", args.model, "--image", args.image, "--prompts",
                               str(args.prompts), "--encodes", str(args.encodes)], env=env, check=True,
                              capture_output=True, text=True)
        runs["candle"].append(json.loads(ours.stdout.strip().splitlines()[-1]))
        theirs = subprocess.run([sys.executable, __file__, "--torch-worker", "--model", args.model, "--image",
                                 args.image, "--prompts", str(args.prompts), "--encodes", str(args.encodes),
                                 "--threads", str(args.threads), "--reference", args.reference], env=env,
                                check=True, capture_output=True, text=True)
        runs["torch"].append(json.loads(theirs.stdout.strip().splitlines()[-1]))
    keys = ["load_ms", "encode_ms_first", "encode_ms", "text_prompt_ms", "exemplar_prompt_ms", "peak_rss_mib"]
    med = {fw: {k: statistics.median(r[k] for r in rs) for k in keys} for fw, rs in runs.items()}
    c, t = runs["candle"][0], runs["torch"][0]
    print(f"SAM 3 ({c['model']}), image {c['image'][0]}x{c['image'][1]} -> 1008², {args.threads} threads, "
          f"{args.rounds} rounds (median)\n")
    print(f"| | candle (ours) | {t['framework']} | ours / torch |")
    print("|---|---|---|---|")
    for k in keys:
        a, b = med["candle"][k], med["torch"][k]
        print(f"| {k} | {a:,.0f} | {b:,.0f} | {a / b if b else float('nan'):.2f}x |")


if __name__ == "__main__":
    main()
