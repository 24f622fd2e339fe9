"""Capture the PyTorch profiler tutorial's recipe on one GPU: schedule(wait=1, warmup=1, active=2, repeat=2) with
on_trace_ready=tensorboard_trace_handler(DIR, use_gzip=True), which writes one file per profiling cycle,
`<hostname>_<pid>.<time_ns>.pt.trace.json.gz` (torch/profiler/profiler.py). The model: 4 blocks of two BF16
linear layers (4,096 wide) on 2,048 tokens, one step = one forward, each step inside a `ProfilerStep#` range.

    python3 bench/capture/capture_cycles.py --out OUT_DIR

Truth (OUT_DIR/cycles-capture.json): the files the handler wrote, in order, and each cycle's profiled steps."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    out = Path(ap.parse_args().out)
    traces = out / "cycles"
    traces.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    blocks = [torch.nn.Sequential(torch.nn.Linear(4096, 4096), torch.nn.GELU(), torch.nn.Linear(4096, 4096))
              for _ in range(4)]
    model = torch.nn.Sequential(*blocks).cuda().to(torch.bfloat16)
    x = torch.randn(2048, 4096, device="cuda", dtype=torch.bfloat16)
    steps = 8                                   # (1 wait + 1 warmup + 2 active) x 2 cycles
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
                                  schedule=schedule(wait=1, warmup=1, active=2, repeat=2),
                                  on_trace_ready=tensorboard_trace_handler(str(traces), use_gzip=True)) as prof:
        for _ in range(steps):
            model(x)
            torch.cuda.synchronize()
            prof.step()
    files = sorted(p.name for p in traces.iterdir())
    truth = {"files": files, "cycles": 2, "profiled_steps_per_cycle": 2, "pid": os.getpid(),
             "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
             "schedule": "wait=1, warmup=1, active=2, repeat=2"}
    (out / "cycles-capture.json").write_text(json.dumps(truth, indent=1))
    print(json.dumps(truth, indent=1))


if __name__ == "__main__":
    main()
