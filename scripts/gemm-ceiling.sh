#!/usr/bin/env bash
# The f32 matrix-product ceiling of this machine at a model's shapes: the crate's linear path
# and burn-flex's matmul (examples/gemm_ceiling.rs) beside numpy's matmul (OpenBLAS, from PyPI,
# in a throwaway virtual environment), one table with the CPU named.
#
#   scripts/gemm-ceiling.sh                       # the d512 benchmark model of docs/benchmarks.md
#   D_MODEL=4096 MLP=12288 VOCAB=126464 scripts/gemm-ceiling.sh
#
# Needs python3 with venv and network access to PyPI (once; VENV is reused if it exists).
set -euo pipefail
cd "$(dirname "$0")/.."
D_MODEL=${D_MODEL:-512}
MLP=${MLP:-1376}
VOCAB=${VOCAB:-32000}
GEN=${GEN:-64}
PROMPTS=${PROMPTS:-256,1024}
STEP_ROWS=${STEP_ROWS:-16,32,64}
VENV=${VENV:-${TMPDIR:-/tmp}/dllm-cache-ceiling-venv}

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check numpy threadpoolctl
fi
cargo build --release --example gemm_ceiling
OURS=$(target/release/examples/gemm_ceiling --d-model "$D_MODEL" --mlp "$MLP" --vocab "$VOCAB" \
  --gen-len "$GEN" --prompts "$PROMPTS" --step-rows "$STEP_ROWS" --bf16 --json)
OURS="$OURS" "$VENV/bin/python" - <<'PY'
import json, os, time
import numpy as np

ours = json.loads(os.environ["OURS"])
try:
    from threadpoolctl import threadpool_info  # optional, for the BLAS name
    blas = ", ".join(f"{i['internal_api']} {i.get('version', '')}" for i in threadpool_info())
except Exception:
    cfg = np.show_config(mode="dicts") if hasattr(np, "show_config") else None
    blas = cfg["Build Dependencies"]["blas"]["name"] if cfg else "unknown"

def best(m, k, n, target=0.3):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((k, n), dtype=np.float32)
    x @ w
    t0 = time.perf_counter(); x @ w; once = max(time.perf_counter() - t0, 1e-6)
    reps = max(1, min(10000, int(target / once)))
    out = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            x @ w
        out = min(out, (time.perf_counter() - t0) / reps)
    return 2.0 * m * k * n / out / 1e9

print(f"CPU: {ours['cpu']} ({ours['threads']} threads); numpy {np.__version__} with {blas}")
print("f32 GFLOP/s, best of 3 (bf16: the crate's path with bf16 weights, f32 compute)")
print("crate f32: weights stored [in, out] like a layer's; [out, in]: stored like the LM head on flex")
print(f"| shape | m | k | n | numpy | crate f32 | crate f32 [out, in] | burn-flex f32 | crate bf16 weights | crate / numpy |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
sq = best(2048, 2048, 2048)
for r in ours["shapes"]:
    ref = best(r["m"], r["k"], r["n"])
    bf = r["crate_bf16_weights_gflops"]
    print(f"| {r['shape']} | {r['m']} | {r['k']} | {r['n']} | {ref:.1f} | {r['crate_f32_gflops']:.1f} "
          f"| {r['crate_f32_out_in_gflops']:.1f} | {r['burn_flex_f32_gflops']:.1f} | {'-' if bf is None else f'{bf:.1f}'} "
          f"| {r['crate_f32_gflops'] / ref:.2f} |")
print(f"| numpy 2048^3 (square reference) | 2048 | 2048 | 2048 | {sq:.1f} | | | | | |")
PY
