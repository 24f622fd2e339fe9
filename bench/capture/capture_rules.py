"""Capture real traces that test the rules found on traces made outside this project (run on one lent GPU).

    python3 bench/capture/capture_rules.py --out OUT_DIR [--quick]

Every file is a real torch.profiler (Kineto) trace, gzipped; `capture.json` holds the environment and,
per file, what was run (the truth tests/test_outside_traces.py compares `replay` against). Plain
PyTorch, nothing shaped to what `replay` expects:

  train-threads   a small MLP trained for 3 profiled steps (forward on the main thread, backward on the
                  autograd engine's thread, SGD); a hook on one weight's gradient sleeps SLEEP_S on the
                  autograd thread every step (host work outside ops, on the thread that launches next)
  first-call      a small CNN with cudnn.benchmark=True, its first call inside the profiled window
                  (cuDNN autotunes the convolutions), then a second call; two iterations, no
                  ProfilerStep ranges
  gpu-only        the train-threads loop profiled with ProfilerActivity.CUDA only (no CPU events)
"""
from __future__ import annotations

import argparse
import gzip
import json
import platform
import shutil
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule

SLEEP_S = 0.002         # the backward hook's host pause


def _mlp(width: int, depth: int, device: str) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers).to(device)


def _save(prof_or_path, out: Path, name: str) -> str:
    raw = out / f"{name}.json"
    prof_or_path.export_chrome_trace(str(raw))
    with open(raw, "rb") as src, gzip.open(out / f"{name}.json.gz", "wb", compresslevel=9) as dst:
        shutil.copyfileobj(src, dst)
    raw.unlink()
    return f"{name}.json.gz"


def train_threads(out: Path, device: str, quick: bool, activities: list, name: str) -> dict:
    width, depth, batch = (64, 4, 16) if quick else (1024, 8, 256)
    torch.manual_seed(0)
    model = _mlp(width, depth, device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(batch, width, device=device)
    hooked = model[2 * (depth // 2)].weight

    def pause(grad: torch.Tensor) -> torch.Tensor:
        time.sleep(SLEEP_S)
        return grad
    hooked.register_hook(pause)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
    for _ in range(3):
        step()                  # warm the kernels, the allocator and the autograd engine's thread
    if device == "cuda":
        torch.cuda.synchronize()
    with profile(activities=activities, schedule=schedule(wait=1, warmup=1, active=3)) as prof:
        for _ in range(5):
            step()
            prof.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return {"file": _save(prof, out, name), "steps": 3, "layers": depth, "width": width, "batch": batch,
            "pause_s": SLEEP_S, "pauses_per_step": 1, "pause_thread": "autograd engine (backward hook)",
            "cpu_profiled": ProfilerActivity.CPU in activities}


def first_call(out: Path, device: str, quick: bool) -> dict:
    torch.backends.cudnn.benchmark = True
    ch, hw, batch = (8, 32, 2) if quick else (64, 224, 32)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, ch, 7, stride=2, padding=3), torch.nn.ReLU(),
        torch.nn.Conv2d(ch, 2 * ch, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(2 * ch, 2 * ch, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(2 * ch, 10)).to(device)
    x = torch.randn(batch, 3, hw, hw, device=device)
    t = []
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(2):                      # the first call autotunes, the second reuses the choice
            t0 = time.perf_counter()
            with torch.no_grad():
                net(x)
            if device == "cuda":
                torch.cuda.synchronize()
            t.append(time.perf_counter() - t0)
    return {"file": _save(prof, out, "first-call"), "iterations": 2, "profiler_steps": 0,
            "cudnn_benchmark": True, "iteration_s": t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="tiny shapes (a smoke run; on CPU too)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    runs = {"train-threads": train_threads(out, device, args.quick, gpu, "train-threads"),
            "gpu-only": train_threads(out, device, args.quick,
                                      [ProfilerActivity.CUDA] if device == "cuda" else gpu, "gpu-only"),
            "first-call": first_call(out, device, args.quick)}
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "gpu": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
           "date": time.strftime("%Y-%m-%d"), "script": "bench/capture/capture_rules.py", "quick": args.quick}
    (out / "capture.json").write_text(json.dumps({"environment": env, "runs": runs}, indent=1) + "\n")
    print(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
