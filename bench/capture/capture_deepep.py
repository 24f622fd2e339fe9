"""Capture real per-rank Kineto traces of DeepSeek-V3-shaped MoE layers whose all-to-all is DeepEP's
intranode normal dispatch / combine (FP8 dispatch, BF16 combine), two micro-batches, on a lent
machine with 4 NVLink-connected GPUs.

    python3 bench/capture/build_deepep.py .cache/deepep        # patch + build (see that file)
    PYTHONPATH=.cache/deepep python3 bench/capture/capture_deepep.py --out OUT_DIR

Writes OUT_DIR/<run>/rank<r>.json.gz (one file per rank, distributedInfo set) and
OUT_DIR/capture.json (environment, runs, and per rank, step and layer the tokens each rank received).
Runs (tracegen's own launch orders; stage ranges are named "L<layer>:<STAGE>(<micro-batch>)";
profiler steps via torch.profiler's schedule, "ProfilerStep#N"):

  prefill-proper     2 x 4,096 tokens per rank, prefill-proper order
  prefill-improper   the same work in prefill-improper order (each dispatch launched before the
                     other micro-batch's compute, so the compute stream runs dry while the CPU spins
                     inside DeepEP's dispatch waiting for the received counts)
  prefill-nosync     prefill-improper order with num_worst_tokens (no CPU wait in dispatch; the
                     experts run on the expected row count, as a static-shape engine does)
  prefill-skew       prefill-proper, routing skewed so that rank 2 gets about 3x the expert rows
  prefill-late       prefill-proper, rank 3 starts every step 30 ms late (sleeps before launching)
  decode-proper      2 x 128 tokens per rank, decode-proper order, 8 layers
  graph              rank 0 only: a few decode GEMMs captured in a CUDA graph and replayed

Expert work scales with the tokens each rank received: after a normal dispatch the per-expert
counts are on the CPU, and the routed-expert GEMMs run on that many rows (64 local experts grouped
into 8 GEMM pairs)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function, schedule  # noqa: E402

WORLD = 4
EXPERTS, TOPK = 256, 8
RUNS = {
    "prefill-proper": dict(phase="prefill", order="proper", tokens=4096, layers=4),
    "prefill-improper": dict(phase="prefill", order="improper", tokens=4096, layers=4),
    "prefill-nosync": dict(phase="prefill", order="improper", tokens=4096, layers=4, worst=True),
    "prefill-skew": dict(phase="prefill", order="proper", tokens=4096, layers=4, heavy=2),
    "prefill-late": dict(phase="prefill", order="proper", tokens=4096, layers=4, late=3, late_ms=30),
    "decode-proper": dict(phase="decode", order="proper", tokens=128, layers=8),
}


def routing(tokens: int, rank: int, heavy: int | None, seed: int) -> torch.Tensor:
    """top-8 of 256 experts per token; with `heavy`, half of each token's experts are on that rank."""
    g = torch.Generator(device="cuda").manual_seed(seed * 100 + rank)
    scores = torch.rand(tokens, EXPERTS, device="cuda", generator=g)
    if heavy is None:
        return scores.topk(TOPK, dim=-1).indices
    local = EXPERTS // WORLD
    lo = heavy * local
    mask = torch.zeros(EXPERTS, device="cuda", dtype=torch.bool)
    mask[lo:lo + local] = True
    hot = scores[:, mask].topk(TOPK // 2, dim=-1).indices + lo
    cold_scores = scores.masked_fill(mask, -1.0)
    cold = cold_scores.topk(TOPK // 2, dim=-1).indices
    return torch.cat([hot, cold], dim=1)


class MoELayer:
    """One micro-batch's tensors (shared by every layer: the weights' values do not matter)."""

    def __init__(self, phase: str, toks: int, max_rows: int):
        from capture_h100 import MODEL, Experts, Fp8Linear, fp8_rows
        m = MODEL
        H, h = m.hidden, m.heads
        self.phase, self.toks = phase, toks
        self.x8 = fp8_rows(toks, H)
        self.q_down, self.kv_down = Fp8Linear(H, m.q_lora_rank), Fp8Linear(H, m.kv_lora_rank + m.qk_rope_head_dim)
        self.q_up = Fp8Linear(m.q_lora_rank, h * (m.qk_nope_head_dim + m.qk_rope_head_dim))
        self.wo = Fp8Linear(h * m.v_head_dim, H)
        self.q_lat = fp8_rows(toks, m.q_lora_rank)
        self.o8 = fp8_rows(toks, h * m.v_head_dim)
        if phase == "prefill":
            self.kv_up = Fp8Linear(m.kv_lora_rank, h * (m.qk_nope_head_dim + m.v_head_dim))
            self.kv_lat = fp8_rows(toks, m.kv_lora_rank)
            dqk = m.qk_nope_head_dim + m.qk_rope_head_dim
            self.q = torch.randn(1, h, toks, dqk, device="cuda", dtype=torch.bfloat16)
            self.k = torch.randn(1, h, toks, dqk, device="cuda", dtype=torch.bfloat16)
            self.v = torch.randn(1, h, toks, m.v_head_dim, device="cuda", dtype=torch.bfloat16)
        else:
            d = m.kv_lora_rank + m.qk_rope_head_dim
            self.qa = torch.randn(toks, h, d, device="cuda", dtype=torch.bfloat16)
            self.kv = torch.randn(toks, 2048, d, device="cuda", dtype=torch.bfloat16)
        self.gate_w = torch.randn(EXPERTS, H, device="cuda", dtype=torch.bfloat16)
        self.xb = torch.randn(toks, H, device="cuda", dtype=torch.bfloat16)
        self.shared = Experts(1, H, m.moe_intermediate)
        self.routed = Experts(8, H, m.moe_intermediate)
        self.rows = fp8_rows(max_rows, H)
        self.comb = torch.randn(toks * WORLD, H, device="cuda", dtype=torch.bfloat16)

    def attn(self, part: str = "ATTN"):
        import torch.nn.functional as F
        from capture_h100 import MODEL, attention_absorbed
        if part in ("ATTN", "ATTN-0"):
            self.q_down(self.x8)
            self.q_up(self.q_lat)
            if self.phase == "prefill":
                self.kv_down(self.x8)
                self.kv_up(self.kv_lat)
                F.scaled_dot_product_attention(self.q, self.k, self.v, is_causal=True)
            else:
                attention_absorbed(self.qa, self.kv, MODEL.kv_lora_rank)
        if part in ("ATTN", "ATTN-1"):
            self.wo(self.o8)
            self.xb @ self.gate_w.t()

    def mlp(self, rows: int):
        per = max(16, -(-rows // 8 // 16) * 16)
        self.routed([self.rows[i * per:(i + 1) * per] for i in range(8) if i * per < max(rows, 1)])


def worker(rank: int, out: str, runs: list[str], port: int) -> None:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(port))
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")           # never NVLink multicast (workplace rule)
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=WORLD, device_id=torch.device(f"cuda:{rank}"))
    import deep_ep
    from capture_h100 import MODEL, export
    from tracegen.catalog import load_hardware
    from tracegen.launch_order import load_order, unroll
    from tracegen.opgraph import build
    from tracegen.plan import Plan
    from tracegen.preset import load_preset
    from tracegen.target import Target

    group = dist.new_group(list(range(WORLD)))
    buffer = deep_ep.Buffer(group, int(1e9), 0)
    H = MODEL.hidden
    report: dict = {}
    for run in [r for r in runs if r in RUNS]:
        cfg = RUNS[run]
        try:
            torch.manual_seed(rank)
            phase, toks, n_layers = cfg["phase"], cfg["tokens"], cfg["layers"]
            worst = toks * WORLD if cfg.get("worst") else 0
            heavy = cfg.get("heavy")
            expected_rows = toks * TOPK          # balanced expectation of routed rows per rank
            max_rows = expected_rows * (4 if heavy is not None else 2)
            hw, preset = load_hardware("h100"), load_preset("default")
            plan = Plan(phase=phase, batch=(2 if phase == "prefill" else 2 * toks), seq_len=(toks if phase == "prefill" else 2048),
                        tp=1, dp=WORLD, microbatches=2, gpus_per_node=hw.gpus_per_node)
            graph = build(Target(MODEL, hw, preset, plan), layers=n_layers, skip_dense=True)
            seq = unroll(graph, load_order(cfg["order"], phase))
            mbs = {mb: MoELayer(phase, toks, max_rows) for mb in range(2)}
            x_fp8, topk, weights = {}, {}, {}
            for mb in range(2):
                x = torch.randn(toks, H, device="cuda", dtype=torch.bfloat16)
                amax = x.view(toks, -1, 128).abs().float().amax(dim=2).clamp(1e-4)
                q = (x.view(toks, -1, 128) * (448.0 / amax.unsqueeze(2))).to(torch.float8_e4m3fn).view(toks, H)
                x_fp8[mb] = (q, (amax / 448.0).T.contiguous().T)
                topk[mb] = routing(toks, rank, heavy, seed=mb).to(deep_ep.topk_idx_t)
                weights[mb] = torch.rand(toks, TOPK, device="cuda", dtype=torch.float32)
            compute = torch.cuda.current_stream()
            side = torch.cuda.Stream()
            done: dict = {}
            held: dict = {}
            counts: list = []

            def after(stream, deps):
                for k in deps:
                    ev = done.get(k)
                    if ev is None:
                        continue
                    if isinstance(ev, torch.cuda.Event):
                        stream.wait_event(ev)
                    else:
                        with torch.cuda.stream(stream):
                            ev.current_stream_wait()

            def stage(key, step):
                layer, mb, name = key
                st, L = graph.stages[key], mbs[mb]
                with record_function(f"L{layer}:{name}({mb})"):
                    if name == "DISPATCH":
                        with torch.cuda.stream(side):
                            after(side, st.deps)
                            n_rank, _, n_expert, in_rank, ev = buffer.get_dispatch_layout(
                                topk[mb], EXPERTS, previous_event=deep_ep.Buffer.capture(), async_finish=True,
                                allocate_on_comm_stream=True)
                            recv_x, _, recv_w, per_expert, handle, ev = buffer.dispatch(
                                x_fp8[mb], num_tokens_per_rank=n_rank, is_token_in_rank=in_rank,
                                num_tokens_per_expert=n_expert, topk_idx=topk[mb], topk_weights=weights[mb],
                                num_worst_tokens=worst, previous_event=ev, async_finish=True,
                                allocate_on_comm_stream=True)
                        rows = sum(per_expert) if per_expert else expected_rows
                        n_recv = recv_x[0].shape[0]
                        held[mb] = (recv_x, recv_w, handle, rows, n_recv)
                        counts.append({"step": step, "layer": layer, "mb": mb, "recv_tokens": int(n_recv),
                                       "expert_rows": int(rows)})
                        done[key] = ev
                    elif name == "COMBINE":
                        _, _, handle, _, n_recv = held[mb]
                        with torch.cuda.stream(side):
                            after(side, st.deps)
                            _, _, ev = buffer.combine(L.comb[:n_recv], handle, previous_event=deep_ep.Buffer.capture(),
                                                      async_finish=True, allocate_on_comm_stream=True)
                        done[key] = ev
                    else:
                        after(compute, st.deps)
                        if name == "MLP":
                            L.mlp(held[mb][3])
                        elif name == "SHARED":
                            L.shared([L.x8])
                        else:
                            L.attn(name)
                        ev = torch.cuda.Event()
                        ev.record(compute)
                        done[key] = ev

            def one_step(step: int):
                if cfg.get("late") == rank:
                    time.sleep(cfg["late_ms"] / 1e3)
                done.clear()
                for key in seq:
                    stage(key, step)
                torch.cuda.synchronize()        # the step's end (an engine reads its samples here)

            for s in range(2):                   # warm up: allocations, cuBLASLt plans, DeepEP buffers
                one_step(-1 - s)
            counts.clear()
            dist.barrier(group)
            torch.cuda.synchronize()
            d = Path(out) / run
            d.mkdir(parents=True, exist_ok=True)
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
                         schedule=schedule(wait=0, warmup=1, active=3, repeat=1),
                         on_trace_ready=lambda p: export(p, d / f"rank{rank}.json.gz")) as prof:
                for s in range(4):
                    one_step(s)
                    prof.step()
            report[run] = {"ok": True, "counts": counts}
        except Exception as exc:                 # noqa: BLE001 - keep the other runs
            report[run] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                           "traceback": traceback.format_exc()[-3000:]}
        mbs = held = done = None
        torch.cuda.empty_cache()
        dist.barrier(group)
    if "graph" in runs and rank == 0:
        report["graph"] = graph_run(Path(out) / "graph")
    (Path(out) / f"report-rank{rank}.json").write_text(json.dumps(report))
    dist.barrier(group)
    dist.destroy_process_group()


def graph_run(d: Path) -> dict:
    """A few decode-sized GEMMs captured in one CUDA graph and replayed under the profiler."""
    from capture_h100 import Fp8Linear, export, fp8_rows
    try:
        lins = [Fp8Linear(7168, 1536), Fp8Linear(1536, 24576), Fp8Linear(16384, 7168), Fp8Linear(7168, 4096)]
        xs = [fp8_rows(128, 7168), fp8_rows(128, 1536), fp8_rows(128, 16384), fp8_rows(128, 7168)]
        def work(times: int) -> None:
            for _ in range(times):
                for lin, x in zip(lins, xs):
                    lin(x)

        s = torch.cuda.Stream()
        with torch.cuda.stream(s):
            work(3)                              # warm up off the default stream, as graph capture wants
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            work(4)
        torch.cuda.synchronize()
        d.mkdir(parents=True, exist_ok=True)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for i in range(10):
                with record_function(f"graph_replay_{i}"):
                    g.replay()
            torch.cuda.synchronize()
        export(prof, d / "rank0.json.gz")
        return {"ok": True, "kernels_per_replay": 16, "replays": 10}
    except Exception as exc:                     # noqa: BLE001
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "capture-out"))
    ap.add_argument("--runs", default=",".join(list(RUNS) + ["graph"]),
                    help="comma-separated subset of: " + ", ".join(list(RUNS) + ["graph"]))
    ap.add_argument("--port", type=int, default=29531)
    args = ap.parse_args()
    runs = [r for r in args.runs.split(",") if r]
    if torch.cuda.device_count() < WORLD:
        raise SystemExit(f"needs {WORLD} GPUs, found {torch.cuda.device_count()}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    mp.spawn(worker, args=(str(out), runs, args.port), nprocs=WORLD, join=True)
    from capture_h100 import environment
    reports = {r: json.loads((out / f"report-rank{r}.json").read_text()) for r in range(WORLD)}
    import deep_ep  # noqa: F401
    meta = {"environment": environment(), "command": " ".join(sys.argv), "deepep_commit": "e02e4d2",
            "runs": {k: v for k, v in RUNS.items() if k in runs}, "seconds": time.time() - t0,
            "ranks": reports}
    (out / "capture.json").write_text(json.dumps(meta, indent=1))
    for r in range(WORLD):
        (out / f"report-rank{r}.json").unlink()
    for run in [r for r in runs if r in RUNS]:
        for r in range(WORLD):
            rep = reports[r].get(run)
            if rep and not rep.get("ok"):
                print(f"{run} rank {r}: FAILED {rep.get('error')}\n{rep.get('traceback', '')}")
        files = sorted(p.name for p in (out / run).glob("*.json.gz")) if (out / run).exists() else []
        print(f"{run}: {files}")
    print(f"done in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
