#!/usr/bin/env bash
# Installs the reference serving stacks and is safe to run again (each step
# checks first): the Python wrapper's packages (torch, transformers, BentoML)
# in targets/.venv, llama.cpp's llama-server built once per machine into a
# cache outside the clone, and the tiny offline Llama (.cache/tiny-llama).
# Called by scripts/setup.sh, after targets/.venv exists.
set -euo pipefail
cd "$(dirname "$0")/../.."

. scripts/lib/common.sh
need_root "$0" "$@"
die() { printf 'stacks setup: %s\n' "$*" >&2; exit 1; }

venv=targets/.venv
py=$venv/bin/python
[ -x "$py" ] || die "$venv is missing: run scripts/setup.sh"

# --- The Python wrapper: BentoML + transformers on PyTorch -------------------
# torch 2.11 and transformers 4.57.6 are the versions llama.cpp's converter
# pins; PyPI has no CPU-only torch, so this is the CUDA build (~3 GB, it runs
# on CPU just the same). bentoml 1.4.x: the current line; fastapi==0.165.0 for its
# OpenAI-style routes; sentencepiece and numpy for the GGUF converter.
stack_pkgs="torch==2.11.0 transformers==4.57.6 tokenizers==0.22.1 safetensors==0.7.0 bentoml==1.4.40 fastapi==0.165.0 sentencepiece==0.2.1 numpy==2.2.6"
if ! "$py" -c "import torch, transformers, bentoml, fastapi, sentencepiece" 2>/dev/null; then
  need_space "$venv" 8 "installing the Python serving stack (torch: ~5 GiB installed, ~3 GiB of downloads)"
  step "installing the Python serving stack into $venv (torch ~3 GB, a few minutes once)"
  # --no-cache-dir: the wheels would double the disk this takes, and the
  # venv itself is what a second run finds.
  "$venv/bin/pip" install -q --disable-pip-version-check --no-cache-dir $stack_pkgs
fi

# --- The compiled engine: llama.cpp's llama-server ---------------------------
# Built from the llama-cpp-python sdist's vendored llama.cpp (PyPI is the one
# source reachable everywhere), statically linked, AVX2/FMA/F16C without
# -march=native so the binary runs on any x86-64-v3 host, no web UI, no
# OpenSSL. Several CPU-minutes, so it is cached outside the clone, keyed by
# version and flags; .cache/llama.cpp points at it.
llama_version=0.3.36
cmake_flags="-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF"
key=$(printf '%s %s' "$llama_version" "$cmake_flags" | sha256sum | cut -c1-12)
cache_root=${GAPSCOPE_CACHE:-/var/cache/gapscope}
engine=$cache_root/llama.cpp-$llama_version-$key
if [ ! -x "$engine/bin/llama-server" ]; then
  command -v cmake >/dev/null || die "cmake is missing: apt-get install cmake"
  step "building llama-server $llama_version into $engine (about 12 CPU-minutes, once per machine)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "$venv/bin/pip" download -q --disable-pip-version-check --no-deps --no-binary :all: \
    -d "$tmp" "llama-cpp-python==$llama_version"
  tar -xzf "$tmp"/llama_cpp_python-$llama_version.tar.gz -C "$tmp"
  src=$tmp/llama_cpp_python-$llama_version/vendor/llama.cpp
  # shellcheck disable=SC2086
  cmake -S "$src" -B "$tmp/build" $cmake_flags >"$tmp/cmake.log" 2>&1 \
    || { tail -30 "$tmp/cmake.log"; die "cmake configure of llama.cpp failed (log above)"; }
  cmake --build "$tmp/build" --target llama-server -j "$(nproc)" >"$tmp/build.log" 2>&1 \
    || { tail -30 "$tmp/build.log"; die "building llama-server failed (log above)"; }
  rm -rf "$engine.partial" && mkdir -p "$engine.partial/bin" "$engine.partial/convert"
  cp "$tmp/build/bin/llama-server" "$engine.partial/bin/"
  # The HF -> GGUF converter and its gguf package, same llama.cpp version.
  cp -r "$src/convert_hf_to_gguf.py" "$src/conversion" "$src/gguf-py" "$engine.partial/convert/"
  rm -rf "$engine" && mv "$engine.partial" "$engine"
  rm -rf "$tmp"
  trap - EXIT
fi
mkdir -p .cache
ln -sfn "$engine" .cache/llama.cpp

# --- The tiny Llama, built offline (seeded; rebuilt only when missing) -------
if ! "$py" targets/stacks/tiny_model.py --check .cache/tiny-llama 2>/dev/null; then
  step "building the tiny Llama and its tokenizer into .cache/tiny-llama"
  "$py" targets/stacks/tiny_model.py --out .cache/tiny-llama --converter .cache/llama.cpp/convert
fi
step_end
