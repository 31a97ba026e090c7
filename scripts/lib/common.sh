# Sourced by the project's scripts: messages, root, and timed setup steps.
#
# Root: the scripts that need it call `need_root "$0" "$@"` first. As root
# (a container, CI, a cloud VM's root shell) it does nothing. As another user
# with sudo it says so and runs the script again under sudo, keeping that
# user's toolchains (PATH, HOME, CARGO_HOME, RUSTUP_HOME, PYENV_ROOT; pip
# caches in root's home, as pip refuses a cache root does not own), and
# when the script ends gives back to that user every file it made under the
# checkout and the user's cargo and rustup homes, so that a later plain `cargo build`
# still owns its tree. Without root and without sudo it stops, naming both fixes.

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

need_root() { # SCRIPT ARGS...
  [ "$(id -u)" = 0 ] && return 0
  local script=$1; shift
  if ! command -v sudo >/dev/null 2>&1; then
    printf '%s: needs root (it loads BPF programs and installs packages) and sudo is not installed: run it as root, or install sudo\n' \
      "$(basename "$script")" >&2
    exit 1
  fi
  say "$(basename "$script") needs root: running it again with sudo (you may be asked for your password)"
  local lib pyenv
  lib=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  # The user's pyenv when there is one (else root's is looked for).
  pyenv=${PYENV_ROOT:-$HOME/.pyenv}
  [ -d "$pyenv" ] || pyenv=""
  # root's sbin directories too: dpkg, ldconfig and friends live there.
  exec sudo -- env PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" HOME="$HOME" \
    CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}" RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}" \
    ${pyenv:+PYENV_ROOT="$pyenv"} ${CI:+CI="$CI"} \
    PIP_CACHE_DIR=/root/.cache/pip \
    GAPSCOPE_GIVE_BACK="$(id -u):$(id -g)" \
    bash "$lib/as-root" "$script" "$@"
}

# --- Toolchains: the workspace's Rust and the BPF programs' nightly ----------
# The versions this tree is built and linted with. scripts/setup.sh installs
# them beside the user's own when those differ; `pinned_toolchains` (after
# setup) exports RUSTUP_TOOLCHAIN only when the default Rust is not 1.95, and
# GAPSCOPE_BPF_TOOLCHAIN (read by daemon/build.rs) for the nightly.
GAPSCOPE_STABLE=1.95.0
GAPSCOPE_NIGHTLY=nightly-2026-05-20
# Installed, by exact name (`rustup toolchain list`, not `rustc +X`, which
# makes rustup install X).
has_toolchain() { rustup toolchain list 2>/dev/null | grep -qE "^$1-[a-z0-9_]+-unknown-linux"; }
pinned_toolchains() {
  if ! rustc -V 2>/dev/null | grep -q "^rustc ${GAPSCOPE_STABLE%.*}\." \
    && has_toolchain "$GAPSCOPE_STABLE"; then
    export RUSTUP_TOOLCHAIN=$GAPSCOPE_STABLE
  fi
  if has_toolchain nightly && rustc +nightly -vV 2>/dev/null | grep -q '^LLVM version: 22\.'; then
    export GAPSCOPE_BPF_TOOLCHAIN=nightly
  else
    export GAPSCOPE_BPF_TOOLCHAIN=$GAPSCOPE_NIGHTLY
  fi
}

# --- Timed steps: what a first run on a fresh machine spends its time on -----
# `step NAME` before a step that does work; `steps_report` at the end prints
# each step that ran this time with its seconds. Nested scripts share the log
# through GAPSCOPE_STEP_LOG.
step_name="" step_start=0
step() {
  step_end
  step_name=$1 step_start=$SECONDS
  say "$1"
}
step_end() {
  if [ -n "$step_name" ] && [ -n "${GAPSCOPE_STEP_LOG:-}" ]; then
    printf '%s\t%s\n' "$((SECONDS - step_start))" "$step_name" >>"$GAPSCOPE_STEP_LOG"
  fi
  step_name=""
}
steps_report() { # TITLE
  step_end
  [ -s "${GAPSCOPE_STEP_LOG:-/nonexistent}" ] || return 0
  printf '\n%s\n' "$1"
  awk -F'\t' '{ printf "  %6d s  %s\n", $1, $2; s += $1 } END { printf "  %6d s  in all (%d min)\n", s, (s + 30) / 60 }' "$GAPSCOPE_STEP_LOG"
}

# --- Disk space: fail before a big step, not in the middle of it -------------
# `need_space DIR GIB WHAT` stops with a message naming the directory, what
# is free there, what the step needs and the fix, when DIR's filesystem has
# less than GIB GiB free. A half-written torch install or target/ is harder
# to recover from than a clear stop beforehand.
need_space() { # DIR GIB WHAT
  local dir=$1 gib=$2 what=$3 free_kib
  mkdir -p "$dir"
  free_kib=$(df -Pk "$dir" | awk 'NR == 2 { print $4 }')
  if [ "$free_kib" -lt $((gib * 1024 * 1024)) ]; then
    printf '%s: %s needs about %s GiB free on the filesystem of %s, and %s GiB is free: free some space there (old clones'"'"' target/ directories, pip caches under ~/.cache/pip) and run it again\n' \
      "$(basename "$0")" "$what" "$gib" "$dir" "$((free_kib / 1024 / 1024))" >&2
    exit 1
  fi
}
