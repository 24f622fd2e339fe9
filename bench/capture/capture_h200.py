"""Capture the diagnosis and structure corpus on one GPU (run on the lent H200).

    python3 bench/capture/capture_h200.py --out OUT_DIR [--quick] [--device cpu]

Every file is a real torch.profiler (Kineto) trace, gzipped. Shapes are DeepSeek-V3's (hidden 7168,
MLA with 128 heads, 2048-wide experts), all BF16, plain PyTorch ops: nothing here is tuned to what
`replay` expects. `capture.json` holds the environment and, per file, the truth the tests compare
`replay` against (what was run: layers, steps, micro-batches, syncs, host pauses).

Diagnosis (why compute idles):
  decode-eager      12 decode layers, batch 32, KV length 4096, eager: host overhead per op
  decode-graph      the same step captured once as a CUDA graph and replayed
  decode-compiled   the same step through torch.compile(mode="reduce-overhead")
  decode-eager-b256 the eager stack at batch 256 (held out: captured after the diagnosis was built)
  decode-item       eager with one `.item()` per layer (a real device-to-host sync)
  prefill-pause     6 prefill layers, 1024 tokens, with ~2 ms of Python work between layers
                    (outside any op); the pause intervals are recorded on the host clock too
Structure (annotation styles; 4 MoE layers, 2 steps; two micro-batches where the style has them,
a second stream running host copies as the stand-in all-to-all, as bench/capture/capture_h100.py):
  style-slash       ranges `layer<l>/mb<m>/<STAGE>`, step ranges `forward_step`, no ProfilerStep
  style-mbn         ranges `mb<m>_attn|dispatch|experts|combine` (no layer number), ProfilerStep#
  style-sglang      SGLang's operations ranges (SGLANG_OPERATIONS_ENABLE_PROFILE=1): stage ranges
                    a<k>/b<k> holding op ranges (prepare, core, dispatch_a, experts, combine_b, ...)
  style-module      nn.Module ranges from with_stack=True (`nn.Module: DeepseekV2DecoderLayer_<i>`),
                    one micro-batch, step ranges `execute_model`
  style-none        no ranges at all and no ProfilerStep: two steps separated by a synchronize
Kernel sweep:
  gqa-decode.json   GQA decode attention (SDPA, flash backend; query heads of one KV head packed
                    as the query length, which reads the KV cache once), batch x KV length x heads,
                    timed with CUDA events (median of 10)
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function, schedule

BF16 = torch.bfloat16
H, QL, KVL, ROPE, NOPE, VD, HEADS, MI, TOPK, NROUTED = 7168, 1536, 512, 64, 128, 128, 128, 2048, 8, 256


def cfg(quick: bool) -> dict:
    if quick:       # a smoke run (CPU): tiny shapes, same code paths
        return dict(H=256, QL=64, KVL=32, ROPE=16, NOPE=16, VD=16, HEADS=4, MI=64, E=4, L=64, B=4, layers=3,
                    tokens=64, steps=2)
    return dict(H=H, QL=QL, KVL=KVL, ROPE=ROPE, NOPE=NOPE, VD=VD, HEADS=HEADS, MI=MI, E=8, L=4096, B=32,
                layers=12, tokens=1024, steps=3)


# ----------------------------------------------------------------------------- one MoE layer, plain ops
class Weights:
    """One layer's weights (shared by every layer: timing, not numerics, is the point)."""

    def __init__(self, c: dict, dev: str):
        r = lambda *s: (torch.randn(*s, device=dev, dtype=BF16) * 0.02)  # noqa: E731
        h, d = c["HEADS"], c["NOPE"] + c["ROPE"]
        self.c = c
        self.qa, self.qb = r(c["QL"], c["H"]), r(h * d, c["QL"])
        self.kva = r(c["KVL"] + c["ROPE"], c["H"])
        self.uk, self.uv = r(h, c["NOPE"], c["KVL"]), r(h, c["KVL"], c["VD"])
        self.o = r(c["H"], h * c["VD"])
        self.kvb = r(h * (c["NOPE"] + c["VD"]), c["KVL"])
        self.gate = r(NROUTED if c["H"] == H else 16, c["H"])
        self.sup, self.sdown = r(2 * c["MI"], c["H"]), r(c["H"], c["MI"])
        self.eup, self.edown = r(c["E"], c["H"], 2 * c["MI"]), r(c["E"], c["MI"], c["H"])
        self.n1 = torch.ones(c["H"], device=dev, dtype=BF16)
        self.n2 = torch.ones(c["QL"], device=dev, dtype=BF16)


def rmsnorm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype) * w


def rope(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1) * 0.7 + x * 0.7


def attention_decode(w: Weights, h: torch.Tensor, cache: torch.Tensor, write: bool = True) -> torch.Tensor:
    """Absorbed MLA over the latent cache (B, L, KVL + ROPE); `write`: store this token's latent in place
    (torch.compile's CUDA graphs refuse a mutated input, so the compiled variant leaves it out)."""
    c, b = w.c, h.shape[0]
    q = (rmsnorm(h @ w.qa.t(), w.n2) @ w.qb.t()).view(b, c["HEADS"], c["NOPE"] + c["ROPE"])
    q_nope, q_pe = q.split([c["NOPE"], c["ROPE"]], dim=-1)
    q_abs = torch.bmm(q_nope.transpose(0, 1), w.uk).transpose(0, 1)              # (B, heads, KVL)
    kv = h @ w.kva.t()
    if write:
        cache[:, -1].copy_(kv)                                                    # this token's latent
    qq = torch.cat((q_abs, rope(q_pe)), dim=-1)
    s = torch.bmm(qq, cache.transpose(1, 2)) * (1.0 / (c["NOPE"] + c["ROPE"]) ** 0.5)
    p = torch.softmax(s.float(), dim=-1).to(BF16)
    o = torch.bmm(p, cache[..., : c["KVL"]])                                      # (B, heads, KVL)
    o = torch.bmm(o.transpose(0, 1), w.uv).transpose(0, 1).reshape(b, -1)
    return o @ w.o.t()


def attention_prefill(w: Weights, h: torch.Tensor) -> torch.Tensor:
    c, t = w.c, h.shape[0]
    q = (rmsnorm(h @ w.qa.t(), w.n2) @ w.qb.t()).view(t, c["HEADS"], -1)
    lat = h @ w.kva.t()
    kv = (lat[:, : c["KVL"]] @ w.kvb.t()).view(t, c["HEADS"], -1)
    k_nope, v = kv.split([c["NOPE"], c["VD"]], dim=-1)
    k = torch.cat((k_nope, rope(lat[:, None, c["KVL"]:]).expand(-1, c["HEADS"], -1)), dim=-1)
    o = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                       is_causal=True)
    return o[0].transpose(0, 1).reshape(t, -1) @ w.o.t()


def route(w: Weights, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = h @ w.gate.t()
    scores = torch.sigmoid(logits.float())
    top_w, top_i = torch.topk(scores, TOPK if w.c["H"] == H else 2, dim=-1)
    return top_w / top_w.sum(-1, keepdim=True), top_i


def experts(w: Weights, h: torch.Tensor, top_w: torch.Tensor, top_i: torch.Tensor) -> torch.Tensor:
    """The local experts of an EP rank in the masked layout (every local expert over every row, weighted by
    the routing): one batched GEMM up, SwiGLU, one down, the weighted sum."""
    e = w.c["E"]
    mine = (top_i[..., None] == torch.arange(e, device=h.device)).to(top_w.dtype)          # (T, k, E)
    gate = (mine * top_w[..., None]).sum(1).to(BF16)                                         # (T, E)
    up = torch.bmm(h[None].expand(e, -1, -1), w.eup)                                        # (E, T, 2 MI)
    g, u = up.chunk(2, dim=-1)
    down = torch.bmm(F.silu(g) * u, w.edown)                                                # (E, T, H)
    return (down * gate.t()[..., None]).sum(0)


def shared(w: Weights, h: torch.Tensor) -> torch.Tensor:
    g, u = (h @ w.sup.t()).chunk(2, dim=-1)
    return (F.silu(g) * u) @ w.sdown.t()


def decode_layer(w: Weights, x: torch.Tensor, cache: torch.Tensor, sync: bool = False,
                 write: bool = True) -> torch.Tensor:
    x = x + attention_decode(w, rmsnorm(x, w.n1), cache, write)
    h = rmsnorm(x, w.n1)
    top_w, top_i = route(w, h)
    if sync:        # a real device-to-host sync: how many of this batch's picks land on local experts
        w.local_picks = int((top_i < w.c["E"]).sum().item())
    return x + shared(w, h) + experts(w, h, top_w, top_i)


def prefill_layer(w: Weights, x: torch.Tensor) -> torch.Tensor:
    x = x + attention_prefill(w, rmsnorm(x, w.n1))
    h = rmsnorm(x, w.n1)
    top_w, top_i = route(w, h)
    return x + shared(w, h) + experts(w, h, top_w, top_i)


# ----------------------------------------------------------------------------- helpers
def sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


def activities(dev: str) -> list:
    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev == "cuda" else [])


def export(prof, path: Path) -> int:
    tmp = path.with_suffix("")
    prof.export_chrome_trace(str(tmp))
    with open(tmp, "rb") as f, gzip.open(path, "wb", compresslevel=9) as g:
        shutil.copyfileobj(f, g)
    tmp.unlink()
    return path.stat().st_size


def stepped(dev: str, steps: int, **kw):
    """A profiler whose steps are ProfilerStep#1..steps (one warm-up step, left out)."""
    return profile(activities=activities(dev), schedule=schedule(wait=0, warmup=1, active=steps, repeat=1), **kw)


# ----------------------------------------------------------------------------- diagnosis corpus
def run_decode(out: Path, c: dict, dev: str, variant: str, suffix: str = "") -> dict:
    """12 decode layers of a DeepSeek-V3-shaped stack; `variant`: eager | graph | compiled | item;
    `suffix` names a variant of the shapes (c) in the file name."""
    w = Weights(c, dev)
    caches = [torch.randn(c["B"], c["L"], c["KVL"] + c["ROPE"], device=dev, dtype=BF16) * 0.1
              for _ in range(c["layers"])]
    x0 = torch.randn(c["B"], c["H"], device=dev, dtype=BF16)

    def step(x):
        for cache in caches:
            x = decode_layer(w, x, cache, sync=variant == "item", write=variant != "compiled")
        return x

    fn = step
    if variant == "graph":
        static_in = x0.clone()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                step(static_in)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            static_out = step(static_in)

        def fn(x):                  # noqa: F811 - the replay stands in for the step
            static_in.copy_(x)
            g.replay()
            return static_out
    elif variant == "compiled":
        fn = torch.compile(step, mode="reduce-overhead", fullgraph=False)
    t_compile = time.perf_counter()
    for _ in range(3):              # warm-up (cuBLAS heuristics, compile, graph recording)
        fn(x0)
        if variant == "compiled":
            torch.compiler.cudagraph_mark_step_begin()
    sync(dev)
    t_compile = time.perf_counter() - t_compile
    walls = []
    with stepped(dev, c["steps"]) as prof:
        for _ in range(c["steps"] + 1):
            t0 = time.perf_counter()
            with record_function("decode_step"):
                if variant == "compiled":
                    torch.compiler.cudagraph_mark_step_begin()
                fn(x0)
            sync(dev)
            walls.append((time.perf_counter() - t0) * 1e6)
            prof.step()
    size = export(prof, out / f"decode-{variant}{suffix}.json.gz")
    return {"file": f"decode-{variant}{suffix}.json.gz", "variant": variant, "layers": c["layers"], "batch": c["B"],
            "kv_len": c["L"], "profiled_steps": c["steps"], "syncs_per_step": c["layers"] if variant == "item" else 0, "kv_write": variant != "compiled",
            "step_wall_us": walls[1:], "warmup_s": t_compile, "bytes": size}


def busy_python(seconds: float) -> None:
    """Python work on the launching thread, outside any op (what a scheduler or a tokenizer does)."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1


def run_prefill_pause(out: Path, c: dict, dev: str, pause_s: float = 0.002) -> dict:
    w = Weights(c, dev)
    x0 = torch.randn(c["tokens"], c["H"], device=dev, dtype=BF16)
    layers = 6

    def step(x, pauses=None):
        for i in range(layers):
            with record_function(f"layer_{i}"):
                x = prefill_layer(w, x)
            if i < layers - 1:
                a = time.time_ns()
                busy_python(pause_s)
                if pauses is not None:
                    pauses.append((a, time.time_ns()))
        return x

    for _ in range(2):
        step(x0)
    sync(dev)
    pauses: list = []
    with stepped(dev, c["steps"]) as prof:
        for i in range(c["steps"] + 1):
            with record_function("prefill_step"):
                step(x0, pauses if i > 0 else None)
            sync(dev)
            prof.step()
    size = export(prof, out / "prefill-pause.json.gz")
    return {"file": "prefill-pause.json.gz", "layers": layers, "tokens": c["tokens"], "profiled_steps": c["steps"],
            "pause_target_us": pause_s * 1e6, "pauses_per_step": layers - 1,
            "pauses_epoch_ns": pauses, "pause_total_us": sum(b - a for a, b in pauses) / 1e3, "bytes": size}


# ----------------------------------------------------------------------------- structure corpus
class Comm:
    """The stand-in all-to-all on a second stream: dispatch = device-to-host copy, combine = host-to-device."""

    def __init__(self, dev: str, nbytes: int):
        self.dev = dev
        self.stream = torch.cuda.Stream() if dev == "cuda" else None
        self.d = torch.randint(0, 255, (nbytes,), device=dev, dtype=torch.uint8)
        self.h = torch.empty(nbytes, dtype=torch.uint8, pin_memory=dev == "cuda")

    def run(self, kind: str, after: list) -> object:
        if self.stream is None:
            (self.h.copy_(self.d) if kind == "dispatch" else self.d.copy_(self.h))
            return None
        with torch.cuda.stream(self.stream):
            for ev in after:
                self.stream.wait_event(ev)
            if kind == "dispatch":
                self.h.copy_(self.d, non_blocking=True)
            else:
                self.d.copy_(self.h, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record(self.stream)
        return ev

    def mark(self) -> object:
        if self.stream is None:
            return None
        ev = torch.cuda.Event()
        ev.record(torch.cuda.current_stream())
        return ev


def _wait(dev: str, ev) -> None:
    if dev == "cuda" and ev is not None:
        torch.cuda.current_stream().wait_event(ev)


STAGES = ("ATTN", "DISPATCH", "MLP", "COMBINE")


def tbo_layer(w: Weights, comm: Comm, xs: list, dev: str, name) -> list:
    """One MoE layer over two micro-batches, interleaved as two-batch overlap does: attention(0),
    dispatch(0) || attention(1), dispatch(1) || experts(0), combine(0) || experts(1), combine(1).
    `name(mb, stage)` gives the range name (None: no range)."""
    def rng(mb, stage):
        n = name(mb, stage)
        return record_function(n) if n else _Null()

    hs, tops, evs = [None, None], [None, None], [None, None]
    for mb in (0, 1):
        with rng(mb, "ATTN"):
            xs[mb] = xs[mb] + attention_prefill(w, rmsnorm(xs[mb], w.n1))
            hs[mb] = rmsnorm(xs[mb], w.n1)
            tops[mb] = route(w, hs[mb])
        with rng(mb, "DISPATCH"):
            evs[mb] = comm.run("dispatch", [comm.mark()])
    for mb in (0, 1):
        with rng(mb, "MLP"):
            _wait(dev, evs[mb])
            y = shared(w, hs[mb]) + experts(w, hs[mb], *tops[mb])
        with rng(mb, "COMBINE"):
            evs[mb] = comm.run("combine", [comm.mark()])
        _wait(dev, evs[mb])
        xs[mb] = xs[mb] + y
    return xs


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


SGLANG_OPS = {"ATTN": ("comm_prepare_attn", "prepare", "core", "comm_prepare_mlp", "gate", "select_experts"),
              "DISPATCH": ("dispatch_a", "dispatch_b"), "MLP": ("experts", "shared_experts"),
              "COMBINE": ("combine_a", "combine_b", "output", "comm_postprocess_layer")}


def run_style(out: Path, c: dict, dev: str, style: str) -> dict:
    """4 MoE layers x 2 steps in one annotation style; returns the truth of what ran."""
    w = Weights(c, dev)
    toks = c["tokens"] // 2
    comm = Comm(dev, (8 << 20) if c["H"] == H else 4096)
    nl, steps = 4, 2
    xs0 = [torch.randn(toks, c["H"], device=dev, dtype=BF16) for _ in range(2)]
    names = {
        "slash": lambda layer: (lambda mb, st: f"layer{layer}/mb{mb}/{st}"),
        "mbn": lambda layer: (lambda mb, st: f"mb{mb}_{ {'ATTN': 'attn', 'DISPATCH': 'dispatch', 'MLP': 'experts', 'COMBINE': 'combine'}[st]}"),
        "none": lambda layer: (lambda mb, st: None),
    }

    if style == "module":
        return _run_module_style(out, c, dev, w, nl, steps)
    if style == "sglang":
        return _run_sglang_style(out, c, dev, w, comm, nl, steps, xs0)

    def one_step():
        xs = list(xs0)
        for layer in range(nl):
            xs = tbo_layer(w, comm, xs, dev, names[style](layer))
        return xs

    one_step()
    sync(dev)
    step_name = {"slash": "forward_step"}.get(style)
    if style == "mbn":
        prof_cm = stepped(dev, steps)
    else:
        prof_cm = profile(activities=activities(dev))
    with prof_cm as prof:
        for i in range(steps + (1 if style == "mbn" else 0)):
            with (record_function(step_name) if step_name else _Null()):
                one_step()
            sync(dev)
            if style == "none":
                time.sleep(0.005)       # the host between two steps
            if style == "mbn":
                prof.step()
    size = export(prof, out / f"style-{style}.json.gz")
    return {"file": f"style-{style}.json.gz", "style": style, "steps": steps, "layers_per_step": nl,
            "microbatches": 2, "stages": list(STAGES), "step_ranges": step_name or ("ProfilerStep#" if style == "mbn"
                                                                                    else None), "bytes": size}


def _run_sglang_style(out, c, dev, w, comm, nl, steps, xs0) -> dict:
    """SGLang's operations executor with its profile ranges: stage ranges a<k>/b<k> (k counts stages over
    the whole forward), op ranges inside them named after the operation (op_ prefix dropped)."""
    def stage_ops(mb_state, layer):
        # DeepSeek prefill TBO strategy: [attn ops, gate, select, dispatch_a] | [dispatch_b, experts, combine_a] |
        # [shared_experts, combine_b, output, postprocess] + next layer's first stage
        def attn():
            x = mb_state["x"]
            mb_state["x"] = x + attention_prefill(w, rmsnorm(x, w.n1))
            mb_state["h"] = rmsnorm(mb_state["x"], w.n1)

        def gate():
            mb_state["top"] = route(w, mb_state["h"])

        def disp_a():
            mb_state["ev"] = comm.run("dispatch", [comm.mark()])

        def disp_b():
            _wait(dev, mb_state["ev"])

        def exp():
            mb_state["y"] = experts(w, mb_state["h"], *mb_state["top"])

        def comb_a():
            mb_state["ev"] = comm.run("combine", [comm.mark()])

        def sh():
            mb_state["y"] = mb_state["y"] + shared(w, mb_state["h"])

        def comb_b():
            _wait(dev, mb_state["ev"])

        def output():
            mb_state["x"] = mb_state["x"] + mb_state["y"]
        noop = lambda: None  # noqa: E731
        return [[("comm_prepare_attn", noop), ("prepare", noop), ("core", attn), ("comm_prepare_mlp", noop),
                 ("gate", gate), ("select_experts", noop), ("dispatch_a", disp_a)],
                [("dispatch_b", disp_b), ("experts", exp), ("combine_a", comb_a)],
                [("shared_experts", sh), ("combine_b", comb_b), ("output", output),
                 ("comm_postprocess_layer", noop)]]

    def one_step(annotate: bool):
        states = [{"x": xs0[0]}, {"x": xs0[1]}]
        per_mb = []
        for mb in (0, 1):
            stages = []
            for layer in range(nl):
                ls = stage_ops(states[mb], layer)
                if stages:
                    stages[-1] = stages[-1] + ls[0]        # no yield at a layer boundary
                    stages += ls[1:]
                else:
                    stages += ls
            per_mb.append(stages)
        for k in range(len(per_mb[0])):                   # delta_stages = 0: a then b, stage by stage
            for mb, tag in ((0, "a"), (1, "b")):
                with (record_function(f"{tag}{k}") if annotate else _Null()):
                    for op_name, fn in per_mb[mb][k]:
                        with (record_function(op_name) if annotate else _Null()):
                            fn()

    one_step(False)
    sync(dev)
    with stepped(dev, steps) as prof:
        for _ in range(steps + 1):
            one_step(True)
            sync(dev)
            prof.step()
    size = export(prof, out / "style-sglang.json.gz")
    return {"file": "style-sglang.json.gz", "style": "sglang", "steps": steps, "layers_per_step": nl,
            "microbatches": 2, "stage_ranges_per_mb": 2 * nl + 1, "step_ranges": "ProfilerStep#", "bytes": size}


def _run_module_style(out, c, dev, w, nl, steps) -> dict:
    """nn.Module ranges as torch.profiler's Python tracer writes them (with_stack=True), the way vLLM and
    Hugging Face traces carry their layers."""
    class DeepseekV2MLAAttention(torch.nn.Module):
        def forward(self, x):
            return attention_prefill(w, x)

    class DeepseekV2MoE(torch.nn.Module):
        def forward(self, h):
            top_w, top_i = route(w, h)
            return shared(w, h) + experts(w, h, top_w, top_i)

    class DeepseekV2DecoderLayer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn, self.mlp = DeepseekV2MLAAttention(), DeepseekV2MoE()

        def forward(self, x):
            x = x + self.self_attn(rmsnorm(x, w.n1))
            return x + self.mlp(rmsnorm(x, w.n1))

    class DeepseekV2Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList(DeepseekV2DecoderLayer() for _ in range(nl))

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    model = DeepseekV2Model()
    x0 = torch.randn(c["tokens"], c["H"], device=dev, dtype=BF16)
    with torch.no_grad():
        model(x0)
        sync(dev)
        with profile(activities=activities(dev), with_stack=True) as prof:
            for _ in range(steps):
                with record_function("execute_model"):
                    model(x0)
                sync(dev)
    size = export(prof, out / "style-module.json.gz")
    return {"file": "style-module.json.gz", "style": "module", "steps": steps, "layers_per_step": nl,
            "microbatches": 1, "step_ranges": "execute_model", "bytes": size}


# ----------------------------------------------------------------------------- GQA decode attention sweep
def gqa_sweep(dev: str, quick: bool) -> list[dict]:
    """Decode attention of GQA models, one new token per sequence: the query heads sharing a KV head
    are packed as the query length, so the kernel reads each KV head once (what FlashInfer and
    FlashAttention's decode kernels do)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    heads = [(32, 4, 128), (64, 4, 128), (64, 8, 128), (16, 2, 128), (8, 1, 128)] if not quick else [(4, 2, 16)]
    batches = [1, 8, 32, 64, 128, 256] if not quick else [2]
    lens = [1024, 4096, 16384] if not quick else [64]
    rows = []
    for hq, hkv, d in heads:
        for b in batches:
            for L in lens:
                kv_bytes = 2 * b * hkv * L * d * 2
                if kv_bytes > 24e9:
                    continue
                row = {"op": "attention_decode", "name": "gqa_decode", "B": b, "L": L, "Hq": hq, "Hkv": hkv, "D": d,
                       "flops": 4 * b * hq * L * d, "bytes": kv_bytes + 2 * 2 * b * hq * d}
                try:
                    q = torch.randn(b, hkv, hq // hkv, d, device=dev, dtype=BF16)
                    k = torch.randn(b, hkv, L, d, device=dev, dtype=BF16)
                    v = torch.randn(b, hkv, L, d, device=dev, dtype=BF16)
                    ctx = sdpa_kernel([SDPBackend.FLASH_ATTENTION]) if dev == "cuda" else _Null()
                    with ctx:
                        for _ in range(3):
                            F.scaled_dot_product_attention(q, k, v)
                        ts = []
                        for _ in range(10 if not quick else 2):
                            if dev == "cuda":
                                a, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                                a.record()
                                F.scaled_dot_product_attention(q, k, v)
                                e.record()
                                e.synchronize()
                                ts.append(a.elapsed_time(e) * 1e3)
                            else:
                                t0 = time.perf_counter()
                                F.scaled_dot_product_attention(q, k, v)
                                ts.append((time.perf_counter() - t0) * 1e6)
                    ts.sort()
                    row["us_median"] = ts[len(ts) // 2]
                    row["us_min"] = ts[0]
                except Exception as exc:        # noqa: BLE001 - record what this torch cannot run
                    row["error"] = f"{type(exc).__name__}: {exc}"[:300]
                q = k = v = None
                if dev == "cuda":
                    torch.cuda.empty_cache()
                rows.append(row)
    return rows


# ----------------------------------------------------------------------------- main
def environment(dev: str) -> dict:
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpu_count": os.cpu_count()}
    if dev == "cuda":
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, sms=p.multi_processor_count, memory_gb=p.total_memory / 1e9)
        try:
            env["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,memory.total", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=30).stdout.strip()
        except Exception:                   # noqa: BLE001
            pass
    return env


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "capture-out"))
    ap.add_argument("--quick", action="store_true", help="tiny shapes (a smoke run, e.g. on the CPU)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--only", default="",
                    help="comma-separated parts: decode,item,graph,compiled,pause,styles,gqa,b256")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    c = cfg(args.quick)
    dev = args.device
    meta = {"environment": environment(dev), "command": " ".join(sys.argv), "shapes": c, "runs": [], "errors": []}
    only = set(filter(None, args.only.split(",")))
    parts = [("decode", lambda: run_decode(out, c, dev, "eager")),
             ("graph", lambda: run_decode(out, c, dev, "graph")),
             ("item", lambda: run_decode(out, c, dev, "item")),
             ("pause", lambda: run_prefill_pause(out, c, dev)),
             *[("styles", (lambda s=s: run_style(out, c, dev, s))) for s in ("slash", "mbn", "sglang", "module", "none")],
             ("gqa", lambda: {"file": "gqa-decode.json", "sweep": gqa_sweep(dev, args.quick)}),
             ("compiled", lambda: run_decode(out, c, dev, "compiled")),
             # held out (2026-12-05): the eager stack at batch 256, its kernels 8x the rows - does the
             # diagnosis still tell host overhead from waiting when the GPU's share of the step grows?
             ("b256", lambda: run_decode(out, {**c, "B": 256}, dev, "eager", "-b256"))]
    t_all = time.time()
    with torch.no_grad():
        for key, fn in parts:
            if only and key not in only:
                continue
            if key == "graph" and dev != "cuda":
                continue
            t0 = time.time()
            try:
                r = fn()
                r["seconds"] = time.time() - t0
                if key == "gqa":
                    (out / "gqa-decode.json").write_text(json.dumps(r, indent=1))
                    r = {"file": r["file"], "points": len(r["sweep"]), "seconds": r["seconds"]}
                meta["runs"].append(r)
                print(f"{key}: {r.get('file')} in {r['seconds']:.1f} s", flush=True)
            except Exception as exc:            # noqa: BLE001 - keep what the other parts captured
                meta["errors"].append({"part": key, "error": f"{type(exc).__name__}: {exc}"[:500]})
                print(f"{key}: FAILED {type(exc).__name__}: {exc}"[:400], flush=True)
            if dev == "cuda":
                torch.cuda.empty_cache()
            (out / "capture.json").write_text(json.dumps(meta, indent=1))
    meta["seconds"] = time.time() - t_all
    (out / "capture.json").write_text(json.dumps(meta, indent=1))
    print(f"done in {meta['seconds']:.0f} s, {len(meta['errors'])} part(s) failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
