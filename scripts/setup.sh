#!/usr/bin/env bash
# Installs whatever Gapscope needs on this machine and is missing: Debian
# packages, the nightly toolchain's rust-src, bpf-linker built against LLVM 22,
# tracefs, and the Python venv for the reference targets. Safe to run again:
# every step checks first and does nothing when its part is already there.
#
# As root it runs as it is; as another user it runs itself again with sudo
# (scripts/lib/common.sh). At the end it prints the time of every step that
# did work this time, so a first run on a fresh machine says where it went.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh
need_root "$0" "$@"

die() { printf 'setup: %s\n' "$*" >&2; exit 1; }

# One log of step times for this script and the stacks' setup it calls; the
# outermost caller (test.sh, demo.sh) may have opened it already.
if [ -z "${GAPSCOPE_STEP_LOG:-}" ]; then
  GAPSCOPE_STEP_LOG=$(mktemp)
  export GAPSCOPE_STEP_LOG
  trap 'rm -f "$GAPSCOPE_STEP_LOG"' EXIT
fi

# --- Debian packages ---------------------------------------------------------
# llvm-22-dev & co: bpf-linker links against the nightly's LLVM (22).
# prometheus: promtool for the exposition tests. bpftrace: the benchmark's
# comparison. util-linux: setpriv for the privilege test. python3.11 (Debian's,
# stripped) and gcc: the GIL tests and the offset check against CPython headers.
# openssl and curl: the web config tests. systemd: systemd-analyze for the
# unit's tests. dpkg-dev: the Debian package test. cmake and g++: llama.cpp's
# llama-server, the reference compiled engine. mmdebstrap and
# systemd-container: scripts/systemd-check boots a Debian tree under a real
# systemd. binutils: objdump, the probe-site tests' truth.
packages=(llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev prometheus bpftrace util-linux curl python3.11 gcc binutils openssl systemd dpkg-dev cmake g++ mmdebstrap systemd-container)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Rust: 1.95 for the workspace, a nightly with LLVM 22 for the BPF side ----
# A newcomer's rustup today installs a newer stable (whose new clippy lints
# fail `-D warnings`) and a newer nightly (whose LLVM writes bitcode
# bpf-linker's LLVM 22 cannot read). When the ones found are not those, the
# pinned ones are installed beside them and the scripts use them
# (pinned_toolchains in scripts/lib/common.sh; daemon/build.rs picks the same
# nightly for a plain `cargo build`).
command -v cargo >/dev/null || die "cargo not found: install Rust with rustup first (https://rustup.rs)"
command -v rustup >/dev/null || die "rustup not found: the BPF programs are built with a nightly toolchain that rustup manages; install Rust with rustup (https://rustup.rs)"
if ! has_toolchain "$GAPSCOPE_STABLE" && ! rustc -V | grep -q "^rustc ${GAPSCOPE_STABLE%.*}\."; then
  step "installing Rust $GAPSCOPE_STABLE (the workspace's toolchain; the default one is $(rustc -V | cut -d' ' -f2))"
  rustup toolchain install "$GAPSCOPE_STABLE" --profile minimal --component clippy,rustfmt
fi
nightly_llvm=none
has_toolchain nightly && nightly_llvm=$(rustc +nightly -vV | sed -n 's/^LLVM version: //p')
if [ "${nightly_llvm%%.*}" != 22 ] && ! has_toolchain "$GAPSCOPE_NIGHTLY"; then
  step "installing $GAPSCOPE_NIGHTLY (the BPF programs need a nightly with LLVM 22, bpf-linker's; nightly's LLVM: $nightly_llvm)"
  rustup toolchain install "$GAPSCOPE_NIGHTLY" --profile minimal --component rust-src
fi
pinned_toolchains
if ! rustup component list --toolchain "$GAPSCOPE_BPF_TOOLCHAIN" --installed | grep -q '^rust-src'; then
  step "adding rust-src to the $GAPSCOPE_BPF_TOOLCHAIN toolchain"
  rustup component add rust-src --toolchain "$GAPSCOPE_BPF_TOOLCHAIN"
fi

# --- bpf-linker, matching the nightly's LLVM 22 -------------------------------
if ! command -v bpf-linker >/dev/null; then
  step "building bpf-linker against LLVM 22 (several minutes, once per machine)"
  LLVM_PREFIX=/usr/lib/llvm-22 LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 \
    cargo install bpf-linker --no-default-features --features llvm-22
fi

# --- cargo-deb: the Debian package (daemon/Cargo.toml [package.metadata.deb]) --
cargo_deb_version=3.8.0
if ! cargo deb --version 2>/dev/null | grep -q "$cargo_deb_version"; then
  step "installing cargo-deb $cargo_deb_version (a few minutes, once per machine)"
  cargo install cargo-deb --version "$cargo_deb_version" --locked
fi

# --- tracefs ------------------------------------------------------------------
if [ ! -d /sys/kernel/tracing/events ] && [ ! -d /sys/kernel/debug/tracing/events ]; then
  step "mounting tracefs at /sys/kernel/tracing"
  mount -t tracefs nodev /sys/kernel/tracing
fi

# --- Python for the reference targets (pyenv's CPython 3.11, not stripped) ----
venv=targets/.venv
if [ ! -x "$venv/bin/python" ]; then
  py=""
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.11*/bin/python3.11 /root/.pyenv/versions/3.11*/bin/python3.11; do
    [ -x "$candidate" ] && { py=$candidate; break; }
  done
  [ -n "$py" ] || die "pyenv's CPython 3.11 not found (Debian's python3.11 is stripped of the symbols later probes need): pyenv install 3.11"
  step "creating $venv from $py"
  "$py" -m venv "$venv"
fi
# py-spy: the GIL benchmark's cross-check.
if [ ! -x "$venv/bin/py-spy" ]; then
  step "installing py-spy into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check py-spy==0.4.3
fi
# The third-party codecs the serialization probes find by default.
codecs="orjson==3.13.0 msgpack==1.2.4 pydantic-core==2.50.5 protobuf==7.36.2"
if ! "$venv/bin/python" -c "import orjson, msgpack, pydantic_core, google.protobuf" 2>/dev/null; then
  step "installing $codecs into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check $codecs
fi
# aiohttp: the Python client the load generator's benchmark compares against.
if ! "$venv/bin/python" -c "import aiohttp" 2>/dev/null; then
  step "installing aiohttp into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check aiohttp==3.13.2
fi

# --- CUPTI and NVML headers (no CUDA here): layout checks and stand-ins ------
# The real headers of three CUPTI releases, from NVIDIA's PyPI wheels,
# unpacked into .cache/cuda-headers/NAME/include (cupti-sys/tests/layout.rs),
# and their libcupti into NAME/lib (inject/tests/stand_down.rs).
headers=.cache/cuda-headers
fetch_headers() { # NAME WHEEL-SPEC...
  local name=$1; shift
  [ -f "$headers/$name/.done-with-lib" ] && return
  step "fetching CUDA headers $name ($*)"
  rm -rf "$headers/$name" && mkdir -p "$headers/$name/wheels" "$headers/$name/include"
  "$venv/bin/pip" download -q --disable-pip-version-check --no-deps -d "$headers/$name/wheels" "$@"
  "$venv/bin/python" - "$headers/$name" <<'PY'
import pathlib, sys, zipfile
out = pathlib.Path(sys.argv[1])
for wheel in (out / "wheels").glob("*.whl"):
    with zipfile.ZipFile(wheel) as z:
        for n in z.namelist():
            parts = n.split("/")
            if "include" in parts and not n.endswith("/"):
                rel = parts[parts.index("include") + 1:]
                dest = out / "include" / pathlib.Path(*rel)
            elif "lib" in parts and parts[-1].startswith("libcupti.so"):
                dest = out / "lib" / parts[-1]
            else:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(z.read(n))
PY
  rm -rf "$headers/$name/wheels"
  touch "$headers/$name/.done-with-lib"
}
fetch_headers cupti-12.0 nvidia-cuda-cupti-cu12==12.0.146 nvidia-cuda-runtime-cu12==12.9.79 nvidia-cuda-crt==13.5.37
fetch_headers cupti-12.9 nvidia-cuda-cupti-cu12==12.9.79 nvidia-cuda-runtime-cu12==12.9.79 nvidia-cuda-crt==13.5.37
fetch_headers cupti-13.5 nvidia-cuda-cupti==13.5.25 nvidia-cuda-runtime==13.5.37 nvidia-cuda-crt==13.5.37
# NVML's header (nvml.h), which the NVML stand-in (testkit/data/fake_nvml.c)
# is compiled against: the driver's ABI by construction.
fetch_headers nvml-12.9 nvidia-nvml-dev-cu12==12.9.79

# --- Tools for the deployment tests: kubernetes-validate (with jsonschema) ---
tools=.cache/tools-venv
if ! "$tools/bin/python" -c "import kubernetes_validate, jsonschema" 2>/dev/null; then
  step "installing kubernetes-validate into $tools"
  rm -rf "$tools"
  "$venv/bin/python" -m venv "$tools"
  "$tools/bin/pip" install -q --disable-pip-version-check kubernetes-validate==1.37.0
fi

# --- The reference serving stacks: BentoML, llama-server, the tiny Llama ----
step_end
bash targets/stacks/setup.sh

steps_report "setup: what this run installed, and how long each step took"
say "setup complete"
