#!/usr/bin/env bash
# The demo: build gapscoped and gapscope-loadgen, trace the reference Python
# server in targets/ while the load generator runs the experiment's three
# phases against it (shortened), then print what both measured.
# Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

DURATION=${DURATION:-10}
CONCURRENCY=${CONCURRENCY:-8}

echo "==> building gapscoped and gapscope-loadgen (release)"
cargo build --release --quiet

work=$(mktemp -d)
server_pid="" daemon_pid=""
cleanup() {
  [ -n "$daemon_pid" ] && kill -TERM "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null || true
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

py=targets/.venv/bin/python
free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
server_port=$(free_port)
metrics_port=$(free_port)

cat >"$work/gapscoped.toml" <<TOML
[daemon]
listen = "127.0.0.1:$metrics_port"

[[service]]
name = "toy-python"
cmdline = "targets/toy_server.py"
TOML

echo "==> starting gapscoped on 127.0.0.1:$metrics_port"
./target/release/gapscoped --config "$work/gapscoped.toml" 2>"$work/gapscoped.log" &
daemon_pid=$!
until curl -sf "http://127.0.0.1:$metrics_port/healthz" >/dev/null; do
  kill -0 "$daemon_pid" 2>/dev/null || { cat "$work/gapscoped.log"; exit 1; }
  sleep 0.1
done

echo "==> starting the reference server (targets/toy_server.py) on 127.0.0.1:$server_port"
"$py" targets/toy_server.py --port "$server_port" >"$work/server.log" 2>&1 &
server_pid=$!
until curl -sf "http://127.0.0.1:$server_port/health" >/dev/null; do
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log"; exit 1; }
  sleep 0.1
done

curl -sf "http://127.0.0.1:$metrics_port/metrics" >"$work/before.prom"
out=${OUT:-demo-results}
echo "==> gapscope-loadgen: Poisson warmup 4 s, silent cooldown 2 s, closed loop at $CONCURRENCY for ${DURATION}s"
set +e
./target/release/gapscope-loadgen --url "http://127.0.0.1:$server_port/v1/completions" \
  --phase "warmup=poisson:4:4s" --phase "cooldown=silence:2s" --phase "stress=closed:$CONCURRENCY:${DURATION}s" \
  --max-tokens 32 --input-tokens 64 --gapscoped "http://127.0.0.1:$metrics_port" --quiet --out "$out"
status=$?
set -e
[ "$status" -le 1 ] || { echo "gapscope-loadgen failed ($status)"; exit 1; }
curl -sf "http://127.0.0.1:$metrics_port/metrics" >"$work/after.prom"

"$py" scripts/demo_report.py "$work/before.prom" "$work/after.prom" "$out/results.json" toy-python
echo
echo "Phase annotations gapscoped received:"
curl -sf "http://127.0.0.1:$metrics_port/api/v1/annotations" | "$py" -c 'import json, sys
for a in json.load(sys.stdin)["annotations"]:
    print("  {:<9} {:<5} at {:.3f} s (CLOCK_MONOTONIC)".format(a["phase"], a["event"], a["monotonic_ns"] / 1e9))'
echo "GPU idle check of the silent phase:"
curl -sf "http://127.0.0.1:$metrics_port/api/v1/idle-checks" | "$py" -c 'import json, sys
d = json.load(sys.stdin)
for c in d["idle_checks"]:
    if c["unavailable"]:
        print("  {}: no GPU readings: {}".format(c["phase"], c["unavailable"]))
    for g in c["gpus"]:
        print("  {} GPU {} ({}): {}".format(c["phase"], g["gpu"], g["modelName"], g["finding"]))'
echo
echo "==> gapscoped explain toy-python (the reference server launches no GPU work, so the GPU part says why it is empty)"
./target/release/gapscoped explain toy-python --window 2m --url "http://127.0.0.1:$metrics_port"
echo "Plots and per-request records: $out/"
