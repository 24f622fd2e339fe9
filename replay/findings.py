"""Why the GPU idles: every stretch where no compute runs on a rank, split by what held the next
compute kernel back - a late peer (waiting_on_peer: this rank's communication waited for a rank
that arrived late, peers.py), its inputs (waiting_on_comm: a communication kernel it needed was
still running), a step boundary (step_boundary: from one step's last compute to the next step's
first), then its launch: the launching thread was held away from the launch path
(cpu_blocked_launch: a synchronising call, a dispatch waiting for its counts, host work outside any
op - hostview.py), or it was on the launch path but slower than the GPU (launch_bound: ops' host
work, Python glue, launch calls, the launch's submission latency). What remains is `unexplained`,
with the reason seen (the window's edge, a copy, a kernel queued but started late). Each finding
carries its group (`blocked_by`) and a message from the cause -> advice table (advice.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd

from tracegen.base.contract import (
    CPU_BLOCKED_LAUNCH,
    FLOW_DEPENDENCY,
    IDLE_GROUPS,
    KERNEL_SWITCH,
    LAUNCH_BOUND,
    OBSERVED_IDLE_CAUSES,
    STEP_BOUNDARY,
    UNEXPLAINED,
    WAITING_ON_COMM,
    WAITING_ON_COPY,
    WAITING_ON_PEER,
)

from . import advice
from .events import text
from .hostview import GROUPS as HOST_GROUPS
from .hostview import HOST_COLUMNS, host_view
from .intervals import coverage, gaps, intersection, union
from .overlap import gpu_work
from .peers import Peers
from .steps import DEFAULT_STEP
from .structure import TRAINING_PASSES

TRAINING_PASS = r"\((?:" + "|".join(TRAINING_PASSES) + r")\)$"     # a stage label of a backward chunk

DEP_LATENCY_US = 20.0     # a dependent kernel starts within this of its input's end (event wait + launch)


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


FINDING_COLUMNS = ("kind", "group", "rank", "step", "layer", "microbatch", "stage", "start_us", "lost_us", "next",
                   "call", "peer", "comm", "microbatches")
LAUNCH_LATENCY_US = 20.0   # a kernel launched onto an idle GPU starts within this (submission latency)
# back-to-back GPU work already queued on a stream starts this soon after the previous one ends: the
# GPU's own switch. Chosen from traces/observed/h200: between consecutive kernels of one CUDA-graph replay
# the gap is <= 5.7 us (decode-graph, p99 5.0 us) and <= 5.95 us (decode-compiled); 8 us leaves margin and
# stays under any host launch path (an eager op's host work is >= 15 us there). Each copy or fill inside
# the gap adds one more switch. A longer wait before a queued kernel is `unexplained` (queued).
KERNEL_SWITCH_US = 8.0
# One framework op's own host work that held the launch path this long, covering at least half of it,
# is not per-op overhead (a PyTorch op's dispatch costs ~5-50 us) but work of that op: first-call
# autotuning, lazy module loading, compilation, a host-side algorithm. Assumed (20x the dispatch cost
# of a slow op), not fitted; no capture of ours has a launch-path piece of 1 ms (max 0.82 ms).
LONG_OP_US = 1000.0
_NONE = (np.zeros(0), np.zeros(0))


def message_context(table: pd.DataFrame) -> tuple[np.ndarray, dict[Any, str]]:
    """What a finding's advice depends on beyond its own row, from the whole finding table (a listed
    subset must say what the whole says): per row, the profiled steps in which a finding of its rank and
    group names the same call; per rank, the call its host syncs cost most in."""
    return _steps_with_call(table), _largest_sync(table)


def as_dicts(table: pd.DataFrame, step_regex: str = DEFAULT_STEP,
             context: tuple[np.ndarray, dict[Any, str]] | None = None) -> list[dict[str, Any]]:
    """Findings as the JSON report lists them: rank, step, layer, micro-batch, stage, start, time lost,
    what blocked (its group and the call the CPU sat in) or the peer waited for, and the message.
    `context`: message_context() of the whole table, its rows taken as `table`'s (default: `table`'s own)."""
    out = []
    steps, sync_call = context if context is not None else message_context(table)
    for r, n_steps in zip(table.itertuples(index=False), steps):
        peer = int(r.peer) if r.peer >= 0 else None
        out.append({"kind": r.kind, "blocked_by": r.group or None, "rank": int(r.rank),
                    "step": int(r.step) if r.step >= 0 else None,
                    "layer": int(r.layer) if r.layer >= 0 else None,
                    "microbatch": int(r.microbatch) if r.microbatch >= 0 else None, "stage": r.stage or None,
                    "start_us": float(r.start_us), "lost_us": float(r.lost_us),
                    "blocking_call": (r.call or None) if r.kind == CPU_BLOCKED_LAUNCH else None, "peer": peer,
                    "message": advice.message(r.kind, r.group, float(r.lost_us), r.next, r.call, peer,
                                              bool(r.comm), int(r.microbatches), int(n_steps),
                                              sync_call.get(r.rank, ""))})
    return out


def _largest_sync(table: pd.DataFrame) -> dict[Any, str]:
    """Per rank, the call in which its host syncs cost the most compute idle (ranks with none: absent)."""
    if table.empty:
        return {}
    s = table[(table["kind"] == CPU_BLOCKED_LAUNCH).to_numpy() & (table["group"] == "sync").to_numpy()]
    if s.empty:
        return {}
    by = s.groupby(["rank", "call"])["lost_us"].sum().reset_index().sort_values("lost_us", ascending=False)
    return {r: str(c) for r, c in by.drop_duplicates("rank")[["rank", "call"]].itertuples(index=False)}


RECURRING_GROUPS = ("long_op",)     # the groups whose advice tells a call held in every step from a first call


def _steps_with_call(table: pd.DataFrame) -> np.ndarray:
    """Per finding of RECURRING_GROUPS, in how many profiled steps of its rank a finding of its group
    names the same call (0 elsewhere, and where the trace has no steps): a long op in every step is not
    first-call work."""
    out = np.zeros(len(table), dtype=np.int64)
    if table.empty or "step" not in table:
        return out
    rows = np.flatnonzero(table["group"].isin(RECURRING_GROUPS).to_numpy() & (table["step"].to_numpy() >= 0))
    if len(rows):
        by = table.iloc[rows].groupby(["rank", "group", "call"], sort=False, dropna=False)
        out[rows] = by["step"].transform("nunique").to_numpy()
    return out


def _peer_of(a: np.ndarray, b: np.ndarray, p0: np.ndarray, p1: np.ndarray, pp: np.ndarray) -> np.ndarray:
    """The peer waited for longest within each [a, b), from the rank's peer waits [p0, p1) -> pp
    (sorted, one stream's kernels: disjoint); -1 where none."""
    out = np.full(len(a), -1, dtype=np.int64)
    lo, hi = np.searchsorted(p1, a, side="right"), np.searchsorted(p0, b, side="left")
    n = np.clip(hi - lo, 0, None)
    if not n.sum():
        return out
    # every (window, peer wait) pair that can overlap, windows in order and each one's waits in order
    owner = np.repeat(np.arange(len(a)), n)
    j = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n) + np.repeat(lo, n)
    ov = np.minimum(p1[j], b[owner]) - np.maximum(p0[j], a[owner])
    best = np.lexsort((-ov, owner))                 # per window: the largest overlap first (the first on ties)
    first = best[np.r_[True, owner[best][1:] != owner[best][:-1]]]
    out[owner[first]] = pp[j[first]]
    return out


class _Rank:
    """One rank's idle accounting: totals per cause and group, and the finding rows."""

    def __init__(self, rank: int, df: pd.DataFrame, min_lost_us: float, comm: bool, microbatches: int):
        self.rank, self.min_lost = rank, max(min_lost_us, 1e-9)
        self.comm, self.mbs = comm, microbatches
        self.has_step = "step" in df
        self.groups = {c: {g: 0.0 for g in gs} for c, gs in IDLE_GROUPS.items()}
        self.pieces: list[pd.DataFrame] = []

    def totals(self) -> dict[str, float]:
        return {c: float(sum(self.groups[c].values())) for c in (*OBSERVED_IDLE_CAUSES, UNEXPLAINED)}

    def add(self, kind: str, group: str, lost: np.ndarray, start: np.ndarray, near: pd.DataFrame,
            next_name: Any, call: Any, peer: Any) -> None:
        lost = np.clip(np.asarray(lost, dtype=float), 0.0, None)
        self.groups[kind][group] += float(lost.sum())
        sel = np.flatnonzero(lost >= self.min_lost)
        if not len(sel):
            return
        n = len(lost)
        pick = lambda v, dt=object: np.broadcast_to(np.asarray(v, dtype=dt), (n,))[sel]  # noqa: E731
        self.pieces.append(pd.DataFrame({
            "kind": kind, "group": group, "rank": self.rank,
            "step": near["step"].to_numpy()[sel] if self.has_step else -1,
            "layer": near["layer"].to_numpy()[sel], "microbatch": near["microbatch"].to_numpy()[sel],
            "stage": text(near["stage"])[sel], "start_us": pick(start, float), "lost_us": lost[sel],
            "next": pick(next_name), "call": pick(call), "peer": pick(peer, np.int64),
            "comm": self.comm, "microbatches": self.mbs}))


def find(events: pd.DataFrame, flows: pd.DataFrame, min_lost_us: float = 0.0,
         peers: Peers | None = None, step_regex: str = DEFAULT_STEP, gpu: pd.DataFrame | None = None
         ) -> tuple[pd.DataFrame, dict[int, dict[str, float]], dict[int, dict[str, dict[str, float]]]]:
    """Findings (one row per idle piece, cause and group of at least `min_lost_us`), totals per rank
    and cause, and per rank, cause and group. With `peers`, idle while this rank's communication
    waited for a late peer is waiting_on_peer. `gpu`: gpu_work(events), where the caller has it."""
    pieces: list[pd.DataFrame] = []
    totals: dict[int, dict[str, float]] = {}
    groups: dict[int, dict[str, dict[str, float]]] = {}
    g = gpu_work(events) if gpu is None else gpu
    for rank, df in g.groupby("rank", sort=True):
        acc = _find_rank(int(rank), df, events, flows, min_lost_us, peers)
        pieces += acc.pieces
        totals[int(rank)] = acc.totals()
        groups[int(rank)] = acc.groups
    findings = pd.concat(pieces, ignore_index=True) if pieces else pd.DataFrame(columns=list(FINDING_COLUMNS))
    return findings, totals, groups


@dataclass(frozen=True)
class _Cover:
    """What covers a rank's idle time, as coverage functions over time: its communication kernels
    (Fc), copies and fills (Fm), and its waits for late peers (Fp, from the waits p0..p1 on peer pp)."""
    Fc: Callable[[np.ndarray], np.ndarray]
    Fm: Callable[[np.ndarray], np.ndarray]
    Fp: Callable[[np.ndarray], np.ndarray]
    mem: pd.DataFrame
    peer_iv: tuple[np.ndarray, np.ndarray]
    p0: np.ndarray
    p1: np.ndarray
    pp: np.ndarray


def _cover(rank: int, df: pd.DataFrame, comm: pd.DataFrame, peers: Peers | None) -> _Cover:
    mem = df[df["klass"] == "memory"]
    p0, p1, pp = peers.intervals(rank) if peers is not None else (np.zeros(0), np.zeros(0), np.zeros(0))
    peer_iv = union(p0, p1)
    order = np.argsort(p0)
    return _Cover(coverage(*union(comm["start_us"].to_numpy(), (comm["start_us"] + comm["dur_us"]).to_numpy())),
                  coverage(*union(mem["start_us"].to_numpy(), (mem["start_us"] + mem["dur_us"]).to_numpy())),
                  coverage(*peer_iv), mem, peer_iv, p0[order], p1[order], pp[order])


def _find_rank(rank: int, df: pd.DataFrame, events: pd.DataFrame, flows: pd.DataFrame, min_lost_us: float,
               peers: Peers | None) -> _Rank:
    comp = df[df["klass"] == "compute"].sort_values("start_us")
    comm = df[df["klass"] == "comm"]
    mbs = int(df["microbatch"].max()) + 1 if len(df) and df["microbatch"].max() >= 0 else 1
    if mbs > 1 and pd.Series(text(df["stage"])).str.contains(TRAINING_PASS).any():
        mbs = 1          # DualPipe's forward / backward chunks: not two-batch overlap (no TBO advice)
    acc = _Rank(rank, df, min_lost_us, not comm.empty, mbs)
    cov = _cover(rank, df, comm, peers)
    lo, hi = float(df["start_us"].min()), float((df["start_us"] + df["dur_us"]).max())
    _add_edges(acc, df, comp, cov, lo, hi)
    if not comp.empty:
        _add_gaps(acc, df, comp, comm, events, flows, cov, lo, hi)
    return acc


def _add_edges(acc: _Rank, df: pd.DataFrame, comp: pd.DataFrame, cov: _Cover, lo: float, hi: float) -> None:
    """After the last compute kernel (e.g. the last combine): idle while a peer, communication or a copy
    is waited for. Idle in that tail with no GPU work running is the wait for the communication still to
    come, where some runs in the tail (the step ends with it), else the window's edge - so that the
    causes add up to span minus compute. With no compute at all, the whole span. (Before the first
    compute kernel is a gap like any other, judged in _add_gaps: GPU work before it means the window
    holds what kept it waiting, e.g. first-call host work after an input copy.)"""
    if comp.empty:
        a, b, near = lo, hi, df.iloc[[0]]
    else:
        ce = (comp["start_us"] + comp["dur_us"]).to_numpy()
        a, b, near = float(ce.max()), hi, comp.iloc[[int(np.argmax(ce))]]
    if b <= a:
        return
    A, B = np.array([a]), np.array([b])
    c, p = cov.Fc(B) - cov.Fc(A), cov.Fp(B) - cov.Fp(A)
    m = np.minimum(cov.Fm(B) - cov.Fm(A), (B - A) - c)
    rest = (B - A) - c - m
    to_come = (c > 0) & (not comp.empty)        # communication still to come after the last compute kernel
    acc.add(WAITING_ON_PEER, "peer", p, A, near, "", "", _peer_of(A, B, cov.p0, cov.p1, cov.pp))
    acc.add(WAITING_ON_COMM, "comm", c - p + np.where(to_come, rest, 0.0), A, near, "", "", -1)
    acc.add(WAITING_ON_COPY, "copy", m, A, near, "", "", -1)
    acc.add(UNEXPLAINED, "edge", np.where(to_come, 0.0, rest), A, near, "", "", -1)


def _launched(rank: int, events: pd.DataFrame, nxt: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The rank's CPU events; when each gap's next kernel was launched: the end of the CPU launch call
    with its correlation id (NaN where the trace has none); and the thread that launched it ("": none)."""
    cpu = events.loc[(events["rank"] == rank) & (events["device"] == "cpu"),
                     [c for c in HOST_COLUMNS if c in events]]      # only what host_view and this read
    launch = cpu[cpu["launch"] & (cpu["correlation"] >= 0)]
    corr = launch["correlation"].to_numpy()
    first = ~pd.Index(corr).duplicated()
    at = pd.Index(corr[first]).get_indexer(nxt["correlation"].to_numpy())
    lend = np.append((launch["start_us"] + launch["dur_us"]).to_numpy()[first], np.nan)[at]
    tid = np.append(text(launch["tid"])[first], "")[at]
    return cpu, lend, tid


def _host_views(cpu: pd.DataFrame, gpu: pd.DataFrame, lo: float, hi: float, tid: np.ndarray
                ) -> tuple[dict[str, Any], np.ndarray]:
    """The host view of each thread that launched a gap's next kernel, and each gap's view: its
    kernel's launching thread (training traces launch the backward pass from the autograd engine's
    thread, the forward from the main one), the main launching thread where the launch is unknown."""
    main = host_view(cpu, gpu, lo, hi)
    which = np.where(tid == "", main.thread, tid).astype(object)
    views = {main.thread: main}
    for t in dict.fromkeys(which.tolist()):
        if t not in views:
            views[t] = host_view(cpu, gpu, lo, hi, thread=t)
    return views, which


def _blocked_by_view(views: dict[str, Any], which: np.ndarray, cov: _Cover, lo: float, hi: float,
                     ready: np.ndarray, launched: np.ndarray
                     ) -> tuple[dict[str, np.ndarray], dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]]:
    """_blocked on each gap's view: per host group the time held away, and per (thread, group) the
    held intervals (which _call_names names)."""
    blocked = {grp: np.zeros(len(which)) for grp in HOST_GROUPS}
    held_iv = {}
    for t, hv in views.items():
        sel = np.flatnonzero(which == t)
        for grp, (lost, iv) in _blocked(hv, cov, lo, hi, ready[sel], launched[sel]).items():
            blocked[grp][sel] = lost
            held_iv[(t, grp)] = iv
    return blocked, held_iv


def _by_view(views: dict[str, Any], which: np.ndarray, fn: Callable[[str, Any, np.ndarray], Any],
             fill: Any = "", dtype: Any = object) -> np.ndarray:
    """fn(thread, view, gaps) for each view's gaps, as one array over all gaps."""
    out = np.full(len(which), fill, dtype=dtype)
    for t, hv in views.items():
        sel = np.flatnonzero(which == t)
        if len(sel):
            out[sel] = fn(t, hv, sel)
    return out


def _blocked(hv: Any, cov: _Cover, lo: float, hi: float, ready: np.ndarray, launched: np.ndarray
             ) -> dict[str, tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]]:
    """Per host group, how long the launching thread was held away between each next kernel's ready
    and launch times, and the held intervals; stalls while a peer is waited for are the peer's."""
    free = gaps(*cov.peer_iv, lo, hi) if len(cov.peer_iv[0]) else None
    blocked = {}
    for grp in HOST_GROUPS:
        iv = hv.blocked(grp)
        if free is not None and len(iv[0]):
            iv = intersection(iv, free)
        F = coverage(*iv)
        blocked[grp] = (F(launched) - F(ready), iv)
    return blocked


def _crosses_step(has_step: bool, prv: pd.DataFrame, nxt: pd.DataFrame) -> np.ndarray:
    """Per gap, whether it runs from one step's last compute to the next step's first: its CPU-side parts are
    the step boundary's."""
    if not has_step:
        return np.zeros(len(nxt), dtype=bool)
    ps, ns = prv["step"].to_numpy(), nxt["step"].to_numpy()
    return (ps != ns) & (ps >= 0) & (ns >= 0)


def _add_gaps(acc: _Rank, df: pd.DataFrame, comp: pd.DataFrame, comm: pd.DataFrame, events: pd.DataFrame,
              flows: pd.DataFrame, cov: _Cover, lo: float, hi: float) -> None:
    """Each gap between compute kernels, split along the next kernel's path: ready (its inputs and
    peers), launched (the CPU held away or slow), started (submission, copies, the GPU's switch)."""
    cs, ce = comp["start_us"].to_numpy(), (comp["start_us"] + comp["dur_us"]).to_numpy()
    u0, u1 = union(cs, ce)
    g0, g1 = gaps(u0, u1, lo=lo, hi=float(u1[-1]))          # from the rank's first GPU work: the head is a gap too
    if not len(g0):
        return
    nxt_idx = np.clip(np.searchsorted(cs, g1, side="left"), 0, len(comp) - 1)
    nxt = comp.iloc[nxt_idx]
    prv = comp.iloc[np.clip(nxt_idx - 1, 0, len(comp) - 1)]
    cpu, launched_raw, launch_tid = _launched(acc.rank, events, nxt)
    known = np.isfinite(launched_raw)
    launched = np.where(known, launched_raw, g0)            # unknown: not a launch issue
    ready = _ready(df, comm, flows, acc.rank, nxt, g0, g1, launched)
    launched = np.clip(launched, ready, g1)
    views, which = _host_views(cpu, df, lo, hi, launch_tid)
    blocked, held_iv = _blocked_by_view(views, which, cov, lo, hi, ready, launched)
    Fc, Fm, Fp = cov.Fc, cov.Fm, cov.Fp
    peer_wait = Fp(ready) - Fp(g0)
    waiting = (ready - g0) - peer_wait
    peer_launch = Fp(launched) - Fp(ready)
    held = sum(blocked.values())
    bound = np.clip((launched - ready) - peer_launch - held, 0.0, None)
    rest_comm = Fc(g1) - Fc(launched)
    peer_rest = Fp(g1) - Fp(launched)
    other = np.clip((g1 - launched) - rest_comm, 0.0, None)
    onto_idle = known & (launched_raw > g0)                 # its launch reached an idle GPU
    latency = np.where(onto_idle, np.minimum(other, LAUNCH_LATENCY_US), 0.0)
    other = other - latency
    copy = np.minimum(Fm(g1) - Fm(launched), other)       # a copy or fill ran meanwhile
    other = other - copy
    switches = KERNEL_SWITCH_US * (1 + _inside(cov.mem, g0, g1))
    switch = np.where(~onto_idle & known, np.minimum(other, switches), 0.0)   # queued right behind the last
    other = other - switch
    on_peer = peer_wait + peer_launch + peer_rest
    boundary = _crosses_step(acc.has_step, prv, nxt)
    names = text(nxt["name"])
    none = np.full(len(g0), -1)
    peer = none.copy()
    sel = np.flatnonzero(on_peer >= acc.min_lost)
    if len(sel):
        peer[sel] = _peer_of(g0[sel], g1[sel], cov.p0, cov.p1, cov.pp)
    acc.add(WAITING_ON_PEER, "peer", on_peer, g0, nxt, names, "", peer)
    acc.add(WAITING_ON_COMM, "comm", waiting + rest_comm - peer_rest, g0, nxt, names, "", none)
    first_layer = _first_layer_of_step(df, nxt) if acc.has_step else np.zeros(len(g0), dtype=bool)
    start = ready.copy()
    for grp in HOST_GROUPS:
        lost = blocked[grp]
        call = _by_view(views, which, lambda t, hv, i: _call_names(hv, grp, held_iv[(t, grp)], ready[i], launched[i],
                                                                   lost[i], acc.min_lost))
        normal = np.where(boundary, 0.0, lost)
        if grp == "dispatch":
            acc.add(CPU_BLOCKED_LAUNCH, "pipeline_fill", np.where(first_layer, normal, 0.0), start, nxt, names,
                    call, none)
            normal = np.where(first_layer, 0.0, normal)
        acc.add(CPU_BLOCKED_LAUNCH, grp, normal, start, nxt, names, call, none)
        start = start + lost
    long_op = _by_view(views, which, lambda t, hv, i: _long_op(hv, ready[i], launched[i], bound[i]),
                       False, bool) & ~boundary
    overhead, one_op = np.where(boundary | long_op, 0.0, bound), np.where(long_op, bound, 0.0)
    # each piece named once: a long op by its op, host overhead by the runtime call inside its op where one held it
    in_op, in_call = (_by_view(views, which, lambda t, hv, i, g=g, lost=lost: _call_names(
        hv, g, (ready[i], launched[i]), ready[i], launched[i], lost[i], acc.min_lost))
        for g, lost in (("launch", one_op), ("launch_call", overhead)))
    acc.add(LAUNCH_BOUND, "host_overhead", overhead, start, nxt, names, in_call, none)
    acc.add(LAUNCH_BOUND, "long_op", one_op, start, nxt, names, in_op, none)
    acc.add(LAUNCH_BOUND, "submission", np.where(boundary, 0.0, latency), launched, nxt, names, "", none)
    on_step = np.where(boundary, g1 - g0, 0.0)
    step_call = _by_view(views, which, lambda t, hv, i: _call_names(hv, "host", hv.blocked("host"), g0[i], g1[i],
                                                                    on_step[i], acc.min_lost))
    acc.add(STEP_BOUNDARY, "step", np.where(boundary, held + bound + latency + other + switch, 0.0), g0, nxt,
            names, step_call, none)
    acc.add(WAITING_ON_COPY, "copy", copy, launched, nxt, names, "", none)
    acc.add(KERNEL_SWITCH, "switch", np.where(boundary, 0.0, switch), launched, nxt, names, "", none)
    # without its launch call in the trace, a kernel's wait cannot be told queued from launched late
    acc.add(UNEXPLAINED, "queued", np.where(boundary | ~known, 0.0, other), launched, nxt, names, "", none)
    acc.add(UNEXPLAINED, "no_launch", np.where(boundary | known, 0.0, other), launched, nxt, names, "", none)


def _long_op(hv: Any, ready: np.ndarray, launched: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """Whether each gap's launch-path time was one op's own host work: LONG_OP_US or more of it, with
    one outermost framework op covering at least half of [ready, launched]."""
    out = np.zeros(len(bound), dtype=bool)
    if not hv.ops_known:
        return out
    for i in np.flatnonzero(bound >= LONG_OP_US):
        out[i] = hv.ops.covered(float(ready[i]), float(launched[i])) >= 0.5 * (launched[i] - ready[i])
    return out


def _ready(df: pd.DataFrame, comm: pd.DataFrame, flows: pd.DataFrame, rank: int, nxt: pd.DataFrame,
           g0: np.ndarray, g1: np.ndarray, launched: np.ndarray) -> np.ndarray:
    """When each gap's next kernel could have run: its dependency flows where the trace has them
    (tracegen's), else the communication kernel it waited for, else the gap's start."""
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
    return np.clip(np.nan_to_num(ready, nan=-np.inf), g0, g1)


def _inside(df: pd.DataFrame, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How many of the rows lie wholly within each [a, b)."""
    if df.empty:
        return np.zeros(len(a))
    st = np.sort(df["start_us"].to_numpy())
    en = np.sort((df["start_us"] + df["dur_us"]).to_numpy())
    return np.clip(np.searchsorted(en, b, side="right") - np.searchsorted(st, a, side="left"), 0, None)


def _first_layer_of_step(df: pd.DataFrame, nxt: pd.DataFrame) -> np.ndarray:
    """Whether each next kernel lies in the first layer of its step (a step's pipeline fill)."""
    known = df[(df["layer"] >= 0) & (df["step"] >= 0)]
    if known.empty:
        return np.zeros(len(nxt), dtype=bool)
    first = known.groupby("step")["layer"].min()
    lay, st = nxt["layer"].to_numpy(), nxt["step"].to_numpy()
    return (lay >= 0) & (lay == first.reindex(st).to_numpy())


def _call_names(hv, group: str, iv: tuple[np.ndarray, np.ndarray], a: np.ndarray, b: np.ndarray,
                lost: np.ndarray, min_lost: float) -> np.ndarray:
    """What the CPU sat in for each piece worth a finding: the named span at the middle of the longest
    stretch of `iv` within [a, b)."""
    out = np.full(len(a), "", dtype=object)
    sel = np.flatnonzero(lost >= min_lost)
    if not len(sel) or not hv.thread:
        return out
    s0, s1 = iv
    for i in sel:
        if group in ("launch", "launch_call"):
            out[i] = hv.name(group, a[i], b[i]) or "launch calls and Python between ops"
            continue
        lo_i, hi_i = np.searchsorted(s1, a[i], side="right"), np.searchsorted(s0, b[i], side="left")
        if hi_i <= lo_i:
            continue
        x0, x1 = np.maximum(s0[lo_i:hi_i], a[i]), np.minimum(s1[lo_i:hi_i], b[i])
        m = int(np.argmax(x1 - x0))
        out[i] = hv.name(group, float(x0[m]), float(x1[m]))
    return out
