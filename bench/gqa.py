"""Memory-bound decode attention of GQA models, measured (issue 28 item 6): the HBM efficiency of
one new token per sequence against its KV cache, from the SDPA (flash backend) sweep on the lent
H200 (traces/observed/h200/gqa-decode.json: batch 1-256 x KV 1K-16K x five head layouts).

    python -m bench.gqa        # the fit and the sweep's spread

Each point was timed with CUDA events around one call, so the shortest ones carry the host's
launch time (~45 us of SDPA dispatch before the kernel starts): only points of >= 200 us, where the
cache read dominates, enter the fit. The fit is the median achieved bandwidth over the H200's HBM
peak; it sets `attention_decode_gqa.hbm` on every Hopper board (tracegen/data/hardware.toml), the
memory term GQA decode attention uses (MLA decode keeps the FlashMLA curve)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "traces" / "observed" / "h200" / "gqa-decode.json"
MIN_US = 200.0


def points() -> list[dict]:
    return json.loads(SWEEP.read_text())["sweep"]


def fit() -> dict[str, float]:
    from tracegen.catalog import load_hardware
    peak = load_hardware("h200").hbm_gbps
    used = [p for p in points() if p["us_median"] >= MIN_US]
    eff = np.array([p["bytes"] / p["us_median"] / 1e3 / peak for p in used])
    return {"hbm": float(np.median(eff)), "p10": float(np.percentile(eff, 10)), "p90": float(np.percentile(eff, 90)),
            "n": len(used), "of": len(points()), "peak_gbps": peak}


def main() -> int:
    f = fit()
    print(f"GQA decode attention, H200 SDPA flash sweep: {f['n']} of {f['of']} points >= {MIN_US:g} us; "
          f"HBM efficiency median {f['hbm']:.3f} (p10 {f['p10']:.3f}, p90 {f['p90']:.3f}) of {f['peak_gbps']:,.0f} GB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
