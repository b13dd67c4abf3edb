#!/usr/bin/env bash
# This crate's generation beside a PyTorch stand-in of the official pipelines, on the same
# random LLaDA-shaped weights, interleaved and repeated, in one table with ratios.
#
#   scripts/bench-vs-torch.sh             # d512 model, prompts 256 and 1024, 2 rounds
#   PROMPTS=256 ROUNDS=1 scripts/bench-vs-torch.sh
#
# The PyTorch side is scripts/torch_standin.py: an equivalent loop written in this repository
# (full forward per step uncached; dLLM-Cache with V-verify), NOT the official code, which is
# not in this repository. It installs PyTorch from PyPI into a throwaway virtual environment
# (VENV, reused if present; about 4 GB with the CUDA libraries PyPI's torch wheel requires,
# though everything runs on the CPU). Both sides use every core (torch's default threads, the
# crate's rayon pool). Settings: batch 1, gen 64, steps 64, block 16, dLLM-Cache 100/7/0.25.
# "same tokens" says whether both sides generated the same response in every round: the
# stand-in computes the same function, so on a random model they agree token for token.
set -euo pipefail
cd "$(dirname "$0")/.."
SHAPE=${SHAPE:-d_model=512,layers=8,heads=8,mlp=1376,vocab=32000}
PROMPTS=${PROMPTS:-256 1024}
ROUNDS=${ROUNDS:-2}
VENV=${VENV:-${TMPDIR:-/tmp}/dllm-cache-torch-venv}
MODEL=${MODEL_DIR:-${TMPDIR:-/tmp}/dllm-cache-bench-model}
BIN=target/release/examples/bench_generate

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, safetensors" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check torch safetensors numpy
fi
cargo build --release --example bench_generate
"$BIN" --random "$SHAPE" --save-model "$MODEL" >/dev/null
common=(--gen-len 64 --steps 64 --block-len 16 --kp 100 --kr 7 --rho 0.25)
out=$(mktemp)
for round in $(seq 1 "$ROUNDS"); do
  for prompt in $PROMPTS; do
    for policy in none dllm; do
      "$VENV/bin/python" scripts/torch_standin.py --model "$MODEL" --prompt-len "$prompt" \
        --policy "$policy" "${common[@]}" | sed "s/^/torch $round /" >>"$out"
      "$BIN" --model "$MODEL" --prompt-len "$prompt" --policy "$policy" "${common[@]}" \
        --repeat 1 --warmup 0 --json | sed "s/^/crate $round /" >>"$out"
    done
  done
done
"$VENV/bin/python" - "$out" <<'PY'
import json, sys, collections, platform
rows = collections.defaultdict(list)
responses = collections.defaultdict(set)
torch_version = None
for line in open(sys.argv[1]):
    impl, rnd, js = line.split(" ", 2)
    j = json.loads(js)
    policy = "none" if j["policy"] == "none" else "dllm"
    rows[(j["prompt_len"], policy, impl)].append(j["seconds"])
    responses[(j["prompt_len"], policy)].add(tuple(j["response"]))
    torch_version = j.get("torch", torch_version)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
print(f"CPU: {cpu}; torch {torch_version} (stand-in loop, not the official code)")
print("| prompt | policy | PyTorch stand-in s | this crate s | crate / PyTorch tokens/s | same tokens |")
print("|---:|---|---|---|---:|---|")
for prompt in sorted({k[0] for k in rows}):
    for policy in ["none", "dllm"]:
        t, c = rows[(prompt, policy, "torch")], rows[(prompt, policy, "crate")]
        if not t or not c:
            continue
        ratio = (sum(t) / len(t)) / (sum(c) / len(c))
        fmt = lambda v: ", ".join(f"{x:.2f}" for x in v)
        same = "yes" if len(responses[(prompt, policy)]) == 1 else "no"
        print(f"| {prompt} | {policy} | {fmt(t)} | {fmt(c)} | {ratio:.2f}x | {same} |")
PY
rm -f "$out"
