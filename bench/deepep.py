"""DeepEP's intranode normal dispatch / combine on four H100s (traces/observed/deepep-h100x4): the
kernel times the captures show on the last-arriving rank of each collective (free of waiting for
peers), the payloads tracegen computes for the same plans, the fit of the `h100` entry's
`intranode` backend from them, and that backend's predictions.

    python -m bench.deepep          # the fit and the table (make validate prints the table too)

Observed dispatch = notify_dispatch + dispatch kernel, combine = cached_notify_combine + combine
kernel (medians over every matched collective of the run). The captures route each token to its
top-8 of 256 experts at random, without DeepSeek-V3's group limit, so the payloads are computed
for that routing (`routing="uniform"`: 2.71 other ranks per token at EP4, tracegen/routing.py)."""
from __future__ import annotations

import sys
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from tracegen.catalog import Hardware, load_hardware, load_model
from tracegen.cost import op_time
from tracegen.fit import fit_comm
from tracegen.ops import a2a_ops, tokens
from tracegen.plan import Plan
from tracegen.preset import load_preset
from tracegen.target import Target

ROOT = Path(__file__).resolve().parents[1]
CAP = ROOT / "traces" / "observed" / "deepep-h100x4"
RUNS = {"prefill": ("prefill-proper", 4096), "decode": ("decode-proper", 128)}   # tokens per micro-batch
MODEL = load_model("deepseek-v3")
PRESET = load_preset("default")
KERNELS = {"dispatch": ("notify_dispatch<", "intranode::dispatch<"),
           "combine": ("cached_notify_combine<", "intranode::combine<")}
TOLERANCE_PCT = 15.0       # issue 10: prefill dispatch and combine within this of the observed


def plan(phase: str) -> Plan:
    """The captured plan: EP4 over NVLink, TP1, two micro-batches of RUNS[phase] tokens per rank."""
    n = RUNS[phase][1]
    return Plan(phase=phase, batch=2 if phase == "prefill" else 2 * n, seq_len=n if phase == "prefill" else 2048,
                tp=1, dp=4, microbatches=2, comm="intranode", gpus_per_node=8, routing="uniform")


def works(phase: str, hw: Hardware) -> dict:
    """tracegen's dispatch and combine Work of one micro-batch."""
    mb = plan(phase).split(2)
    return {w.name: w for w in a2a_ops(Target(MODEL, hw, PRESET, mb), tokens(MODEL, mb, PRESET))}


@lru_cache(maxsize=None)
def observed(phase: str) -> dict[str, float]:
    """Median kernel time free of peer waiting, per op (us), and the notify alone."""
    from replay.analyze import analyze
    u = analyze(CAP / RUNS[phase][0], use_cache=False, progress=False).peers.unwaited()
    med = {pat: float(np.median(u.loc[u["name"].str.contains(pat, regex=False), "dur_us"]))
           for pats in KERNELS.values() for pat in pats}
    out = {op: sum(med[p] for p in pats) for op, pats in KERNELS.items()}
    out["notify"] = med["notify_dispatch<"]
    return out


def alone(phase: str) -> dict[str, float]:
    """Each op's time with no compute beside it: decode's kernels run alone already; prefill's main
    kernels from the runs where they ran alone (bench/insitu.py: f < 0.2), plus their notify."""
    o = observed(phase)
    if phase == "decode":
        return {op: o[op] for op in KERNELS}
    from .insitu import fit as insitu_fit
    f = insitu_fit()
    notify = {op: o[op] - _main(op) for op in KERNELS}           # the notify kernels' medians
    return {op: notify[op] + f[f"{op}_alone_us"] for op in KERNELS}


def _main(op: str) -> float:
    """The prefill main kernel's median on the proper run (what observed() adds to the notify)."""
    from replay.analyze import analyze
    u = analyze(CAP / RUNS["prefill"][0], use_cache=False, progress=False).peers.unwaited()
    return float(np.median(u.loc[u["name"].str.contains(KERNELS[op][1], regex=False), "dur_us"]))


def fit(hw: Hardware | None = None, phases: tuple[str, ...] = tuple(RUNS)) -> dict[str, float]:
    """latency_us and bw_eff of the intranode backend from the kernels alone (in-situ slowdown is
    the scheduler's own term, tracegen/data/hardware.toml [hopper.in_situ]), and cpu_block_us: the
    notify's own time on the last-arriving rank (what the CPU waits for the counts at the least)."""
    hw = hw or load_hardware("h100")
    sizes, times = [], []
    for phase in phases:
        w, o = works(phase, hw), alone(phase)
        for op in KERNELS:
            sizes.append(w[op].scaleup_bytes)
            times.append(o[op])
    lat, eff = fit_comm(np.array(sizes), np.array(times), hw.scaleup_gbps)
    return {"latency_us": lat, "bw_eff": eff, "cpu_block_us": observed("prefill")["notify"]}


def _predict(phase: str, op: str, hw: Hardware, lat: float | None = None, eff: float | None = None) -> float:
    """us of an op alone under the h100 backend, or under a (latency, bw_eff) given instead."""
    if lat is not None:
        b = replace(hw.backend("intranode"), latency_us=lat, bw_eff=eff)
        hw = replace(hw, comm={**hw.comm, "intranode": b})
    p = plan(phase)
    return op_time(works(phase, hw)[op], p.split(2), hw, PRESET).ms * 1e3


def in_situ_share(op: str) -> float:
    from .insitu import fit as insitu_fit
    return insitu_fit()[f"{op}_f"]


def rows(hw: Hardware | None = None) -> list[tuple[str, str, float, float, float]]:
    """(case, op, observed us, predicted us, error %) with the catalog's h100 intranode backend: each
    op alone (decode; prefill in the improper run) and prefill beside compute (proper run), the
    latter x (1 + in-situ slowdown x the share of it the proper run spent beside compute)."""
    hw = hw or load_hardware("h100")
    s = hw.in_situ.slowdown if hw.in_situ else 0.0
    out = []
    for phase in RUNS:
        a = alone(phase)
        for op in KERNELS:
            pred = _predict(phase, op, hw)
            out.append((f"{phase} alone", op, a[op], pred, 100 * (pred / a[op] - 1)))
    o = observed("prefill")
    for op in KERNELS:
        pred = _predict("prefill", op, hw) * (1 + s * in_situ_share(op))
        out.append(("prefill in situ", op, o[op], pred, 100 * (pred / o[op] - 1)))
    return out


def leave_one_out(hw: Hardware | None = None) -> list[tuple[str, str, str, float, float, float]]:
    """(fitted on, predicts, op, observed us, predicted us, error %): the two-parameter fit on one
    phase's kernels (alone) predicts the other phase's."""
    hw = hw or load_hardware("h100")
    out = []
    for fit_on, target in (("prefill", "decode"), ("decode", "prefill")):
        f = fit(hw, (fit_on,))
        a = alone(target)
        for op in KERNELS:
            pred = _predict(target, op, hw, f["latency_us"], f["bw_eff"])
            out.append((fit_on, target, op, a[op], pred, 100 * (pred / a[op] - 1)))
    return out


def table() -> str:
    lines = ["DeepEP intranode normal kernels, 4 x H100 EP4 (traces/observed/deepep-h100x4; last-arriving rank, "
             "free of peer waits; the h100 'intranode' backend is fitted from these kernels alone: in-sample)",
             f"  {'case':<16}{'op':<10}{'observed us':>12}{'predicted us':>14}{'error':>8}"]
    for case, op, o, p, e in rows():
        lines.append(f"  {case:<16}{op:<10}{o:>12.1f}{p:>14.1f}{e:>7.1f}%")
    lines.append("leave-one-out (fit latency and bandwidth on one phase, predict the other):")
    for fit_on, target, op, o, p, e in leave_one_out():
        lines.append(f"  {fit_on:>7} -> {target:<8}{op:<10}{o:>12.1f}{p:>14.1f}{e:>7.1f}%")
    return "\n".join(lines)


def main() -> int:
    f = fit()
    print(f"fit: latency_us = {f['latency_us']:.2f}, bw_eff = {f['bw_eff']:.4f}, cpu_block_us = {f['cpu_block_us']:.2f}")
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
