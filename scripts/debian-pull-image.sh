#!/usr/bin/env bash
# Builds the multi-layer Debian image for the pull benchmark (eci-pullbench) and prints
# the path of its OCI layout directory (skopeo pushes it from `oci:<dir>:latest`):
#
#   scripts/debian-pull-image.sh [OUT_DIR]     # default /var/cache/eci-test-images
#
# The userland is the host's Debian suite, built by mmdebstrap (variant essential plus
# PULLBENCH_PACKAGES, default a compiler, Python, Perl and git: ~620 MB of layer tars on bookworm),
# split into four gzip layers so pulls fetch and unpack several blobs:
#   1. everything but /usr/lib, /usr/share and /usr/libexec,
#   2. /usr/lib minus gcc and python,
#   3. /usr/lib/gcc, /usr/libexec and the python library,
#   4. /usr/share.
# Cached in OUT_DIR as debian-pull-<suite>-<arch>-<key>/ where <key> hashes this script
# and the package list: a re-run prints the cached path at once. Needs root, network
# access to the host's apt sources, and: mmdebstrap, tar, gzip, sha256sum.
set -euo pipefail

out_dir=${1:-/var/cache/eci-test-images}
script="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
packages=${PULLBENCH_PACKAGES:-gcc,g++,python3,perl,git,curl,vim-nox,make}

# shellcheck disable=SC1091
. /etc/os-release
suite=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
arch=$(dpkg --print-architecture)
key=$( (cat "$script"; echo "$packages") | sha256sum | cut -c1-16)
name="debian-pull-$suite-$arch-$key"
layout="$out_dir/$name"

if [ -s "$layout/index.json" ]; then
  echo "$layout"
  exit 0
fi

mkdir -p "$out_dir"
work=$(mktemp -d "$out_dir/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)

mmdebstrap --quiet --variant=essential --include="$packages" \
  --customize-hook='rm -f "$1"/var/log/*.log "$1"/var/cache/ldconfig/aux-cache' \
  --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
  "$suite" "$work/root"

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
blobs="$layout.tmp/blobs/sha256"
rm -rf "$layout.tmp"
mkdir -p "$blobs"

t() { tar --xattrs --numeric-owner --sort=name -C "$work/root" -cf "$@"; }
py=$(cd "$work/root" && ls -d ./usr/lib/python3* 2>/dev/null | tr '\n' ' ')
t "$work/l1.tar" --exclude=./usr/lib --exclude=./usr/share --exclude=./usr/libexec .
# shellcheck disable=SC2086
t "$work/l2.tar" --exclude=./usr/lib/gcc $(for p in $py; do echo "--exclude=$p"; done) ./usr/lib
# shellcheck disable=SC2086
t "$work/l3.tar" ./usr/lib/gcc ./usr/libexec $py
t "$work/l4.tar" ./usr/share

layers="" diff_ids="" total=0
for i in 1 2 3 4; do
  f="$work/l$i.tar"
  total=$((total + $(size "$f")))
  diff_ids="$diff_ids${diff_ids:+,}\"sha256:$(sha "$f")\""
  gzip -6 -n "$f"
  d=$(sha "$f.gz")
  layers="$layers${layers:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$d\",\"size\":$(size "$f.gz")}"
  mv "$f.gz" "$blobs/$d"
done

case "$arch" in
  amd64 | arm64 | s390x | ppc64el) oci_arch=${arch/ppc64el/ppc64le} ;;
  armhf) oci_arch=arm ;;
  i386) oci_arch=386 ;;
  *) oci_arch=$arch ;;
esac
printf '%s' "{\"architecture\":\"$oci_arch\",\"os\":\"linux\",\"config\":{\"Env\":[\"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"],\"Cmd\":[\"/bin/bash\"]},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[$diff_ids]}}" >"$work/config.json"
cd_=$(sha "$work/config.json")
cs=$(size "$work/config.json")
mv "$work/config.json" "$blobs/$cd_"
printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$cd_\",\"size\":$cs},\"layers\":[$layers]}" >"$work/manifest.json"
md=$(sha "$work/manifest.json")
ms=$(size "$work/manifest.json")
mv "$work/manifest.json" "$blobs/$md"
printf '%s' "{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$md\",\"size\":$ms,\"annotations\":{\"org.opencontainers.image.ref.name\":\"latest\"}}]}" >"$layout.tmp/index.json"
printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$layout.tmp/oci-layout"

find "$out_dir" -maxdepth 1 -name 'debian-pull-*' -type d ! -name "$name" ! -name "$name.tmp" -exec rm -rf {} +
mv "$layout.tmp" "$layout"
echo "$0: built in $(($(date +%s) - start))s: $layout ($total bytes of layer tars)" >&2
echo "$layout"
