"""Capture real single-GPU decode traces of a Hugging Face-style eager MoE model (Qwen2-MoE-style: GQA
attention over a KV cache, a sparse MoE block of 16 experts top-4 plus a gated shared expert), the way a
user's `generate` loop runs it, with no annotation of replay's own. A held-out corpus for the diagnosis:
what `replay analyze` must find on each file is written in tests/test_hf_decode.py and in the truth file
this script writes, before replay is run on any of them.

    python3 bench/capture/capture_hf_decode.py --out OUT_DIR

Variants (OUT_DIR/hf-decode-<variant>.json.gz), 16 sequences, 4 layers, 2 profiled decode steps each:
  hf        HF's expert loop: each expert finds its tokens with torch.where (a device-to-host sync per
            expert: 16 per layer), the KV cache grown with torch.cat (DynamicCache), and generate's
            stopping check (one sync per step); nn.Module ranges (with_stack=True)
  nosync    no host sync inside the step: every expert runs on every token, weighted by a routing
            matrix that is zero off the top-4 (more GPU work, no wait), a static KV cache read under
            a mask; nn.Module ranges. Its idle is the host's launch path
  graph     the nosync step captured once as a CUDA graph and replayed: no ranges
  compiled  the nosync model through torch.compile's default mode (Inductor's Triton kernels launched
            by its wrapper, no CUDA graphs): no ranges
  full      (--only full) the nosync step profiled with every recording option users turn on:
            record_shapes, profile_memory (memory instant events), with_flops, with_stack, with_modules
  altstream (--only altstream) the nosync step with each layer's shared expert on a side stream beside
            the routed experts (SGLang's alt_stream); nn.Module ranges

Outside the profiler, the nosync step is timed eagerly and as a graph replay (median of 20 steps,
synchronised, host clock): the GPU's share of idle that the host's launch path alone causes,
1 - graph / eager, is an independent truth for the eager capture (profiling only adds host time, so the
profiled idle share can only be larger). Writes OUT_DIR/hf-decode-capture.json (environment, shapes,
per-variant truth)."""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, schedule

from capture_hf_moe import EXPERTS, FF, H, HEADS, SHARED_FF, TOPK, Qwen2MoeMLP

B, KV_HEADS, HEAD_DIM, PROMPT, MAXLEN, LAYERS, STEPS = 16, 4, 128, 512, 1024, 4, 2


class Qwen2MoeAttention(nn.Module):
    """GQA decode attention: the HF path grows its cache with torch.cat; the static path writes one
    column of a preallocated cache and reads it under a mask (CUDA-graph friendly)."""

    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(H, HEADS * HEAD_DIM, bias=True)
        self.k_proj = nn.Linear(H, KV_HEADS * HEAD_DIM, bias=True)
        self.v_proj = nn.Linear(H, KV_HEADS * HEAD_DIM, bias=True)
        self.o_proj = nn.Linear(HEADS * HEAD_DIM, H, bias=False)

    def forward(self, x: torch.Tensor, cache: dict, i: int) -> torch.Tensor:
        q = self.q_proj(x).view(B, HEADS, 1, HEAD_DIM)
        k = self.k_proj(x).view(B, KV_HEADS, 1, HEAD_DIM)
        v = self.v_proj(x).view(B, KV_HEADS, 1, HEAD_DIM)
        if cache["static"]:
            pos = cache["pos"]                                   # a device tensor: no host value
            cache["k"][i].index_copy_(2, pos, k)
            cache["v"][i].index_copy_(2, pos, v)
            mask = (torch.arange(MAXLEN, device=x.device) <= pos).view(1, 1, 1, MAXLEN)
            a = F.scaled_dot_product_attention(q, cache["k"][i], cache["v"][i], attn_mask=mask, enable_gqa=True)
        else:
            cache["k"][i] = torch.cat([cache["k"][i], k], dim=2)
            cache["v"][i] = torch.cat([cache["v"][i], v], dim=2)
            a = F.scaled_dot_product_attention(q, cache["k"][i], cache["v"][i], enable_gqa=True)
        return self.o_proj(a.reshape(B, HEADS * HEAD_DIM))


class Qwen2MoeSparseMoeBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Linear(H, EXPERTS, bias=False)
        self.experts = nn.ModuleList(Qwen2MoeMLP(FF) for _ in range(EXPERTS))
        self.shared_expert = Qwen2MoeMLP(SHARED_FF)
        self.shared_expert_gate = nn.Linear(H, 1, bias=False)

    alt_stream = None       # (altstream) the shared expert on this side stream, as SGLang runs it

    def forward(self, x: torch.Tensor, sync: bool) -> torch.Tensor:
        if self.alt_stream is not None:
            self.alt_stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.alt_stream):
                shared = torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        weights = torch.softmax(self.gate(x).float(), dim=-1)
        weights, chosen = torch.topk(weights, TOPK, dim=-1)
        weights = (weights / weights.sum(-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(x)
        if sync:      # transformers' loop: torch.where waits for the GPU to know each expert's rows
            mask = F.one_hot(chosen, EXPERTS).permute(2, 1, 0)
            for e, expert in enumerate(self.experts):
                slot, rows = torch.where(mask[e])
                out.index_add_(0, rows, expert(x[rows]) * weights[rows, slot, None])
        else:         # every expert on every token, weighted by a routing matrix zero off the top-k
            route = torch.zeros(B, EXPERTS, device=x.device, dtype=x.dtype).scatter_(1, chosen, weights)
            for e, expert in enumerate(self.experts):
                out = out + expert(x) * route[:, e, None]
        if self.alt_stream is not None:
            torch.cuda.current_stream().wait_stream(self.alt_stream)
            return out + shared
        return out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)


class Qwen2MoeDecoderLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.input_layernorm, self.post_attention_layernorm = nn.RMSNorm(H), nn.RMSNorm(H)
        self.self_attn = Qwen2MoeAttention()
        self.mlp = Qwen2MoeSparseMoeBlock()

    def forward(self, x: torch.Tensor, cache: dict, i: int) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cache, i)
        return x + self.mlp(self.post_attention_layernorm(x), not cache["static"])


class Qwen2MoeForCausalLM(nn.Module):
    def __init__(self, vocab: int = 32000) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, H)
        self.layers = nn.ModuleList(Qwen2MoeDecoderLayer() for _ in range(LAYERS))
        self.norm = nn.RMSNorm(H)
        self.lm_head = nn.Linear(H, vocab, bias=False)

    def forward(self, ids: torch.Tensor, cache: dict) -> torch.Tensor:
        x = self.embed_tokens(ids)
        for i, layer in enumerate(self.layers):
            x = layer(x, cache, i)
        return self.lm_head(self.norm(x))


def new_cache(static: bool, dev: str) -> dict:
    if static:
        shape = (B, KV_HEADS, MAXLEN, HEAD_DIM)
        k = [torch.randn(shape, device=dev, dtype=torch.bfloat16) for _ in range(LAYERS)]
        v = [torch.randn(shape, device=dev, dtype=torch.bfloat16) for _ in range(LAYERS)]
        return {"static": True, "k": k, "v": v, "pos": torch.tensor([PROMPT], device=dev)}
    shape = (B, KV_HEADS, PROMPT, HEAD_DIM)
    return {"static": False, "k": [torch.randn(shape, device=dev, dtype=torch.bfloat16) for _ in range(LAYERS)],
            "v": [torch.randn(shape, device=dev, dtype=torch.bfloat16) for _ in range(LAYERS)]}


def decode_step(model: nn.Module, ids: torch.Tensor, cache: dict, stop_check: bool) -> torch.Tensor:
    """One generate step: logits, greedy pick, and (HF) the stopping check, a sync per step."""
    nxt = model(ids, cache).argmax(-1)
    if cache["static"]:
        cache["pos"].add_(1)
    if stop_check and bool((nxt == 0).all()):      # generate's `unfinished_sequences.max() == 0`
        raise RuntimeError("all sequences stopped")
    return nxt


def timed(fn, n: int = 20) -> float:
    """Median wall time of fn() in us, each call synchronised (host clock, no profiler)."""
    walls = []
    for _ in range(n):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        walls.append((time.perf_counter() - t) * 1e6)
    return statistics.median(walls)


def save(prof, out: Path, name: str) -> int:
    raw = out / f"{name}.json"
    prof.export_chrome_trace(str(raw))
    with open(raw, "rb") as f, gzip.open(str(raw) + ".gz", "wb", compresslevel=9) as g:
        shutil.copyfileobj(f, g)
    raw.unlink()
    return os.path.getsize(str(raw) + ".gz")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "capture-out"))
    ap.add_argument("--only", choices=["full", "altstream"],
                    help="capture this variant alone (its truth: hf-decode-capture-<variant>.json)")
    args = ap.parse_args()
    if args.only:
        return capture_one(Path(args.out), args.only)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = "cuda"
    torch.manual_seed(0)
    model = Qwen2MoeForCausalLM().to(dev).to(torch.bfloat16).eval()
    ids = torch.randint(1, 32000, (B,), device=dev)
    runs: dict[str, dict] = {}
    t0 = time.time()
    with torch.no_grad():
        # --- hf: transformers' eager loop, a sync per expert and one per step
        cache = new_cache(False, dev)
        for _ in range(3):
            ids = decode_step(model, ids, cache, True)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=True,
                     schedule=schedule(wait=0, warmup=1, active=STEPS, repeat=1)) as prof:
            for _ in range(STEPS + 1):
                ids = decode_step(model, ids, cache, True)
                prof.step()
        torch.cuda.synchronize()
        runs["hf"] = {"file": "hf-decode-hf.json.gz", "bytes": save(prof, out, "hf-decode-hf"),
                      "steps": STEPS, "layers_per_step": LAYERS, "microbatches": 1,
                      "syncs_per_step": EXPERTS * LAYERS + 1, "sync_ops": ["aten::nonzero", "aten::is_nonzero"],
                      "ranges": "nn.Module (with_stack)", "kv_cache": "torch.cat per step (DynamicCache)"}

        # --- nosync: the same model with no host sync inside the step
        cache = new_cache(True, dev)
        step = lambda: decode_step(model, ids, cache, False)      # noqa: E731
        for _ in range(3):
            step()
        eager_us = timed(step)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=True,
                     schedule=schedule(wait=0, warmup=1, active=STEPS, repeat=1)) as prof:
            for _ in range(STEPS + 1):
                step()
                torch.cuda.synchronize()       # the step's end (a generate loop reads its tokens here)
                prof.step()
        runs["nosync"] = {"file": "hf-decode-nosync.json.gz", "bytes": save(prof, out, "hf-decode-nosync"),
                          "steps": STEPS, "layers_per_step": LAYERS, "microbatches": 1, "syncs_per_step": 0,
                          "ranges": "nn.Module (with_stack)", "kv_cache": "static, masked",
                          "eager_step_us": eager_us}

        # --- graph: the nosync step as one CUDA graph
        static_ids = ids.clone()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                decode_step(model, static_ids, cache, False)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            decode_step(model, static_ids, cache, False)
        graph_us = timed(g.replay)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
                     schedule=schedule(wait=0, warmup=1, active=STEPS, repeat=1)) as prof:
            for _ in range(STEPS + 1):
                g.replay()
                torch.cuda.synchronize()
                prof.step()
        runs["graph"] = {"file": "hf-decode-graph.json.gz", "bytes": save(prof, out, "hf-decode-graph"),
                         "steps": STEPS, "microbatches": 1, "syncs_per_step": 0, "ranges": "none (ProfilerStep only)",
                         "graph_step_us": graph_us}
        runs["nosync"]["host_idle_share_unprofiled"] = 1.0 - graph_us / eager_us
        (out / "hf-decode-capture.json").write_text(json.dumps({"runs": runs}, indent=1))   # kept if compile fails

        # --- compiled: torch.compile's default mode (no CUDA graphs), last: it may fail on a new stack
        try:
            cmodel = torch.compile(model)
            cstep = lambda: decode_step(cmodel, ids, cache, False)      # noqa: E731
            t1 = time.time()
            for _ in range(3):
                cstep()
            torch.cuda.synchronize()
            compile_s = time.time() - t1
            compiled_us = timed(cstep)
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
                         schedule=schedule(wait=0, warmup=1, active=STEPS, repeat=1)) as prof:
                for _ in range(STEPS + 1):
                    cstep()
                    torch.cuda.synchronize()
                    prof.step()
            runs["compiled"] = {"file": "hf-decode-compiled.json.gz", "bytes": save(prof, out, "hf-decode-compiled"),
                                "steps": STEPS, "microbatches": 1, "syncs_per_step": 0,
                                "ranges": "none (ProfilerStep only)", "compiled_step_us": compiled_us,
                                "compile_s": compile_s}
        except Exception as exc:       # noqa: BLE001 - the other captures stand without it
            runs["compiled_error"] = f"{type(exc).__name__}: {exc}"[:500]
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(0),
           "shape": {"batch": B, "hidden": H, "heads": HEADS, "kv_heads": KV_HEADS, "head_dim": HEAD_DIM,
                     "prompt": PROMPT, "max_len": MAXLEN, "layers": LAYERS, "experts": EXPERTS, "top_k": TOPK,
                     "ffn": FF, "shared_ffn": SHARED_FF, "dtype": "bf16"},
           "seconds": time.time() - t0}
    (out / "hf-decode-capture.json").write_text(json.dumps({"env": env, "runs": runs}, indent=1))
    print(json.dumps({"env": env, "runs": runs}, indent=1))


ONE = {"full": ("record_shapes, profile_memory, with_flops, with_stack, with_modules",
                 "nn.Module (with_stack, with_modules)"),
       "altstream": ("with_stack; each layer's shared expert on a side stream", "nn.Module (with_stack)")}


def capture_one(out: Path, variant: str) -> None:
    """One variant of the nosync step alone (see the module's docstring)."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = Qwen2MoeForCausalLM().to("cuda").to(torch.bfloat16).eval()
    if variant == "altstream":
        side = torch.cuda.Stream()
        for layer in model.layers:
            layer.mlp.alt_stream = side
    ids = torch.randint(1, 32000, (B,), device="cuda")
    full = variant == "full"
    with torch.no_grad():
        cache = new_cache(True, "cuda")
        for _ in range(3):
            decode_step(model, ids, cache, False)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=full,
                     profile_memory=full, with_flops=full, with_stack=True, with_modules=full,
                     schedule=schedule(wait=0, warmup=1, active=STEPS, repeat=1)) as prof:
            for _ in range(STEPS + 1):
                decode_step(model, ids, cache, False)
                torch.cuda.synchronize()
                prof.step()
    name = f"hf-decode-{variant}"
    run = {"file": f"{name}.json.gz", "bytes": save(prof, out, name), "steps": STEPS,
           "layers_per_step": LAYERS, "microbatches": 1, "syncs_per_step": 0, "ranges": ONE[variant][1],
           "options": ONE[variant][0]}
    (out / f"hf-decode-capture-{variant}.json").write_text(json.dumps({"runs": {variant: run}}, indent=1))
    print(json.dumps(run, indent=1))


if __name__ == "__main__":
    main()
