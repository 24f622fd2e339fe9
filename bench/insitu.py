"""In-situ communication slowdown, measured: how much longer DeepEP's normal kernels take while
compute kernels run beside them than while they run alone (they share the GPU's HBM, L2 and the
SMs' issue slots with the GEMMs; the blog posts call it "slower than the unit test").

    python -m bench.insitu          # the fit, its leave-one-out and its out-of-sample checks

Data (fit): the three prefill runs of traces/observed/deepep-h100x4 (improper, proper, no-sync), the
same kernels and payloads (2 x 4,096 tokens per rank, EP4, intranode); each collective's kernel on
the rank that reached it last (free of waiting for peers) with the share `f` of its time that a
compute kernel of the same rank ran beside it. Improper launches leave the dispatch alone (f ~ 0),
proper and no-sync put it beside the other micro-batch's GEMMs (f ~ 0.9). The model:

    t(f) = t_alone * (1 + slowdown * f)

one `slowdown` for dispatch and combine (least squares on t / t_alone of each op, t_alone each op's
own intercept). Leave-one-out: the slope fitted on dispatch alone predicts combine in situ, and the
reverse. Out of sample: DeepSeek's train.json forward chunk (H800, EP64 internode, 20 SMs) against
DeepEP's first release (Feb 2025) x (1 + slowdown * f), f measured there the same way."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from replay import intervals

ROOT = Path(__file__).resolve().parents[1]
CAP = ROOT / "traces" / "observed" / "deepep-h100x4"
RUNS = ("prefill-improper", "prefill-proper", "prefill-nosync")
OPS = {"dispatch": "intranode::dispatch<", "combine": "intranode::combine<"}


@dataclass(frozen=True)
class Sample:
    op: str
    run: str
    dur_us: float
    f: float            # share of the kernel's time a compute kernel of its rank ran beside it


def compute_share(starts: np.ndarray, ends: np.ndarray, cs: np.ndarray, ce: np.ndarray) -> np.ndarray:
    """For each interval, the share of it covered by the union of the compute intervals."""
    u0, u1 = intervals.union(cs, ce)
    if not len(u0):
        return np.zeros(len(starts))
    F = intervals.coverage(u0, u1)
    d = ends - starts
    return np.where(d > 0, (F(ends) - F(starts)) / np.where(d > 0, d, 1), 0.0)


@lru_cache(maxsize=None)
def samples() -> tuple[Sample, ...]:
    """Every matched dispatch / combine kernel of the fit runs on its last-arriving rank."""
    from replay.analyze import analyze
    out = []
    for run in RUNS:
        a = analyze(CAP / run, use_cache=False, progress=False)
        ev, pt = a.events, a.peers.table
        last = pt[pt["rank"] == pt["last_rank"]]
        for rank in sorted(last["rank"].unique()):
            comp = ev[(ev["rank"] == rank) & (ev["klass"] == "compute")]
            cs = comp["start_us"].to_numpy(float)
            ce = cs + comp["dur_us"].to_numpy(float)
            mine = last[last["rank"] == rank]
            for op, pat in OPS.items():
                k = mine[mine["name"].str.contains(pat, regex=False)]
                s, e = k["start_us"].to_numpy(float), k["end_us"].to_numpy(float)
                out += [Sample(op, run, float(d), float(f)) for d, f in zip(e - s, compute_share(s, e, cs, ce))]
    return tuple(out)


ALONE, BESIDE = 0.2, 0.8     # f below: alone; f at or above: in situ (between: partly, left out)


def fit_op(xs: list[Sample]) -> dict[str, float]:
    """One op's median time alone and in situ, the mean f in situ, and its own slowdown."""
    alone = float(np.median([x.dur_us for x in xs if x.f < ALONE]))
    beside = [x for x in xs if x.f >= BESIDE]
    t, f = float(np.median([x.dur_us for x in beside])), float(np.mean([x.f for x in beside]))
    return {"alone_us": alone, "in_situ_us": t, "f": f, "slowdown": (t / alone - 1) / f}


def fit(ops: tuple[str, ...] = tuple(OPS)) -> dict[str, float]:
    """One slowdown for `ops`: the mean of their own."""
    per = {op: fit_op([x for x in samples() if x.op == op]) for op in OPS}
    return {"slowdown": float(np.mean([per[op]["slowdown"] for op in ops])),
            **{f"{op}_{k}": v for op in OPS for k, v in per[op].items()}}


def leave_one_out() -> list[dict]:
    """The slowdown fitted on one op predicts the other op's in-situ median from its own alone time."""
    out = []
    full = fit()
    for held in OPS:
        other = tuple(o for o in OPS if o != held)
        s = fit(other)["slowdown"]
        obs, f = full[f"{held}_in_situ_us"], full[f"{held}_f"]
        pred = full[f"{held}_alone_us"] * (1 + s * f)
        out.append({"fitted_on": other[0], "predicts": held, "slowdown": s, "f": f, "observed_us": obs,
                    "predicted_us": pred, "error_pct": 100 * (pred / obs - 1)})
    return out


def train_rows() -> list[dict]:
    """train.json's forward dispatch / combine (medians) against DeepEP's first release at EP64
    slowed by the in-situ term at the share of compute measured beside them. One rank's kernels:
    any wait for later peers is in the observed time (not in the prediction)."""
    from . import trainjson
    if not trainjson.TRAIN.exists():
        return []
    ev = [e for e in trainjson._events(trainjson.TRAIN) if e.get("ph") == "X" and e.get("cat") == "kernel"]
    comp = [e for e in ev if not any(c in e["name"] for c in trainjson.COMM_KERNELS)]
    cs = np.array([e["ts"] for e in comp], float)
    ce = cs + np.array([e["dur"] for e in comp], float)
    forward = trainjson.forward_kernels()
    slowdown = load_slowdown()
    first = _first_release_gbps()
    out = []
    for op in ("dispatch", "combine"):
        durs = set(forward[op])
        ks = [e for e in ev if f"internode::{op}<" in e["name"] and e["dur"] in durs]
        s = np.array([e["ts"] for e in ks], float)
        f = float(np.mean(compute_share(s, s + np.array([e["dur"] for e in ks], float), cs, ce)))
        alone = trainjson.counted_bytes(op) / (first[op] * 1e3)
        obs = float(np.median(forward[op]))
        pred = alone * (1 + slowdown * f)
        out.append({"op": op, "f": f, "unit_test_us": alone, "predicted_us": pred, "observed_us": obs,
                    "error_pct": 100 * (pred / obs - 1)})
    return out


def _first_release_gbps() -> dict[str, float]:
    from tracegen.catalog import load_hardware
    rel = load_hardware("h800").backend("normal").pick("first")
    return {op: rel.at(op, 64) for op in ("dispatch", "combine")}


def load_slowdown() -> float:
    from tracegen.catalog import load_hardware
    return load_hardware("h100").in_situ.slowdown


def report() -> str:
    f = fit()
    xs = samples()
    lines = [f"in-situ slowdown fitted on {len(xs)} kernels of {', '.join(RUNS)} (traces/observed/deepep-h100x4): "
             f"{f['slowdown']:.4f}"]
    for op in OPS:
        n0 = sum(1 for x in xs if x.op == op and x.f < ALONE)
        n1 = sum(1 for x in xs if x.op == op and x.f >= BESIDE)
        lines.append(f"  {op:<9} alone (f < {ALONE}, n {n0}) {f[op + '_alone_us']:.1f} us, beside compute "
                     f"(f >= {BESIDE}, n {n1}, mean f {f[op + '_f']:.2f}) {f[op + '_in_situ_us']:.1f} us: "
                     f"slowdown {f[op + '_slowdown']:.4f}")
    lines.append("leave-one-out (slope from one op, the other's in-situ median from its alone time):")
    for r in leave_one_out():
        lines.append(f"  fit {r['fitted_on']:<9} -> {r['predicts']:<9} slowdown {r['slowdown']:.3f}, f {r['f']:.2f}: "
                     f"observed {r['observed_us']:.1f} us, predicted {r['predicted_us']:.1f} us ({r['error_pct']:+.1f}%)")
    tr = train_rows()
    if tr:
        lines.append(f"out of sample, train.json forward (H800 EP64 internode; first release x (1 + {load_slowdown():.3f} f)):")
        for r in tr:
            lines.append(f"  {r['op']:<9} f {r['f']:.2f}: unit test {r['unit_test_us']:,.0f} us, predicted "
                         f"{r['predicted_us']:,.0f} us, observed {r['observed_us']:,.0f} us ({r['error_pct']:+.1f}%)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--json" in argv:
        print(json.dumps({"fit": fit(), "leave_one_out": leave_one_out(), "train": train_rows()}, indent=1))
    else:
        print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
