#!/usr/bin/env bash
# The demo: the seed's experiment on this machine. Two stacks serve the same
# tiny Llama — the Python wrapper (BentoML + transformers) and the compiled
# engine (llama.cpp's llama-server, continuous batching) — while gapscoped
# traces both; gapscope-loadgen runs the experiment's three phases against
# each in turn (shortened), then the demo prints the comparison table, what
# gapscoped measured in each stack and the side-by-side explain report. A
# third part runs a decode loop on a simulated device (this machine has no
# GPU) traced in CUPTI deep mode, so explain shows its GPU part.
# Needs root: as another user it runs itself again with sudo
# (scripts/lib/common.sh). Leaves nothing running or attached, also when
# interrupted.
#
# Scale: WARMUP_S (4), COOLDOWN_S (2), DURATION (stress seconds, 10),
# CONCURRENCY (8), MAX_TOKENS (32), STACKS ("bentoml llama-server"),
# PROFILE (release; debug reuses the test build), OUT (demo-results).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh
need_root "$0" "$@"
bash scripts/setup.sh
pinned_toolchains

WARMUP_S=${WARMUP_S:-4}
COOLDOWN_S=${COOLDOWN_S:-2}
DURATION=${DURATION:-10}
CONCURRENCY=${CONCURRENCY:-8}
MAX_TOKENS=${MAX_TOKENS:-32}
STACKS=${STACKS:-bentoml llama-server}
PROFILE=${PROFILE:-release}
out=${OUT:-demo-results}

[ -d "target/$PROFILE" ] || need_space . 4 "the first $PROFILE build (target/$PROFILE)"
case "$PROFILE" in
  release) echo "==> building gapscoped and gapscope-loadgen (release)"; cargo build --release --quiet ;;
  debug) echo "==> building gapscoped and gapscope-loadgen (debug)"; cargo build --quiet ;;
  *) echo "demo: PROFILE=$PROFILE: use release or debug" >&2; exit 2 ;;
esac
bin=target/$PROFILE
py=targets/.venv/bin/python

work=$(mktemp -d)
stack_pid="" daemon_pid="" sim_dir=""
stop_stack() {
  if [ -n "$stack_pid" ]; then
    kill -TERM "$stack_pid" 2>/dev/null || true
    wait "$stack_pid" 2>/dev/null || true
    stack_pid=""
  fi
}
cleanup() {
  stop_stack
  # gapscoped detaches every BPF program on SIGTERM.
  [ -n "$daemon_pid" ] && kill -TERM "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null || true
  rm -rf "$work"
  [ -z "$sim_dir" ] || rm -rf "$sim_dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
metrics_port=$(free_port)
daemon_url="http://127.0.0.1:$metrics_port"

# The services: BentoML's server process and the workers it forks; the
# llama-server serving the tiny Llama.
cat >"$work/gapscoped.toml" <<TOML
[daemon]
listen = "127.0.0.1:$metrics_port"
# BPF statistics sampled every 5 s rather than every minute, so each
# stack's short run holds samples for the report's "own cost" line.
bpf_stats_period_s = 5

# The simulated decode loop's idle gaps are often under a millisecond:
# stretches on and off CPU down to 100 µs reach explain (the README's
# "CPU states down to 100 µs": a launch-bound service's idle time then
# has a recorded cause for 97 % rather than 94 %, for no measurable CPU).
[timeline]
min_interval_us = 100

[[service]]
name = "bentoml"
cmdline = "bento_service:LlamaService"

[[service]]
name = "llama-server"
cmdline = "llama-server .*--alias tiny-llama"

[[service]]
name = "simulated"
cmdline = 'sim_decode\.py'

[inject]
socket = "$work/inject.sock"
TOML

echo "==> starting gapscoped on 127.0.0.1:$metrics_port"
"$bin/gapscoped" --config "$work/gapscoped.toml" 2>"$work/gapscoped.log" &
daemon_pid=$!
until curl -sf "$daemon_url/healthz" >/dev/null; do
  kill -0 "$daemon_pid" 2>/dev/null || { cat "$work/gapscoped.log"; exit 1; }
  sleep 0.1
done

mkdir -p "$out"
started=$(date +%s)
for stack in $STACKS; do
  port=$(free_port)
  echo "==> starting $stack on 127.0.0.1:$port (targets/stacks/serve.py)"
  "$py" targets/stacks/serve.py "$stack" --port "$port" --parallel "$CONCURRENCY" \
    --log "$work/$stack.log" >"$work/$stack.serve" 2>&1 &
  stack_pid=$!
  until grep -q '^ready' "$work/$stack.serve" 2>/dev/null; do
    kill -0 "$stack_pid" 2>/dev/null || { cat "$work/$stack.serve"; exit 1; }
    sleep 0.2
  done
  # gapscoped finds new processes within its rescan interval.
  for _ in $(seq 100); do
    curl -sf "$daemon_url/metrics" | grep -q "^gapscope_service_processes{service=\"$stack\"} [1-9]" && break
    sleep 0.1
  done
  curl -sf "$daemon_url/metrics" >"$work/$stack.before.prom"
  echo "==> gapscope-loadgen against $stack: Poisson warmup ${WARMUP_S} s, silent cooldown ${COOLDOWN_S} s, closed loop at $CONCURRENCY for ${DURATION} s"
  set +e
  "$bin/gapscope-loadgen" --url "http://127.0.0.1:$port/v1/completions" --model tiny-llama \
    --tokenizer .cache/tiny-llama/hf/tokenizer.json \
    --phase "warmup=poisson:2:${WARMUP_S}s" --phase "cooldown=silence:${COOLDOWN_S}s" \
    --phase "stress=closed:$CONCURRENCY:${DURATION}s" \
    --max-tokens "$MAX_TOKENS" --input-tokens 64 --model-config .cache/tiny-llama/hf/config.json \
    --gapscoped "$daemon_url" --gapscoped-service "$stack" --quiet --out "$out/$stack"
  status=$?
  set -e
  [ "$status" -le 1 ] || { echo "gapscope-loadgen failed against $stack ($status)"; exit 1; }
  curl -sf "$daemon_url/metrics" >"$work/$stack.after.prom"
  stop_stack
done
elapsed=$(($(date +%s) - started + 5))

set -- $STACKS
echo
echo "==================== Comparison (gapscope-loadgen compare, stress phase) ===================="
cat <<TEXT
What is compared: the same tiny Llama (5 M parameters, seeded random weights,
so every reply is exactly $MAX_TOKENS tokens) served two ways on this machine's CPU:
bentoml is a Python wrapper (BentoML + transformers generate(), one request
per thread, every token passed through Python); llama-server is a compiled
engine (llama.cpp, continuous batching, no Python). Both got the same load:
Poisson warmup, ${COOLDOWN_S} s of silence, then $CONCURRENCY requests at a time
for ${DURATION} s. Below, one column per stack for the stress phase: output tokens
per second (higher is better), then TTFT (time to the first token), ITL
per token and per chunk (time between tokens, and between the chunks that
carry them) and E2E (whole request) percentiles in ms (lower is better);
the last column is the ratio. Rows that need a GPU (MFU, tokens
per joule, power) say why they are empty here.

TEXT
if [ $# -ge 2 ]; then
  "$bin/gapscope-loadgen" compare "$out/$1/results.json" "$out/$2/results.json" --labels "$1,$2" --phase stress
fi
echo
cat <<'TEXT'
How to read what gapscoped measured: it watched every thread of each stack
from the kernel (eBPF), without changing the stack. "on CPU" is time spent
running; the other reasons are why a thread was not running. In the GIL
line, "held" is how long some thread held CPython's global interpreter lock
and "waited" is how long threads waited for it (another thread held it):
time the server could not spend producing tokens. Run-queue
time is a thread ready to run but waiting for a CPU. In explain, "idle" is
the GPU's idle time split by what the launching threads did meanwhile; on
this machine there is no GPU, so that part says why it is empty.
TEXT
for stack in $STACKS; do
  echo
  echo "==================== What gapscoped measured in $stack ===================="
  "$py" scripts/demo_report.py "$work/$stack.before.prom" "$work/$stack.after.prom" "$out/$stack/results.json" "$stack"
done
echo
echo "==================== gapscoped explain ===================="
if [ $# -ge 2 ]; then
  "$bin/gapscoped" explain --compare "$1" "$2" --window "${elapsed}s" --url "$daemon_url"
else
  "$bin/gapscoped" explain "$1" --window "${elapsed}s" --url "$daemon_url"
fi

echo
echo "==================== Simulated device: this machine has no GPU ===================="
cat <<'TEXT'
Without a GPU, the GPU half of gapscoped runs against stand-ins: a
simulated device (a kernel starts when it is launched or when the one before
it ends, and lasts the time the caller chose; a sync waits for it) behind
fake CUDA libraries, and a CUPTI stand-in that records it. The real
injection library (libgapscope_inject.so) is loaded into a Python decode loop
the way CUDA loads it, and streams the device's records to gapscoped (deep
mode). Each step launches one token's six kernels, waits for them, then does
what a Python wrapper does between tokens: JSON of the step's output, now
and then a wait on a client socket, while a second Python thread competes for
the GIL. The GPU part below is explain's: how busy the device was, its idle
time split by what the launching thread did meanwhile, kernels per token and
the kernel mix. What only a real GPU can show: real CUPTI timestamps and
overhead, and real launch costs (scripts/device-check).
TEXT
if sim=$("$bin/gapscope-sim-device" 2>"$work/sim-device.err"); then
  read -r sim_dir sim_cupti <<<"$sim"
  echo go | CUDA_INJECTION64_PATH="$PWD/$bin/libgapscope_inject.so" GAPSCOPE_CUPTI_PATH="$sim_cupti" \
    GAPSCOPE_SOCKET="$work/inject.sock" \
    "$py" targets/sim_decode.py "$sim_dir" --seconds 6 --gapscoped "$daemon_url" --service simulated --run-id demo-simulated \
    >"$work/sim.out" 2>"$work/sim.err" || { cat "$work/sim.err"; exit 1; }
  grep -h '^gapscope-inject' "$work/sim.err" || true
  # Deep-mode records settle after gapscoped's reorder window.
  sleep 2
  "$bin/gapscoped" explain simulated --window 30s --url "$daemon_url"
else
  echo "(skipped: $(cat "$work/sim-device.err"))"
fi
echo
echo "Phase annotations gapscoped received:"
curl -sf "$daemon_url/api/v1/annotations" | "$py" -c 'import json, sys
for a in json.load(sys.stdin)["annotations"]:
    if a["event"] != "progress":
        print("  {:<9} {:<5} at {:.3f} s (CLOCK_MONOTONIC)".format(a["phase"], a["event"], a["monotonic_ns"] / 1e9))'
echo
echo "Results, per-request records and plots:"
for stack in $STACKS; do
  echo "  $out/$stack/ ($(cd "$out/$stack" && ls | tr '\n' ' '))"
done
