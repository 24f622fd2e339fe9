"""`replay calibrate`: the observation side of fitting the cost model. Reads traces, matches their
ops to FLOPs and bytes, and hands the measurements to tracegen/fit.py, which fits the curves.

Observations come from:
- profiler ranges named "op=<kind> name=<op> M=<rows> ... flops=<F> bytes=<B> dtype=<fp8|bf16>"
  (bench/capture/capture_h100.py writes them); the op's time is the GPU time of the matrix /
  attention kernels launched inside the range;
- tracegen's own traces: each compute stage's args list its ops' times (ops_us), and the model,
  hardware and plan in the trace's otherData give their FLOPs, bytes and shapes."""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from tracegen.base.contract import COMPUTE
from tracegen.base.errors import UserError
from tracegen.catalog import Hardware, hardware_of_device, load_hardware
from tracegen.cost import op_time
from tracegen.fit import Obs, calibrated, errors, fit, mark_held_out, summarise
from tracegen.ops import layer_ops
from tracegen.plan import elem_bytes

from .events import Trace, load, text
from .generated import generated_run
from .taxonomy import classify, load_taxonomy

_KV = re.compile(r"(\w+)=([^\s]+)")
# kernels that count as the op's own work inside a profiler range (casts and copies do not)
_OWN = {"gemm": ("gemm", "grouped_gemm"), "grouped_gemm": ("gemm", "grouped_gemm"), "attention": ("attention",),
        "hbm": None, "pcie": None, "attention_decode": None}


def from_annotations(trace: Trace) -> list[Obs]:
    """One observation per profiler range named op=...: the GPU time of its own kernels."""
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
        rate = "bf16" if kv.get("dtype") == "bf16" else "fp8"
        name = kv.get("name", kind)
        if kind == "grouped_gemm" and "E" in kv:       # SwiGLU experts: up (K -> 2N) and down (N -> K)
            e = float(kv["E"])
            gemms, n_k, name = ((m, 2 * n, k_, e), (m, k_, n, e)), 2 * int(e), kv.get("name", "experts")
            halves = _expert_halves(name, gemms, k.sort_values("start_us")["dur_us"].to_numpy(), rate)
            if halves:
                out += halves
                continue
        elif kind == "gemm":
            gemms, n_k = ((m, n, k_, 1.0),), 1
        else:
            gemms, n_k = (), 1
        out.append(Obs(kind, name, m, float(kv.get("flops", 0)), float(kv.get("bytes", 0)), rate, us, n_k,
                       gemms=gemms))
    return out


def _expert_halves(name: str, gemms: tuple, durs: np.ndarray, rate: str) -> list[Obs]:
    """A range of E SwiGLU experts as two observations, the up GEMMs (K -> 2N) and the down GEMMs
    (N -> K), when its kernels alternate up, down per expert as bench/capture runs them: the two
    depths then fit apart (the down GEMM's K is 3.5x shallower). Otherwise none (the caller keeps
    one observation of both)."""
    e = int(gemms[0][3])
    if len(durs) != 2 * e:
        return []
    elem = elem_bytes(rate)
    out = []
    for part, (mm, nn, kk, ee), t in zip(("up", "down"), gemms, (durs[0::2], durs[1::2])):
        out.append(Obs("grouped_gemm", f"{name}_{part}", mm, 2 * mm * nn * kk * ee,
                       ee * (nn * kk * elem + mm * kk * elem + mm * nn * 2), rate, float(t.sum()), e,
                       gemms=((mm, nn, kk, ee),)))
    return out


def from_generated(trace: Trace) -> list[Obs]:
    """One observation per op of each compute stage of the first rank of a tracegen trace."""
    t = generated_run(trace)
    if t.preset.name != "default":
        raise UserError("calibration needs a trace generated with the default preset (seed004 has no curves)")
    mb_plan = replace(t.plan.split(t.plan.microbatches), imbalance=1.0)
    works = {(dense, w.name): w for dense in (True, False)
             for w in layer_ops(t.target.with_plan(mb_plan), dense)}
    boost = replace(t.hardware, throttle=0.0)

    def at_boost(w, us: float) -> float:
        """The op's time at the boost clock (the curves are boost-clock curves): the trace ran its
        compute-bound ops at the clock its power draw set (tracegen/power.py)."""
        if not t.hardware.throttle:
            return us
        return us * op_time(w, mb_plan, boost, t.preset).ms / op_time(w, mb_plan, t.hardware, t.preset).ms

    ev = trace.events
    rows = ev[(ev["device"] == "gpu") & (ev["rank"] == ev["rank"].min()) & (text(ev["stage_stream"]) == COMPUTE)
              & ev["extra"].notna()]
    out = []
    for layer, extra in zip(rows["layer"].to_numpy(), rows["extra"].to_numpy()):
        x = json.loads(extra)
        load_factor = x.get("load_factor") or 1.0
        for op, us in (x.get("ops_us") or {}).items():
            w = works.get((int(layer) in t.dense_layers, op))
            if w is None or w.is_comm or us <= 0:
                continue
            scale = load_factor if op.startswith("routed_") else 1.0
            gemms = tuple((m, n, k, c * scale) for m, n, k, c in w.gemms)
            out.append(Obs(w.kind, op, w.m, w.flops * scale, w.hbm_bytes * scale, w.rate, at_boost(w, float(us)),
                           w.kernels,
                           profiled=False, gemms=gemms, phase=t.plan.phase))
    return out


def observations(traces: list[Trace]) -> tuple[list[Obs], list[str]]:
    """Every matchable op of the traces, and a line per trace saying what it gave."""
    obs: list[Obs] = []
    kinds = []
    for tr in traces:
        name = Path(tr.sources[0]).name
        if tr.generated:
            got = from_generated(tr)
            kinds.append(f"{name}: tracegen trace, {len(got)} op times")
        else:
            got = from_annotations(tr)
            kinds.append(f"{name}: profiler trace, {len(got)} annotated op ranges")
        obs += got
    if not obs:
        raise UserError("no matchable ops in " + ", ".join(t.sources[0] for t in traces) + ": calibration needs "
                        "ranges named 'op=<kind> name=... M=... flops=... bytes=...' (see bench/capture) or a "
                        "tracegen trace")
    return obs, kinds


def starting_hardware(trace: Trace, hardware: str | None, hardware_file: str | None) -> Hardware:
    """What the fit starts from: the user's choice, else the hardware the trace ran on (a tracegen
    trace's own, or the catalog GPU its deviceProperties name)."""
    if hardware or hardware_file:
        return load_hardware(hardware, hardware_file)
    if trace.generated:
        return generated_run(trace).hardware
    return hardware_of_device(trace.device_name)


def calibrate_files(paths: list[str], hardware: str | None, hardware_file: str | None, holdout_m: set[float],
        holdout_names: set[str]) -> tuple[Hardware, pd.DataFrame, pd.DataFrame, list[str]]:
    """Fit the hardware to the traces: (fitted hardware, error summary, per-op errors, source lines)."""
    traces = [load(p) for p in paths]
    obs, kinds = observations(traces)
    base = starting_hardware(traces[0], hardware, hardware_file)
    obs = mark_held_out(obs, holdout_m, holdout_names)
    before = errors(obs, base).assign(model="before")
    # grouped GEMMs come in two depths (up, down): enough to fit how K matters; the masked layout may
    # blend compute and memory at its knee - both as bench/kernels.py fits them
    new = calibrated(fit(obs, base, min_shapes=2, blend_kinds=("grouped_gemm_masked",)), paths)
    after = errors(obs, new).assign(model="after")
    table = pd.concat([summarise(before).assign(model="before"), summarise(after).assign(model="after")])
    return new, table, pd.concat([before, after]), kinds


__all__ = ["calibrate_files", "observations", "from_annotations", "from_generated", "starting_hardware"]
