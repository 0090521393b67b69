# Sourced by the scripts in tools/ and .ci/run: one shared build directory outside
# the clone (reruns and fresh clones reuse it), and a private runtime dir for Mesa.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/remote-reasoner/target}"
if [ -z "${XDG_RUNTIME_DIR:-}" ] || [ ! -d "${XDG_RUNTIME_DIR}" ]; then
  export XDG_RUNTIME_DIR="${TMPDIR:-/tmp}/remote-reasoner-runtime-$(id -u)"
  mkdir -p -m 0700 "$XDG_RUNTIME_DIR"
fi
