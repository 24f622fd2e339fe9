"""Fit the power-limit model (tracegen/power.py) to the lent H100's measurements and print (or write)
the catalog's [h100.power] table:

    python -m bench.power            # the fit, and how well it reproduces each measured mix
    python -m bench.power --write    # ... and rewrite [h100.power] in tracegen/data/hardware.toml

Inputs (committed with the scripts that produced them, bench/capture/):
- traces/observed/h100/duty.json: a large FP8 GEMM (compute-bound) in cycles with HBM copies
  (memory-bound) or spin kernels (the SMs waiting), at compute-bound shares of 0.23-1.0 of the time;
  the SM clock, the power and each kernel's time, sustained for 6 s.
- traces/observed/h100/power.json: one op of each fitted kind alone and back to back (the
  per-kind slowdown at the limit).

The fit: the draws at boost (compute_w, memory_w, idle_w) by least squares over the mixes that kept
the boost clock (their mean draw is then what they demand); `saturate` by least squares over the
throttled mixes' GEMM slowdowns; the per-kind slowdowns as power.json measured them (the grouped
and masked GEMMs take the GEMM's: one kernel family)."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from tracegen.catalog import Power
from tracegen.power import Draw, draw

ROOT = Path(__file__).resolve().parents[1]
OBSERVED = ROOT / "traces" / "observed" / "h100"
CATALOG = ROOT / "tracegen" / "data" / "hardware.toml"
LIMIT_W = 700.0            # H100 SXM5 board power limit (datasheet; nvidia-smi's power.limit on the lent card)
BOOST_MHZ = 1980.0
SOURCE = ("fitted [h100-power]: lent H100, mixes of compute- and memory-bound kernels (traces/observed/h100/duty.json) and "
          "per-kind slowdowns back to back (power.json); bench/power.py")


def load(folder: Path = OBSERVED) -> tuple[list[dict], dict[str, float]]:
    duty = json.loads((folder / "duty.json").read_text())["results"]
    per_op = {r["op"]: r["slowdown"] for r in json.loads((folder / "power.json").read_text())["results"]}
    return duty, per_op


def fit(duty: list[dict], per_op: dict[str, float]) -> Power:
    cool = [r for r in duty if r["sm_mhz"] >= BOOST_MHZ and r["fillers"]]
    a = np.array([[r["duty"], (1 - r["duty"]) * (r["filler"] == "copy"), (1 - r["duty"]) * (r["filler"] == "spin")]
                  for r in cool])
    (compute_w, memory_w, idle_w), *_ = np.linalg.lstsq(a, np.array([r["power_w"] for r in cool]), rcond=None)
    full = next(r["gemm_slowdown"] for r in duty if not r["fillers"])
    gemm = per_op["gemm_fp8_4096x24576x1536"]
    slowdown = {"gemm": gemm, "grouped_gemm": gemm, "grouped_gemm_masked": gemm,
                "attention": per_op["attention_prefill_4096"]}
    hot = [r for r in duty if r["fillers"] and r["sm_mhz"] < BOOST_MHZ]

    def loss(sat: float) -> float:
        p = Power(LIMIT_W, compute_w, memory_w, idle_w, sat, slowdown, SOURCE)
        return sum((predicted_slowdown(r, p, full) - r["gemm_slowdown"]) ** 2 for r in hot)

    sats = np.linspace(0.05, 1.0, 96)
    sat = float(sats[int(np.argmin([loss(s) for s in sats]))])
    return Power(LIMIT_W, round(float(compute_w), 1), round(float(memory_w), 1), round(float(idle_w), 1),
                 round(sat, 3), {k: round(v, 4) for k, v in slowdown.items()}, SOURCE)


def mix_draw(r: dict, p: Power) -> Draw:
    """The model's draw of one measured mix, per unit of its time at boost: the GEMMs' share is
    compute-bound; copies keep the SMs busy (memory-bound), spin kernels leave them waiting."""
    busy = 1.0 if r["filler"] in ("copy", "none") else r["duty"]
    return draw(r["duty"], busy, 1.0, p)


def predicted_slowdown(r: dict, p: Power, full: float) -> float:
    """The model's GEMM slowdown in one measured mix."""
    return 1.0 + (full - 1.0) * mix_draw(r, p).throttle


def table(p: Power, duty: list[dict]) -> str:
    full = next(r["gemm_slowdown"] for r in duty if not r["fillers"])
    lines = [f"[h100.power]  limit {p.limit_w:g} W; draws at boost: compute-bound {p.compute_w:g} W, "
             f"memory-bound {p.memory_w:g} W, waiting {p.idle_w:g} W; full slowdown at {p.saturate:g} of the excess",
             "", "| filler | compute-bound share | SM MHz | W measured | W model (boost) | GEMM slowdown measured | model |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in duty:
        d = mix_draw(r, p)
        lines.append(f"| {r['filler']} | {r['duty']:.2f} | {r['sm_mhz']:.0f} | {r['power_w']:.0f} | {d.demand_w:.0f} | "
                     f"{r['gemm_slowdown']:.3f} | {predicted_slowdown(r, p, full):.3f} |")
    return "\n".join(lines)


def power_line(p: Power) -> str:
    slow = ", ".join(f"{k} = {v:g}" for k, v in p.slowdown.items())
    return (f"[h100.power]\nlimit_w = {p.limit_w:g}\ncompute_w = {p.compute_w:g}\nmemory_w = {p.memory_w:g}\n"
            f"idle_w = {p.idle_w:g}\nsaturate = {p.saturate:g}\nslowdown = {{ {slow} }}\nsource = \"{p.source}\"\n")


def write(p: Power, path: Path = CATALOG) -> None:
    text = path.read_text()
    new, n = re.subn(r"\[h100\.power\]\n(?:[^\[\n][^\n]*\n)*", power_line(p), text)
    if n != 1:
        raise SystemExit(f"{path}: expected one [h100.power] table")
    path.write_text(new)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="rewrite [h100.power] in the hardware catalog")
    args = ap.parse_args(argv)
    duty, per_op = load()
    p = fit(duty, per_op)
    print(table(p, duty))
    print()
    print(power_line(p))
    if args.write:
        write(p)
        print(f"wrote {CATALOG.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
