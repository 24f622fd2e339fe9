"""Capture real two-GPU traces of an expert-parallel MoE forward written the way most eager code is
(Hugging Face / Mixtral-style modules, NCCL all_to_all_single for dispatch and combine, a loop of
per-expert cuBLAS GEMMs, routing skewed so rank 1's experts get more tokens), with no
annotation of replay's own. A corpus for issue 27 (structure, expert compute and balance on a
multi-rank NCCL capture nobody annotated), captured before replay was run on it.

    python3 bench/capture/capture_a2a.py --out OUT_DIR

Writes OUT_DIR/a2a-<variant>/rank{0,1}.json.gz and OUT_DIR/a2a-capture.json (the truth: steps,
layers per step, micro-batches, per rank and layer the expert rows computed). Variants:
  plain    no ranges at all: torch.profiler steps (ProfilerStep#) only
  module   with_stack=True: the Python tracer's nn.Module ranges (MixtralDecoderLayer_<i>, ...)
  steps    no ProfilerStep: each iteration in record_function('train_step') (a step-like range),
           the layers un-annotated"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function, schedule

H, HEADS, T, LAYERS, EXPERTS, TOPK, FF, STEPS = 2048, 16, 4096, 4, 16, 2, 1408, 2


class MixtralAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(H, 3 * H, bias=False)
        self.o = nn.Linear(H, H, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).view(1, T, 3, HEADS, H // HEADS).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(a.transpose(1, 2).reshape(T, H))


class MixtralSparseMoeBlock(nn.Module):
    """Top-2 routing over EXPERTS experts, EXPERTS / world on each rank; dispatch and combine by
    all_to_all_single with the split sizes exchanged first (a host sync, as in eager EP code)."""

    def __init__(self, rank: int, world: int) -> None:
        super().__init__()
        self.rank, self.world, self.local = rank, world, EXPERTS // world
        self.gate = nn.Linear(H, EXPERTS, bias=False)
        skew = torch.zeros(EXPERTS)
        skew[self.local:2 * self.local] = 1.5            # rank 1's experts are preferred: rank 1 is heavy
        self.register_buffer("skew", skew)
        self.w1 = nn.Parameter(torch.randn(self.local, H, FF) * 0.02)
        self.w3 = nn.Parameter(torch.randn(self.local, H, FF) * 0.02)
        self.w2 = nn.Parameter(torch.randn(self.local, FF, H) * 0.02)
        self.rows: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.gate(x).float() + self.skew
        w, idx = torch.topk(torch.softmax(logits, -1), TOPK, dim=-1)
        flat = idx.reshape(-1)
        order = torch.argsort(flat, stable=True)
        dest = flat[order] // self.local
        send = torch.bincount(dest, minlength=self.world)
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send)
        send_l, recv_l = send.tolist(), recv.tolist()
        tokens = x.repeat_interleave(TOPK, 0)[order]
        ids = flat[order].to(torch.int32)
        got = x.new_empty(sum(recv_l), H)
        got_ids = ids.new_empty(sum(recv_l))
        dist.all_to_all_single(got, tokens, recv_l, send_l)            # dispatch
        dist.all_to_all_single(got_ids, ids, recv_l, send_l)
        out = torch.empty_like(got)
        local = got_ids - self.rank * self.local
        n = 0
        for e in range(self.local):
            sel = torch.nonzero(local == e).squeeze(1)
            h = got[sel]
            n += h.shape[0]
            out[sel] = (F.silu(h @ self.w1[e]) * (h @ self.w3[e])) @ self.w2[e]
        self.rows.append(n)
        back = x.new_empty(len(order), H)
        dist.all_to_all_single(back, out, send_l, recv_l)             # combine
        y = torch.zeros(len(order), H, dtype=x.dtype, device=x.device)
        y[order] = back
        return (y.view(T, TOPK, H) * w.to(x.dtype).unsqueeze(-1)).sum(1)


class MixtralDecoderLayer(nn.Module):
    def __init__(self, rank: int, world: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.RMSNorm(H), nn.RMSNorm(H)
        self.self_attn = MixtralAttention()
        self.block_sparse_moe = MixtralSparseMoeBlock(rank, world)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.ln1(x))
        return x + self.block_sparse_moe(self.ln2(x))


class MixtralModel(nn.Module):
    def __init__(self, rank: int, world: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(MixtralDecoderLayer(rank, world) for _ in range(LAYERS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def worker(rank: int, world: int, out: str, port: int) -> None:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")          # never NVLink multicast (workplace rule)
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world, device_id=torch.device("cuda", rank))
    torch.manual_seed(0)                                  # same weights and inputs on every rank
    model = MixtralModel(rank, world).cuda().to(torch.bfloat16).eval()
    torch.manual_seed(1 + rank)
    x = torch.randn(T, H, device="cuda", dtype=torch.bfloat16)
    truth: dict = {}
    for variant in ("plain", "module", "steps"):
        with torch.no_grad():
            for _ in range(2):
                model(x)                                   # warm-up: cuBLAS handles, NCCL channels
            torch.cuda.synchronize()
            dist.barrier()
            for layer in model.layers:
                layer.block_sparse_moe.rows.clear()
            if variant == "steps":
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    for _ in range(STEPS):
                        with record_function("train_step"):
                            model(x)
                        torch.cuda.synchronize()
            else:
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=variant == "module",
                             schedule=schedule(wait=0, warmup=1, active=STEPS, repeat=1)) as prof:
                    for _ in range(STEPS + 1):
                        model(x)
                        torch.cuda.synchronize()
                        prof.step()
        rows = [layer.block_sparse_moe.rows for layer in model.layers]      # per layer, per forward
        skip = 0 if variant == "steps" else 1                               # the profiler's warm-up step
        truth[variant] = {"steps": STEPS, "layers_per_step": LAYERS, "microbatches": 1,
                          "expert_rows": [[r[skip + s] for r in rows] for s in range(STEPS)]}
        d = Path(out) / f"a2a-{variant}"
        d.mkdir(parents=True, exist_ok=True)
        raw = d / f"rank{rank}.json"
        prof.export_chrome_trace(str(raw))
        with open(raw, "rb") as f, gzip.open(str(raw) + ".gz", "wb", compresslevel=9) as g:
            shutil.copyfileobj(f, g)
        raw.unlink()
    gathered: list = [None] * world
    dist.all_gather_object(gathered, truth)
    if rank == 0:
        env = {"torch": torch.__version__, "cuda": torch.version.cuda, "nccl": ".".join(map(str, torch.cuda.nccl.version())),
               "device": torch.cuda.get_device_name(0), "world": world,
               "shape": {"hidden": H, "heads": HEADS, "tokens_per_rank": T, "layers": LAYERS, "experts": EXPERTS,
                         "top_k": TOPK, "ffn": FF, "dtype": "bf16"}}
        runs = {v: {"steps": gathered[0][v]["steps"], "layers_per_step": gathered[0][v]["layers_per_step"],
                    "microbatches": 1, "expert_rows": {str(r): gathered[r][v]["expert_rows"] for r in range(world)}}
                for v in truth}
        (Path(out) / "a2a-capture.json").write_text(json.dumps({"env": env, "runs": runs}, indent=1))
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "capture-out"))
    ap.add_argument("--port", type=int, default=29533)
    args = ap.parse_args()
    world = 2
    if torch.cuda.device_count() < world:
        raise SystemExit(f"needs {world} GPUs, found {torch.cuda.device_count()}")
    mp.spawn(worker, args=(world, args.out, args.port), nprocs=world, join=True)
    print("wrote", sorted(str(p.relative_to(args.out)) for p in Path(args.out).rglob("*") if p.is_file()))


if __name__ == "__main__":
    main()
