"""How much a compute-bound kernel slows down when it fills only part of the time, the rest being
memory-bound work or idle (run on the lent H100; ~1.5 minutes).

    python3 bench/capture/duty_h100.py --out OUT_DIR

power_h100.py found compute-bound kernels (a large FP8 GEMM, prefill attention) 12-15 % slower run
back to back for seconds than one at a time: the card reaches its 700 W limit and lowers its SM
clock; memory-bound kernels stay at the boost clock. A real step interleaves both kinds (and idle
time waiting on the network), so the question the cost model needs answered is how the slowdown
depends on the compute-bound share of the time ("duty"). Each condition repeats a cycle of `a`
large FP8 GEMMs and `b` fillers - HBM copies (memory-bound, ~480 W) or spin kernels (the SMs
waiting, as on a comm wait) - back to back for `--seconds`; duty = a x GEMM time / cycle time,
both at the boost clock (timed alone first). Recorded per condition (second half of the run): the
GEMM's median time over its time alone, the fillers' likewise, the SM clock and the power.
Writes duty.json."""
from __future__ import annotations

import json
import sys
import time
from statistics import median_high
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.capture.capture_h100 import MODEL, Fp8Linear, environment, fp8_rows  # noqa: E402
from bench.capture.interference_h100 import Sampler, start  # noqa: E402

DEV = "cuda"
TOKENS = 4096
SPIN_CYCLES = 400_000          # ~200 us of torch.cuda._sleep at 1.98 GHz
# (GEMMs, fillers) per cycle: from all memory-bound to all compute-bound
MIXES = ((1, 4), (1, 2), (1, 1), (2, 1), (4, 1), (8, 1))


def kernels() -> dict[str, callable]:
    m, h = MODEL, MODEL.heads
    q_up = Fp8Linear(m.q_lora_rank, h * (m.qk_nope_head_dim + m.qk_rope_head_dim))
    x = fp8_rows(TOKENS, m.q_lora_rank)
    a = torch.empty(256 << 20, device=DEV, dtype=torch.uint8)
    b = torch.empty_like(a)
    return {"gemm": lambda: q_up(x), "copy": lambda: b.copy_(a),
            "spin": lambda: torch.cuda._sleep(SPIN_CYCLES)}


def alone_us(fn, reps: int = 15) -> float:
    """Median time of one call after idling (the calibration sweep's way)."""
    out = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(2_000_000)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        out.append(s.elapsed_time(e) * 1e3)
        time.sleep(0.02)
    return median_high(out)


def sustained(cycle: list[tuple[str, callable]], seconds: float) -> dict[str, list[float]]:
    """Each kernel's time, by name, over `seconds` of the cycle repeated back to back."""
    times: dict[str, list[float]] = {}
    t0 = time.time()
    while time.time() - t0 < seconds:
        evs = []
        torch.cuda._sleep(1_000_000)
        for _ in range(20):
            for name, fn in cycle:
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                fn()
                e.record()
                evs.append((name, s, e))
        torch.cuda.synchronize()
        for name, s, e in evs:
            times.setdefault(name, []).append(s.elapsed_time(e) * 1e3)
    return times


def main() -> int:
    out, seconds = start(__doc__, 6.0)
    sampler = Sampler()
    ks = kernels()
    for fn in ks.values():
        fn()
    torch.cuda.synchronize()
    time.sleep(2.0)
    alone = {name: alone_us(fn) for name, fn in ks.items()}
    print(json.dumps({"alone_us": alone}))
    results = []
    for filler in ("copy", "spin"):
        for a, b in MIXES + ((1, 0),) * (filler == "copy"):
            cycle = [("gemm", ks["gemm"])] * a + [(filler, ks[filler])] * b
            time.sleep(3.0)                      # cool down between conditions
            t0 = time.time()
            times = sustained(cycle, seconds)
            t1 = time.time()
            hot = sampler.window(t0 + (t1 - t0) / 2, t1)
            g = times["gemm"][len(times["gemm"]) // 2:]
            row = {"filler": filler if b else "none", "gemms": a, "fillers": b,
                   "duty": a * alone["gemm"] / (a * alone["gemm"] + b * alone[filler]),
                   "gemm_us": median_high(g), "gemm_slowdown": median_high(g) / alone["gemm"],
                   "sm_mhz": hot.get("sm_mhz_median"), "power_w": hot.get("power_w_median")}
            if b:
                f = times[filler][len(times[filler]) // 2:]
                row.update(filler_us=median_high(f), filler_slowdown=median_high(f) / alone[filler])
            results.append(row)
            print(json.dumps(row))
    sampler.stop()
    (out / "duty.json").write_text(json.dumps({"environment": environment(), "command": " ".join(sys.argv),
                                               "alone_us": alone, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
