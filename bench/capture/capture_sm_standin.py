"""The single-GPU layers of capture_h100.py with an all-to-all stand-in that holds SMs, as DeepEP's kernels do.

    python3 bench/capture/capture_sm_standin.py --out OUT_DIR

capture_h100's layer runs (4 DeepSeek-V3 prefill layers x 2 micro-batches of 4,096 tokens, FP8 GEMMs, the
dispatch's CPU waiting for its counts, proper and improper launch orders) with the dispatch / combine payload
copied device to device by a Triton kernel of SMS programs (24: the catalog's SM count for DeepEP's normal
kernels on an H100), each looping over its share of the payload, repeated so that the copy lasts about as long
as the same payload across the host link (the host-copy captures' stand-in), so the stand-in holds its SMs for
as long as the host copies took. Writes sm-standin-proper.json.gz, sm-standin-improper.json.gz and
sm-standin-capture.json (environment, plan, the stand-in's repetitions and times). Read the traces with
--taxonomy traces/observed/sm-standin/taxonomy.toml (the stand-in kernel is communication)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import triton
import triton.language as tl

import capture_h100 as c

SMS = 24            # programs of the stand-in: one per SM, as DeepEP's normal kernels take them
BLOCK = 4096        # int32 elements a program moves per step


@triton.jit
def standin_a2a_copy(src, dst, n, reps, BLOCK: tl.constexpr, PROGS: tl.constexpr):
    pid = tl.program_id(0)
    for _ in range(reps):
        for start in range(pid * BLOCK, n, PROGS * BLOCK):
            offs = start + tl.arange(0, BLOCK)
            m = offs < n
            tl.store(dst + offs, tl.load(src + offs, mask=m), mask=m)


def _ms(fn, n: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) * 1e3 / n


class SmCopy:
    """copy(src, dst): the payload device to device by the SMS-program kernel, repeated to last what the same
    bytes take across the host link (measured once per size)."""

    def __init__(self):
        self.reps: dict[int, int] = {}
        self.timing: list[dict] = []

    def _launch(self, s: torch.Tensor, d: torch.Tensor, reps: int) -> None:
        standin_a2a_copy[(SMS,)](s, d, s.numel(), reps, BLOCK=BLOCK, PROGS=SMS, num_warps=16)

    def __call__(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        n = src.numel() // 4
        s, d = src[: n * 4].view(torch.int32), dst[: n * 4].view(torch.int32)
        if n not in self.reps:
            host = torch.empty(src.numel(), dtype=torch.uint8, pin_memory=True)
            host_ms = _ms(lambda: host.copy_(src, non_blocking=True))
            one_ms = _ms(lambda: self._launch(s, d, 1))
            self.reps[n] = max(1, round(host_ms / one_ms))
            self.timing.append({"bytes": int(src.numel()), "host_copy_ms": host_ms, "one_pass_ms": one_ms,
                                "reps": self.reps[n], "standin_ms": _ms(lambda: self._launch(s, d, self.reps[n]))})
        self._launch(s, d, self.reps[n])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "capture-out"))
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    copy = SmCopy()
    t0 = time.time()
    runs = [c.run_layers(out, args.layers, o, sm_copy=copy, name="sm-standin") for o in ("proper", "improper")]
    meta = {"environment": c.environment(), "command": " ".join(sys.argv), "layer_plan": c.LAYER_PLAN,
            "standin": {"programs": SMS, "block_int32": BLOCK, "num_warps": 16, "sizes": copy.timing},
            "layer_runs": runs, "seconds": time.time() - t0}
    (out / "sm-standin-capture.json").write_text(json.dumps(meta, indent=1))
    print(json.dumps(meta["standin"], indent=1))
    for r in runs:
        print(f"  {r['order']}: wall {r['wall_us'] / 1e3:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
