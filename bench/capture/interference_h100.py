"""Why the expert GEMMs of the single-H100 layer capture run slower than the same shapes in the sweep
(run on the lent H100; ~1 minute).

    python3 bench/capture/interference_h100.py --out OUT_DIR

The layer capture (traces/observed/h100) runs its expert GEMMs while host copies of the dispatch and
combine payload (the stand-in for the network) stream over PCIe on a second stream; the sweep runs
them alone, synchronising after each repetition. This times the capture's MLP stage (8 experts,
4,096 rows each, FP8 up / cast / down per expert, as capture_h100.py runs it) per kernel, under:

  alone        one repetition at a time, synchronised (the sweep's way)
  sustained    back to back for a few seconds, nothing else on the GPU (clocks under load)
  host_copies  back to back while a second stream copies the capture's payloads device -> host and
               host -> device without pause (the layer capture's situation)
  device_copy  back to back while a second stream copies 1 GB device -> device (HBM contention, for
               contrast: copy engines too, but no PCIe)

and samples the SM clock and power draw (nvidia-smi) through each. Writes interference.json."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from statistics import median_high
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.capture.capture_h100 import FP8, MODEL, Experts, environment, fp8_rows  # noqa: E402

DEV = "cuda"
EXPERTS, ROWS = 8, 4096                         # the layer capture's MLP stage (capture.json layer_runs)
DISPATCH_BYTES, COMBINE_BYTES = 90832896, 176160768   # its host-copy payloads (capture.json)


class Sampler:
    """nvidia-smi's SM clock (MHz) and power (W), every 50 ms, while a condition runs."""

    def __init__(self):
        self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits",
                                      "-lms", "50"], stdout=subprocess.PIPE, text=True)
        self.rows: list[tuple[float, float, float]] = []
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                clk, pw = (float(x) for x in line.strip().split(","))
                self.rows.append((time.time(), clk, pw))
            except ValueError:
                continue

    def window(self, t0: float, t1: float) -> dict:
        sel = [(c, p) for t, c, p in self.rows if t0 <= t <= t1]
        if not sel:
            return {"samples": 0}
        cs, ps = sorted(c for c, _ in sel), sorted(p for _, p in sel)
        return {"samples": len(sel), "sm_mhz_median": cs[len(cs) // 2], "sm_mhz_min": cs[0],
                "power_w_median": ps[len(ps) // 2], "power_w_max": ps[-1]}

    def stop(self) -> None:
        self.proc.terminate()


def mlp_timed(ex: Experts, xs: list[torch.Tensor]) -> list[tuple[torch.cuda.Event, ...]]:
    """The capture's MLP stage with an event between kernels: (start, after up, after cast, after down)."""
    marks = []
    for x, up, down in zip(xs, ex.up, ex.down):
        e = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        e[0].record()
        h = up(x)
        e[1].record()
        h8 = h[:, : ex.inter].to(FP8)
        e[2].record()
        down(h8)
        e[3].record()
        marks.append(tuple(e))
    return marks


def summarise(all_marks: list[list[tuple]]) -> dict:
    up, cast, down, stage = [], [], [], []
    for marks in all_marks:
        for e in marks:
            up.append(e[0].elapsed_time(e[1]) * 1e3)
            cast.append(e[1].elapsed_time(e[2]) * 1e3)
            down.append(e[2].elapsed_time(e[3]) * 1e3)
        stage.append(marks[0][0].elapsed_time(marks[-1][3]) * 1e3)
    return {"reps": len(all_marks), "up_us": median_high(up), "cast_us": median_high(cast),
            "down_us": median_high(down), "stage_us": median_high(stage)}


def run(cond: str, ex: Experts, xs: list, sampler: Sampler, seconds: float, bufs: dict) -> dict:
    side = torch.cuda.Stream()
    stop = threading.Event()

    def copier() -> None:                           # keeps the side stream busy until told to stop
        with torch.cuda.stream(side):
            while not stop.is_set():
                if cond == "host_copies":
                    bufs["d_host"].copy_(bufs["d_dev"], non_blocking=True)
                    bufs["c_dev"].copy_(bufs["c_host"], non_blocking=True)
                else:
                    bufs["big_b"].copy_(bufs["big_a"], non_blocking=True)
                side.synchronize()

    th = threading.Thread(target=copier, daemon=True) if cond in ("host_copies", "device_copy") else None
    if th:
        th.start()
        time.sleep(0.2)
    torch.cuda.synchronize()
    t0 = time.time()
    marks = []
    if cond == "alone":
        for _ in range(20):
            marks.append(mlp_timed(ex, xs))
            torch.cuda.synchronize()
            time.sleep(0.02)
    else:
        while time.time() - t0 < seconds:
            for _ in range(10):
                marks.append(mlp_timed(ex, xs))
            torch.cuda.synchronize()
    t1 = time.time()
    if th:
        stop.set()
        th.join()
    torch.cuda.synchronize()
    keep = marks if cond == "alone" else marks[len(marks) // 2:]     # the second half: clocks settled
    return {"condition": cond, "seconds": t1 - t0, **summarise(keep), **sampler.window(t0 + (t1 - t0) / 2, t1)}


def start(doc: str, seconds: float) -> tuple[Path, float]:
    """The measurement scripts' command line (--out, --seconds): the output folder (made) and the
    sustained run's length; torch seeded."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "capture-out"))
    ap.add_argument("--seconds", type=float, default=seconds, help="how long each sustained run lasts")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    return out, args.seconds


def main() -> int:
    out, seconds = start(__doc__, 6.0)
    ex = Experts(EXPERTS, MODEL.hidden, MODEL.moe_intermediate)
    xs = [fp8_rows(ROWS, MODEL.hidden) for _ in range(EXPERTS)]
    bufs = {"d_dev": torch.randint(0, 255, (DISPATCH_BYTES,), device=DEV, dtype=torch.uint8),
            "d_host": torch.empty(DISPATCH_BYTES, dtype=torch.uint8, pin_memory=True),
            "c_host": torch.randint(0, 255, (COMBINE_BYTES,), dtype=torch.uint8).pin_memory(),
            "c_dev": torch.empty(COMBINE_BYTES, device=DEV, dtype=torch.uint8),
            "big_a": torch.empty(1 << 30, device=DEV, dtype=torch.uint8), "big_b": torch.empty(1 << 30, device=DEV,
                                                                                              dtype=torch.uint8)}
    for _ in range(3):
        mlp_timed(ex, xs)
    torch.cuda.synchronize()
    sampler = Sampler()
    time.sleep(0.5)
    results = []
    for cond in ("alone", "sustained", "host_copies", "device_copy", "alone"):
        results.append(run(cond, ex, xs, sampler, seconds, bufs))
        print(json.dumps(results[-1]))
        time.sleep(2.0)                              # cool down between conditions
    sampler.stop()
    meta = {"environment": environment(), "command": " ".join(sys.argv), "experts": EXPERTS, "rows_per_expert": ROWS,
            "dispatch_bytes": DISPATCH_BYTES, "combine_bytes": COMBINE_BYTES, "results": results}
    (out / "interference.json").write_text(json.dumps(meta, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
