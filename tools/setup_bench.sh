#!/usr/bin/env bash
# What tools/bench_vs.py compares against, outside the clone (PyPI only):
#  - the reference venv (tools/setup_reference.sh: torch, transformers, sam2) plus
#    ONNX Runtime and the ONNX exporter;
#  - llama.cpp as the llama-cpp-python sdist vendors it (pinned, hash-checked),
#    built for this CPU (GGML_NATIVE) with its own tools: llama-mtmd-cli (text +
#    vision), llama-quantize; and its converter (convert_hf_to_gguf.py, gguf-py).
# Safe to re-run: it rebuilds only when the pins change. Prints the venv's python.
set -euo pipefail
cd "$(dirname "$0")/.."
python="$(bash tools/setup_reference.sh)"
venv="$(dirname "$(dirname "$python")")"
root="${RR_BENCH_DIR:-$HOME/.cache/remote-reasoner/bench-vs}"
llama_version=0.3.36
extra=(onnxruntime==1.32.0 onnx==1.23.2 onnxscript==0.7.2 pyyaml cmake ninja)
stamp="$root/.rr-pins"
want="llama-cpp-python==$llama_version ${extra[*]}"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$root/build/bin/llama-mtmd-cli" ]; then
  echo "$python"
  exit 0
fi
mkdir -p "$root"
echo "setup_bench: installing ${extra[*]} into $venv" >&2
"$venv/bin/pip" install -q --disable-pip-version-check "${extra[@]}" >&2
# The sdist's URL from PyPI's JSON API; its hash is checked against PyPI's.
sdist="$root/llama_cpp_python-$llama_version.tar.gz"
if [ ! -f "$sdist" ]; then
  read -r url sha < <("$python" - "$llama_version" <<'PY'
import json, sys, urllib.parse, urllib.request
v = sys.argv[1]
# The project's JSON lists every release (some PyPI mirrors serve no per-version
# page and give file URLs relative to the page).
api = "https://pypi.org/pypi/llama-cpp-python/json"
j = json.load(urllib.request.urlopen(api))
u = [u for u in j["releases"][v] if u["packagetype"] == "sdist"][0]
print(urllib.parse.urljoin(api, u["url"]), u["digests"]["sha256"])
PY
)
  curl -fsSL -o "$sdist.part" "$url"
  echo "$sha  $sdist.part" | sha256sum -c --quiet
  mv "$sdist.part" "$sdist"
fi
rm -rf "$root/src" "$root/build"
mkdir -p "$root/src"
tar xzf "$sdist" -C "$root/src"
src="$root/src/llama_cpp_python-$llama_version/vendor/llama.cpp"
echo "setup_bench: building llama.cpp ($src) for this CPU" >&2
PATH="$venv/bin:$PATH" cmake -S "$src" -B "$root/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >&2
PATH="$venv/bin:$PATH" cmake --build "$root/build" -j"$(nproc)" --target llama-mtmd-cli llama-quantize >&2
ln -sfn "$src" "$root/llama.cpp"
echo "$want" >"$stamp"
echo "$python"
