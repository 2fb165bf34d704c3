#!/usr/bin/env bash
# Builds the guest image of the vm sandbox (issue 15, docs/vm.md):
#
#   scripts/guest-image.sh [OUT_DIR]        (default /var/lib/eci/guest)
#
# OUT_DIR/vmlinux      the Debian cloud kernel (linux-image-cloud-amd64), downloaded with
#                      `apt-get download` and unpacked with `dpkg-deb -x` (never installed
#                      on this host), its bzImage payload decompressed to the ELF vmlinux,
#                      which QEMU boots through its PVH entry note.
# OUT_DIR/initrd.img   newc cpio, gzip: /init = eci-guest (static), /lib/modules/<name>.ko
#                      (decompressed) and /lib/modules/order (one file name per line, in
#                      dependency order: eci-guest loads them top to bottom).
# OUT_DIR/manifest.json {"kernel_release": ..., "eci_guest_sha256": ...}
# OUT_DIR/modules/     the picked modules, their order and the wanted list (.wanted): a
#                      cache, so a new eci-guest with the same kernel and wanted list
#                      re-packs the initramfs without a download.
#
# eci-guest is built as the contract says (static glibc, --target-dir target/guest).
# Work whose output is current (same kernel release and eci-guest hash as the manifest)
# is skipped. The new image is built in OUT_DIR.tmp and renamed over OUT_DIR, so a reader
# never sees half an image. Needs: apt-get, dpkg-deb, cpio, gzip, xz, zstd, cargo.
set -euo pipefail

out_dir=${1:-/var/lib/eci/guest}
out_dir=${out_dir%/}
repo="$(cd "$(dirname "$0")/.." && pwd)"
pkg=linux-image-cloud-amd64
# The drivers the guest needs (virtio-mmio transport, the serial ports, disks, network,
# erofs layers under an overlay, ext4/xfs for disk volumes — built in or modules, the
# script reports which), and those of the virtiofs/vsock measurements.
wanted=(virtio_mmio virtio_console virtio_blk virtio_net erofs overlay ext4 xfs fuse virtiofs
  vsock vmw_vsock_virtio_transport)

log() { echo "guest-image: $*" >&2; }
size() { du -h "$1" | cut -f1; }

# The versioned kernel package the meta package depends on, and its release.
kpkg=$(apt-cache depends "$pkg" | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n1)
if [ -z "$kpkg" ]; then
  log "cannot resolve the kernel package $pkg depends on (apt-get update?)"
  exit 1
fi
release=${kpkg#linux-image-}

# eci-guest, static (cargo skips the work when nothing changed).
log "building eci-guest (static)"
(cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p eci-guest \
  --target x86_64-unknown-linux-gnu --target-dir target/guest)
guest_bin="$repo/target/guest/x86_64-unknown-linux-gnu/release/eci-guest"
guest_sha=$(sha256sum "$guest_bin" | cut -d' ' -f1)

manifest_of() { printf '{"kernel_release": "%s", "eci_guest_sha256": "%s"}\n' "$1" "$2"; }
current_release=""
current_sha=""
if [ -f "$out_dir/manifest.json" ]; then
  current_release=$(sed -n 's/.*"kernel_release": *"\([^"]*\)".*/\1/p' "$out_dir/manifest.json")
  current_sha=$(sed -n 's/.*"eci_guest_sha256": *"\([^"]*\)".*/\1/p' "$out_dir/manifest.json")
fi
if [ "$current_release" = "$release" ] && [ "$current_sha" = "$guest_sha" ] &&
  [ -f "$out_dir/vmlinux" ] && [ -f "$out_dir/initrd.img" ]; then
  log "up to date: kernel $release, eci-guest $guest_sha"
  echo "$out_dir/vmlinux $(size "$out_dir/vmlinux")"
  echo "$out_dir/initrd.img $(size "$out_dir/initrd.img")"
  exit 0
fi

tmp_out="$out_dir.tmp"
rm -rf "$tmp_out"
mkdir -p "$tmp_out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Decompresses the payload of a bzImage: the first offset of a known compressor's magic
# from which the stream decompresses to an ELF (as the kernel's scripts/extract-vmlinux).
extract_vmlinux() {
  local img=$1 out=$2 magic tool off
  for pair in '\x1f\x8b\x08|gzip -dc' '\xfd\x37\x7a\x58\x5a\x00|xz -dc' \
    '\x28\xb5\x2f\xfd|zstd -dc' 'BZh|bzip2 -dc' '\x5d\x00\x00\x00|xz -dc --format=lzma' \
    '\x02\x21\x4c\x18|lz4 -dc'; do
    magic=${pair%%|*}
    tool=${pair#*|}
    for off in $(LC_ALL=C grep -obUaP "$magic" "$img" | cut -d: -f1); do
      tail -c +"$((off + 1))" "$img" | $tool >"$out" 2>/dev/null || true
      if [ "$(head -c 4 "$out" | od -An -tx1 | tr -d ' \n')" = "7f454c46" ]; then
        return 0
      fi
    done
  done
  return 1
}

if [ "$current_release" = "$release" ] && [ -f "$out_dir/vmlinux" ] &&
  [ -s "$out_dir/modules/order" ] &&
  [ "$(cat "$out_dir/modules/.wanted" 2>/dev/null)" = "${wanted[*]}" ]; then
  log "kernel $release is current: reusing vmlinux and modules"
  cp "$out_dir/vmlinux" "$tmp_out/vmlinux"
  cp -r "$out_dir/modules" "$tmp_out/modules"
else
  log "downloading $kpkg"
  (cd "$work" && chmod 777 . && apt-get download -q "$kpkg" >&2)
  deb=$(ls "$work"/*.deb)
  dpkg-deb -x "$deb" "$work/root"
  vmlinuz="$work/root/boot/vmlinuz-$release"
  extract_vmlinux "$vmlinuz" "$tmp_out/vmlinux" || {
    log "no ELF payload found in $vmlinuz"
    exit 1
  }
  moddir="$work/root/lib/modules/$release"
  [ -d "$moddir" ] || moddir="$work/root/usr/lib/modules/$release"
  # Every module file by module name ('-' and '_' are the same in module names).
  declare -A path_of=()
  while IFS= read -r f; do
    n=$(basename "$f")
    n=${n%%.ko*}
    path_of[${n//-/_}]=${f#"$moddir/"}
  done < <(find "$moddir/kernel" -name '*.ko*')
  # A module's direct dependencies, from its own .modinfo ("depends=a,b"): the package
  # ships no modules.dep (its postinst runs depmod), and depmod need not be installed.
  depends_of() {
    local f="$moddir/$1"
    case $f in
    *.xz) xz -dc "$f" ;;
    *.zst) zstd -qdc "$f" ;;
    *.gz) gzip -dc "$f" ;;
    *) cat "$f" ;;
    esac | tr '\0' '\n' | sed -n 's/^depends=//p' | head -n1 | tr ',' ' '
  }
  # Depth first: every module after the modules it needs.
  declare -A done_=()
  order=()
  visit() {
    local rel=$1 dep
    [ -n "${done_[$rel]:-}" ] && return 0
    done_[$rel]=1
    for dep in $(depends_of "$rel"); do
      dep=${dep//-/_}
      if [ -n "${path_of[$dep]:-}" ]; then
        visit "${path_of[$dep]}"
      fi
    done
    order+=("$rel")
  }
  for name in "${wanted[@]}"; do
    rel=${path_of[$name]:-}
    if [ -z "$rel" ]; then
      if grep -qE "(^|/)${name}\.ko$" "$moddir/modules.builtin" 2>/dev/null; then
        log "$name is built in"
      else
        log "$name: not in this kernel"
      fi
      continue
    fi
    visit "$rel"
  done
  mkdir -p "$tmp_out/modules"
  : >"$tmp_out/modules/order"
  for rel in "${order[@]}"; do
    base=$(basename "$rel")
    ko=${base%.xz}
    ko=${ko%.zst}
    ko=${ko%.gz}
    case $base in
    *.xz) xz -dc "$moddir/$rel" >"$tmp_out/modules/$ko" ;;
    *.zst) zstd -qdc "$moddir/$rel" >"$tmp_out/modules/$ko" ;;
    *.gz) gzip -dc "$moddir/$rel" >"$tmp_out/modules/$ko" ;;
    *) cp "$moddir/$rel" "$tmp_out/modules/$ko" ;;
    esac
    echo "$ko" >>"$tmp_out/modules/order"
  done
  for need in virtio_console virtio_blk erofs overlay; do
    if ! grep -q "^$need.ko$" "$tmp_out/modules/order" &&
      ! grep -qE "(^|/)$need\.ko$" "$moddir/modules.builtin"; then
      log "$need is neither a module nor built in: this kernel cannot run the guest"
      exit 1
    fi
  done
  echo "${wanted[*]}" >"$tmp_out/modules/.wanted"
  log "modules: $(tr '\n' ' ' <"$tmp_out/modules/order")"
fi

# The initramfs: /init, /lib/modules.
root="$work/initramfs"
mkdir -p "$root/lib/modules" "$root/dev"
# init's stdio: the kernel opens /dev/console of the initramfs for it.
mknod -m 600 "$root/dev/console" c 5 1
install -m 0755 "$guest_bin" "$root/init"
cp "$tmp_out/modules/"* "$root/lib/modules/"
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
  cpio --quiet -o -H newc -R 0:0 --reproducible | gzip -6n) >"$tmp_out/initrd.img"
manifest_of "$release" "$guest_sha" >"$tmp_out/manifest.json"
sync -f "$tmp_out/initrd.img" 2>/dev/null || sync

# Swap in: the old image goes aside first, so OUT_DIR is either old or new.
mkdir -p "$(dirname "$out_dir")"
if [ -e "$out_dir" ]; then
  rm -rf "$out_dir.old"
  mv "$out_dir" "$out_dir.old"
fi
mv "$tmp_out" "$out_dir"
rm -rf "$out_dir.old"
log "built: kernel $release, eci-guest $guest_sha"
echo "$out_dir/vmlinux $(size "$out_dir/vmlinux")"
echo "$out_dir/initrd.img $(size "$out_dir/initrd.img")"
