"""Fit the cost model's efficiency curves to observed op times (`tracegen calibrate`).

Observations come from a trace whose ops can be matched to FLOPs and bytes:
- profiler ranges named "op=<kind> name=<op> M=<rows> ... flops=<F> bytes=<B> dtype=<fp8|bf16>"
  (bench/capture/capture_h100.py writes them); the op's time is the GPU time of the matrix /
  attention kernels launched inside the range;
- tracegen's own traces: each stage's args list its ops' times, and the op inventory of the plan
  in the trace's metadata gives their FLOPs, bytes and M.

The model: time = max(FLOPs / (peak x eff_kind(M)), bytes / (HBM x eff_hbm)), with
eff_kind(M) = max * M / (M + m_half). Each kind's (max, m_half) and eff_hbm are fitted by grid
search on log-time error; the result is a normal hardware file (`--hardware-file`)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
import numpy as np
import pandas as pd

from tracegen.catalog import EffCurve, Hardware, load_hardware, load_model, normalise
from tracegen.base.errors import UserError
from tracegen.ops import layer_ops
from tracegen.plan import Plan
from tracegen.preset import load_preset

from .events import Trace, load, text
from .taxonomy import classify, load_taxonomy

FITTED = ("gemm", "grouped_gemm", "attention")
_KV = re.compile(r"(\w+)=([^\s]+)")
# kernels that count as the op's own work inside a profiler range (casts and copies do not)
_OWN = {"gemm": ("gemm", "grouped_gemm"), "grouped_gemm": ("gemm", "grouped_gemm"), "attention": ("attention",),
        "hbm": None, "pcie": None, "attention_decode": None}


@dataclass(frozen=True)
class Obs:
    kind: str
    name: str
    m: float
    flops: float
    bytes: float
    rate: str            # "fp8" or "bf16": which peak the FLOPs run at
    us: float
    kernels: int = 1     # kernels the op ran as (each takes at least the kind's floor)
    profiled: bool = True    # measured by a profiler (False: read from a tracegen trace)
    held_out: bool = False
    gemms: tuple = ()    # its matrix products (M, N, K, count), when known


# ----------------------------------------------------------------------------- observations
def from_annotations(trace: Trace) -> list[Obs]:
    ev = classify(trace.events, load_taxonomy())
    ann = ev[(ev["cat"] == "user_annotation") & ev["name"].astype(str).str.startswith("op=")]
    if ann.empty:
        return []
    launches = ev[ev["launch"] & (ev["correlation"] >= 0)]
    gpu = ev[(ev["device"] == "gpu") & (ev["correlation"] >= 0)]
    by_corr = gpu.set_index("correlation")
    out = []
    ls, lc = launches["start_us"].to_numpy(), launches["correlation"].to_numpy()
    order = np.argsort(ls)
    ls, lc = ls[order], lc[order]
    for name, s, d in zip(ann["name"].astype(str), ann["start_us"].to_numpy(), ann["dur_us"].to_numpy()):
        kv = dict(_KV.findall(name))
        kind = kv.get("op", "")
        i0, i1 = np.searchsorted(ls, s), np.searchsorted(ls, s + d, side="right")
        corr = lc[i0:i1]
        k = by_corr.loc[by_corr.index.intersection(corr)]
        own = _OWN.get(kind)
        if own is not None:
            k = k[k["subclass"].astype(str).isin(own)]
        if k.empty:
            continue
        us = float(k["dur_us"].sum())
        m, n, k_ = (float(kv.get(x, 0)) for x in ("M", "N", "K"))
        if kind == "grouped_gemm" and "E" in kv:       # SwiGLU experts: up (K -> 2N) and down (N -> K)
            e = float(kv["E"])
            gemms, n_k = ((m, 2 * n, k_, e), (m, k_, n, e)), 2 * int(e)
        elif kind == "gemm":
            gemms, n_k = ((m, n, k_, 1.0),), 1
        else:
            gemms, n_k = (), 1
        out.append(Obs(kind, kv.get("name", kind), m, float(kv.get("flops", 0)), float(kv.get("bytes", 0)),
                       "bf16" if kv.get("dtype") == "bf16" else "fp8", us, n_k, gemms=gemms))
    return out


def from_generated(trace: Trace, hw_name: str | None) -> list[Obs]:
    other = trace.meta.get("otherData", {})
    if other.get("preset") != "default":
        raise UserError("calibration needs a trace generated with the default preset (seed004 has no curves)")
    model = load_model(other["model"])
    hw = load_hardware(hw_name or other.get("hardware_key") or other["hardware"])
    preset = load_preset("default")
    plan = Plan(**{k: v for k, v in other["plan"].items()})
    mb_plan = replace(plan.split(plan.microbatches), imbalance=1.0)
    works = {}
    for dense in (True, False):
        for w in layer_ops(model, mb_plan, preset, hw, dense):
            works[(dense, w.name)] = w
    dense_layers = set(other.get("dense_layers", []))
    ev = trace.events
    rows = ev[(ev["device"] == "gpu") & (ev["rank"] == ev["rank"].min()) & (text(ev["stage_stream"]) == "compute")
              & ev["extra"].notna()]
    out = []
    for layer, extra in zip(rows["layer"].to_numpy(), rows["extra"].to_numpy()):
        x = json.loads(extra)
        load_factor = x.get("load_factor") or 1.0
        for op, us in (x.get("ops_us") or {}).items():
            w = works.get((int(layer) in dense_layers, op))
            if w is None or w.is_comm or us <= 0:
                continue
            scale = load_factor if op == "routed_expert" else 1.0
            gemms = tuple((m, n, k, c * scale) for m, n, k, c in w.gemms)
            out.append(Obs(w.kind, op, w.m, w.flops * scale, w.hbm_bytes * scale, w.rate, float(us), w.kernels,
                           profiled=False, gemms=gemms))
    return out


def observations(paths: list[str], hw_name: str | None) -> tuple[list[Obs], list[str]]:
    obs: list[Obs] = []
    kinds = []
    for p in paths:
        tr = load(p)
        if tr.generated:
            got = from_generated(tr, hw_name)
            kinds.append(f"{Path(p).name}: tracegen trace, {len(got)} op times")
        else:
            got = from_annotations(tr)
            kinds.append(f"{Path(p).name}: profiler trace, {len(got)} annotated op ranges")
        obs += got
    if not obs:
        raise UserError("no matchable ops in " + ", ".join(paths) + ": calibration needs ranges named "
                        "'op=<kind> name=... M=... flops=... bytes=...' (see bench/capture) or a tracegen trace")
    return obs, kinds


# ----------------------------------------------------------------------------- model and fit
def _arrays(obs: list[Obs], hw: Hardware) -> dict[str, np.ndarray]:
    return {"m": np.array([o.m for o in obs], dtype=float), "f": np.array([o.flops for o in obs], dtype=float),
            "b": np.array([o.bytes for o in obs], dtype=float), "t": np.array([o.us for o in obs], dtype=float),
            "k": np.array([o.kernels for o in obs], dtype=float),
            "peak": np.array([hw.fp8_tflops if o.rate == "fp8" else hw.bf16_tflops for o in obs], dtype=float)}


def _floor(obs: list[Obs], hw: Hardware) -> np.ndarray:
    return np.array([hw.efficiency[o.kind].floor_us * o.kernels if o.kind in hw.efficiency else 0.0 for o in obs])


def _compute_us(obs: list[Obs], hw: Hardware, curves: dict[str, EffCurve] | None = None) -> np.ndarray:
    """Compute time of each op: its products at their shapes' efficiency, else FLOPs at eff(M)."""
    curves = curves or hw.efficiency
    out = np.zeros(len(obs))
    for i, o in enumerate(obs):
        c = curves.get(o.kind)
        if c is None or o.flops <= 0:
            continue
        peak = (hw.fp8_tflops if o.rate == "fp8" else hw.bf16_tflops) * 1e6
        if o.gemms:
            out[i] = sum(2 * m * n * k * cnt / (peak * c.at(m, n, k)) for m, n, k, cnt in o.gemms if m and cnt)
        else:
            out[i] = o.flops / (peak * c.at(o.m))
    return out


def predict_us(obs: list[Obs], hw: Hardware) -> np.ndarray:
    """The default preset's time for each observation under `hw`'s curves (host-link copies at the
    pcie-copy backend's bandwidth)."""
    a = _arrays(obs, hw)
    mem = a["b"] / (hw.hbm_gbps * 1e3 * hw.eff("hbm"))
    pred = np.maximum(np.maximum(_compute_us(obs, hw), mem), _floor(obs, hw))
    if "pcie-copy" in hw.comm:
        link = a["b"] / (hw.pcie_gbps * 1e3 * hw.comm["pcie-copy"].bw_eff)
        pred = np.where([o.kind == "pcie" for o in obs], link, pred)
    return pred


_MAXES = np.linspace(0.02, 1.0, 197)
_HALVES = np.concatenate([[0.0], np.logspace(-1, 5, 181)])
_POWS = np.array([1.0, 1.5, 2.0, 3.0])


class _Products:
    """All products of a set of ops flattened, so a curve is evaluated for every op at once."""

    def __init__(self, obs: list[Obs], hw: Hardware):
        rows = []
        for i, o in enumerate(obs):
            peak = (hw.fp8_tflops if o.rate == "fp8" else hw.bf16_tflops) * 1e6
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
        c = EffCurve(mx, mh, 0.0, nh, kh, mp)
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.where(self.m > 0, 1.0 / (1.0 + (mh / np.maximum(self.m, 1e-30)) ** mp), 1.0) if mh > 0 else 1.0
            fn = np.where(self.n > 0, self.n / (self.n + nh), 1.0) if nh > 0 else 1.0
            fk = np.where(self.k > 0, self.k / (self.k + kh), 1.0) if kh > 0 else 1.0
        eff = c.max * g * fn * fk
        return np.bincount(self.idx, self.t_at_peak / eff, minlength=self.n_obs)


def _fit_curve(obs: list[Obs], hw: Hardware, lower_us: np.ndarray, start: EffCurve,
               shape_aware: bool) -> EffCurve:
    """Coordinate descent over (max, m_half, n_half, k_half) on grids, minimising squared log
    error of max(compute, lower) against the observed times."""
    prods = _Products(obs, hw)
    t = np.array([o.us for o in obs])
    # L1 on log time (robust to the odd outlier kernel), weighted by sqrt(time) so that the ops
    # that take the time are fitted best without ignoring the small ones
    weight = np.sqrt(t / t.mean())
    p = [start.max, start.m_half, start.n_half if shape_aware else 0.0, start.k_half if shape_aware else 0.0,
         start.m_pow]

    def loss(params: list[float]) -> float:
        pred = np.maximum(prods.compute_us(*params), lower_us)
        return float(np.sum(weight * np.abs(np.log(pred / t))))

    def descend(p: list[float]) -> tuple[float, list[float]]:
        best = loss(p)
        for _ in range(8):
            improved = False
            for j, grid in enumerate((_MAXES, _HALVES, _HALVES, _HALVES)):
                if j >= 2 and not shape_aware:
                    continue
                for v in grid:
                    trial = p.copy()
                    trial[j] = float(v)
                    val = loss(trial)
                    if val < best - 1e-12:
                        best, p, improved = val, trial, True
            if not improved:
                break
        return best, p

    # refine around a coarse optimum (grids step ~8 %): (max, m_half) jointly, since they trade off
    # along a valley, on shrinking local grids; the shape halves one at a time
    def refine_pair(p: list[float], best: float) -> tuple[float, list[float]]:
        span = 0.1
        for _ in range(10):
            for _ in range(25):          # walk at this span while the best point is on the grid's edge
                centre, moved = p, False
                for a in centre[0] * (1 + span * np.linspace(-1, 1, 11)):
                    for b in (centre[1] * (1 + span * np.linspace(-1, 1, 11)) if centre[1] > 0 else (0.0,)):
                        trial = [float(min(a, 1.0)), float(b)] + centre[2:]
                        val = loss(trial)
                        if val < best - 1e-15:
                            best, p, moved = val, trial, True
                if not moved:
                    break
            span /= 2
        return best, p

    def solve(mp: float) -> tuple[float, list[float]]:
        best, q = descend(p[:4] + [float(mp)])
        best, q = refine_pair(q, best)
        if shape_aware:
            for j in (2, 3):
                if q[j] > 0:
                    for v in q[j] * np.linspace(0.8, 1.2, 41):
                        trial = q.copy()
                        trial[j] = float(v)
                        val = loss(trial)
                        if val < best - 1e-15:
                            best, q = val, trial
            best, q = refine_pair(q, best)
        return best, q

    # the M exponent moves with m_half: solve for each exponent; keep 1 unless another is clearly better
    results = {float(mp): solve(mp) for mp in _POWS}
    best, p = min(results.values(), key=lambda r: r[0])
    if results[1.0][0] <= best * 1.01 + 1e-12:
        best, p = results[1.0]
    return EffCurve(p[0], p[1], start.floor_us, p[2], p[3], p[4])


def fit(obs: list[Obs], hw: Hardware, rounds: int = 3) -> Hardware:
    """New efficiency curves for the kinds with observations; other fields kept. Kernel floors come
    from profiler observations only: the fastest single matrix kernel seen (tracegen's own traces
    keep the hardware's floors)."""
    train = [o for o in obs if not o.held_out]
    eff = dict(hw.efficiency)
    comm = dict(hw.comm)
    pcie = [o for o in train if o.kind == "pcie"]
    if pcie and "pcie-copy" in comm:
        bw = float(np.median([o.bytes / (o.us * 1e3) for o in pcie]))       # GB/s achieved
        comm["pcie-copy"] = replace(comm["pcie-copy"], bw_eff=min(1.0, bw / hw.pcie_gbps),
                                    source=f"fitted from {len(pcie)} host-link copies")
    singles = [o.us for o in train if o.kind == "gemm" and o.kernels == 1 and o.profiled]
    if singles:
        floor = float(min(singles))
        for kind in FITTED:
            if kind in eff:
                eff[kind] = replace(eff[kind], floor_us=floor)
    # pure memory traffic: device copies, and elementwise kernels not at their floor
    ew_floor = hw.efficiency["elementwise"].floor_us if "elementwise" in hw.efficiency else 0.0
    copies = [o for o in train if o.kind == "hbm" or (o.kind == "elementwise" and o.bytes > 0
                                                      and o.us > 1.5 * ew_floor * o.kernels)]
    hbm = float(np.median([o.bytes / (o.us * 1e3) / hw.hbm_gbps for o in copies])) if copies else hw.eff("hbm")
    for _ in range(rounds):
        cur = replace(hw, efficiency={**eff, "hbm": EffCurve(min(hbm, 1.0))})
        for kind in FITTED:
            sel = [o for o in train if o.kind == kind and o.flops > 0]
            if len(sel) < 2:
                continue
            a = _arrays(sel, cur)
            lower = np.maximum(a["b"] / (cur.hbm_gbps * 1e3 * min(hbm, 1.0)), _floor(sel, cur))
            shape_aware = any(o.gemms for o in sel) and len({(g[1], g[2]) for o in sel for g in o.gemms}) > 2
            eff[kind] = _fit_curve(sel, cur, lower, eff[kind], shape_aware)
        if not copies:     # no pure copies: the HBM efficiency that best explains memory-bound ops
            cur = replace(hw, efficiency={**eff, "hbm": EffCurve(hbm)})
            comp = [o for o in train if o.kind in FITTED]
            if comp:
                a = _arrays(comp, cur)
                c = np.maximum(_compute_us(comp, cur), _floor(comp, cur))
                grid = np.linspace(0.3, 1.0, 701)
                mem = a["b"][:, None] / (hw.hbm_gbps * 1e3 * grid[None, :])
                loss = np.sum(np.log(np.maximum(c[:, None], mem) / a["t"][:, None]) ** 2, axis=0)
                hbm = float(grid[np.argmin(loss)])
    eff["hbm"] = EffCurve(min(hbm, 1.0))
    return replace(hw, efficiency=eff, comm=comm)


def errors(obs: list[Obs], hw: Hardware) -> pd.DataFrame:
    pred = predict_us(obs, hw)
    df = pd.DataFrame([o.__dict__ for o in obs])
    df["pred_us"] = pred
    df["err_pct"] = 100 * (pred - df["us"]) / df["us"]
    return df


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Median and 90th-percentile absolute error per op kind the model covers, fitted vs held out."""
    rows = []
    for (kind, held), g in df[df["kind"].isin((*FITTED, "hbm", "pcie"))].groupby(["kind", "held_out"]):
        e = g["err_pct"].abs().dropna()
        if e.empty:
            continue
        rows.append({"kind": kind, "set": "held out" if held else "fitted", "n": len(e),
                     "median_abs_err_pct": float(e.median()), "p90_abs_err_pct": float(e.quantile(0.9))})
    return pd.DataFrame(rows)


def mark_held_out(obs: list[Obs], ms: set[float], names: set[str]) -> list[Obs]:
    return [replace(o, held_out=(o.m in ms) or (o.name in names)) for o in obs]


def calibrated_hardware(hw: Hardware, sources: list[str]) -> Hardware:
    note = f"{hw.source}; efficiencies fitted by tracegen calibrate from {', '.join(Path(s).name for s in sources)}"
    name = hw.name if "calibrated" in hw.name else f"{hw.name} (calibrated)"
    return replace(hw, name=name, source=note)


def run(paths: list[str], hardware: str | None, hardware_file: str | None, holdout_m: set[float],
        holdout_names: set[str]) -> tuple[Hardware, pd.DataFrame, pd.DataFrame, list[str]]:
    obs, kinds = observations(paths, hardware)
    base = load_hardware(hardware, hardware_file) if (hardware or hardware_file) else None
    if base is None:
        tr = load(paths[0])
        other = tr.meta.get("otherData", {})
        if "hardware" in other:
            base = load_hardware(other.get("hardware_key") or other["hardware"])
        else:
            gpu = " ".join(d.get("name", "") for d in tr.meta.get("deviceProperties", [])[:1])
            base = hardware_of_device(gpu)
    obs = mark_held_out(obs, holdout_m, holdout_names)
    before = errors(obs, base).assign(model="before")
    new = calibrated_hardware(fit(obs, base), paths)
    after = errors(obs, new).assign(model="after")
    table = pd.concat([summarise(before).assign(model="before"), summarise(after).assign(model="after")])
    return new, table, pd.concat([before, after]), kinds


def hardware_of_device(device_name: str) -> Hardware:
    """The catalog GPU a profiler trace's deviceProperties name (H100, H800, ...), or a UserError."""
    n = normalise(device_name)
    for key in ("h800", "h200", "h100", "h20", "b200"):
        if key in n:
            return load_hardware(key)
    raise UserError(f"cannot tell the hardware from the trace ({device_name or 'no deviceProperties'}); "
                    "name it with --hardware")


__all__ = ["run", "fit", "hardware_of_device", "observations", "predict_us", "errors", "summarise", "Obs"]
