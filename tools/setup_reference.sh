#!/usr/bin/env bash
# The reference implementations the model ports are checked against, pinned, in a
# virtual environment outside the clone (PyPI only): sam2, segment-anything,
# ultralytics (MobileSAM's TinyViT), transformers, on CPU torch; without their
# dependencies: open_clip_torch, for CLIP's BPE merge list (tools/clip_tokenizer.py),
# and Meta's sam3 with the few modules it imports. Safe to re-run:
# it reinstalls only when the pins below change. Prints the venv's python.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${RR_REFERENCE_VENV:-$HOME/.cache/remote-reasoner/reference}"
pins=(
  torch==2.15.0 torchvision==0.29.2 numpy pillow==13.0.0 safetensors
  sam2==1.1.0 segment-anything==1.0 ultralytics==8.4.190
  transformers==5.24.0 tokenizers==0.23.3
)
# Meta's sam3 (parity of the sam3.pt layout, tools/sam3_meta.py) and what its image model imports.
extra=(open_clip_torch==3.3.0 sam3==0.1.4 timm==1.0.22 ftfy==6.3.1 wcwidth==0.9.4 einops==0.8.1 pycocotools==2.0.10)
stamp="$venv/.rr-pins"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "${pins[*]}" ] && [ -x "$venv/bin/python" ]; then
  if [ "$(cat "$venv/.rr-extra" 2>/dev/null)" != "${extra[*]}" ]; then
    "$venv/bin/pip" install -q --disable-pip-version-check --no-deps "${extra[@]}" >&2
    echo "${extra[*]}" >"$venv/.rr-extra"
  fi
  echo "$venv/bin/python"
  exit 0
fi
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup_reference: installing python3-venv" >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi
rm -rf "$venv"
python3 -m venv "$venv"
echo "setup_reference: installing ${pins[*]} into $venv" >&2
# sam2's optional CUDA extension is not wanted (and cannot build here).
SAM2_BUILD_CUDA=0 "$venv/bin/pip" install -q --disable-pip-version-check "${pins[@]}" >&2
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps "${extra[@]}" >&2
echo "${extra[*]}" >"$venv/.rr-extra"
echo "${pins[*]}" >"$stamp"
echo "$venv/bin/python"
