#!/usr/bin/env python3
"""CLIP's BPE tokenizer (what SAM 3's text encoder reads) built from OpenAI's merge
list as open_clip ships it (`bpe_simple_vocab_16e6.txt.gz`, the same list the
`facebook/sam3` tokenizer.json holds), as transformers' `CLIPTokenizerFast`.

`merges=None` keeps all 48,894 merges (vocabulary 49,408, the real one); a smaller
number keeps the first (most frequent) merges only — a tokenizer of the same kind
with a small vocabulary (512 byte symbols + merges + 2 specials) for tiny test models.

    python tools/clip_tokenizer.py OUT_DIR [MERGES]    # writes OUT_DIR/tokenizer.json …
"""

import gzip
import os
import sys
from importlib.util import find_spec

from transformers import CLIPTokenizer

FULL_MERGES = 49152 - 256 - 2


def bytes_to_unicode():
    """GPT-2/CLIP's reversible map of the 256 bytes to printable characters, in CLIP's order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def bpe_file():
    """open_clip's copy of the merge list (installed without its dependencies by setup_reference.sh)."""
    spec = find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("clip_tokenizer: open_clip_torch is not installed (bash tools/setup_reference.sh)")
    return os.path.join(spec.submodule_search_locations[0], "bpe_simple_vocab_16e6.txt.gz")


def build(out_dir, merges=None):
    """Writes tokenizer.json (and transformers' tokenizer_config.json) into out_dir; returns the tokenizer."""
    lines = gzip.open(bpe_file()).read().decode("utf-8").split("\n")
    pairs = [tuple(m.split()) for m in lines[1:FULL_MERGES + 1]][: merges if merges is not None else FULL_MERGES]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(p) for p in pairs]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(out_dir, exist_ok=True)
    tok = CLIPTokenizer(vocab={v: i for i, v in enumerate(vocab)}, merges=pairs)
    tok.save_pretrained(out_dir)
    for extra in ("special_tokens_map.json", "vocab.json", "merges.txt"):
        if os.path.exists(os.path.join(out_dir, extra)):
            os.remove(os.path.join(out_dir, extra))
    return tok


if __name__ == "__main__":
    fast = build(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
    print(len(fast), fast("storage tanks", padding="max_length", max_length=32)["input_ids"][:8])
