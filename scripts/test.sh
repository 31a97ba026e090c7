#!/usr/bin/env bash
# Every test Gapscope has: formatting, lints, unit tests and the end-to-end
# tests that attach the BPF programs to real processes. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

echo "==> cargo fmt --check"
cargo fmt --all --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "==> cargo test"
# Build the workload binary the end-to-end tests spawn, then run everything.
cargo build --workspace --quiet
cargo test --workspace
