#!/usr/bin/env bash
# Builds the Debian 12 package from a clean clone: bash packaging/build.sh
# Output, in $RR_PACKAGES (default ~/.cache/remote-reasoner/packages):
#   remote-reasoner_<version>-1_<arch>.deb          the Debian 12 package
#   remote-reasoner-<version>-<arch>-linux.tar.gz   the portable bundle (GDAL inside; packaging/bundle.sh)
# Needs what the README's set-up installs (tools/setup.sh) plus librsvg2-bin (icons) and
# dpkg-dev (dpkg-shlibdeps: the package's dependencies are read off the binary) and patchelf (the
# bundle's RUNPATHs); cargo-deb and cargo-about are installed, pinned, under the shared cache.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh >&2
source tools/env.sh
export PATH="$HOME/.cargo/bin:$PATH"
sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
missing=()
for p in librsvg2-bin dpkg-dev patchelf; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
tools="$HOME/.cache/remote-reasoner/tools"
cargo_deb_version=3.8.0
if ! "$tools/bin/cargo-deb" --version 2>/dev/null | grep -q "$cargo_deb_version"; then
  cargo install --locked --quiet --root "$tools" --version "$cargo_deb_version" cargo-deb
fi
cargo_about_version=0.9.3
if ! "$tools/bin/cargo-about" --version 2>/dev/null | grep -q "$cargo_about_version"; then
  cargo install --locked --quiet --root "$tools" --version "$cargo_about_version" --features cli cargo-about
fi
cargo build --release --locked --bin remote-reasoner
bin="$CARGO_TARGET_DIR/release/remote-reasoner"
gen="$CARGO_TARGET_DIR/release/packaging"
rm -rf "$gen"
mkdir -p "$gen/completions"
# The man page and completions come from the binary's own clap definitions.
"$bin" manpage | gzip -n -9 >"$gen/remote-reasoner.1.gz"
"$bin" completions bash >"$gen/completions/remote-reasoner"
"$bin" completions zsh >"$gen/completions/_remote-reasoner"
"$bin" completions fish >"$gen/completions/remote-reasoner.fish"
# The licences of every crate compiled into the binary, read offline from the crates' own files by
# cargo-about; cached by the lock file and the configuration (the scan takes a while on 2 cores).
key=$(cat Cargo.lock packaging/licences/* | sha256sum | cut -c1-16)
crates="$tools/licences/rust-crates-$key.txt"
if [ ! -s "$crates" ]; then
  cargo fetch --locked --quiet
  mkdir -p "$tools/licences"
  "$tools/bin/cargo-about" generate --manifest-path app/Cargo.toml -c packaging/licences/about.toml --offline \
    --locked -o "$crates.part" packaging/licences/third-party.hbs 2>/dev/null
  mv "$crates.part" "$crates"
fi
gzip -n -9 <"$crates" >"$gen/rust-crates.txt.gz"
for size in 16 32 48 64 128 256 512; do
  mkdir -p "$gen/icons/$size"
  rsvg-convert -w "$size" -h "$size" packaging/linux/icons/io.remotereasoner.RemoteReasoner.svg \
    -o "$gen/icons/$size/io.remotereasoner.RemoteReasoner.png"
done
out="${RR_PACKAGES:-$HOME/.cache/remote-reasoner/packages}"
mkdir -p "$out"
rm -f "$out"/remote-reasoner_*.deb "$out"/remote-reasoner-*-linux.tar.gz
"$tools/bin/cargo-deb" -p remote-reasoner --no-build --output "$out" >&2
bash packaging/bundle.sh "$bin" "$gen" "$out" >/dev/null
ls "$out"/remote-reasoner_*.deb "$out"/remote-reasoner-*-linux.tar.gz
