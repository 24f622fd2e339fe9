"""How fast a profiler trace's compute stages run beside communication that holds SMs, as the trace shows it.

Communication kernels that hold SMs (DeepEP's) leave compute fewer, and what that costs differs by op: a short
GEMM whose tiles fill the SMs once may need a second wave (on the DeepEP capture a 30 us projection GEMM takes
59 us beside a dispatch), a long one loses about the SM share, and a kernel already resident when the
communication starts keeps its SMs (the communication waits for them: whatif.sm_waits). A trace of two-batch
overlap runs the same ops both ways, so it measures this itself. An op is a kernel name at one place of its
stage (the n-th kernel of every ATTN, say): one library kernel runs many shapes, and pooling them by name mixes
short instances alone with long ones beside. Per op, each instance that ran mostly beside communication gives
the rate it ran at there (against the op's median alone), the median of those is the op's rate, and a stage's
rate is its ops' combined over their time. An op not seen often enough both ways keeps the SM share (tracegen's
rule, cost.vector_rate); so does a trace with no SM-holding communication."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .intervals import coverage, union

ALONE_SHARE = 0.05      # an instance with less of its run beside communication than this ran alone
BESIDE_SHARE = 0.5      # one with more than this ran beside it (in between: left out of the estimate)
MIN_SEEN = 3            # instances an op needs each way before its own rate replaces the SM share
RATE_FLOOR = 0.2        # the slowest rate an instance may give (a kernel waiting behind others looks slower still)


def beside_shares(s: np.ndarray, e: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    """Per kernel [s, e): the share of its run during which any communication interval [c0, c1) ran."""
    if not len(c0):
        return np.zeros(len(s))
    F = coverage(*union(c0, c1))
    d = e - s
    return np.where(d > 0, (F(e) - F(s)) / np.where(d > 0, d, 1.0), 0.0)


def kernel_keys(kernels: pd.DataFrame) -> np.ndarray:
    """Which kernels are the same op: the same name at the same place in the same stage (`cstage`, its
    `layer` and `microbatch`), so that one kernel name run on several shapes (a GEMM library's, for the
    projections and the experts alike) is not one op."""
    k = kernels.sort_values("start_us")
    nth = k.groupby(["layer", "microbatch", "cstage"], sort=False, observed=True).cumcount()
    keys = k["cstage"].astype(str) + "#" + nth.astype(str) + " " + k["name"].astype(str)
    return keys.reindex(kernels.index).to_numpy()


def kernel_rates(ops: np.ndarray, dur: np.ndarray, share: np.ndarray) -> dict[str, float]:
    """Per op (kernel_keys) seen at least MIN_SEEN times alone and beside: the median over its instances beside
    of the rate that explains their time (alone time = run alone + rate x run beside)."""
    out: dict[str, float] = {}
    frame = pd.DataFrame({"op": ops, "dur": dur, "share": share})
    for name, k in frame.groupby("op", sort=False):
        alone = k.loc[k["share"] < ALONE_SHARE, "dur"].to_numpy()
        beside = k[k["share"] > BESIDE_SHARE]
        if len(alone) < MIN_SEEN or len(beside) < MIN_SEEN:
            continue
        d, f = beside["dur"].to_numpy(), beside["share"].to_numpy()
        r = (float(np.median(alone)) - (1 - f) * d) / (f * d)
        out[str(name)] = float(np.median(np.clip(r, RATE_FLOOR, 1.0)))
    return out


def combined_rate(ops: np.ndarray, dur: np.ndarray, rates: dict[str, float], share_rate: float) -> float:
    """A stage's rate beside communication: its ops' own rates (the SM share where an op has none), combined
    over their time (the stage takes sum(t / rate) for work sum(t))."""
    r = np.array([rates.get(str(n), share_rate) for n in ops])
    total = float(dur.sum())
    return total / float((dur / r).sum()) if total > 0 else share_rate
