#!/usr/bin/env bash
# Fuzzes the wire frame decoder (wire/fuzz, cargo-fuzz) for a bounded time
# and writes bench/results/fuzz_wire.json. Installs cargo-fuzz when missing.
# Starts from the kept corpus (wire/fuzz/seeds/decode: what earlier runs
# found, minimized with `cargo fuzz cmin`); new finds go to
# wire/fuzz/corpus/decode (not kept: copy them to seeds after a cmin).
# Usage: bench/fuzz_wire.sh [SECONDS]   (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
mkdir -p bench/results
log=$(mktemp)
trap 'rm -f "$log"' EXIT
start=$(date +%s)
status=0
mkdir -p wire/fuzz/corpus/decode
(cd wire/fuzz && cargo +nightly fuzz run decode corpus/decode seeds/decode -- -max_total_time="$seconds" -rss_limit_mb=2048) 2>&1 | tee "$log" || status=$?
runs=$(grep -oE '#[0-9]+' "$log" | tail -1 | tr -d '#')
cat >bench/results/fuzz_wire.json <<JSON
{"benchmark": "fuzz_wire", "target": "decode", "seconds": $(( $(date +%s) - start )), "executions": ${runs:-0}, "corpus": $(ls wire/fuzz/corpus/decode wire/fuzz/seeds/decode | grep -cv -e '^$' -e ':$'), "crashed": $([ "$status" -eq 0 ] && echo false || echo true)}
JSON
cat bench/results/fuzz_wire.json
exit "$status"
