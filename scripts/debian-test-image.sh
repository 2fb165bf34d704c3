#!/usr/bin/env bash
# Builds a small real Debian image for the user-namespace end-to-end tests
# (tests/tests/userns_debian.rs) and prints the path of its OCI image archive, which
# `ecictl images import` accepts:
#
#   scripts/debian-test-image.sh OUT_DIR
#
# The userland is the host's Debian suite (/etc/os-release), built by mmdebstrap
# (variant essential plus passwd, login, iputils-ping and libcap2-bin, so that `ping`
# gets its `cap_net_raw` file capability from its postinst and `su`/`passwd` are
# setuid root). mmdebstrap's tar output keeps extended attributes (`--xattrs`, pax
# `SCHILY.xattr.*` records) and modes, so both survive into the single image layer.
#
# The archive is cached in OUT_DIR as debian-<suite>-<arch>-<key>.oci.tar, where <key>
# hashes this script: a re-run with the same suite and script prints the cached path at
# once; a changed script builds a new one and removes the stale ones. Needs root (or
# mmdebstrap's unshare mode), network access to the Debian mirror of the host's apt
# sources, and: mmdebstrap, tar, zstd, sha256sum.
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 OUT_DIR" >&2
  exit 2
fi
out_dir=$1
script="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"

# shellcheck disable=SC1091
. /etc/os-release
suite=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
if [ "${ID:-}" != debian ]; then
  echo "$0: the host is ${ID:-unknown}, not Debian; the test image follows the host's suite" >&2
  exit 1
fi
arch=$(dpkg --print-architecture)
key=$(cat "$script" | sha256sum | cut -c1-16)
name="debian-$suite-$arch-$key.oci.tar"
archive="$out_dir/$name"
reference="eci.test/debian:$suite"

if [ -s "$archive" ]; then
  echo "$archive"
  exit 0
fi

for tool in mmdebstrap tar zstd sha256sum; do
  command -v "$tool" >/dev/null || {
    echo "$0: $tool is missing (apt-get install mmdebstrap zstd)" >&2
    exit 1
  }
done

mkdir -p "$out_dir"
work=$(mktemp -d "$out_dir/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)

# Documentation, man pages and locales are dropped while unpacking: they are most of
# the size and no test reads them. Packages come from the host's apt sources.
mmdebstrap --quiet --variant=essential \
  --include=passwd,login,iputils-ping,libcap2-bin \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --customize-hook='chroot "$1" useradd --uid 1000 --user-group --create-home --shell /bin/sh tester' \
  --customize-hook='rm -f "$1"/var/log/*.log "$1"/var/cache/ldconfig/aux-cache' \
  "$suite" "$work/layer.tar"

# The layer must carry ping's file capability, or the test image is useless.
if ! grep -aq 'SCHILY.xattr.security.capability' "$work/layer.tar"; then
  echo "$0: the rootfs tar carries no security.capability (was libcap2-bin installed?)" >&2
  exit 1
fi

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
mkdir -p "$work/oci/blobs/sha256"
blobs="$work/oci/blobs/sha256"

diff_id=$(sha "$work/layer.tar")
zstd -q -T0 -3 --rm -o "$work/layer.tar.zst" "$work/layer.tar"
layer_digest=$(sha "$work/layer.tar.zst")
layer_size=$(size "$work/layer.tar.zst")
mv "$work/layer.tar.zst" "$blobs/$layer_digest"

case "$arch" in
  amd64 | arm64 | s390x | ppc64el) oci_arch=${arch/ppc64el/ppc64le} ;;
  armhf) oci_arch=arm ;;
  i386) oci_arch=386 ;;
  *) oci_arch=$arch ;;
esac

printf '%s' "{\"architecture\":\"$oci_arch\",\"os\":\"linux\",\"config\":{\"Env\":[\"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"],\"Cmd\":[\"/bin/bash\"]},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$diff_id\"]}}" >"$work/config.json"
config_digest=$(sha "$work/config.json")
config_size=$(size "$work/config.json")
mv "$work/config.json" "$blobs/$config_digest"

printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$config_digest\",\"size\":$config_size},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+zstd\",\"digest\":\"sha256:$layer_digest\",\"size\":$layer_size}]}" >"$work/manifest.json"
manifest_digest=$(sha "$work/manifest.json")
manifest_size=$(size "$work/manifest.json")
mv "$work/manifest.json" "$blobs/$manifest_digest"

printf '%s' "{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$manifest_digest\",\"size\":$manifest_size,\"annotations\":{\"io.containerd.image.name\":\"$reference\",\"org.opencontainers.image.ref.name\":\"$reference\"}}]}" >"$work/oci/index.json"
printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$work/oci/oci-layout"

tar --numeric-owner --owner=0 --group=0 -C "$work/oci" -cf "$work/image.tar" oci-layout index.json blobs
# Stale builds (older script or suite) go; the new one appears atomically.
find "$out_dir" -maxdepth 1 -name 'debian-*.oci.tar' ! -name "$name" -delete
mv "$work/image.tar" "$archive"
echo "$0: built $reference in $(($(date +%s) - start))s: $archive ($(size "$archive") bytes)" >&2
echo "$archive"
