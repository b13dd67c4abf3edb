"""A PyTorch stand-in for the official LLaDA / dLLM-Cache generation loops, for timing only.

This is NOT the official code (which is not in this repository and must not be): it is an
equivalent loop written here, in plain PyTorch, so that `scripts/bench-vs-torch.sh` can time
the same work the official pipelines do on the same weights:

* uncached: a full forward over prompt + response at every step, logits for every position,
  greedy low-confidence remasking, semi-autoregressive blocks, one `get_num_transfer_tokens`
  style even split of each block's tokens over its steps;
* dLLM-Cache: per layer, keys, values, attention output and FFN output of the prompt and the
  response cached; the prompt recomputed every K_p forwards, the response every K_r; in
  between, V-verify: the response's fresh values are compared with the cached ones by cosine
  similarity and the rho fraction least similar rows are recomputed (queries, keys, attention,
  FFN) and scattered into the cache; layer 0 recomputed at every forward (the official code's
  behaviour since July 2025); logits for every position, as the official hook does.

It reads a LLaDA-architecture folder written by `bench_generate --save-model` (safetensors,
Hugging Face names) and prints one JSON line per run.
"""

import argparse
import json
import math
import os
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


def load(model_dir):
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    w = load_file(os.path.join(model_dir, "model.safetensors"))
    return cfg, {k: v.float().contiguous() for k, v in w.items()}


class Model:
    def __init__(self, cfg, w):
        self.d = cfg["d_model"]
        self.h = cfg["n_heads"]
        self.hd = self.d // self.h
        self.layers = cfg["n_layers"]
        self.eps = cfg.get("rms_norm_eps", 1e-5)
        self.theta = cfg.get("rope_theta", 500000.0)
        p = "model.transformer."
        self.wte = w[p + "wte.weight"]
        self.ln_f = w[p + "ln_f.weight"]
        self.head = w[p + "ff_out.weight"]
        self.blocks = []
        for i in range(self.layers):
            b = f"{p}blocks.{i}."
            self.blocks.append({n: w[b + n + ".weight"] for n in [
                "attn_norm", "q_proj", "k_proj", "v_proj", "attn_out",
                "ff_norm", "ff_proj", "up_proj", "ff_out"]})

    def norm(self, x, g):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)) * g

    def rope(self, x, pos):
        # x: [b, h, n, hd]; rotate-half rotary embedding at positions `pos`.
        half = self.hd // 2
        inv = 1.0 / (self.theta ** (torch.arange(0, half, dtype=torch.float32) / half))
        ang = pos.float()[:, None] * inv[None, :]
        cos, sin = ang.cos().repeat(1, 2), ang.sin().repeat(1, 2)
        x1, x2 = x[..., :half], x[..., half:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def heads(self, t):
        b, n, _ = t.shape
        return t.view(b, n, self.h, self.hd).transpose(1, 2)

    def ffn(self, blk, x):
        h = self.norm(x, blk["ff_norm"])
        return F.linear(F.silu(F.linear(h, blk["ff_proj"])) * F.linear(h, blk["up_proj"]), blk["ff_out"])

    def full_layer(self, blk, x, pos):
        h = self.norm(x, blk["attn_norm"])
        q = self.rope(self.heads(F.linear(h, blk["q_proj"])), pos)
        k = self.rope(self.heads(F.linear(h, blk["k_proj"])), pos)
        v = self.heads(F.linear(h, blk["v_proj"]))
        a = F.scaled_dot_product_attention(q, k, v)
        attn = F.linear(a.transpose(1, 2).reshape(x.shape), blk["attn_out"])
        x = x + attn
        ffn = self.ffn(blk, x)
        return x + ffn, (k, v, attn, ffn)

    def logits(self, x):
        return F.linear(self.norm(x, self.ln_f), self.head)

    def forward(self, tokens):
        x = self.wte[tokens]
        pos = torch.arange(tokens.shape[1])
        for blk in self.blocks:
            x, _ = self.full_layer(blk, x, pos)
        return self.logits(x)


class DllmCache:
    """Per-layer features of prompt [0, p) and response [p, n), refreshed as dLLM-Cache does."""

    def __init__(self, model, p, kp, kr, rho):
        self.m, self.p, self.kp, self.kr, self.rho = model, p, kp, kr, rho
        self.t = 0
        self.cache = [None] * model.layers

    def forward(self, tokens):
        m, p = self.m, self.p
        x = m.wte[tokens]
        n = tokens.shape[1]
        pos = torch.arange(n)
        prompt_due = self.t % self.kp == 0
        response_due = self.t % self.kr == 0
        for i, blk in enumerate(m.blocks):
            if i == 0 or self.cache[i] is None or (prompt_due and response_due):
                x, feats = m.full_layer(blk, x, pos)
                self.cache[i] = [f.clone() for f in feats]
                continue
            k, v, attn, ffn = self.cache[i]
            h = m.norm(x, blk["attn_norm"])
            if prompt_due:
                # Prompt rows recomputed against the whole sequence's keys.
                hp = h[:, :p]
                q = m.rope(m.heads(F.linear(hp, blk["q_proj"])), pos[:p])
                k[:, :, :p] = m.rope(m.heads(F.linear(hp, blk["k_proj"])), pos[:p])
                v[:, :, :p] = m.heads(F.linear(hp, blk["v_proj"]))
                a = F.scaled_dot_product_attention(q, k, v)
                attn[:, :p] = F.linear(a.transpose(1, 2).reshape(hp.shape), blk["attn_out"])
            hr = h[:, p:]
            fresh_v = F.linear(hr, blk["v_proj"])
            cached_v = v[:, :, p:].transpose(1, 2).reshape(fresh_v.shape)
            if response_due:
                rows = torch.arange(n - p)[None, :]
            else:
                sim = F.cosine_similarity(fresh_v, cached_v, dim=-1)
                count = int((n - p) * self.rho)
                rows = torch.topk(sim, count, dim=1, largest=False).indices
            v[:, :, p:] = m.heads(fresh_v)
            if rows.shape[1] > 0:
                sel = rows[0]
                hs = hr[:, sel]
                q = m.rope(m.heads(F.linear(hs, blk["q_proj"])), p + sel)
                k[:, :, p + sel] = m.rope(m.heads(F.linear(hs, blk["k_proj"])), p + sel)
                a = F.scaled_dot_product_attention(q, k, v)
                attn[:, p + sel] = F.linear(a.transpose(1, 2).reshape(hs.shape), blk["attn_out"])
            x = x + attn
            if prompt_due:
                ffn[:, :p] = m.ffn(blk, x[:, :p])
            if rows.shape[1] > 0:
                sel = rows[0]
                ffn[:, p + sel] = m.ffn(blk, x[:, p + sel])
            x = x + ffn
        self.t += 1
        return m.logits(x)


def generate(model, prompt, gen, steps, block, mask_id, cached):
    p = prompt.shape[1]
    x = torch.cat([prompt, torch.full((1, gen), mask_id, dtype=torch.long)], 1)
    blocks = gen // block
    per_block = steps // blocks
    runner = DllmCache(model, p, *cached) if cached else None
    forwards = 0
    for b in range(blocks):
        lo, hi = p + b * block, p + (b + 1) * block
        masked = (x[0, lo:hi] == mask_id).sum().item()
        base, extra = divmod(masked, per_block)
        quota = [base + (1 if s < extra else 0) for s in range(per_block)]
        for s in range(per_block):
            logits = runner.forward(x) if runner else model.forward(x)
            forwards += 1
            x0 = logits.argmax(-1)
            prob = F.softmax(logits.double(), -1).gather(-1, x0[..., None])[..., 0]
            conf = torch.full_like(prob, -math.inf)
            is_mask = x == mask_id
            conf[:, lo:hi] = torch.where(is_mask[:, lo:hi], prob[:, lo:hi], -math.inf)
            if quota[s] > 0:
                idx = torch.topk(conf[0], quota[s]).indices
                x[0, idx] = x0[0, idx]
    return x, forwards


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--gen-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--block-len", type=int, default=16)
    ap.add_argument("--policy", choices=["none", "dllm"], default="none")
    ap.add_argument("--kp", type=int, default=100)
    ap.add_argument("--kr", type=int, default=7)
    ap.add_argument("--rho", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg, w = load(a.model)
    model = Model(cfg, w)
    vocab = cfg["vocab_size"]
    mask_id, pad_id = cfg["mask_token_id"], cfg["pad_token_id"]
    # The synthetic prompt of bench_generate: the same tokens.
    toks = []
    for i in range(a.prompt_len):
        t = (i * 7919 + 17) % vocab
        toks.append((t + 1) % vocab if t in (mask_id, pad_id) else t)
    prompt = torch.tensor([toks], dtype=torch.long)
    cached = (a.kp, a.kr, a.rho) if a.policy == "dllm" else None
    with torch.inference_mode():
        for _ in range(2):  # warm-up: two full forwards
            model.forward(torch.cat([prompt, torch.full((1, a.gen_len), mask_id)], 1))
        start = time.perf_counter()
        x, forwards = generate(model, prompt, a.gen_len, a.steps, a.block_len, mask_id, cached)
        secs = time.perf_counter() - start
    print(json.dumps({
        "impl": "pytorch stand-in", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "policy": a.policy, "prompt_len": a.prompt_len, "gen_len": a.gen_len, "steps": a.steps,
        "block_len": a.block_len, "seconds": secs, "tokens_per_s": a.gen_len / secs,
        "forwards": forwards, "response": x[0, a.prompt_len:].tolist(),
    }))


if __name__ == "__main__":
    main()
