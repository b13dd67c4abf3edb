#!/usr/bin/env bash
# Measures generation under several cache policies with examples/bench_generate on a random
# LLaDA-shaped model, for several prompt lengths, in one run, and prints a markdown table of
# per-forward cost, FLOPs reduction and wall-clock speedup against no cache.
#
#   scripts/bench-table.sh                 # defaults below
#   PROMPTS="256 1024" REPEAT=2 scripts/bench-table.sh
#   POLICIES="none dllm:100:7 prefix dual" DECODE=schedule scripts/bench-table.sh
#   CARGO_ARGS="--no-default-features --features flex" scripts/bench-table.sh   # without x86-v4
#
# Needs python3 for formatting the JSON lines.
set -euo pipefail
cd "$(dirname "$0")/.."
PROMPTS=${PROMPTS:-"64 256 1024"}
REPEAT=${REPEAT:-1}
GEN=${GEN:-64}
STEPS=${STEPS:-64}
BLOCK=${BLOCK:-16}
MODEL=${MODEL:-"d_model=512,layers=8,heads=8,mlp=1376,vocab=32000"}
CARGO_ARGS=${CARGO_ARGS:-}
POLICIES=${POLICIES:-"none dllm:100:7 dllm:25:5 prefix dual"}
DECODE=${DECODE:-schedule}
EXTRA=${EXTRA:-}

cargo build --release --example bench_generate $CARGO_ARGS >&2
out=$(mktemp)
for p in $PROMPTS; do
  for pol in $POLICIES; do
    IFS=: read -r kind kp kr <<<"$pol"
    args=(--random "$MODEL" --prompt-len "$p" --gen-len "$GEN" --steps "$STEPS" --block-len "$BLOCK" --repeat "$REPEAT" --decode "$DECODE" --json)
    if [ "$kind" = dllm ]; then args+=(--policy dllm --kp "$kp" --kr "$kr" --rho 0.25); else args+=(--policy "$kind"); fi
    echo "prompt $p, $pol" >&2
    ./target/release/examples/bench_generate "${args[@]}" $EXTRA >>"$out"
  done
done
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
base = {r["prompt_len"]: r for r in rows if r["policy"] == "none"}
print(f"machine: {rows[0]['threads']} threads, backend {rows[0]['backend']}, model {rows[0]['model']}, "
      f"gen {rows[0]['gen_len']}, steps {rows[0]['steps']}, block {rows[0]['block_len']}, decode {rows[0]['decode']}")
print()
print("| prompt | policy | seconds | tokens/s | forwards | ms per forward | GFLOPs (paper) | GFLOPs (total) | FLOPs reduction (total) | wall-clock speedup | speedup / reduction |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    b = base[r["prompt_len"]]
    red = b["flops"]["total"] / r["flops"]["total"]
    sp = b["seconds"] / r["seconds"]
    print(f"| {r['prompt_len']} | {r['policy']} | {r['seconds']:.2f} | {r['tokens_per_s']:.2f} | {r['forwards']} | "
          f"{1000*r['seconds_per_forward']:.0f} | {r['flops']['paper']/1e9:.0f} | {r['flops']['total']/1e9:.0f} | "
          f"{red:.2f}x | {sp:.2f}x | {sp/red:.2f} |")
PY
rm -f "$out"
