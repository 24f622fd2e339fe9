"""Capture a Qwen3-30B-A3B-shaped prefill on one GPU, the way an engine runs a MoE prefill at EP1:
token-sorted routed experts through one grouped GEMM per projection (torch._grouped_mm, CUTLASS on
SM90), GQA attention through SDPA (causal, no math backend), logits for each prompt's last position.
A held-out row for tracegen (bench/data/heldout.toml `qwen3-30b-4l-h100-prefill`, pinned and predicted
before this ran) and a held-out trace for replay (tests/test_qwen3_prefill.py, pinned before).

    python3 bench/capture/capture_qwen3_prefill.py --out OUT_DIR

Shapes from Qwen3-30B-A3B's config.json: hidden 2,048, 32 query heads and 4 KV heads of 128 with
per-head RMSNorm on q and k, RoPE (theta 1e6), 128 experts top-8 (probabilities renormalised over the
8), expert FFN 768, no shared expert, vocabulary 151,936; 4 of its 48 layers; random BF16 weights.
Batch: 2 prompts of 4,096 tokens (8,192 tokens), no prefix cache.

`--compile`: each decoder layer through torch.compile (Inductor), the same model and inputs; names gain
-compiled (bench/data/heldout.toml `qwen3-30b-4l-*-prefill-compiled`, pinned before it ran).

Truth (OUT_DIR/qwen3-prefill-capture.json; -h200 before .json on an H200, and so the trace): the whole step (embedding, 4 layers, final norm, logits
of the 2 last positions, greedy pick) timed outside the profiler, median of 20 synchronised steps on
the host clock; also the tokens each expert got. Then 2 steps profiled (with_stack: nn.Module ranges)
into OUT_DIR/qwen3-prefill.json.gz."""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile, schedule

from capture_hf_decode import save, timed  # the trace written gzipped; median of 20 synchronised calls (us)

H, HEADS, KV_HEADS, HEAD_DIM = 2048, 32, 4, 128
EXPERTS, TOPK, FF, VOCAB, LAYERS = 128, 8, 768, 151936, 4
PROMPTS, PROMPT_LEN, STEPS, THETA, EPS = 2, 4096, 2, 1e6, 1e-6
BACKENDS = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-b, a), dim=-1) * sin


class Qwen3MoeAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(H, HEADS * HEAD_DIM, bias=False)
        self.k_proj = nn.Linear(H, KV_HEADS * HEAD_DIM, bias=False)
        self.v_proj = nn.Linear(H, KV_HEADS * HEAD_DIM, bias=False)
        self.o_proj = nn.Linear(HEADS * HEAD_DIM, H, bias=False)
        self.q_norm, self.k_norm = nn.RMSNorm(HEAD_DIM, eps=EPS), nn.RMSNorm(HEAD_DIM, eps=EPS)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        q = self.q_norm(self.q_proj(x).view(PROMPTS, PROMPT_LEN, HEADS, HEAD_DIM)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(PROMPTS, PROMPT_LEN, KV_HEADS, HEAD_DIM)).transpose(1, 2)
        v = self.v_proj(x).view(PROMPTS, PROMPT_LEN, KV_HEADS, HEAD_DIM).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        with sdpa_kernel(BACKENDS):
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.o_proj(a.transpose(1, 2).reshape(PROMPTS * PROMPT_LEN, HEADS * HEAD_DIM))


class Qwen3MoeSparseMoeBlock(nn.Module):
    """Routed experts as an engine runs them on one GPU: tokens sorted by expert, one grouped GEMM for
    gate and up together, SiLU-and-multiply, one grouped GEMM for down, weighted scatter back."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Linear(H, EXPERTS, bias=False)
        self.w13 = nn.Parameter(torch.randn(EXPERTS, 2 * FF, H) * H ** -0.5)      # [E, N, K]
        self.w2 = nn.Parameter(torch.randn(EXPERTS, H, FF) * FF ** -0.5)
        self.counts: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.gate(x).float(), dim=-1)
        w, idx = torch.topk(probs, TOPK, dim=-1)
        w = w / w.sum(-1, keepdim=True)
        flat = idx.flatten()
        order = torch.argsort(flat, stable=True)
        tok = order // TOPK
        counts = torch.bincount(flat, minlength=EXPERTS)
        offs = torch.cumsum(counts, 0).to(torch.int32)
        h = torch._grouped_mm(x[tok], self.w13.transpose(-2, -1), offs=offs)
        g, u = h.chunk(2, dim=-1)
        y = torch._grouped_mm(F.silu(g) * u, self.w2.transpose(-2, -1), offs=offs)
        y = y * w.flatten()[order].unsqueeze(-1).to(y.dtype)
        self.counts = counts
        return torch.zeros_like(x).index_add_(0, tok, y)


class Qwen3MoeDecoderLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.input_layernorm = nn.RMSNorm(H, eps=EPS)
        self.post_attention_layernorm = nn.RMSNorm(H, eps=EPS)
        self.self_attn = Qwen3MoeAttention()
        self.mlp = Qwen3MoeSparseMoeBlock()

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen3MoeForCausalLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, H)
        self.layers = nn.ModuleList(Qwen3MoeDecoderLayer() for _ in range(LAYERS))
        self.norm = nn.RMSNorm(H, eps=EPS)
        self.lm_head = nn.Linear(H, VOCAB, bias=False)
        inv = 1.0 / THETA ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float32) / HEAD_DIM)
        ang = torch.outer(torch.arange(PROMPT_LEN, dtype=torch.float32), inv)
        ang = torch.cat((ang, ang), dim=-1)
        self.register_buffer("cos", ang.cos(), persistent=False)
        self.register_buffer("sin", ang.sin(), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x, self.cos, self.sin)
        last = x.view(PROMPTS, PROMPT_LEN, H)[:, -1]          # logits of each prompt's last position
        return self.lm_head(self.norm(last)).argmax(-1)


def check_experts(block: Qwen3MoeSparseMoeBlock, x: torch.Tensor) -> float:
    """The grouped path against a plain per-expert loop on the same routing: max abs difference over
    the output's scale (a wrong offset or layout shows as O(1))."""
    probs = torch.softmax(block.gate(x).float(), dim=-1)
    w, idx = torch.topk(probs, TOPK, dim=-1)
    w = (w / w.sum(-1, keepdim=True)).to(x.dtype)
    ref = torch.zeros_like(x)
    for e in range(EXPERTS):
        rows, slot = torch.where(idx == e)
        if len(rows):
            g, u = (x[rows] @ block.w13[e].T).chunk(2, dim=-1)
            ref.index_add_(0, rows, (F.silu(g) * u) @ block.w2[e].T * w[rows, slot, None])
    got = block(x)
    return float((got - ref).abs().max() / ref.abs().max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "capture-out"))
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile each decoder layer (Inductor fuses the elementwise glue; graph breaks "
                         "run eager); files get -compiled in their names")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    assert torch.cuda.get_device_capability()[0] == 9, "torch._grouped_mm's CUTLASS path needs SM90 here"
    torch.manual_seed(0)
    model = Qwen3MoeForCausalLM().to("cuda").to(torch.bfloat16).eval()
    ids = torch.randint(1, VOCAB, (PROMPTS * PROMPT_LEN,), device="cuda")
    t0 = time.time()
    with torch.no_grad():
        x = torch.randn(PROMPTS * PROMPT_LEN, H, device="cuda", dtype=torch.bfloat16)
        rel_err = check_experts(model.layers[0].mlp, x)
        compile_s = 0.0
        if args.compile:
            for i, layer in enumerate(model.layers):
                model.layers[i] = torch.compile(layer)
            t1 = time.time()
            model(ids)                   # compiles (the 4 layers share one graph)
            torch.cuda.synchronize()
            compile_s = time.time() - t1
        step = lambda: model(ids)        # noqa: E731
        for _ in range(5):
            step()
        step_us = timed(step)
        first = getattr(model.layers[0], "_orig_mod", model.layers[0])
        counts = [int(c) for c in first.mlp.counts.tolist()]
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=True,
                     schedule=schedule(wait=0, warmup=1, active=STEPS, repeat=1)) as prof:
            for _ in range(STEPS + 1):
                step()
                torch.cuda.synchronize()
                prof.step()
        suffix = ("-compiled" if args.compile else "") + ("-h200" if "H200" in torch.cuda.get_device_name(0) else "")
        nbytes = save(prof, out, f"qwen3-prefill{suffix}")
    truth = {
        "env": {"torch": torch.__version__, "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(0),
                "seconds": time.time() - t0},
        "shape": {"hidden": H, "heads": HEADS, "kv_heads": KV_HEADS, "head_dim": HEAD_DIM, "experts": EXPERTS,
                  "top_k": TOPK, "moe_ffn": FF, "vocab": VOCAB, "layers": LAYERS, "prompts": PROMPTS,
                  "prompt_len": PROMPT_LEN, "dtype": "bf16"},
        "compiled": bool(args.compile), "compile_s": compile_s,
        "graph_breaks": int(sum(torch._dynamo.utils.counters["graph_break"].values())) if args.compile else 0,
        "step_us": step_us, "tokens_per_s": PROMPTS * PROMPT_LEN / (step_us * 1e-6),
        "grouped_vs_loop_rel_err": rel_err,
        "layer0_tokens_per_expert": {"min": min(counts), "max": max(counts), "mean": sum(counts) / len(counts)},
        "trace": {"file": f"qwen3-prefill{suffix}.json.gz", "bytes": nbytes, "steps": STEPS, "layers_per_step": LAYERS,
                  "microbatches": 1, "ranges": "nn.Module (with_stack)"},
    }
    (out / f"qwen3-prefill-capture{suffix}.json").write_text(json.dumps(truth, indent=1))
    print(json.dumps(truth, indent=1))


if __name__ == "__main__":
    main()
