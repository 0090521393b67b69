#!/usr/bin/env bash
# Installs what RemoteReasoner needs on Debian 12 (or later) and is missing:
# apt packages (GDAL, graphics libraries, Xvfb for the window tests) and a Rust
# toolchain with rustfmt and clippy. Safe to re-run: it only installs what is absent.
set -euo pipefail

packages=(
  build-essential pkg-config curl ca-certificates git
  libgdal-dev gdal-bin
  libx11-6 libx11-xcb1 libxcursor1 libxrandr2 libxi6 libxkbcommon0 libxkbcommon-x11-0
  libwayland-client0 libfontconfig1 libdbus-1-3
  libvulkan1 mesa-vulkan-drivers libegl1 libegl-mesa0 libgl1 libglx-mesa0 libgl1-mesa-dri libgles2
  xvfb xauth
  # strace kills exports at each rename (tests/atomic_writes.rs); nginx serves COGs by range (tests/remote_rasters.rs).
  strace nginx-light
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: installing the Rust toolchain (rustup)" >&2
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
      sh -s -- -y --profile minimal --component rustfmt,clippy >/dev/null
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
if command -v rustup >/dev/null 2>&1; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c" >/dev/null
  done
fi
