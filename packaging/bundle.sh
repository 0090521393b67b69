#!/usr/bin/env bash
# Builds the portable bundle from a built binary: bash packaging/bundle.sh BINARY GENERATED OUT
#   BINARY     the release binary (linked against this system's GDAL)
#   GENERATED  packaging/build.sh's directory of generated files (man page, completions, icons)
#   OUT        where remote-reasoner-<version>-<arch>-linux.tar.gz is written
# The bundle carries GDAL and every library it pulls in (found with ldd), GDAL's and PROJ's data, a
# launcher that points GDAL and PROJ at that data, and the Debian copyright file of each package a
# bundled library comes from. It leaves out what must match the host: glibc and the dynamic loader,
# the C++ and GCC runtimes (host GL drivers link them too, so an older copy would break them), and the
# GL/EGL/Vulkan/X11/Wayland libraries, which the binary opens itself at run time.
set -euo pipefail
bin=$1 gen=$2 out=$3
cd "$(dirname "$0")/.."
version=$("$bin" --version | awk 'NR==1 {print $2}')
arch=$(uname -m)
name="remote-reasoner-$version-$arch-linux"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/$name"
mkdir -p "$root/bin" "$root/lib" "$root/share/remote-reasoner" "$root/share/doc/licences" "$root/share/man/man1"

# Host libraries: glibc's, the toolchain runtimes, graphics and windowing.
host_only='^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libresolv|libutil|libanl|libBrokenLocale|libnss_[a-z]+|libthread_db|libmvec|libgcc_s|libstdc\+\+|libGL|libGLX|libGLdispatch|libOpenGL|libEGL|libGLES[a-z0-9_]*|libgbm|libdrm|libvulkan|libX[A-Za-z0-9]*|libxcb[a-z0-9-]*|libxkbcommon[a-z0-9-]*|libwayland-[a-z]*)\.so'

install -m 755 "$bin" "$root/bin/remote-reasoner"
packages=()
while read -r soname path; do
  [ -n "$path" ] || continue
  if [[ $soname =~ $host_only ]]; then continue; fi
  cp -L "$path" "$root/lib/$soname"
  # The package that owns the library, for its licence (usrmerge: try both spellings).
  real=$(readlink -f "$path")
  pkg=$(dpkg -S "$real" 2>/dev/null || dpkg -S "${real#/usr}" 2>/dev/null || dpkg -S "/usr$real" 2>/dev/null || true)
  pkg=${pkg%%:*}
  if [ -n "$pkg" ]; then packages+=("$pkg"); else echo "bundle: no package owns $real" >&2; exit 1; fi
done < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}')

# Each bundled object finds its neighbours first ($ORIGIN), without LD_LIBRARY_PATH leaking into
# processes the workbench starts.
patchelf --set-rpath '$ORIGIN/../lib' "$root/bin/remote-reasoner"
for lib in "$root"/lib/*; do
  chmod 644 "$lib"
  patchelf --set-rpath '$ORIGIN' "$lib"
done

# The README states the oldest glibc the bundle runs on; hold it to that.
need=$(for f in "$root/bin/remote-reasoner" "$root"/lib/*; do objdump -T "$f"; done | grep -o 'GLIBC_2\.[0-9]*' | sort -uV | tail -1)
if ! grep -q "glibc ${need#GLIBC_} " packaging/portable/README; then
  echo "bundle: the libraries need $need; packaging/portable/README says otherwise" >&2
  exit 1
fi

cp -r /usr/share/gdal "$root/share/gdal"
cp -r /usr/share/proj "$root/share/proj"
packages+=(libgdal32 gdal-data proj-data)
for pkg in $(printf '%s\n' "${packages[@]}" | sort -u); do
  cp "/usr/share/doc/$pkg/copyright" "$root/share/doc/licences/$pkg.copyright"
done
cp packaging/debian/copyright "$root/share/doc/licences/remote-reasoner.copyright"
gunzip <"$gen/rust-crates.txt.gz" >"$root/share/doc/licences/rust-crates.txt"
cp README.md "$root/share/doc/README.md"
cp assets/README.md "$root/share/doc/ASSETS.md"
cp -r assets/prompts "$root/share/remote-reasoner/prompts"
mkdir -p "$root/share/remote-reasoner/samples"
cp assets/samples/rotterdam_port_rgb_4p5m_spacenet6.tif "$root/share/remote-reasoner/samples/"
cp "$gen/remote-reasoner.1.gz" "$root/share/man/man1/"
cp -r "$gen/completions" "$root/share/completions"
mkdir -p "$root/share/applications" "$root/share/icons/hicolor/scalable/apps"
cp packaging/linux/icons/io.remotereasoner.RemoteReasoner.svg "$root/share/icons/hicolor/scalable/apps/"
cp packaging/linux/io.remotereasoner.RemoteReasoner.desktop "$root/share/applications/"
install -m 755 packaging/portable/remote-reasoner "$root/remote-reasoner"
cp packaging/portable/README "$root/README"
printf '%s\n' "${packages[@]}" | sort -u >"$root/share/doc/licences/PACKAGES"

mkdir -p "$out"
tar -C "$stage" --owner=0 --group=0 --numeric-owner -czf "$out/$name.tar.gz.part" "$name"
mv "$out/$name.tar.gz.part" "$out/$name.tar.gz"
echo "$out/$name.tar.gz"
