#!/usr/bin/env bash
# GPU benchmark: a LLaDA-8B-shaped random model (d_model 4096, 32 layers, 32 heads, SwiGLU 12288,
# vocabulary 126464) in f16 at a GSM8K-like setting (prompt ~800 tokens, 256 tokens in 256 steps,
# blocks of 8), uncached and with dLLM-Cache 50/7/0.25, printing tokens/s for both.
#
#   scripts/gpu-bench.sh build   # on the development machine: builds the benchmark binary
#   scripts/gpu-bench.sh run     # on a machine with an NVIDIA GPU: runs it (no network needed)
#   scripts/gpu-bench.sh         # both
#
# The GPU path is burn's wgpu backend with its Vulkan (SPIR-V) compiler, cargo feature `vulkan`:
# it builds from the package registries alone. burn-cuda 0.22.1 cannot be built offline (its
# cubecl-llvm dependency downloads an LLVM bundle at build time, see docs/backends.md).
# The run needs the Vulkan loader (libvulkan.so.1) and the NVIDIA driver's Vulkan ICD.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-all}
FEATURES=${FEATURES:-vulkan}
DEVICE=${DEVICE:-vulkan}
DTYPE=${DTYPE:-f16}
PROMPT=${PROMPT:-800}
SHAPE=${SHAPE:-d_model=4096,layers=32,heads=32,mlp=12288,vocab=126464}
BIN=target/release/examples/bench_generate

if [ "$MODE" = build ] || [ "$MODE" = all ]; then
  cargo build --release --example bench_generate --no-default-features --features "flex,$FEATURES"
fi
if [ "$MODE" = run ] || [ "$MODE" = all ]; then
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu-bench: no NVIDIA GPU on this machine (nvidia-smi not found); nothing measured" >&2
    exit 0
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  for policy in none dllm; do
    "$BIN" --device "$DEVICE" --dtype "$DTYPE" --device-random --random "$SHAPE" \
      --prompt-len "$PROMPT" --gen-len 256 --steps 256 --block-len 8 \
      --policy "$policy" --kp 50 --kr 7 --rho 0.25 --repeat 1 --json
  done
fi
