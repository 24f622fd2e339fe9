"""Capture a real two-GPU PyTorch-profiler trace whose communication is NCCL (run on a lent
2-GPU machine): GEMMs on the compute stream while all-reduces run on a side stream, partly
overlapped. `make bench` compares replay's hidden share with HTA's get_comm_comp_overlap on it.

    python3 bench/capture/capture_nccl.py --out OUT_DIR

Writes OUT_DIR/nccl/rank0.json.gz and rank1.json.gz (one file per rank, distributedInfo set)."""
from __future__ import annotations

import argparse
import gzip
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.profiler import ProfilerActivity, profile, record_function


def worker(rank: int, world: int, out: str) -> None:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29512")
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")          # never NVLink multicast (workplace rule)
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world)
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    grads = [torch.randn(16 << 20, device="cuda", dtype=torch.bfloat16) for _ in range(4)]
    side = torch.cuda.Stream()

    def step(i: int) -> None:
        with record_function(f"step{i}"):
            for g in grads:
                for _ in range(3):
                    a @ b                                         # compute
                ev = torch.cuda.Event()
                ev.record()
                with torch.cuda.stream(side):
                    side.wait_event(ev)
                    dist.all_reduce(g)                            # communication, overlapped with the next GEMMs
            for _ in range(2):
                a @ b
            torch.cuda.current_stream().wait_stream(side)

    for i in range(3):
        step(i)
    torch.cuda.synchronize()
    dist.barrier()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(4):
            step(i)
        torch.cuda.synchronize()
    d = Path(out) / "nccl"
    d.mkdir(parents=True, exist_ok=True)
    raw = d / f"rank{rank}.json"
    prof.export_chrome_trace(str(raw))
    with open(raw, "rb") as f, gzip.open(str(raw) + ".gz", "wb", compresslevel=9) as g:
        shutil.copyfileobj(f, g)
    raw.unlink()
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "capture-out"))
    args = ap.parse_args()
    world = 2
    if torch.cuda.device_count() < world:
        raise SystemExit(f"needs {world} GPUs, found {torch.cuda.device_count()}")
    mp.spawn(worker, args=(world, args.out), nprocs=world, join=True)
    print("wrote", sorted(p.name for p in (Path(args.out) / "nccl").iterdir()))


if __name__ == "__main__":
    main()
