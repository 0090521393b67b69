#!/usr/bin/env python3
"""Time to a finished answer on this CPU, side by side in one run, against what an
analyst would run instead:

- the reasoner (Qwen2.5-VL-7B widths, 2 language + 4 vision layers, random weights,
  an 896x896 image = 1024 image tokens in a ~1240-token prompt): RemoteReasoner
  (`rr-bench reasoner`) at each precision, llama.cpp (`llama-mtmd-cli`: GGUF text at
  Q4_K_M and Q8_0 + f16 vision, converted from the same checkpoint by llama.cpp's own
  converter), transformers bf16 (and f32);
- SAM 2.1 tiny's image encoder at 1024²: RemoteReasoner (`rr-bench segmenter`; "ours" is
  the default, bf16 products on CPUs with AVX-512 BF16, "ours-f32" exact f32), ONNX
  Runtime (the encoder exported from `sam2` with torch.onnx; also ORT's dynamic int8),
  PyTorch eager.

Every engine runs in a process of its own, once per round, engines interleaved; a
sampler reads the process's /proc status every 10 ms. "Peak anon" is the largest
RssAnon seen (anonymous memory: heap, quantised copies; not counting file pages
mapped from checkpoints, which the kernel can reclaim); llama.cpp runs with --load-mode none
so that its weights count as anonymous, like ours. "Answer" = vision + prefill + 300
tokens at the measured decode rate. The decode bound is the weight bytes one token
reads (language layers + lm_head, from the files) over the measured read bandwidth.

    bash tools/setup_bench.sh            # once: venv extras + llama.cpp built for this CPU
    ~/.cache/remote-reasoner/reference/bin/python tools/bench_vs.py [--rounds 3] [--decode 64] [--threads 2]

Needs `cargo build --release` (rr-bench), ~20 GB of disk under ~/.cache/remote-reasoner/bench-vs
and ~14 GB of memory. Writes the Markdown report to stdout and all figures to
<work>/bench_vs.json.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
BENCH = os.environ.get("RR_BENCH_DIR", os.path.expanduser("~/.cache/remote-reasoner/bench-vs"))
LLAMA_BIN = os.path.join(BENCH, "build", "bin")
LLAMA_SRC = os.path.join(BENCH, "llama.cpp")
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/remote-reasoner/target"))
RR_BENCH = os.path.join(TARGET, "release", "rr-bench")
ANSWER_TOKENS = 300


# ---------------------------------------------------------------- measuring a process

def measured(cmd, env=None, cwd=None):
    """Runs `cmd`; returns (stdout, stderr, wall s, peak RssAnon MiB, peak VmHWM MiB)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    out, err = [], []
    readers = [threading.Thread(target=lambda s=s, b=b: b.append(s.read())) for s, b in ((p.stdout, out), (p.stderr, err))]
    for r in readers:
        r.start()
    anon = hwm = 0
    while p.poll() is None:
        try:
            with open(f"/proc/{p.pid}/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        anon = max(anon, int(line.split()[1]))
                    elif line.startswith("VmHWM:"):
                        hwm = max(hwm, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError):
            pass
        time.sleep(0.01)
    for r in readers:
        r.join()
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {p.returncode}:\n{''.join(err)[-3000:]}")
    return "".join(out), "".join(err), wall, anon / 1024, hwm / 1024


def membw_gbs(threads):
    """Sustained read bandwidth with the benchmark's threads (bench_qwen's measure)."""
    import torch
    import bench_qwen
    torch.set_num_threads(threads)
    return bench_qwen.membw_gbs()


# ---------------------------------------------------------------- the reasoner

def prepare_qwen(work):
    """The random checkpoint (bench_qwen.py's), plus what llama.cpp's converter reads."""
    import bench_qwen
    cfg, inputs, grid = bench_qwen.prepare(work)
    fixture = os.path.join(ROOT, "tests", "fixtures", "qwen2_5_vl_tiny")
    shutil.copy(os.path.join(fixture, "tokenizer.json"), os.path.join(work, "tokenizer.json"))
    with open(os.path.join(work, "preprocessor_config.json"), "w") as f:
        json.dump({"min_pixels": 3136, "max_pixels": 802816, "patch_size": 14, "temporal_patch_size": 2,
                   "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                   "image_std": [0.26862954, 0.26130258, 0.27577711],
                   "image_processor_type": "Qwen2VLImageProcessor"}, f)
    return cfg, inputs, grid


def convert(work, args, outfile):
    """llama.cpp's convert_hf_to_gguf.py on `work`. The tokenizer is the tiny test one
    (the real Qwen2 vocabulary cannot be downloaded here): its pre-tokenizer is named
    qwen2 instead of being recognised by hash; the vocabulary is padded to 152064."""
    code = (
        "import sys, runpy\n"
        f"sys.path[:0] = [{LLAMA_SRC!r}, {os.path.join(LLAMA_SRC, 'gguf-py')!r}]\n"
        "import conversion.base as b\n"
        "b.TextModel.get_vocab_base_pre = lambda self, tokenizer: 'qwen2'\n"
        "import conversion.qwenvl as q\n"
        "q.Qwen2VLModel.set_vocab = lambda self: self._set_vocab_gpt2()\n"
        f"sys.argv = ['convert_hf_to_gguf.py', *{args!r}, '--outfile', {outfile!r}, {work!r}]\n"
        f"runpy.run_path({os.path.join(LLAMA_SRC, 'convert_hf_to_gguf.py')!r}, run_name='__main__')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def prepare_gguf(work):
    files = {"f16": os.path.join(work, "text-f16.gguf"), "mmproj": os.path.join(work, "mmproj-f16.gguf")}
    if not os.path.exists(files["f16"]):
        convert(work, ["--outtype", "f16"], files["f16"])
    if not os.path.exists(files["mmproj"]):
        convert(work, ["--mmproj", "--outtype", "f16"], files["mmproj"])
    for q in ("Q4_K_M", "Q8_0"):
        files[q] = os.path.join(work, f"text-{q}.gguf")
        if not os.path.exists(files[q]):
            subprocess.run([os.path.join(LLAMA_BIN, "llama-quantize"), files["f16"], files[q], q], check=True,
                           capture_output=True)
    image = os.path.join(work, "image_896.png")
    if not os.path.exists(image):
        from PIL import Image
        sample = Image.open(os.path.join(ROOT, "assets", "samples", "rotterdam_port_rgb_4p5m_spacenet6.tif"))
        sample.convert("RGB").resize((896, 896), Image.BICUBIC).save(image)
    files["image"] = image
    return files


def gguf_token_bytes(path):
    """Bytes of the weights one decoded token reads: every blk.* tensor and output.weight."""
    sys.path.insert(0, os.path.join(LLAMA_SRC, "gguf-py"))
    from gguf import GGUFReader
    r = GGUFReader(path)
    return sum(int(t.n_bytes) for t in r.tensors if t.name.startswith("blk.") or t.name == "output.weight")


def ours_token_bytes(cfg, precision):
    per = {"f32": 4.0, "bf16": 2.0, "f16": 2.0, "q8_0": 34 / 32, "q4k": 148 / 256}[precision]
    h, i, kv = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_key_value_heads"]
    head = h // cfg["num_attention_heads"]
    layer = h * h * 2 + h * kv * head * 2 + 3 * h * i
    return (cfg["num_hidden_layers"] * layer + cfg["vocab_size"] * h) * per


def run_ours(work, inputs, grid, precision, decode, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out, _, wall, anon, hwm = measured([RR_BENCH, "reasoner", "--model", work, "--inputs", inputs, "--grid",
                                        ",".join(map(str, grid)), "--precision", precision, "--decode", str(decode)],
                                       env=env)
    r = json.loads(out)
    return {"vision_ms": r["vision_ms"], "prefill_ms": r["prefill_ms"], "decode_ms": r["decode_ms_per_token"],
            "prompt_tokens": r.get("prompt_tokens"), "anon_mib": anon, "hwm_mib": hwm, "wall_s": wall}


LLAMA_PROMPT = "Please locate every ship moored along the quays of the basin. " * 5


def run_llama(files, quant, decode, threads):
    cmd = [os.path.join(LLAMA_BIN, "llama-mtmd-cli"), "-m", files[quant], "--mmproj", files["mmproj"],
           "--image", files["image"], "-p", LLAMA_PROMPT, "-n", str(decode), "--ignore-eos", "--temp", "0",
           "-t", str(threads), "-tb", str(threads), "-c", "4096", "--load-mode", "none", "--chat-template", "chatml",
           "--image-min-tokens", "1024", "--image-max-tokens", "1024", "--perf", "-v"]
    out, err, wall, anon, hwm = measured(cmd)
    log = out + err

    def num(pattern):
        m = re.findall(pattern, log)
        if not m:
            raise RuntimeError(f"llama-mtmd-cli: no {pattern!r} in its log:\n{log[-3000:]}")
        return m

    # Its prompt-eval timer runs across the image encoding too: prefill = prompt eval - encoding.
    vision = sum(float(v) for v in num(r"mtmd batch encoding done in (\d+) ms"))
    pe = num(r"prompt eval time =\s+([\d.]+) ms /\s+(\d+) tokens")[-1]
    ev = num(r"\beval time =\s+([\d.]+) ms /\s+(\d+) runs")[-1]
    return {"vision_ms": vision, "prefill_ms": float(pe[0]) - vision, "prompt_tokens": int(pe[1]),
            "decode_ms": float(ev[0]) / max(int(ev[1]), 1), "anon_mib": anon, "hwm_mib": hwm, "wall_s": wall}


def run_torch_qwen(work, inputs, grid, dtype, decode, threads):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "torch-qwen", "--work", work, "--inputs", inputs,
           "--grid", ",".join(map(str, grid)), "--dtype", dtype, "--decode", str(decode), "--threads", str(threads)]
    out, _, wall, anon, hwm = measured(cmd)
    r = json.loads(out.strip().splitlines()[-1])
    return {"vision_ms": r["vision_ms"], "prefill_ms": r["prefill_ms"], "decode_ms": r["decode_ms_per_token"],
            "prompt_tokens": r["prompt_tokens"], "anon_mib": anon, "hwm_mib": hwm, "wall_s": wall}


def worker_torch_qwen(a):
    import torch
    import bench_qwen
    torch.set_num_threads(a.threads)
    grid = [int(v) for v in a.grid.split(",")]
    r = bench_qwen.bench_torch(a.work, a.inputs, grid, getattr(torch, a.dtype), a.decode)
    r.pop("first_logits", None)
    print(json.dumps(r))


# ---------------------------------------------------------------- SAM 2.1 tiny's image encoder

def prepare_sam(work):
    import torch
    from make_sam2_fixtures import fill, init_spec
    from sam2.build_sam import build_sam2
    from PIL import Image
    ckpt = os.path.join(work, "sam2.1_hiera_t_seeded.pt")
    if not os.path.exists(ckpt):
        model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu")
        fill(model, init_spec(model))
        torch.save({"model": model.state_dict()}, ckpt)
        del model
    png = os.path.join(work, "image_1024.png")
    if not os.path.exists(png):
        sample = Image.open(os.path.join(ROOT, "assets", "samples", "rotterdam_port_rgb_4p5m_spacenet6.tif"))
        sample.convert("RGB").resize((1024, 1024), Image.BICUBIC).save(png)
    onnx_path = os.path.join(work, "sam2.1_hiera_t_encoder.onnx")
    if not os.path.exists(onnx_path):
        subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", "sam-export", "--work", work],
                       check=True, capture_output=True)
    int8 = os.path.join(work, "sam2.1_hiera_t_encoder.int8.onnx")
    if not os.path.exists(int8):
        from onnxruntime.quantization import QuantType, quantize_dynamic
        quantize_dynamic(onnx_path, int8, weight_type=QuantType.QInt8)
    return {"ckpt": ckpt, "png": png, "onnx": onnx_path, "onnx_int8": int8}


def sam_encoder_module(model):
    """What SAM2ImagePredictor.set_image computes: trunk, neck, the decoder's high-res
    convolutions, no-memory embedding; three feature maps out (as samexporter exports)."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            out = self.m.forward_image(x)
            _, feats, _, _ = self.m._prepare_backbone_features(out)
            feats[-1] = feats[-1] + self.m.no_mem_embed
            sizes = [(256, 256), (128, 128), (64, 64)]
            maps = [f.permute(1, 2, 0).reshape(1, -1, *s) for f, s in zip(feats, sizes)]
            return maps[0], maps[1], maps[2]

    return Encoder(model).eval()


def worker_sam_export(a):
    import torch
    from sam2.build_sam import build_sam2
    model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=os.path.join(a.work, "sam2.1_hiera_t_seeded.pt"),
                       device="cpu")
    enc = sam_encoder_module(model)
    x = torch.randn(1, 3, 1024, 1024)
    torch.onnx.export(enc, (x,), os.path.join(a.work, "sam2.1_hiera_t_encoder.onnx"), opset_version=17,
                      input_names=["image"], output_names=["high_res_0", "high_res_1", "embedding"], dynamo=False)


def worker_sam(a):
    """One engine's SAM encoder timings: first call and the median of the next ones."""
    import numpy as np
    from PIL import Image
    image = np.array(Image.open(os.path.join(a.work, "image_1024.png")).convert("RGB"))
    times = []
    if a.engine.startswith("ort"):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        path = os.path.join(a.work, "sam2.1_hiera_t_encoder.int8.onnx" if a.engine == "ort-int8"
                            else "sam2.1_hiera_t_encoder.onnx")
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
        std = np.array([0.229, 0.224, 0.225], dtype=np.float32)
        for _ in range(a.encodes):
            t = time.perf_counter()
            x = ((image.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)[None]
            sess.run(None, {"image": np.ascontiguousarray(x)})
            times.append((time.perf_counter() - t) * 1e3)
    else:
        import torch
        from sam2.build_sam import build_sam2
        from sam2.sam2_image_predictor import SAM2ImagePredictor
        torch.set_num_threads(a.threads)
        model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml",
                           ckpt_path=os.path.join(a.work, "sam2.1_hiera_t_seeded.pt"), device="cpu")
        predictor = SAM2ImagePredictor(model)
        with torch.inference_mode():
            for _ in range(a.encodes):
                t = time.perf_counter()
                predictor.set_image(image)
                times.append((time.perf_counter() - t) * 1e3)
    print(json.dumps({"encode_ms_first": times[0], "encode_ms": statistics.median(times[1:])}))


def run_sam(engine, sam, threads, encodes):
    if engine.startswith("ours"):
        # "ours": the default (bf16 products where the CPU has AVX-512 BF16); "ours-f32": exact f32.
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
        precision = engine.split("-")[1] if "-" in engine else "auto"
        out, _, wall, anon, hwm = measured([RR_BENCH, "segmenter", "--sam", sam["ckpt"], "--image", sam["png"],
                                            "--prompts", "5", "--encodes", str(encodes),
                                            "--sam-precision", precision], env=env)
        r = json.loads(out)
    else:
        out, _, wall, anon, hwm = measured([sys.executable, os.path.abspath(__file__), "--worker", "sam",
                                            "--engine", engine, "--work", os.path.dirname(sam["ckpt"]),
                                            "--threads", str(threads), "--encodes", str(encodes)])
        r = json.loads(out.strip().splitlines()[-1])
    return {"encode_ms_first": r["encode_ms_first"], "encode_ms": r["encode_ms"], "anon_mib": anon, "hwm_mib": hwm,
            "wall_s": wall}


# ---------------------------------------------------------------- the run

def summarise(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return (min(vals), statistics.median(vals)) if vals else (None, None)


def fmt(v, unit="", digits=0):
    return "–" if v is None else f"{v:,.{digits}f}{unit}"


def report(qwen, sam, bounds, bw, a):
    print(f"One run of `tools/bench_vs.py --rounds {a.rounds} --decode {a.decode} --threads {a.threads}`, "
          f"{time.strftime('%Y-%m-%d')}: engines interleaved, each round in a fresh process; min / median over "
          f"{a.rounds} rounds. Answer = vision + prefill + {ANSWER_TOKENS} × decode (median). Read bandwidth "
          f"{bw:.1f} GB/s ({a.threads} threads).\n")
    print("| engine | vision ms | prefill ms | vision + prefill ms | decode ms/token | answer s | "
          "decode bound ms/token | peak anon MiB | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    answers = {}
    for name, runs in qwen.items():
        v, p, d = (summarise(runs, k) for k in ("vision_ms", "prefill_ms", "decode_ms"))
        vp = summarise([{"x": r["vision_ms"] + r["prefill_ms"]} for r in runs], "x")
        ans = (vp[1] + ANSWER_TOKENS * d[1]) / 1e3
        answers[name] = ans
        bound = bounds[name] / (bw * 1e9) * 1e3
        anon, hwm = max(r["anon_mib"] for r in runs), max(r["hwm_mib"] for r in runs)
        print(f"| {name} | {fmt(v[0])} / {fmt(v[1])} | {fmt(p[0])} / {fmt(p[1])} | {fmt(vp[0])} / {fmt(vp[1])} | "
              f"{fmt(d[0], digits=1)} / {fmt(d[1], digits=1)} | {ans:.1f} | {bound:.1f} | {anon:,.0f} | {hwm:,.0f} |")
    print()
    ours = {n: a for n, a in answers.items() if n.startswith("ours")}
    others = {n: a for n, a in answers.items() if not n.startswith("ours")}
    if ours and others:
        best_other = min(others, key=others.get)
        for n, a in ours.items():
            print(f"- {n}: answer {a / others[best_other]:.2f}× {best_other}'s", end="")
            d_ours = summarise(qwen[n], "decode_ms")[1]
            llama_q4 = [o for o in others if "Q4_K_M" in o]
            if llama_q4:
                d_llama = summarise(qwen[llama_q4[0]], "decode_ms")[1]
                anon = max(r["anon_mib"] for r in qwen[n]) / max(r["anon_mib"] for r in qwen[llama_q4[0]])
                print(f"; decode {d_ours / d_llama:.2f}× and peak anon {anon:.2f}× {llama_q4[0]}'s", end="")
            print()
        print()
    print("| SAM 2.1 tiny image encoder, 1024² | first call ms | warm ms (min / median) | peak anon MiB |")
    print("|---|---|---|---|")
    for name, runs in sam.items():
        f, w = summarise(runs, "encode_ms_first"), summarise(runs, "encode_ms")
        print(f"| {name} | {fmt(f[1])} | {fmt(w[0])} / {fmt(w[1])} | {max(r['anon_mib'] for r in runs):,.0f} |")
    warm = {name: summarise(runs, "encode_ms")[1] for name, runs in sam.items()}
    for ours in [n for n in warm if n.startswith("ours")]:
        if "ort" in warm:
            print(f"\n- {ours}: SAM encoder {warm[ours] / warm['ort']:.2f}× ONNX Runtime's (fp32)")
    return answers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--encodes", type=int, default=3)
    ap.add_argument("--work", default=os.path.join(BENCH, "work"))
    ap.add_argument("--ours", default="q8_0,q4k,f32", help="our precisions")
    ap.add_argument("--llama", default="Q4_K_M,Q8_0", help="llama.cpp text quantisations")
    ap.add_argument("--torch", default="bfloat16", help="transformers dtypes")
    ap.add_argument("--sam", default="ours,ours-f32,ort,ort-int8,torch", help="SAM encoder engines")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--engine", help=argparse.SUPPRESS)
    ap.add_argument("--inputs", help=argparse.SUPPRESS)
    ap.add_argument("--grid", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        {"torch-qwen": worker_torch_qwen, "sam": worker_sam, "sam-export": worker_sam_export}[a.worker](a)
        return
    os.makedirs(a.work, exist_ok=True)
    split = lambda s: [x for x in s.split(",") if x]
    cfg, inputs, grid = prepare_qwen(a.work)
    files = prepare_gguf(a.work) if split(a.llama) else {}
    sam = prepare_sam(a.work) if split(a.sam) else {}
    engines = [(f"ours {p}", lambda p=p: run_ours(a.work, inputs, grid, p, a.decode, a.threads)) for p in split(a.ours)]
    engines += [(f"llama.cpp {q} + f16 vision", lambda q=q: run_llama(files, q, a.decode, a.threads))
                for q in split(a.llama)]
    engines += [(f"transformers {d}", lambda d=d: run_torch_qwen(a.work, inputs, grid, d, a.decode, a.threads))
                for d in split(a.torch)]
    bounds = {f"ours {p}": ours_token_bytes(cfg, p) for p in split(a.ours)}
    bounds.update({f"llama.cpp {q} + f16 vision": gguf_token_bytes(files[q]) for q in split(a.llama)})
    bounds.update({f"transformers {d}": ours_token_bytes(cfg, {"bfloat16": "bf16", "float32": "f32"}[d])
                   for d in split(a.torch)})
    qwen = {name: [] for name, _ in engines}
    sam_runs = {e: [] for e in split(a.sam)}
    for r in range(a.rounds):
        for name, run in engines:
            qwen[name].append(run())
            print(f"round {r + 1}: {name}: {json.dumps(qwen[name][-1])}", file=sys.stderr, flush=True)
        for e in sam_runs:
            sam_runs[e].append(run_sam(e, sam, a.threads, a.encodes))
            print(f"round {r + 1}: sam {e}: {json.dumps(sam_runs[e][-1])}", file=sys.stderr, flush=True)
    bw = membw_gbs(a.threads)
    answers = report(qwen, sam_runs, bounds, bw, a)
    with open(os.path.join(a.work, "bench_vs.json"), "w") as f:
        json.dump({"args": vars(a), "bandwidth_gbs": bw, "token_bytes": bounds, "qwen": qwen, "sam": sam_runs,
                   "answer_s": answers}, f, indent=1)


if __name__ == "__main__":
    main()
