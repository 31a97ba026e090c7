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
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace 2>&1 | tee "$log"
# One closing line for the whole run (cargo prints one per test binary,
# the last of which is often the empty doc-test run).
count() { grep -E '^test result:' "$log" | grep -oE "[0-9]+ $1" | awk '{s += $1} END {print s + 0}'; }
echo "tests: $(count passed) passed, $(count failed) failed"
