#!/usr/bin/env bash
# Starts eci-agent on its embedded defaults (no config file), relocated under a scratch
# root so it leaves the host alone, runs the sample group through ecictl, and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --bins --locked
root=$(mktemp -d /tmp/eci-demo.XXXXXX)
agent=target/debug/eci-agent
ctl() { echo "\$ ecictl $*"; target/debug/ecictl --socket "$root/run/eci/agent.sock" "$@"; echo; }

"$agent" --no-config --root "$root" 2>"$root/agent.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$root"' EXIT
for _ in $(seq 100); do [ -S "$root/run/eci/agent.sock" ] && break; sleep 0.1; done

ctl node
ctl apply -f examples/web-1.yaml
ctl get
ctl get web-1 -o yaml
ctl describe web-1
ctl delete web-1 --wait
ctl events
echo "agent log: $root/agent.log"; cat "$root/agent.log"
