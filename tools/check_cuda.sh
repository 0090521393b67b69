#!/usr/bin/env bash
# Compiles the `cuda` feature on a machine without a GPU (CI): NVIDIA's CUDA 13.0
# compiler, headers and libraries from PyPI (the `nvidia-*` wheels, pinned) in a
# virtual environment outside the clone; candle's kernels are compiled to PTX for
# `CUDA_COMPUTE_CAP` (default 90: H100/H200).
#
# What it builds: the app's library with `--features cuda` (and with it the engine,
# candle-core's CUDA backend, cudarc, every candle kernel through nvcc). What it
# cannot: link an executable. cudarc (as candle enables it) links `libcuda.so`,
# which only NVIDIA's driver ships; it is on none of the registries this CI
# reaches (PyPI's wheels carry no stubs).
# On a machine with the driver, `cargo build --release --features cuda` links.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/env.sh
export PATH="$HOME/.cargo/bin:$PATH"
venv="${RR_CUDA_VENV:-$HOME/.cache/remote-reasoner/cuda}"
pins=(
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88 nvidia-cublas==13.0.2.14
  nvidia-curand==10.4.5.25 nvidia-cuda-cccl==13.0.85
)
stamp="$venv/.rr-pins"
if ! { [ -f "$stamp" ] && [ "$(cat "$stamp")" = "${pins[*]}" ] && [ -x "$venv/bin/python" ]; }; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  echo "check_cuda: installing ${pins[*]} into $venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check "${pins[@]}" >&2
  echo "${pins[*]}" >"$stamp"
fi
root="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')"
export PATH="$root/bin:$PATH" CUDA_ROOT="$root" CUDA_PATH="$root" CUDA_TOOLKIT_ROOT_DIR="$root"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
version="$(nvcc --version | grep -o 'release [0-9.]*')"
echo "check_cuda: nvcc $version, compute capability $CUDA_COMPUTE_CAP"
# The app's library holds every line but `main` (a few lines): built, it compiles the
# engine and all of the workbench and command line with the feature, nvcc included.
cargo build --release -p remote-reasoner --features cuda --lib
echo "check_cuda: the cuda feature compiles (engine and app library) with CUDA $version"
