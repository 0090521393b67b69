#!/usr/bin/env bash
# Proves the packages on clean systems: bash packaging/test-install.sh  (after packaging/build.sh)
#   Debian 12: a minimal root (debootstrap) gets `apt-get install ./remote-reasoner_*.deb` with its
#              dependencies from Debian alone, runs the commands below and a GUI screenshot under Xvfb,
#              then `apt-get purge` + `autoremove --purge` must leave the root as it was.
#   Debian 13: a minimal root with no GDAL unpacks the portable bundle and runs the same; removing the
#              directory must leave the root as it was.
# Commands: --version, info, render, ask (the tiny test checkpoint), polygonize, --screenshot.
# Needs root (debootstrap, chroot, mounts in a private namespace) and a Debian mirror
# ($RR_DEBIAN_MIRROR). Downloads are cached in ~/.cache/remote-reasoner/roots; screenshots and
# logs go to $RR_INSTALL_OUT (default ~/.cache/remote-reasoner/install-test).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
if [ "$(id -u)" != 0 ]; then
  # debootstrap, chroot and mounts need root; keep the caller's cache paths.
  command -v sudo >/dev/null && exec sudo --preserve-env=HOME,RR_PACKAGES,RR_DEBIAN_MIRROR,RR_INSTALL_OUT bash "$0" "$@"
  echo "test-install: needs root (debootstrap, chroot) and there is no sudo" >&2
  exit 1
fi
pkgs=${RR_PACKAGES:-$HOME/.cache/remote-reasoner/packages}
deb=$(ls "$pkgs"/remote-reasoner_*.deb 2>/dev/null | tail -1)
bundle=$(ls "$pkgs"/remote-reasoner-*-linux.tar.gz 2>/dev/null | tail -1)
[ -n "$deb" ] && [ -n "$bundle" ] || { echo "test-install: no packages in $pkgs: run packaging/build.sh" >&2; exit 1; }
mirror=${RR_DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache=$HOME/.cache/remote-reasoner/roots
out=${RR_INSTALL_OUT:-$HOME/.cache/remote-reasoner/install-test}
for p in debootstrap lintian; do
  dpkg -s "$p" >/dev/null 2>&1 ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$p" >/dev/null
done
mkdir -p "$cache/debs" "$out"
work=$(mktemp -d /var/tmp/rr-install.XXXXXX)
trap 'rm -rf --one-file-system "$work"' EXIT

# What a desktop has and the screenshot needs: X server, Mesa (GL and Vulkan), the client libraries
# the workbench opens at run time. (The .deb brings all but the X server through its Recommends.)
display_pkgs="xvfb xauth libgl1-mesa-dri libegl1 libgl1 mesa-vulkan-drivers libvulkan1 libx11-xcb1 libxcursor1 \
libxrandr2 libxi6 libxkbcommon-x11-0"

# Runs a bash script in ROOT as root, with /proc, /sys, /dev and the shared apt cache mounted in a
# private mount namespace: the mounts end with the script, whatever happens.
in_root() {
  local root=$1 script=$2
  mkdir -p "$cache/archives-$(basename "$root")"
  unshare --mount --fork bash -c '
    set -e
    mount --make-rprivate /
    mount -t proc proc "$1/proc"
    mount --rbind /sys "$1/sys"
    mount --rbind /dev "$1/dev"
    mount --bind "$2" "$1/var/cache/apt/archives"
    exec chroot "$1" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
      DEBIAN_FRONTEND=noninteractive /bin/bash -euo pipefail -c "$3"' \
    _ "$root" "$cache/archives-$(basename "$root")" "$script"
}

# A minimal Debian root (debootstrap's minbase) plus what every installed Debian has and autoremove
# would never take back (systemd, which installs its own state, and the CA certificates apt
# recommends), with the test user and the test files.
make_root() {
  local suite=$1 root=$2
  debootstrap --variant=minbase --cache-dir="$cache/debs" "$suite" "$root" "$mirror" >"$out/$suite-debootstrap.log"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  mkdir -p "$root/srv/rr"
  cp -r tests/fixtures/qwen2_5_vl_tiny_trained "$root/srv/rr/"
  cp assets/samples/rotterdam_port_rgb_4p5m_spacenet6.tif "$root/srv/rr/sample.tif"
  cp packaging/test-commands.sh "$root/srv/rr/"
  in_root "$root" 'useradd --create-home analyst && apt-get update -qq
    apt-get install -y -qq systemd ca-certificates >/dev/null'
}

# Everything on the root's file system outside the places that change by themselves (apt's lists
# and caches, dpkg's database — checked with dpkg itself —, logs, home directories, /tmp): what an
# uninstall must restore.
snapshot() {
  (cd "$1" && find . -xdev \( -path ./proc -o -path ./sys -o -path ./dev -o -path ./run -o -path ./tmp \
    -o -path ./var/tmp -o -path ./var/cache -o -path ./var/lib/apt -o -path ./var/lib/dpkg -o -path ./var/log -o -path ./home \
    -o -path ./root -o -path ./srv/rr \) -prune -o -print | sort) >"$2"
}

# The same commands, as the analyst, with the given launcher; results land in the root's /srv/rr/out.
run_commands() {
  local root=$1 rr=$2
  in_root "$root" "runuser -u analyst -- bash /srv/rr/test-commands.sh '$rr' /srv/rr/out"
}

# Fails, with the difference, when the root is not as it was before the install.
same_as_before() {
  if ! diff "$1" "$2" >"$out/$3-leftovers.diff"; then
    echo "test-install: $3 left files behind:" >&2
    grep '^[<>]' "$out/$3-leftovers.diff" | head -40 >&2
    exit 1
  fi
}

debian12() {
  local root=$work/bookworm t=$SECONDS
  make_root bookworm "$root"
  cp "$deb" "$root/srv/rr/"
  snapshot "$root" "$work/12-before"
  in_root "$root" "dpkg-query -W -f '\${Package}\n' | sort >/srv/rr/packages-before
    apt-get install -y -qq /srv/rr/$(basename "$deb") >/dev/null
    apt-get install -y -qq --no-install-recommends xvfb xauth >/dev/null
    apt-mark auto xvfb xauth >/dev/null
    mkdir -m 777 /srv/rr/out"
  run_commands "$root" remote-reasoner
  in_root "$root" 'man -w remote-reasoner >/dev/null 2>&1 || test -f /usr/share/man/man1/remote-reasoner.1.gz
    test -f /usr/share/applications/io.remotereasoner.RemoteReasoner.desktop
    zgrep -q "^  gdal " /usr/share/doc/remote-reasoner/rust-crates.txt.gz
    dpkg -L remote-reasoner | grep -v "/\.$" >/srv/rr/out/owned
    apt-get purge -y -qq remote-reasoner >/dev/null
    while read -r f; do if [ -f "$f" ] || [ -L "$f" ]; then echo "still there: $f" >&2; exit 1; fi; done </srv/rr/out/owned
    apt-get autoremove --purge -y -qq >/dev/null
    # apt keeps what a package of the base system recommends; the install brought it, so it goes.
    kept=$(dpkg-query -W -f "\${Package}\n" | sort | comm -13 /srv/rr/packages-before -)
    if [ -n "$kept" ]; then echo "kept by autoremove:" $kept; apt-get purge -y -qq $kept >/dev/null; fi
    if dpkg -l | grep "^rc"; then echo "configuration left behind" >&2; exit 1; fi'
  snapshot "$root" "$work/12-after"
  same_as_before "$work/12-before" "$work/12-after" debian12-deb
  collect "$root" debian12-deb
  echo "debian 12 (.deb): passed in $((SECONDS - t)) s"
}

debian13() {
  local root=$work/trixie t=$SECONDS name
  make_root trixie "$root"
  cp "$bundle" "$root/srv/rr/"
  name=$(basename "$bundle" .tar.gz)
  in_root "$root" "apt-get install -y -qq --no-install-recommends $display_pkgs >/dev/null
    if dpkg -l | grep -i gdal || ls /usr/lib/*/libgdal* 2>/dev/null; then echo 'GDAL is installed' >&2; exit 1; fi
    mkdir -m 777 /srv/rr/out"
  snapshot "$root" "$work/13-before"
  in_root "$root" "runuser -u analyst -- tar -C /home/analyst -xzf /srv/rr/$(basename "$bundle")
    if ldd /home/analyst/$name/bin/remote-reasoner | grep 'not found'; then exit 1; fi
    grep -q '^  gdal ' /home/analyst/$name/share/doc/licences/rust-crates.txt
    test -f /home/analyst/$name/share/doc/licences/libgdal32.copyright"
  run_commands "$root" "/home/analyst/$name/remote-reasoner"
  in_root "$root" "rm -rf /home/analyst/$name"
  snapshot "$root" "$work/13-after"
  same_as_before "$work/13-before" "$work/13-after" debian13-bundle
  collect "$root" debian13-bundle
  echo "debian 13 (bundle, no GDAL): passed in $((SECONDS - t)) s"
}

# Keeps the screenshot and outputs of a root.
collect() {
  rm -rf "${out:?}/$2"
  cp -r "$1/srv/rr/out" "$out/$2"
}

# Debian's own checks first; the one tag suppressed is about uploads to Debian's archive (a first
# upload closes an ITP bug there).
if ! findings=$(lintian --fail-on error,warning --suppress-tags initial-upload-closes-no-bugs "$deb" 2>&1); then
  echo "test-install: lintian finds errors or warnings in $deb:" >&2
  echo "$findings" >&2
  exit 1
fi
debian12
debian13
echo "test-install: both passed; screenshots in $out/debian12-deb/workbench.png and $out/debian13-bundle/workbench.png"
