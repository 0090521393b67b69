# Sourced by the scripts in tools/ and .ci/run: one shared build directory outside
# the clone (reruns and fresh clones reuse it), and a private runtime dir for Mesa.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/remote-reasoner/target}"
if [ -z "${XDG_RUNTIME_DIR:-}" ] || [ ! -d "${XDG_RUNTIME_DIR}" ]; then
  export XDG_RUNTIME_DIR="${TMPDIR:-/tmp}/remote-reasoner-runtime-$(id -u)"
  mkdir -p -m 0700 "$XDG_RUNTIME_DIR"
fi
# The commit `--version` names: clones sharing the build directory would otherwise
# keep the build script's output of whichever clone built first (app/build.rs reruns
# when this changes). Outside a checkout an exported RR_GIT_COMMIT is kept.
if _rr_commit="$(git -C "$(dirname "${BASH_SOURCE[0]}")/.." rev-parse --short=12 HEAD 2>/dev/null)"; then
  export RR_GIT_COMMIT="$_rr_commit"
fi
unset _rr_commit
