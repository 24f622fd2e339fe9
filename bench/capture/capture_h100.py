"""Capture real Kineto traces of DeepSeek-V3-shaped work on one GPU (run on the lent H100).

    python3 bench/capture/capture_h100.py --out OUT_DIR [--quick]

Writes, gzipped:
  sweep.json.gz     op sweep: MLA projections, dense / shared / routed expert GEMMs for M = 1..16K
                    (FP8 through torch._scaled_mm), BF16 gate, causal prefill attention, absorbed
                    decode attention at several KV lengths, HBM copies, host-link copies. Each
                    repetition sits in a profiler range named
                    "op=<kind> name=<op> M=<rows> K=<in> N=<out> E=<experts> dtype=<fp8|bf16> ..."
                    with its FLOPs and bytes, which `replay calibrate` reads.
  layers-proper.json.gz, layers-improper.json.gz
                    a few DeepSeek-V3 MoE layers, two micro-batches, a compute stream and a comm
                    stream; host copies of the dispatch/combine payload stand in for the all-to-all
                    (one GPU has no peer) and the dispatch waits on the CPU for the "received
                    counts", in tracegen's proper and improper launch orders. Stage ranges are
                    named "L<layer>:<STAGE>(<microbatch>)".
  capture.json      the environment (GPU, driver, torch) and the plan of the layer runs.

The stage shapes and payload sizes come from tracegen's own op inventory for the plan, so the
prediction (`tracegen trace --hardware h100 --comm pcie-copy ...`) describes the same work."""
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

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

from tracegen.catalog import load_hardware, load_model  # noqa: E402
from tracegen.launch_order import load_order, unroll  # noqa: E402
from tracegen.opgraph import build  # noqa: E402
from tracegen.ops import a2a_ops, tokens  # noqa: E402
from tracegen.plan import Plan  # noqa: E402
from tracegen.preset import load_preset  # noqa: E402
from tracegen.target import Target  # noqa: E402

DEV = "cuda"
FP8 = torch.float8_e4m3fn
MODEL = load_model("deepseek-v3")
# the layer runs: DeepSeek's prefill deployment shape (EP32, TP1) with 2 x 4096-token prompts per
# GPU split into two micro-batches; RDMA traffic crosses the host link instead
LAYER_PLAN = dict(phase="prefill", batch=2, seq_len=4096, tp=1, dp=32, comm="pcie-copy", microbatches=2,
                  routing="spread")


# ----------------------------------------------------------------------------- kernels
class Fp8Linear:
    """y = x @ W^T in FP8 with per-tensor scales (torch._scaled_mm), BF16 output."""

    def __init__(self, k: int, n: int):
        self.w = (torch.randn(n, k, device=DEV) * 0.05).to(FP8)
        self.one = torch.ones((), device=DEV, dtype=torch.float32)

    def __call__(self, x8: torch.Tensor) -> torch.Tensor:
        return torch._scaled_mm(x8, self.w.t(), scale_a=self.one, scale_b=self.one, out_dtype=torch.bfloat16)


def fp8_rows(m: int, k: int) -> torch.Tensor:
    """FP8 activations; rows padded to a multiple of 16, as FP8 GEMMs need (and engines do)."""
    return (torch.randn(-(-m // 16) * 16, k, device=DEV) * 0.5).to(FP8)


class Experts:
    """E local experts, SwiGLU up (fused gate+up) and down, FP8, tokens grouped per expert."""

    def __init__(self, e: int, hidden: int, inter: int):
        self.up = [Fp8Linear(hidden, 2 * inter) for _ in range(e)]
        self.down = [Fp8Linear(inter, hidden) for _ in range(e)]
        self.inter = inter

    def __call__(self, xs: list[torch.Tensor]) -> None:
        for x, up, down in zip(xs, self.up, self.down):
            h = up(x)
            down(h[:, : self.inter].to(FP8))


def attention_prefill(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def attention_absorbed(q, kv, r_kv: int):
    """Decode MLA over the latent cache (no FlashMLA here): scores against the 576-dim latent+rope
    key, softmax, weighted sum of the 512-dim latent."""
    s = torch.einsum("bhd,bld->bhl", q, kv)
    p = torch.softmax(s.float(), dim=-1).to(kv.dtype)
    return torch.einsum("bhl,bld->bhd", p, kv[..., :r_kv])


# ----------------------------------------------------------------------------- sweep
def sweep_ops(quick: bool) -> list[tuple[str, dict, callable]]:
    m = MODEL
    H, I, MI = m.hidden, m.intermediate, m.moe_intermediate
    h, rq, rkv, nope, rope, vd = (m.heads, m.q_lora_rank, m.kv_lora_rank, m.qk_nope_head_dim,
                                  m.qk_rope_head_dim, m.v_head_dim)
    gemms = {"q_down": (H, rq), "kv_down": (H, rkv + rope), "q_up": (rq, h * (nope + rope)),
             "kv_up": (rkv, h * (nope + vd)), "wo": (h * vd, H), "shared_up": (H, 2 * MI),
             "shared_down": (MI, H), "dense_up": (H, 2 * I), "dense_down": (I, H)}
    ms = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
    held_out_ms = [3, 24, 96, 384, 1536, 6144]          # never used for fitting
    if quick:
        ms, held_out_ms = [16, 256, 4096], [96]
    out = []
    for name, (k, n) in gemms.items():
        for mm in ms + held_out_ms:
            if name.startswith("dense") and mm > 8192:
                continue
            out.append(("gemm", dict(name=name, M=mm, K=k, N=n, dtype="fp8", flops=2 * mm * k * n,
                                     bytes=k * n + mm * k + 2 * mm * n), (name, k, n, mm)))
    for mm in ms:
        out.append(("gemm", dict(name="gate", M=mm, K=H, N=m.routed_experts, dtype="bf16",
                                 flops=2 * mm * H * m.routed_experts,
                                 bytes=2 * (H * m.routed_experts + mm * H + mm * m.routed_experts)),
                    ("gate", H, m.routed_experts, mm)))
    per_expert = [1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096] if not quick else [16, 512]
    for e in (8, 32) if not quick else (8,):
        for mm in per_expert + ([48, 768] if not quick else []):
            rows = e * mm
            out.append(("grouped_gemm", dict(name="experts", M=mm, E=e, K=H, N=MI, dtype="fp8",
                                             flops=2 * rows * 3 * H * MI,
                                             bytes=e * 3 * H * MI + rows * (2 * H + 3 * MI)), ("experts", e, mm)))
    for s in ([512, 1024, 2048, 4096, 8192] if not quick else [2048]):
        pairs = s * (s + 1) / 2
        out.append(("attention", dict(name="prefill_attention", M=s, S=s, heads=h, dtype="bf16",
                                      flops=2 * h * pairs * (nope + rope + vd),
                                      bytes=2 * s * h * (2 * (nope + rope) + 2 * vd)), ("prefill_attention", s)))
    for b in ([16, 64, 128] if not quick else [64]):
        for L in ([1024, 4096, 8192] if not quick else [4096]):
            out.append(("attention_decode", dict(name="absorbed_attention", M=b, B=b, L=L, heads=h, dtype="bf16",
                                                 flops=2 * b * h * L * (rkv + rope + rkv),
                                                 bytes=2 * b * L * (rkv + rope) * 2),
                        ("absorbed_attention", b, L)))
    for mb in ([64, 256, 1024] if not quick else [256]):
        size = mb << 20
        out.append(("hbm", dict(name="copy", M=0, dtype="bf16", flops=0, bytes=2 * size), ("copy", size)))
    for mb in ([1, 8, 64, 256] if not quick else [64]):
        size = mb << 20
        out.append(("pcie", dict(name="d2h", M=0, dtype="u8", flops=0, bytes=size), ("d2h", size)))
        out.append(("pcie", dict(name="h2d", M=0, dtype="u8", flops=0, bytes=size), ("h2d", size)))
    return out


def make_runner(spec: tuple) -> callable:
    kind = spec[0]
    if kind in ("q_down", "kv_down", "q_up", "kv_up", "wo", "shared_up", "shared_down", "dense_up", "dense_down"):
        _, k, n, mm = spec
        lin, x = Fp8Linear(k, n), fp8_rows(mm, k)
        return lambda: lin(x)
    if kind == "gate":
        _, k, n, mm = spec
        w = torch.randn(n, k, device=DEV, dtype=torch.bfloat16)
        x = torch.randn(mm, k, device=DEV, dtype=torch.bfloat16)
        return lambda: x @ w.t()
    if kind == "experts":
        _, e, mm = spec
        ex = Experts(e, MODEL.hidden, MODEL.moe_intermediate)
        xs = [fp8_rows(mm, MODEL.hidden) for _ in range(e)]
        return lambda: ex(xs)
    if kind == "prefill_attention":
        _, s = spec
        h, dqk, dv = MODEL.heads, MODEL.qk_nope_head_dim + MODEL.qk_rope_head_dim, MODEL.v_head_dim
        q = torch.randn(1, h, s, dqk, device=DEV, dtype=torch.bfloat16)
        k = torch.randn(1, h, s, dqk, device=DEV, dtype=torch.bfloat16)
        v = torch.randn(1, h, s, dv, device=DEV, dtype=torch.bfloat16)
        return lambda: attention_prefill(q, k, v)
    if kind == "absorbed_attention":
        _, b, L = spec
        d = MODEL.kv_lora_rank + MODEL.qk_rope_head_dim
        q = torch.randn(b, MODEL.heads, d, device=DEV, dtype=torch.bfloat16)
        kv = torch.randn(b, L, d, device=DEV, dtype=torch.bfloat16)
        return lambda: attention_absorbed(q, kv, MODEL.kv_lora_rank)
    if kind == "copy":
        _, size = spec
        a = torch.empty(size // 2, device=DEV, dtype=torch.bfloat16).normal_()
        b = torch.empty_like(a)
        return lambda: b.copy_(a)
    if kind in ("d2h", "h2d"):
        _, size = spec
        dev = torch.randint(0, 255, (size,), device=DEV, dtype=torch.uint8)
        host = torch.empty(size, dtype=torch.uint8, pin_memory=True)
        if kind == "d2h":
            return lambda: host.copy_(dev, non_blocking=True)
        return lambda: dev.copy_(host, non_blocking=True)
    raise ValueError(spec)


def run_sweep(out: Path, reps: int, quick: bool) -> list[dict]:
    """One profiler session over the whole sweep; each op's tensors exist only while it runs."""
    summary = []
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for kind, meta, spec in sweep_ops(quick):
            try:
                fn = make_runner(spec)
                for _ in range(3):                      # warm up (cuBLASLt heuristics, allocations)
                    fn()
                torch.cuda.synchronize()
                label = " ".join(f"{k}={v}" for k, v in meta.items())
                ts = []
                for r in range(reps):
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    with record_function(f"op={kind} {label} rep={r}"):
                        a.record()
                        fn()
                        b.record()
                    b.synchronize()
                    ts.append(a.elapsed_time(b) * 1e3)
                ts.sort()
                summary.append({"op": kind, **meta, "event_us_median": ts[len(ts) // 2]})
            except Exception as exc:           # noqa: BLE001 - record what this torch cannot run
                summary.append({"op": kind, **meta, "error": f"{type(exc).__name__}: {exc}"[:300]})
            fn = None
            torch.cuda.empty_cache()
    export(prof, out / "sweep.json.gz")
    return summary


# ----------------------------------------------------------------------------- layers
class Layer:
    """One MoE layer's tensors for one micro-batch, shaped by tracegen's plan."""

    def __init__(self, toks: int, local_experts: int, per_expert: int, disp_bytes: int, comb_bytes: int):
        m = MODEL
        H, h = m.hidden, m.heads
        self.x8 = fp8_rows(toks, H)
        self.q_down, self.kv_down = Fp8Linear(H, m.q_lora_rank), Fp8Linear(H, m.kv_lora_rank + m.qk_rope_head_dim)
        self.q_up = Fp8Linear(m.q_lora_rank, h * (m.qk_nope_head_dim + m.qk_rope_head_dim))
        self.kv_up = Fp8Linear(m.kv_lora_rank, h * (m.qk_nope_head_dim + m.v_head_dim))
        self.wo = Fp8Linear(h * m.v_head_dim, H)
        self.q_lat = fp8_rows(toks, m.q_lora_rank)
        self.kv_lat = fp8_rows(toks, m.kv_lora_rank)
        self.o8 = fp8_rows(toks, h * m.v_head_dim)
        dqk = m.qk_nope_head_dim + m.qk_rope_head_dim
        self.q = torch.randn(1, h, toks, dqk, device=DEV, dtype=torch.bfloat16)
        self.k = torch.randn(1, h, toks, dqk, device=DEV, dtype=torch.bfloat16)
        self.v = torch.randn(1, h, toks, m.v_head_dim, device=DEV, dtype=torch.bfloat16)
        self.gate_w = torch.randn(m.routed_experts, H, device=DEV, dtype=torch.bfloat16)
        self.xb = torch.randn(toks, H, device=DEV, dtype=torch.bfloat16)
        self.shared = Experts(1, H, m.moe_intermediate)
        self.routed = Experts(local_experts, H, m.moe_intermediate)
        self.expert_in = [fp8_rows(per_expert, H) for _ in range(local_experts)]
        self.counts = torch.zeros(local_experts * 8, device=DEV, dtype=torch.int32)
        self.counts_host = torch.empty_like(self.counts, device="cpu").pin_memory()
        self.disp_dev = torch.randint(0, 255, (disp_bytes,), device=DEV, dtype=torch.uint8)
        self.disp_host = torch.empty(disp_bytes, dtype=torch.uint8, pin_memory=True)
        self.comb_dev = torch.empty(comb_bytes, device=DEV, dtype=torch.uint8)
        self.comb_host = torch.randint(0, 255, (comb_bytes,), dtype=torch.uint8).pin_memory()

    def attn(self):
        self.q_down(self.x8)
        self.kv_down(self.x8)
        self.q_up(self.q_lat)
        self.kv_up(self.kv_lat)
        attention_prefill(self.q, self.k, self.v)
        self.wo(self.o8)
        self.xb @ self.gate_w.t()

    def shared_expert(self):
        self.shared([self.x8])

    def mlp(self):
        self.routed(self.expert_in)


def run_layers(out: Path, layers: int, order_name: str, sm_copy=None, name: str = "layers") -> dict:
    """The layers in one launch order. `sm_copy(src, dst)`: the all-to-all's stand-in copies the payload
    device to device with a kernel that holds SMs (capture_sm_standin.py) instead of across the host link."""
    hw, preset = load_hardware("h100"), load_preset("default")
    plan = Plan(**LAYER_PLAN, gpus_per_node=hw.gpus_per_node)
    graph = build(Target(MODEL, hw, preset, plan), layers=layers, skip_dense=True)
    seq = unroll(graph, load_order(order_name, "prefill"))
    mb_plan = plan.split(plan.microbatches)
    t = tokens(MODEL, mb_plan, preset)
    disp, comb = a2a_ops(Target(MODEL, hw, preset, mb_plan), t)
    local = round(plan.experts_per_gpu(MODEL))
    toks = int(t.moe_tokens)
    per_expert = int(round(t.routed_tokens / local))
    state = {mb: Layer(toks, local, per_expert, int(disp.scaleout_bytes), int(comb.scaleout_bytes))
             for mb in range(plan.microbatches)}
    if sm_copy is not None:             # device-side peers of the payloads (a GPU's own memory stands in)
        for L in state.values():
            L.disp_peer, L.comb_peer = torch.empty_like(L.disp_dev), torch.randint_like(L.comb_dev, 0, 255)
    compute, comm = torch.cuda.current_stream(), torch.cuda.Stream()
    done: dict[tuple, torch.cuda.Event] = {}

    def after(stream, keys):
        for k in keys:
            if k in done:
                stream.wait_event(done[k])

    def record(key, stream):
        ev = torch.cuda.Event()
        ev.record(stream)
        done[key] = ev

    def run(key):
        layer, mb, stage = key
        st, L = graph.stages[key], state[mb]
        with record_function(f"L{layer}:{stage}({mb})"):
            if stage in ("DISPATCH", "COMBINE"):
                with torch.cuda.stream(comm):
                    after(comm, st.deps)
                    if stage == "DISPATCH":
                        L.counts_host.copy_(L.counts, non_blocking=True)     # the notify
                        ev = torch.cuda.Event()
                        ev.record(comm)
                        ev.synchronize()                                     # CPU waits for the counts
                        (L.disp_host.copy_(L.disp_dev, non_blocking=True) if sm_copy is None else
                         sm_copy(L.disp_dev, L.disp_peer))
                    else:
                        (L.comb_dev.copy_(L.comb_host, non_blocking=True) if sm_copy is None else
                         sm_copy(L.comb_peer, L.comb_dev))
                    record(key, comm)
            else:
                after(compute, st.deps)
                {"ATTN": L.attn, "SHARED": L.shared_expert, "MLP": L.mlp}[stage]()
                record(key, compute)

    for _ in range(2):                                  # warm up (allocations, cuBLASLt plans)
        done.clear()
        for key in seq:
            run(key)
        torch.cuda.synchronize()
    done.clear()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for key in seq:
            run(key)
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) * 1e6
    export(prof, out / f"{name}-{order_name}.json.gz")
    return {"order": order_name, "wall_us": wall, "layers": list(graph.layers), "tokens_per_microbatch": toks,
            "local_experts": local, "tokens_per_expert": per_expert, "dispatch_bytes": int(disp.scaleout_bytes),
            "combine_bytes": int(comb.scaleout_bytes)}


def export(prof, path: Path) -> None:
    tmp = path.with_suffix("")
    prof.export_chrome_trace(str(tmp))
    with open(tmp, "rb") as f, gzip.open(path, "wb", compresslevel=9) as g:
        shutil.copyfileobj(f, g)
    tmp.unlink()


def environment() -> dict:
    p = torch.cuda.get_device_properties(0)
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:                       # noqa: BLE001
        smi = ""
    return {"gpu": p.name, "sms": p.multi_processor_count, "memory_gb": p.total_memory / 1e9, "nvidia_smi": smi,
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "capture-out"))
    ap.add_argument("--quick", action="store_true", help="a few shapes only (a smoke run)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    meta = {"environment": environment(), "command": " ".join(sys.argv), "layer_plan": LAYER_PLAN}
    t0 = time.time()
    meta["sweep"] = run_sweep(out, args.reps, args.quick)
    meta["layer_runs"] = [run_layers(out, args.layers, o) for o in ("proper", "improper")]
    meta["seconds"] = time.time() - t0
    (out / "capture.json").write_text(json.dumps(meta, indent=1))
    errors = [s for s in meta["sweep"] if "error" in s]
    print(f"captured {len(meta['sweep']) - len(errors)} sweep points ({len(errors)} failed) and "
          f"{len(meta['layer_runs'])} layer runs in {meta['seconds']:.0f} s on {meta['environment']['gpu']}")
    for e in errors[:10]:
        print("  failed:", e["op"], e["name"], e.get("M"), e["error"])
    for r in meta["layer_runs"]:
        print(f"  layers {r['order']}: wall {r['wall_us'] / 1e3:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
