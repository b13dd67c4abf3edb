#!/usr/bin/env bash
# GPU benchmark: a LLaDA-8B-shaped random model (d_model 4096, 32 layers, 32 heads, SwiGLU 12288,
# vocabulary 126464) in 16 bits at a GSM8K-like setting (prompt ~800 tokens, 256 tokens in 256
# steps, blocks of 32), for NoCache, dLLM-Cache 50/7/0.25, PrefixCache and DualCache (the last
# two also with threshold decoding at 0.9), printing one JSON line per run with tokens/s and
# the fraction of the card's 16-bit matmul peak that the counted FLOPs reached.
#
#   scripts/gpu-bench.sh build   # on the development machine: builds the benchmark binary
#   scripts/gpu-bench.sh run     # on a machine with an NVIDIA GPU: runs it (no network needed)
#   scripts/gpu-bench.sh         # both
#
# The GPU path is burn's wgpu backend with its Vulkan (SPIR-V) compiler, cargo feature `vulkan`:
# it builds from the package registries alone. burn-cuda 0.22.1 cannot be built offline (its
# cubecl-llvm dependency downloads an LLVM bundle at build time, see docs/backends.md); where it
# can be built, FEATURES=cuda DEVICE=cuda runs the same benchmark on it.
# The run needs the Vulkan loader (libvulkan.so.1) and the NVIDIA driver's Vulkan ICD.
#
# PEAK_TFLOPS overrides the dense 16-bit tensor-core peak looked up from the GPU's name below
# (datasheet figures without sparsity).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-all}
FEATURES=${FEATURES:-vulkan}
DEVICE=${DEVICE:-vulkan}
DTYPE=${DTYPE:-f16}
PROMPT=${PROMPT:-800}
GEN=${GEN:-256}
BLOCK=${BLOCK:-32}
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
  name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  if [ -z "${PEAK_TFLOPS:-}" ]; then
    case "$name" in
      *H200*|*H100*SXM*|*H100\ 80GB\ HBM3*) PEAK_TFLOPS=989 ;;
      *H100*) PEAK_TFLOPS=756 ;;
      *A100*) PEAK_TFLOPS=312 ;;
      *L40S*) PEAK_TFLOPS=362 ;;
      *L4*) PEAK_TFLOPS=121 ;;
      *4090*) PEAK_TFLOPS=165 ;;
      *) PEAK_TFLOPS=0 ;;
    esac
  fi
  echo "gpu-bench: $name, 16-bit peak ${PEAK_TFLOPS} TFLOP/s (0: unknown, set PEAK_TFLOPS)"
  run() {
    "$BIN" --device "$DEVICE" --dtype "$DTYPE" --device-random --random "$SHAPE" \
      --prompt-len "$PROMPT" --gen-len "$GEN" --steps "$GEN" --block-len "$BLOCK" \
      --kp 50 --kr 7 --rho 0.25 --repeat 1 --peak-tflops "$PEAK_TFLOPS" --json "$@"
  }
  run --policy none
  run --policy dllm
  run --policy prefix
  run --policy dual
  run --policy prefix --decode threshold:0.9
  run --policy dual --decode threshold:0.9
fi
