#!/usr/bin/env bash
# The project's test command (README, CI): formatting, lints, then every test, including
# the end-to-end tests that start the real agent. Run as root: the tests switch users,
# and later ones create namespaces, cgroups and mounts.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The end-to-end tests run the binaries from the target dir.
cargo build --workspace --bins --locked
cargo test --workspace --locked
