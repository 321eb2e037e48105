#!/usr/bin/env bash
# Installs NVIDIA's perf_analyzer beside the project (bench/tools/), never into .venv: the project's
# tritonclient stays current, and only the 2.48.0 wheel still carries the binary
# (see ../shared/notes/triton-on-cpu.md). Idempotent: each step is skipped when its result exists.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
TOOLS="$HERE/tools"
PIP="${PIP:-$HERE/../.venv/bin/pip}"
BIN="$TOOLS/perf_analyzer"
CUDART="$TOOLS/cudart"
mkdir -p "$TOOLS"

if [ ! -x "$BIN" ]; then
  TMP="$(mktemp -d)"
  trap 'rm -rf "$TMP"' EXIT
  "$PIP" download --quiet --no-deps tritonclient==2.48.0 -d "$TMP" --only-binary=:all: \
    --platform manylinux1_x86_64 --python-version 3.11
  WHEEL="$(ls "$TMP"/tritonclient-2.48.0-*.whl | head -n1)"
  unzip -q -o -j "$WHEEL" 'tritonclient-2.48.0.data/data/bin/perf_analyzer' -d "$TOOLS"
  chmod +x "$BIN"
fi

if ! ldconfig -p | grep -q 'libb64.so.0d'; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq libb64-0d
fi

if [ ! -d "$CUDART/nvidia/cuda_runtime/lib" ]; then
  # libcudart.so.12 is loaded by the binary even without a GPU.
  "$PIP" install --quiet --target "$CUDART" nvidia-cuda-runtime-cu12
fi

LD_LIBRARY_PATH="$CUDART/nvidia/cuda_runtime/lib" "$BIN" --version >/dev/null 2>&1 \
  || LD_LIBRARY_PATH="$CUDART/nvidia/cuda_runtime/lib" "$BIN" --help >/dev/null
echo "perf_analyzer ready: $BIN (LD_LIBRARY_PATH=$CUDART/nvidia/cuda_runtime/lib)"
