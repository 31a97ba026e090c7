#!/usr/bin/env bash
# Every test Gapscope has: formatting, lints, unit tests and the end-to-end
# tests that attach the BPF programs to real processes. Needs root: as
# another user it runs itself again with sudo (scripts/lib/common.sh).
#
# Every test binary runs, whatever failed before it (--no-fail-fast). A test
# that cannot run on this host says SKIP and why on the run's output
# (gapscope_testkit::skip) and counts as skipped, not passed; the closing
# line is `tests: N passed, M failed, K skipped`, then the reasons, once.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh
need_root "$0" "$@"

bash scripts/setup.sh
pinned_toolchains
# The first build writes ~14 GiB under target/ (debug builds of every test).
[ -d target/debug ] || need_space . 16 "the first build of every test (target/, about 14 GiB)"

echo "==> cargo fmt --check"
cargo fmt --all --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "==> cargo test"
# Build the workload binary the end-to-end tests spawn, then run everything.
cargo build --workspace --quiet
log=$(mktemp)
GAPSCOPE_SKIP_LOG=$(mktemp)
export GAPSCOPE_SKIP_LOG
trap 'rm -f "$log" "$GAPSCOPE_SKIP_LOG"' EXIT
rc=0
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || rc=$?

# One closing line for the whole run (cargo prints one per test binary, the
# last of which is often the empty doc-test run). A skipped test returned
# early, so libtest counted it as passed: it moves to the skipped column.
count() { grep -E '^test result:' "$log" | grep -oE "[0-9]+ $1" | awk '{s += $1} END {print s + 0}'; }
skipped=$(awk -F'\t' '$1 == "skip" { print $2 }' "$GAPSCOPE_SKIP_LOG" | sort -u | wc -l)
passed=$(($(count passed) - skipped))
failed=$(count failed)
if [ -s "$GAPSCOPE_SKIP_LOG" ]; then
  echo
  if [ "$skipped" -gt 0 ]; then
    echo "Skipped on this host (counted as skipped):"
    awk -F'\t' '$1 == "skip" { printf "  %s: %s\n", $2, $3 }' "$GAPSCOPE_SKIP_LOG" | sort -u
  fi
  if grep -q '^part' "$GAPSCOPE_SKIP_LOG"; then
    echo "Passed, with parts not checked on this host:"
    awk -F'\t' '$1 == "part" { printf "  %s: %s\n", $2, $3 }' "$GAPSCOPE_SKIP_LOG" | sort -u
  fi
fi
# A binary that failed to build or crashed prints no result line: say so.
if [ "$rc" != 0 ] && [ "$failed" = 0 ]; then
  echo "cargo test failed (exit $rc) with no failing test counted: a test binary did not build or crashed (see above)"
fi
echo
echo "tests: $passed passed, $failed failed, $skipped skipped"
exit "$rc"
