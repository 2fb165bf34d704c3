#!/usr/bin/env bash
# Starts eci-agent on its embedded defaults (no config file), relocated under a scratch
# root (the dev bridge eci0, its masquerade table and IP forwarding stay on the host), imports a busybox image the project builds locally
# (no registry or internet needed), runs the sample group, shows it, and deletes it.
# Needs root and busybox-static (/bin/busybox).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --bins --locked
root=$(mktemp -d /tmp/eci-demo.XXXXXX)
ctl() { echo "\$ ecictl $*"; target/debug/ecictl --socket "$root/run/eci/agent.sock" "$@"; echo; }

target/debug/eci-agent --no-config --root "$root" 2>"$root/agent.log" &
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
