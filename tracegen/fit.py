"""Fit the cost model to measured op times: each op kind's efficiency curve, the kernel floors,
the HBM efficiency and the host-link copy efficiency, so that `cost.op_time` reproduces the
measurements. The measurements (`Obs`) come from replay/calibrate.py, which reads traces; this
module knows nothing of trace files.

Model (the default preset's, evaluated by `cost.op_time`): time = max(compute, HBM, floor) with
compute = sum over the op's matrix products of 2MNK / (peak x eff_kind(M, N, K)),
eff(M, N, K) = max x g(M) x N/(N + n_half) x K/(K + k_half), g(M) = M^p / (M^p + m_half^p),
HBM = bytes / (HBM bandwidth x eff_hbm) and floor = floor_us per kernel.

Fit: the floor is the fastest single matrix kernel observed; eff_hbm the median achieved
bandwidth of pure copies (else the value that best explains the memory-bound ops); each kind's
(max, m_half, n_half, k_half, p) by coordinate descent on grids followed by a joint local search,
minimising the sqrt(time)-weighted L1 error of log time. A few rounds alternate the kinds, since
the HBM bound of one depends on the others."""
from __future__ import annotations

import re

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from .catalog import CURVE_FALLBACK, EffCurve, Hardware
from .cost import link_rate, op_time
from .ops import Gemm, Work
from .plan import PCIE_COPY, Plan
from .preset import Preset, load_preset

FITTED = ("gemm", "grouped_gemm", "grouped_gemm_masked", "attention", "attention_decode")
# what `replay calibrate` fits by default: decode attention only from kernels measured as such
# (bench/kernels.py, FlashMLA), not from the stand-ins a capture may annotate
CALIBRATED = ("gemm", "grouped_gemm", "grouped_gemm_masked", "attention")


@dataclass(frozen=True)
class Obs:
    """One measured op: what it computes and moves, and how long it took."""
    kind: str             # efficiency kind: gemm, grouped_gemm, attention, hbm (device copy), pcie (host copy)
    name: str
    m: float
    flops: float
    bytes: float
    rate: str             # "bf16" or an 8-bit format ("fp8", "int8"): which peak the FLOPs run at
    us: float
    kernels: int = 1      # kernels the op ran as (each takes at least the kind's floor)
    profiled: bool = True     # measured by a profiler (False: read from a tracegen trace)
    held_out: bool = False
    gemms: tuple[Gemm, ...] = ()   # its matrix products (M, N, K, count), when known
    phase: str = "prefill"


@lru_cache(maxsize=1)
def _default() -> Preset:
    return load_preset("default")


def as_work(o: Obs, hw: Hardware) -> Work:
    """The cost model's view of a measured op (a kind without a curve is timed by its bytes)."""
    flops = o.flops if hw.has_curve(o.kind) else 0.0
    return Work(o.name, "", "", o.kind, flops=flops, rate=o.rate, m=o.m, hbm_bytes=o.bytes, kernels=o.kernels,
                gemms=o.gemms if flops else ())


def _plan(phase: str) -> Plan:
    return Plan(phase=phase, batch=1, seq_len=1)


def predict_us(obs: list[Obs], hw: Hardware) -> np.ndarray:
    """The default preset's time for each observation under `hw`: `cost.op_time`, and host-link
    copies at the pcie-copy backend's link rate."""
    out = np.empty(len(obs))
    pcie = link_rate(hw, _default(), "pcie", hw.comm[PCIE_COPY].bw_eff) if PCIE_COPY in hw.comm else None
    for i, o in enumerate(obs):
        if o.kind == "pcie" and pcie is not None:
            out[i] = o.bytes / (pcie * 1e3)
        else:
            out[i] = op_time(as_work(o, hw), _plan(o.phase), hw, _default()).us
    return out


def compute_us(obs: list[Obs], hw: Hardware) -> np.ndarray:
    """The compute term alone (no HBM bound, no floor) of each observation."""
    return np.array([op_time(as_work(o, hw), _plan(o.phase), hw, _default()).terms.get("compute_ms", 0.0) * 1e3
                     for o in obs])


def _floor(obs: list[Obs], hw: Hardware) -> np.ndarray:
    return np.array([hw.curve(o.kind).floor_us * o.kernels if hw.has_curve(o.kind) else 0.0 for o in obs])


def _hbm_us(obs: list[Obs], hw: Hardware, eff: float) -> np.ndarray:
    return np.array([o.bytes for o in obs], dtype=float) / (hw.hbm_gbps * 1e3 * eff)


_MAXES = np.linspace(0.02, 1.0, 197)
_HALVES = np.concatenate([[0.0], np.logspace(-1, 5, 181)])
_POWS = np.array([1.0, 1.5, 2.0, 3.0])


class _Products:
    """All products of a set of ops flattened, so one curve is evaluated for every op at once
    (the optimiser's inner loop: the same compute term as `op_time`, vectorised)."""

    def __init__(self, obs: list[Obs], hw: Hardware):
        rows = []
        for i, o in enumerate(obs):
            peak = (hw.bf16_tflops if o.rate == "bf16" else hw.q8_tflops) * 1e6 * _default().usable_peak
            gs = o.gemms or ((o.m, 0.0, 0.0, o.flops / max(2 * o.m, 1e-9) if o.m else 0.0),)
            for m, n, k, c in gs:
                if m and c:
                    work = 2 * m * n * k * c if o.gemms else o.flops
                    rows.append((i, m, n, k, work / peak))
        a = np.array(rows, dtype=float).reshape(-1, 5)
        self.idx = a[:, 0].astype(int)
        self.m, self.n, self.k, self.t_at_peak = a[:, 1], a[:, 2], a[:, 3], a[:, 4]
        self.n_obs = len(obs)

    def compute_us(self, mx: float, mh: float, nh: float, kh: float, mp: float = 1.0) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.where(self.m > 0, 1.0 / (1.0 + (mh / np.maximum(self.m, 1e-30)) ** mp), 1.0) if mh > 0 else 1.0
            fn = np.where(self.n > 0, self.n / (self.n + nh), 1.0) if nh > 0 else 1.0
            fk = np.where(self.k > 0, self.k / (self.k + kh), 1.0) if kh > 0 else 1.0
        eff = mx * g * fn * fk
        return np.bincount(self.idx, self.t_at_peak / eff, minlength=self.n_obs)

    def compute_us_many(self, params: np.ndarray) -> np.ndarray:
        """compute_us for each row (mx, mh, nh, kh, mp) of `params`, one row of op times per row:
        the same arithmetic element by element (the grid searches' trials at once; a trial moves
        one or two parameters, so each factor is computed once per distinct value of its own)."""
        m, n, k = self.m[None, :], self.n[None, :], self.k[None, :]

        def factor(cols: np.ndarray, f: Callable[..., np.ndarray]) -> np.ndarray:
            uniq, inv = np.unique(cols, axis=0, return_inverse=True)
            with np.errstate(divide="ignore", invalid="ignore"):
                return f(*(uniq[:, j:j + 1] for j in range(uniq.shape[1])))[inv.reshape(-1)]

        g = factor(params[:, [1, 4]], lambda mh, mp: np.where(
            mh > 0, np.where(m > 0, 1.0 / (1.0 + (mh / np.maximum(m, 1e-30)) ** mp), 1.0), 1.0))
        fn = factor(params[:, [2]], lambda nh: np.where(nh > 0, np.where(n > 0, n / (n + nh), 1.0), 1.0))
        fk = factor(params[:, [3]], lambda kh: np.where(kh > 0, np.where(k > 0, k / (k + kh), 1.0), 1.0))
        eff = params[:, 0:1] * g * fn * fk
        rows = len(params)
        flat = (np.arange(rows)[:, None] * self.n_obs + self.idx[None, :]).ravel()
        return np.bincount(flat, (self.t_at_peak[None, :] / eff).ravel(), minlength=rows * self.n_obs
                           ).reshape(rows, self.n_obs)


Combine = Callable[[np.ndarray], np.ndarray]     # compute times -> op times (memory and floor folded in)


def _bound(mem_us: np.ndarray, floor_us: np.ndarray | float, blend: float | np.ndarray) -> Combine:
    """Op times from compute times, as cost.roofline combines the terms, over arrays; `blend` is one
    for all the ops or one per op (a column, where the ops are of several kinds)."""
    b = np.asarray(blend, dtype=float)
    if not b.any():
        lower = np.maximum(mem_us, floor_us)
        return lambda c: np.maximum(c, lower)
    if b.ndim == 0:
        return lambda c: np.maximum((c ** b + mem_us ** b) ** (1.0 / b), floor_us)
    p = np.where(b > 0, b, 1.0)
    return lambda c: np.maximum(np.where(b > 0, (c ** p + mem_us ** p) ** (1.0 / p), np.maximum(c, mem_us)), floor_us)


def _fit_curve(obs: list[Obs], hw: Hardware, combine: Combine, start: EffCurve,
               shape_aware: bool) -> tuple[EffCurve, float]:
    """Coordinate descent over (max, m_half, n_half, k_half) on grids, then a joint local search,
    minimising the weighted L1 error of log(op time) against the observed times."""
    prods = _Products(obs, hw)
    t = np.array([o.us for o in obs])
    # L1 on log time (robust to the odd outlier kernel), weighted by sqrt(time) so that the ops
    # that take the time are fitted best without ignoring the small ones
    weight = np.sqrt(t / t.mean())
    p = [start.max, start.m_half, start.n_half if shape_aware else 0.0, start.k_half if shape_aware else 0.0,
         start.m_pow]

    def losses(trials: list[list[float]]) -> list[float]:
        pred = combine(prods.compute_us_many(np.array(trials, dtype=float)))
        return np.sum(weight * np.abs(np.log(pred / t)), axis=1).tolist()

    def first_better(trials: list[list[float]], best: float, eps: float) -> tuple[float, list[float] | None]:
        """The trials' losses at once, then accepted in order as a loop over them would (each
        better than the best so far by eps): the last accepted trial, or None."""
        found = None
        for i, val in enumerate(losses(trials)):
            if val < best - eps:
                best, found = val, trials[i]
        return best, found

    def descend(p: list[float]) -> tuple[float, list[float]]:
        best = losses([p])[0]
        for _ in range(8):
            improved = False
            for j, grid in enumerate((_MAXES, _HALVES, _HALVES, _HALVES)):
                if j >= 2 and not shape_aware:
                    continue
                # the trials differ from p at j only, and p moves at j only: all at once
                trials = [p[:j] + [float(v)] + p[j + 1:] for v in grid]
                best, found = first_better(trials, best, 1e-12)
                if found is not None:
                    p, improved = found, True
            if not improved:
                break
        return best, p

    # refine around a coarse optimum (grids step ~8 %): (max, m_half) jointly, since they trade off
    # along a valley, on shrinking local grids; the shape halves one at a time
    def refine_pair(p: list[float], best: float) -> tuple[float, list[float]]:
        span = 0.1
        for _ in range(10):
            for _ in range(25):          # walk at this span while the best point is on the grid's edge
                trials = [[float(min(a, 1.0)), float(b)] + p[2:]
                          for a in p[0] * (1 + span * np.linspace(-1, 1, 11))
                          for b in (p[1] * (1 + span * np.linspace(-1, 1, 11)) if p[1] > 0 else (0.0,))]
                best, found = first_better(trials, best, 1e-15)
                if found is None:
                    break
                p = found
            span /= 2
        return best, p

    def solve(mp: float) -> tuple[float, list[float]]:
        best, q = descend(p[:4] + [float(mp)])
        best, q = refine_pair(q, best)
        if shape_aware:
            for j in (2, 3):
                if q[j] > 0:
                    trials = [q[:j] + [float(v)] + q[j + 1:] for v in q[j] * np.linspace(0.8, 1.2, 41)]
                    best, found = first_better(trials, best, 1e-15)
                    if found is not None:
                        q = found
            best, q = refine_pair(q, best)
        return best, q

    # the M exponent moves with m_half: solve for each exponent; keep 1 unless another is clearly better
    results = {float(mp): solve(mp) for mp in _POWS}
    best, p = min(results.values(), key=lambda r: r[0])
    if results[1.0][0] <= best * 1.01 + 1e-12:
        best, p = results[1.0]
    return EffCurve(p[0], p[1], start.floor_us, p[2], p[3], p[4], blend=start.blend), best


def _pick_curve(obs: list[Obs], hw: Hardware, combine: Combine, start: EffCurve,
                shape_aware: bool) -> tuple[EffCurve, float]:
    """The curve over M alone, or over M, N and K where the shapes allow it and it explains the
    times clearly better (1 % lower loss): two more parameters must earn their place, else a few
    shapes would trade max against the halves along a valley of equal fits."""
    plain = _fit_curve(obs, hw, combine, start, False)
    if not shape_aware:
        return plain
    aware = _fit_curve(obs, hw, combine, start, True)
    return aware if aware[1] < 0.99 * plain[1] else plain


BLENDS = (4.0, 3.0, 2.0, 1.5)      # p-norms a kind's compute and memory times may combine by


def fit(obs: list[Obs], hw: Hardware, rounds: int = 3, keep_hbm: bool = False, min_shapes: int = 3,
        kinds: tuple[str, ...] = CALIBRATED, kind_hbm: bool = False, blend_kinds: tuple[str, ...] = ()) -> Hardware:
    """New efficiency curves for the kinds with observations; other fields kept. Kernel floors come
    from profiler observations only: the fastest single matrix kernel seen (tracegen's own traces
    keep the hardware's floors). `keep_hbm`: the hardware's HBM efficiency stays (measured by
    copies elsewhere) instead of being fitted to the memory-bound ops. A kind's N and K halves are
fitted when its observations hold at least `min_shapes` distinct (N, K) shapes. Only `kinds` are fitted; `kind_hbm`: each also gets the HBM efficiency its memory-bound
observations reach (a GEMM streaming its weights at small M, FlashMLA reading the cache);
`blend_kinds` may also combine compute and memory by a p-norm (EffCurve.blend), kept where it
explains the times clearly better (1 % lower loss) than the hard roofline."""
    # an observation of a kind the hardware has no curve for is timed by its fallback's curve: fit that
    obs = [o if o.kind in hw.efficiency or o.kind not in CURVE_FALLBACK else replace(o, kind=CURVE_FALLBACK[o.kind])
           for o in obs]
    train = [o for o in obs if not o.held_out]
    eff = dict(hw.efficiency)
    comm = dict(hw.comm)
    pcie = [o for o in train if o.kind == "pcie"]
    if pcie and PCIE_COPY in comm:
        bw = float(np.median([o.bytes / (o.us * 1e3) for o in pcie]))       # GB/s achieved
        comm[PCIE_COPY] = replace(comm[PCIE_COPY], bw_eff=min(1.0, bw / hw.pcie_gbps),
                                    source=f"fitted from {len(pcie)} host-link copies")
    singles = [o.us for o in train if o.kind == "gemm" and o.kernels == 1 and o.profiled]
    if singles:
        floor = float(min(singles))
        for kind in kinds:
            if any(o.kind == kind for o in train) and hw.has_curve(kind):
                eff[kind] = replace(eff.get(kind) or hw.curve(kind), floor_us=floor)
    # pure memory traffic: device copies, and elementwise kernels not at their floor
    ew_floor = hw.efficiency["elementwise"].floor_us if "elementwise" in hw.efficiency else 0.0
    copies = [o for o in train if o.kind == "hbm" or (o.kind == "elementwise" and o.bytes > 0
                                                      and o.us > 1.5 * ew_floor * o.kernels)]
    hbm = float(np.median([o.bytes / (o.us * 1e3) / hw.hbm_gbps for o in copies])) if copies else hw.eff("hbm")
    fit_hbm = not copies and not keep_hbm
    for round_ in range(rounds):
        cur = replace(hw, efficiency={**eff, "hbm": EffCurve(min(hbm, 1.0))})
        for kind in kinds:
            sel = [o for o in train if o.kind == kind and o.flops > 0]
            if len(sel) < 2:
                continue
            start = eff.get(kind) or cur.curve(kind)
            own = start.hbm if kind_hbm else 0.0
            mem, floor = _hbm_us(sel, cur, min(own or hbm, 1.0)), _floor(sel, cur)
            shape_aware = any(o.gemms for o in sel) and len({(g[1], g[2]) for o in sel for g in o.gemms}) >= min_shapes
            # how compute and memory combine is chosen in the first round; later rounds refine the curve
            blends = (0.0, *BLENDS) if kind in blend_kinds and round_ == 0 else (start.blend,)
            tried = [_pick_curve(sel, cur, _bound(mem, floor, b), replace(start, blend=b), shape_aware) for b in blends]
            best = min(tried, key=lambda t: t[1])
            eff[kind] = replace(best[0] if best[1] < 0.99 * tried[0][1] else tried[0][0], hbm=own)
            if kind_hbm:
                eff[kind] = replace(eff[kind], hbm=_kind_hbm(sel, replace(cur, efficiency={**cur.efficiency,
                                                                                             kind: eff[kind]})))
        if fit_hbm:     # no pure copies: the HBM efficiency that best explains memory-bound ops
            cur = replace(hw, efficiency={**eff, "hbm": EffCurve(hbm)})
            comp = [o for o in train if o.kind in kinds]
            if comp:
                c = np.maximum(compute_us(comp, cur), _floor(comp, cur))
                t = np.array([o.us for o in comp])
                grid = np.linspace(0.3, 1.0, 701)
                mem = np.array([o.bytes for o in comp])[:, None] / (hw.hbm_gbps * 1e3 * grid[None, :])
                pred = _bound(mem, 0.0, np.array([cur.curve(o.kind).blend for o in comp])[:, None])(c[:, None])
                loss = np.sum(np.log(pred / t[:, None]) ** 2, axis=0)
                hbm = float(grid[np.argmin(loss)])
    eff["hbm"] = EffCurve(min(hbm, 1.0))
    return replace(hw, efficiency=eff, comm=comm)


def _kind_hbm(sel: list[Obs], hw: Hardware) -> float:
    """The HBM efficiency of one kind's memory traffic that best explains its observations, given
    its compute curve and floor (the same weighted L1 of log time as the curves)."""
    c, floor = compute_us(sel, hw)[:, None], _floor(sel, hw)[:, None]
    t = np.array([o.us for o in sel])
    weight = np.sqrt(t / t.mean())
    grid = np.linspace(0.3, 1.0, 141)      # no kernel family streams below 30 % of HBM on purpose
    mem = np.array([o.bytes for o in sel], dtype=float)[:, None] / (hw.hbm_gbps * 1e3 * grid[None, :])
    pred = _bound(mem, floor, hw.curve(sel[0].kind).blend)(c)
    loss = np.sum(weight[:, None] * np.abs(np.log(pred / t[:, None])), axis=0)
    return float(grid[np.argmin(loss)])


def errors(obs: list[Obs], hw: Hardware) -> pd.DataFrame:
    """Every observation with its predicted time and signed error in percent."""
    pred = predict_us(obs, hw)
    df = pd.DataFrame([o.__dict__ for o in obs])
    df["pred_us"] = pred
    df["err_pct"] = 100 * (pred - df["us"]) / df["us"]
    return df


def summarise(df: pd.DataFrame, fitted: tuple[str, ...] = (*CALIBRATED, "hbm", "pcie")) -> pd.DataFrame:
    """Median and 90th-percentile absolute error per op kind the model covers: ops the fit saw
    ("fitted"), ops set aside ("held out"), and ops of a kind the fit leaves alone ("not fitted":
    their curve is the starting hardware's, so no fit can claim their error)."""
    rows = []
    for (kind, held), g in df[df["kind"].isin((*FITTED, "hbm", "pcie"))].groupby(["kind", "held_out"]):
        e = g["err_pct"].abs().dropna()
        if e.empty:
            continue
        which = "held out" if held else "fitted" if kind in fitted else "not fitted"
        rows.append({"kind": kind, "set": which, "n": len(e),
                     "median_abs_err_pct": float(e.median()), "p90_abs_err_pct": float(e.quantile(0.9))})
    return pd.DataFrame(rows)


def mark_held_out(obs: list[Obs], ms: set[float], names: set[str]) -> list[Obs]:
    """The observations with those row counts or op names set aside from the fit."""
    return [replace(o, held_out=(o.m in ms) or (o.name in names)) for o in obs]


def calibrated(hw: Hardware, sources: list[str]) -> Hardware:
    """The fitted hardware named and sourced as calibrated from `sources`."""
    note = f"{hw.source}; efficiencies fitted by replay calibrate from {', '.join(Path(s).name for s in sources)}"
    base = re.sub(r"\s*\([^()]*\)\s*$", "", hw.name) or hw.name     # 'H100 SXM (published curves)' -> 'H100 SXM'
    name = hw.name if "calibrated" in hw.name else f"{base} (calibrated)"
    return replace(hw, name=name, source=note)


def fit_comm(size_bytes: np.ndarray, observed_us: np.ndarray, peak_gbps: float) -> tuple[float, float]:
    """An all-to-all backend's fixed latency (us) and bandwidth efficiency from kernel times of
    known payloads: time = latency + bytes / (peak x eff), as cost.op_time charges a dispatch or
    combine under the default preset; least squares in relative error, so small and large payloads
    weigh alike."""
    x = np.asarray(size_bytes, dtype=float) / 1e3 / peak_gbps        # us at the full link rate
    y = np.asarray(observed_us, dtype=float)
    if len(x) < 2 or np.ptp(x) <= 0 or np.any(y <= 0):
        raise ValueError("fit_comm needs two or more payload sizes with positive times")
    (lat, inv_eff), *_ = np.linalg.lstsq(np.stack([1 / y, x / y], axis=1), np.ones(len(y)), rcond=None)
    if inv_eff <= 1.0:
        raise ValueError(f"fit_comm: the times imply more than the link's peak ({1 / inv_eff:.2f} of it)")
    return max(float(lat), 0.0), float(1 / inv_eff)


__all__ = ["Obs", "FITTED", "CALIBRATED", "fit", "predict_us", "compute_us", "errors", "summarise", "mark_held_out", "calibrated",
           "as_work", "fit_comm"]
