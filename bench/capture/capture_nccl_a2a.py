"""Capture a real two-GPU MoE whose expert parallelism runs on NCCL's all-to-all (torch.distributed
all_to_all_single, the way Megatron-LM's alltoall token dispatcher and vLLM's naive backend move tokens),
with no annotation of replay's own: a held-out corpus for replay on a communication pattern the corpus
lacked (every multi-rank capture so far is DeepEP or an NCCL all-reduce). What `replay analyze` must
find is written in tests/test_nccl_a2a.py before this runs.

    python3 bench/capture/capture_nccl_a2a.py --out OUT_DIR      (a machine with 2 GPUs)

The model: 4 decoder layers (RMSNorm, attention through SDPA with 16 heads of 128, RMSNorm, MoE), hidden
2,048; the MoE has 16 experts top-2 (FFN 1,408, SiLU-gated), experts 0-7 on rank 0 and 8-15 on rank 1
(EP2). Per layer the MoE sorts its tokens by expert, exchanges the per-expert counts with an all-to-all
and reads them on the host (`.tolist()`: a device-to-host sync, as Megatron's dispatcher does), sends the
tokens with all_to_all_single (dispatch), runs each local expert on the rows it got from each rank (a
loop of GEMMs), sends them back (combine) and sums them into place with index_add_. 4,096 tokens per
rank (2 sequences of 2,048), BF16, random weights, NCCL_NVLS_ENABLE=0.

Variants (OUT_DIR/nccl-a2a-<variant>/rank<r>.json.gz), 2 profiled steps each, nn.Module ranges
(with_stack=True), the torch.profiler step ranges:
  sync     dispatch, experts, combine in order: every all-to-all exposed
  overlap  the MoE's tokens in 2 micro-batches: micro-batch 1's dispatch (async_op=True) runs while
           micro-batch 0's experts compute, micro-batch 0's combine while micro-batch 1's experts compute

Truth (OUT_DIR/nccl-a2a-capture.json): per variant the step (median of 10 synchronised steps timed
outside the profiler, rank 0's host clock), steps and layers profiled, the host syncs per layer."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, schedule

from capture_hf_decode import save  # the trace written gzipped

H, HEADS, HEAD_DIM, EXPERTS, TOPK, FF, LAYERS = 2048, 16, 128, 16, 2, 1408, 4
SEQS, SEQ, STEPS = 2, 2048, 2
WORLD = int(os.environ.get("NCCL_A2A_WORLD", "2"))   # 1: a smoke run of the script on one GPU (not the capture)
LOCAL = EXPERTS // WORLD
VARIANTS = ("sync", "overlap")


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(H, 3 * HEADS * HEAD_DIM, bias=False)
        self.o = nn.Linear(HEADS * HEAD_DIM, H, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).view(SEQS, SEQ, 3, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(SEQS * SEQ, HEADS * HEAD_DIM))


class Experts(nn.Module):
    """This rank's experts: for each source rank's rows, each local expert's GEMMs on its own rows."""

    def __init__(self) -> None:
        super().__init__()
        self.w13 = nn.Parameter(torch.randn(LOCAL, H, 2 * FF) * H ** -0.5)
        self.w2 = nn.Parameter(torch.randn(LOCAL, FF, H) * FF ** -0.5)

    def forward(self, x: torch.Tensor, counts: list[list[int]]) -> torch.Tensor:
        outs, row = [], 0
        for per_src in counts:                      # rows from each source rank, sorted by local expert
            for e, n in enumerate(per_src):
                if n:
                    a, b = (x[row:row + n] @ self.w13[e]).chunk(2, dim=-1)
                    outs.append((F.silu(a) * b) @ self.w2[e])
                row += n
        return torch.cat(outs) if outs else x[:0]


class MoE(nn.Module):
    def __init__(self, overlap: bool) -> None:
        super().__init__()
        self.gate = nn.Linear(H, EXPERTS, bias=False)
        self.experts = Experts()
        self.overlap = overlap

    def _route(self, x: torch.Tensor):
        w, idx = torch.softmax(self.gate(x).float(), dim=-1).topk(TOPK, dim=-1)
        w = (w / w.sum(-1, keepdim=True)).to(x.dtype)
        flat = idx.flatten()
        order = torch.argsort(flat, stable=True)
        tokens = order // TOPK
        per_expert = torch.bincount(flat, minlength=EXPERTS)
        recv = torch.empty_like(per_expert)
        dist.all_to_all_single(recv, per_expert)     # each rank learns how many rows it gets per local expert
        return x[tokens], tokens, w.flatten()[order], per_expert, recv

    @staticmethod
    def _splits(per_expert: list[int], recv: list[int]):
        send = [sum(per_expert[r * LOCAL:(r + 1) * LOCAL]) for r in range(WORLD)]
        counts = [recv[r * LOCAL:(r + 1) * LOCAL] for r in range(WORLD)]
        return send, [sum(c) for c in counts], counts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.overlap:
            xs, tokens, w, per_expert, recv = self._route(x)
            send, got, counts = self._splits(per_expert.tolist(), recv.tolist())        # host syncs
            rows = xs.new_empty(sum(got), H)
            dist.all_to_all_single(rows, xs, got, send)                               # dispatch
            out = self.experts(rows, counts)
            back = torch.empty_like(xs)
            dist.all_to_all_single(back, out, send, got)                              # combine
            return torch.zeros_like(x).index_add_(0, tokens, back * w.unsqueeze(1))
        halves = x.chunk(2)
        routed = [self._route(h) for h in halves]
        plans = [self._splits(r[3].tolist(), r[4].tolist()) for r in routed]          # host syncs, up front
        rows = [r[0].new_empty(sum(p[1]), H) for r, p in zip(routed, plans)]
        dist.all_to_all_single(rows[0], routed[0][0], plans[0][1], plans[0][0])        # dispatch 0
        d1 = dist.all_to_all_single(rows[1], routed[1][0], plans[1][1], plans[1][0], async_op=True)
        out0 = self.experts(rows[0], plans[0][2])                                     # beside dispatch 1
        back = [torch.empty_like(r[0]) for r in routed]
        c0 = dist.all_to_all_single(back[0], out0, plans[0][0], plans[0][1], async_op=True)
        d1.wait()
        out1 = self.experts(rows[1], plans[1][2])                                     # beside combine 0
        dist.all_to_all_single(back[1], out1, plans[1][0], plans[1][1])               # combine 1
        c0.wait()
        return torch.cat([torch.zeros_like(h).index_add_(0, r[1], b * r[2].unsqueeze(1))
                          for h, r, b in zip(halves, routed, back)])


class DecoderLayer(nn.Module):
    def __init__(self, overlap: bool) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.RMSNorm(H), nn.RMSNorm(H)
        self.attn = Attention()
        self.moe = MoE(overlap)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.moe(self.norm2(x))


class Model(nn.Module):
    def __init__(self, overlap: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(overlap) for _ in range(LAYERS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def worker(rank: int, out: str, port: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NCCL_NVLS_ENABLE="0")   # never NVLink multicast
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=WORLD, device_id=torch.device("cuda", rank))
    torch.manual_seed(1234 + rank)
    truth: dict = {}
    for variant in VARIANTS:
        model = Model(variant == "overlap").cuda().to(torch.bfloat16)
        x = torch.randn(SEQS * SEQ, H, device="cuda", dtype=torch.bfloat16)
        with torch.no_grad():
            for _ in range(3):
                model(x)
            torch.cuda.synchronize()
            times = []
            for _ in range(10):
                dist.barrier()
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                model(x)
                torch.cuda.synchronize()
                times.append((time.perf_counter() - t0) * 1e6)
            dist.barrier()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=True,
                         schedule=schedule(wait=0, warmup=1, active=STEPS, repeat=1)) as prof:
                for _ in range(1 + STEPS):
                    model(x)
                    torch.cuda.synchronize()
                    prof.step()
        d = Path(out) / f"nccl-a2a-{variant}"
        d.mkdir(parents=True, exist_ok=True)
        save(prof, d, f"rank{rank}")
        truth[variant] = {"folder": d.name, "ranks": WORLD, "steps": STEPS, "layers_per_step": LAYERS,
                          "microbatches": 2 if variant == "overlap" else 1,
                          "syncs_per_layer": 6 if variant == "overlap" else 3,   # 2 .tolist() + bincount per route
                          "all_to_alls_per_layer": 3 if variant == "sync" else 6,
                          "step_us": statistics.median(times)}
        del model
        torch.cuda.empty_cache()
    if rank == 0:
        env = {"torch": torch.__version__, "cuda": torch.version.cuda, "nccl": ".".join(map(str, torch.cuda.nccl.version())),
               "device": torch.cuda.get_device_name(0), "gpus": WORLD}
        shape = {"hidden": H, "heads": HEADS, "head_dim": HEAD_DIM, "experts": EXPERTS, "top_k": TOPK, "moe_ffn": FF,
                 "layers": LAYERS, "tokens_per_rank": SEQS * SEQ, "ep": WORLD, "dtype": "bf16"}
        (Path(out) / "nccl-a2a-capture.json").write_text(json.dumps({"env": env, "shape": shape, "runs": truth},
                                                                     indent=1))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "capture-out"))
    ap.add_argument("--port", default="29517")
    ap.add_argument("--smoke", action="store_true", help="run every code path on one GPU (EP1, NCCL to itself) "
                    "to check the script; its output is not the capture")
    args = ap.parse_args()
    if args.smoke:
        os.environ["NCCL_A2A_WORLD"] = "1"          # the spawned workers import the module again and read it
        global WORLD, LOCAL
        WORLD, LOCAL = 1, EXPERTS
    if torch.cuda.device_count() < WORLD:
        raise SystemExit(f"needs {WORLD} GPUs, found {torch.cuda.device_count()}")
    mp.spawn(worker, args=(args.out, args.port), nprocs=WORLD, join=True)
    print((Path(args.out) / "nccl-a2a-capture.json").read_text())


if __name__ == "__main__":
    main()
