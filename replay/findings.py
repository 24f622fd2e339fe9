"""Why the GPU idles: every stretch where no compute runs on a rank, split by what held the next
compute kernel back - first its inputs (waiting_on_comm: a communication kernel it needed was
still running), then its launch (cpu_blocked_launch: the CPU sat in a synchronising call, e.g. a
dispatch issued before the other micro-batch's compute; launch_bound: the CPU was busy launching)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tracegen.base.contract import (
    CPU_BLOCKED_LAUNCH,
    FLOW_DEPENDENCY,
    IDLE_CAUSES,
    LAUNCH_BOUND,
    WAITING_ON_COMM,
)

from .events import text
from .intervals import gaps, union
from .overlap import gpu_work

DEP_LATENCY_US = 20.0     # a dependent kernel starts within this of its input's end (event wait + launch)


def _coverage(starts: np.ndarray, ends: np.ndarray):
    """F(t) = covered length of the disjoint intervals before t (vectorised, piecewise linear)."""
    cum = np.concatenate([[0.0], np.cumsum(ends - starts)])

    def F(t: np.ndarray) -> np.ndarray:
        j = np.searchsorted(starts, t, side="right") - 1
        inside = np.clip(t - starts[np.clip(j, 0, None)], 0, None) if len(starts) else np.zeros_like(t)
        inside = np.minimum(inside, (ends - starts)[np.clip(j, 0, None)]) if len(starts) else inside
        return np.where(j >= 0, cum[np.clip(j, 0, None)] + inside, 0.0)
    return F


def _ready_from_flows(gpu: pd.DataFrame, dep: pd.DataFrame, nxt: pd.DataFrame) -> np.ndarray:
    """For traces with dependency flows (tracegen's): when each next kernel's cross-stream inputs
    were done, i.e. the latest end of the slices its incoming flows start from; where a kernel has
    no incoming flow its inputs came from its own stream, so it was ready when the gap began (NaN)."""
    out = np.full(len(nxt), np.nan)
    s, f = dep[dep["ph"] == "s"], dep[dep["ph"] == "f"]
    pairs = f.merge(s[["id", "ts", "tid"]], on="id", suffixes=("", "_src"))
    if pairs.empty:
        return out
    src_end = np.full(len(pairs), np.nan)
    for tid, idx in pairs.groupby("tid_src").indices.items():
        track = gpu[text(gpu["tid"]) == str(tid)]
        if track.empty:         # its source lies outside the --window
            continue
        st = track["start_us"].to_numpy()
        order = np.argsort(st)
        st, en = st[order], (track["start_us"] + track["dur_us"]).to_numpy()[order]
        j = np.searchsorted(st, pairs["ts_src"].to_numpy()[idx], side="right") - 1
        src_end[idx] = np.where(j >= 0, en[np.clip(j, 0, None)], np.nan)
    by_ts = pd.Series(src_end, index=pairs["ts"].to_numpy()).groupby(level=0).max()
    return by_ts.reindex(nxt["start_us"].to_numpy()).to_numpy()


FINDING_COLUMNS = ("kind", "rank", "layer", "microbatch", "stage", "start_us", "lost_us", "next", "call")


def message(kind: str, lost: float, next_name: str, call: str) -> str:
    nm = _short(next_name)
    if kind == WAITING_ON_COMM:
        if not next_name:
            return f"compute idle {lost:.1f} us: no compute left or yet to run while communication ran"
        return f"compute idle {lost:.1f} us: {nm} waited for communication to deliver its inputs"
    if kind == CPU_BLOCKED_LAUNCH:
        return (f"compute idle {lost:.1f} us: CPU blocked in {_short(call)} before launching {nm}; submit "
                f"independent compute before the blocking call (proper two-batch-overlap order)")
    return (f"compute idle {lost:.1f} us: the CPU was still launching earlier work when {nm} could run "
            f"(launch-bound; CUDA graphs help)")


def as_dicts(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Findings as the JSON report lists them: rank, layer, micro-batch, stage, start, time lost, message."""
    out = []
    for r in table.itertuples(index=False):
        out.append({"kind": r.kind, "rank": int(r.rank), "layer": int(r.layer) if r.layer >= 0 else None,
                    "microbatch": int(r.microbatch) if r.microbatch >= 0 else None, "stage": r.stage or None,
                    "start_us": float(r.start_us), "lost_us": float(r.lost_us),
                    "message": message(r.kind, float(r.lost_us), r.next, r.call)})
    return out


def find(events: pd.DataFrame, flows: pd.DataFrame, min_lost_us: float = 0.0) -> tuple[pd.DataFrame, dict]:
    """Findings (one row per idle piece of at least `min_lost_us`) and totals per rank and cause."""
    pieces: list[pd.DataFrame] = []
    totals: dict[int, dict[str, float]] = {}
    g = gpu_work(events)
    for rank, df in g.groupby("rank", sort=True):
        comp = df[df["klass"] == "compute"].sort_values("start_us")
        comm = df[df["klass"] == "comm"]
        tot = {k: 0.0 for k in IDLE_CAUSES}
        tot["unexplained"] = 0.0
        totals[int(rank)] = tot
        comm_iv = union(comm["start_us"].to_numpy(), (comm["start_us"] + comm["dur_us"]).to_numpy())
        Fc = _coverage(*comm_iv)

        def book_edge(a: float, b: float) -> float:
            """Idle [a, b) with no compute after or before it: waiting on communication where it
            runs, else unexplained; returns the part covered by communication."""
            c = float(Fc(np.array([b]))[0] - Fc(np.array([a]))[0])
            tot[WAITING_ON_COMM] += c
            tot["unexplained"] += (b - a) - c
            return c

        lo, hi = float(df["start_us"].min()), float((df["start_us"] + df["dur_us"]).max())
        if comp.empty:        # no compute at all: the whole span is idle
            book_edge(lo, hi)
            continue
        cs, ce = comp["start_us"].to_numpy(), (comp["start_us"] + comp["dur_us"]).to_numpy()
        u0, u1 = union(cs, ce)
        g0, g1 = gaps(u0, u1)
        # before the first and after the last compute (e.g. the last combine): idle while communication
        # runs, else unexplained - so that the causes add up to the span minus the compute
        edges = [(lo, float(u0[0]), comp.iloc[0]), (float(u1[-1]), hi, comp.iloc[int(np.argmax(ce))])]
        for a, b, near in edges:
            if b <= a:
                continue
            c = book_edge(a, b)
            if c >= max(min_lost_us, 1e-9):
                pieces.append(pd.DataFrame({
                    "kind": [WAITING_ON_COMM], "rank": [int(rank)], "layer": [int(near["layer"])],
                    "microbatch": [int(near["microbatch"])], "stage": [str(near["stage"])], "start_us": [a],
                    "lost_us": [c], "next": [""], "call": [""]}))
        if not len(g0):
            continue
        nxt_idx = np.searchsorted(cs, g1, side="left")
        nxt = comp.iloc[np.clip(nxt_idx, 0, len(comp) - 1)]
        cpu = events[(events["rank"] == rank) & (events["device"] == "cpu")]
        # launch time of the next kernel: end of the CPU launch call with its correlation id
        launch = cpu[cpu["launch"] & (cpu["correlation"] >= 0)]
        lend = pd.Series((launch["start_us"] + launch["dur_us"]).to_numpy(), index=launch["correlation"].to_numpy())
        lend = lend[~lend.index.duplicated()]
        launched = lend.reindex(nxt["correlation"].to_numpy()).to_numpy()
        launched = np.where(np.isfinite(launched), launched, g0)            # unknown: not a launch issue
        # readiness: the dependency flows where the trace has them (tracegen's), else the last
        # communication kernel ending inside the gap is taken as the input the kernel waited for
        dep = flows[(flows["cat"] == FLOW_DEPENDENCY) & (flows["rank"] == rank)] if len(flows) else flows
        if len(dep):
            ready = _ready_from_flows(df, dep, nxt)
        elif not comm.empty:
            # no dependency records: a kernel that starts within DEP_LATENCY_US of a communication
            # kernel's end was waiting for it; one that started long after being launched waited
            # on the GPU for something; otherwise its inputs were ready when the gap began
            me = np.sort((comm["start_us"] + comm["dur_us"]).to_numpy())
            j = np.searchsorted(me, g1, side="right") - 1
            last_end = np.where(j >= 0, me[np.clip(j, 0, None)], -np.inf)
            near = (last_end > g0) & (g1 - last_end <= DEP_LATENCY_US)
            waited_after_launch = launched < g1 - DEP_LATENCY_US
            ready = np.where(near, last_end, np.where(waited_after_launch, g1, g0))
        else:
            ready = g0.copy()
        ready = np.clip(np.nan_to_num(ready, nan=-np.inf), g0, g1)
        launched = np.clip(launched, ready, g1)
        blk = cpu[cpu["blocking"]]
        b0, b1 = union(blk["start_us"].to_numpy(), (blk["start_us"] + blk["dur_us"]).to_numpy())
        F = _coverage(b0, b1)
        waiting = ready - g0
        blocked = F(launched) - F(ready)
        bound = (launched - ready) - blocked
        rest = g1 - launched
        rest_comm = Fc(g1) - Fc(launched)
        tot[WAITING_ON_COMM] += float(waiting.sum() + rest_comm.sum())
        tot[CPU_BLOCKED_LAUNCH] += float(blocked.sum())
        tot[LAUNCH_BOUND] += float(bound.sum())
        tot["unexplained"] += float((rest - rest_comm).sum())
        threshold = max(min_lost_us, 1e-9)
        blk_starts = blk["start_us"].to_numpy()
        k = np.searchsorted(blk_starts, launched, side="right") - 1
        call = np.where(k >= 0, text(blk["name"])[np.clip(k, 0, None)] if len(blk) else "",
                        "a synchronising call")
        for kind, lost, start in ((WAITING_ON_COMM, waiting + rest_comm, g0), (CPU_BLOCKED_LAUNCH, blocked, ready),
                                  (LAUNCH_BOUND, bound, ready + blocked)):
            sel = np.flatnonzero(lost >= threshold)
            if not len(sel):
                continue
            pieces.append(pd.DataFrame({
                "kind": kind, "rank": int(rank), "layer": nxt["layer"].to_numpy()[sel],
                "microbatch": nxt["microbatch"].to_numpy()[sel], "stage": text(nxt["stage"])[sel],
                "start_us": start[sel], "lost_us": lost[sel], "next": text(nxt["name"])[sel],
                "call": call[sel]}))
    findings = pd.concat(pieces, ignore_index=True) if pieces else pd.DataFrame(columns=list(FINDING_COLUMNS))
    return findings, totals


def _short(name: str, n: int = 60) -> str:
    return name if len(name) <= n else name[: n - 3] + "..."
