"""Which kinds of work slow down when they run sustained on the lent H100, and by how much (run on the
lent H100; ~1.5 minutes).

    python3 bench/capture/power_h100.py --out OUT_DIR

interference_h100.py found the layer capture's expert GEMMs 13-24 % slower run back to back than
one at a time: the card reaches its power limit and lowers its SM clock. This measures the same for
one op of each kind the cost model fits, each shaped as in the capture's prefill layer (4,096
tokens) or its decode counterpart: a large FP8 GEMM (q_up), a decode-sized FP8 GEMM (64 rows, weight
streaming), causal prefill attention (SDPA flash, 128 heads), an elementwise cast, and an HBM copy.
For each: the median kernel time alone (one repetition, synchronise, idle 20 ms: the calibration
sweep's way) and sustained (back to back for `--seconds`, the second half), with the SM clock and
power nvidia-smi reports meanwhile. Writes power.json."""
from __future__ import annotations

import json
import sys
import time
from statistics import median_high
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.capture.capture_h100 import FP8, MODEL, Fp8Linear, attention_prefill, environment, fp8_rows  # noqa: E402
from bench.capture.interference_h100 import Sampler, start  # noqa: E402

DEV = "cuda"
TOKENS = 4096


def ops() -> dict[str, callable]:
    m, h = MODEL, MODEL.heads
    q_up = Fp8Linear(m.q_lora_rank, h * (m.qk_nope_head_dim + m.qk_rope_head_dim))
    x_big = fp8_rows(TOKENS, m.q_lora_rank)
    wo = Fp8Linear(h * m.v_head_dim, m.hidden)
    x_small = fp8_rows(64, h * m.v_head_dim)
    dqk = m.qk_nope_head_dim + m.qk_rope_head_dim
    q = torch.randn(1, h, TOKENS, dqk, device=DEV, dtype=torch.bfloat16)
    k = torch.randn(1, h, TOKENS, dqk, device=DEV, dtype=torch.bfloat16)
    v = torch.randn(1, h, TOKENS, m.v_head_dim, device=DEV, dtype=torch.bfloat16)
    act = torch.randn(TOKENS, 4 * m.moe_intermediate, device=DEV, dtype=torch.bfloat16)
    a = torch.empty(256 << 20, device=DEV, dtype=torch.uint8)
    b = torch.empty_like(a)
    return {"gemm_fp8_4096x24576x1536": lambda: q_up(x_big),
            "gemm_fp8_64x7168x16384": lambda: wo(x_small),
            "attention_prefill_4096": lambda: attention_prefill(q, k, v),
            "cast_bf16_to_fp8": lambda: act.to(FP8),
            "hbm_copy_256MB": lambda: b.copy_(a)}


def timed(fn, n: int) -> list[float]:
    """GPU time of n back-to-back calls; a short spin kernel first, so that the CPU has queued them
    all before the first starts (else an idle GPU's time would include the launch)."""
    evs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    torch.cuda._sleep(2_000_000)
    for s, e in evs:
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) * 1e3 for s, e in evs]


def measure(name: str, fn, sampler: Sampler, seconds: float) -> dict:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    time.sleep(2.0)                                  # cool down: start each op from the idle clock
    alone = []
    t0 = time.time()
    for _ in range(15):
        alone += timed(fn, 1)
        time.sleep(0.02)
    t1 = time.time()
    idle = sampler.window(t0, t1)
    sustained: list[float] = []
    t2 = time.time()
    while time.time() - t2 < seconds:
        sustained += timed(fn, 50)
    t3 = time.time()
    hot = sampler.window(t2 + (t3 - t2) / 2, t3)
    half = sustained[len(sustained) // 2:]
    return {"op": name, "alone_us": median_high(alone), "sustained_us": median_high(half),
            "slowdown": median_high(half) / median_high(alone),
            "alone_sm_mhz": idle.get("sm_mhz_median"), "sustained_sm_mhz": hot.get("sm_mhz_median"),
            "sustained_power_w": hot.get("power_w_median"), "sustained_reps": len(sustained)}


def main() -> int:
    out, seconds = start(__doc__, 8.0)
    sampler = Sampler()
    time.sleep(0.5)
    results = []
    for name, fn in ops().items():
        results.append(measure(name, fn, sampler, seconds))
        print(json.dumps(results[-1]))
    sampler.stop()
    (out / "power.json").write_text(json.dumps({"environment": environment(), "command": " ".join(sys.argv),
                                                "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
