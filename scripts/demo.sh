#!/usr/bin/env bash
# Starts eci-agent on its embedded defaults (plus `[vm]`: where the guest image is, and
# TCG emulation allowed, see docs/vm.md), relocated under a scratch
# root (the dev bridge eci0, its masquerade table and IP forwarding stay on the host), imports a busybox image the project builds locally
# (no registry or internet needed), runs the sample group, shows it, and deletes it.
# Then runs the sample group again in the VM sandbox (examples/vm-1.yaml), after building
# the guest image once into /var/lib/eci/guest (scripts/guest-image.sh: the Debian cloud
# kernel and a static eci-guest; needs qemu-system-x86, erofs-utils, cpio). ECI_DEMO_VM=0
# skips that part.
# Needs root and busybox-static (/bin/busybox).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --bins --locked
vm=${ECI_DEMO_VM:-1}
guest=/var/lib/eci/guest
if [ "$vm" = 1 ]; then
  bash scripts/guest-image.sh "$guest"
fi
root=$(mktemp -d /tmp/eci-demo.XXXXXX)
printf '[vm]\nguest_dir = "%s"\nallow_tcg = true\n' "$guest" >"$root/agent.toml"
ctl() { echo "\$ ecictl $*"; target/debug/ecictl --socket "$root/run/eci/agent.sock" "$@"; echo; }

target/debug/eci-agent --config "$root/agent.toml" --root "$root" 2>"$root/agent.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$root"' EXIT
for _ in $(seq 100); do [ -S "$root/run/eci/agent.sock" ] && break; sleep 0.1; done

target/debug/eci-mkimage "$root/busybox.tar" 127.0.0.1:5000/demo/busybox:1
ctl node
ctl images import "$root/busybox.tar"
ctl apply -f examples/web-1.yaml
ctl wait web-1 --for phase=Running --timeout 30s
ctl get
ctl logs web-1
ctl describe web-1
ctl delete web-1 --grace-period 1 --wait
ctl events

if [ "$vm" = 1 ]; then
  # The agent probes which accelerator boots the guest (KVM, else TCG) at start.
  for _ in $(seq 60); do
    target/debug/ecictl --socket "$root/run/eci/agent.sock" node -o json | tr -d ' \n' | grep -q '"sandboxKinds":\[[^]]*"vm"' && break
    sleep 1
  done
  ctl apply -f examples/vm-1.yaml
  ctl wait vm-1 --for phase=Running --timeout 180s
  sleep 2
  ctl logs vm-1
  ctl exec vm-1 -- sh -c 'uname -r; cat /proc/cpuinfo | grep -m1 "model name"'
  ctl top vm-1
  ctl delete vm-1 --grace-period 1 --wait
fi
