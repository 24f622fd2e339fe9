"""Why the GPU idles: every stretch where no compute runs on a rank, split by what held the next
compute kernel back - a late peer (waiting_on_peer: this rank's communication waited for a rank
that arrived late, peers.py), its inputs (waiting_on_comm: a communication kernel it needed was
still running), then its launch (cpu_blocked_launch: the launching thread sat in one host span
without launching - a synchronising call, a spin on the received counts inside a dispatch, Python
work - named as `blocking_call`; launch_bound: the CPU was busy issuing launches)."""
from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from tracegen.base.contract import (
    CPU_BLOCKED_LAUNCH,
    FLOW_DEPENDENCY,
    LAUNCH_BOUND,
    OBSERVED_IDLE_CAUSES,
    RUNTIME_CATS,
    WAITING_ON_COMM,
    WAITING_ON_PEER,
)

from .events import text
from .intervals import coverage, gaps, intersection, union
from .overlap import gpu_work
from .peers import Peers
from .steps import DEFAULT_STEP

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


FINDING_COLUMNS = ("kind", "rank", "step", "layer", "microbatch", "stage", "start_us", "lost_us", "next", "call",
                   "peer")
QUIET_US = 100.0     # the launching thread making no runtime call for this long is not launching
NO_SPAN = "a CPU stretch with no runtime call and no host span"


def message(kind: str, lost: float, next_name: str, call: str, peer: int = -1, step_regex: str = DEFAULT_STEP) -> str:
    nm = _short(next_name)
    if kind == WAITING_ON_PEER:
        return (f"compute idle {lost:.1f} us: communication waited for rank {peer}, which arrived late "
                f"(see stragglers)")
    if kind == WAITING_ON_COMM:
        if not next_name:
            return f"compute idle {lost:.1f} us: no compute left or yet to run while communication ran"
        return f"compute idle {lost:.1f} us: {nm} waited for communication to deliver its inputs"
    if kind == CPU_BLOCKED_LAUNCH:
        if not call or call == NO_SPAN or re.match(step_regex, call):
            return (f"compute idle {lost:.1f} us: the CPU made no runtime call in {_short(call) or 'its step'} "
                    f"before launching {nm} (host-side work, a lock, a sleep, a late start); profile the CPU side")
        return (f"compute idle {lost:.1f} us: the CPU sat in {_short(call)} without launching before {nm}; "
                f"submit independent compute before the blocking call (proper two-batch-overlap order)")
    return (f"compute idle {lost:.1f} us: the CPU was still launching earlier work when {nm} could run "
            f"(launch-bound; CUDA graphs help)")


def as_dicts(table: pd.DataFrame, step_regex: str = DEFAULT_STEP) -> list[dict[str, Any]]:
    """Findings as the JSON report lists them: rank, step, layer, micro-batch, stage, start, time lost,
    the blocking call or the peer waited for, message."""
    out = []
    for r in table.itertuples(index=False):
        peer = int(r.peer) if r.peer >= 0 else None
        out.append({"kind": r.kind, "rank": int(r.rank), "step": int(r.step) if r.step >= 0 else None,
                    "layer": int(r.layer) if r.layer >= 0 else None,
                    "microbatch": int(r.microbatch) if r.microbatch >= 0 else None, "stage": r.stage or None,
                    "start_us": float(r.start_us), "lost_us": float(r.lost_us),
                    "blocking_call": (r.call or None) if r.kind == CPU_BLOCKED_LAUNCH else None, "peer": peer,
                    "message": message(r.kind, float(r.lost_us), r.next, r.call, peer if peer is not None else -1,
                                       step_regex)})
    return out


def cpu_stalls(cpu: pd.DataFrame, lo: float, hi: float) -> tuple[tuple[np.ndarray, np.ndarray], pd.DataFrame]:
    """Where one rank's CPU was not launching: inside a synchronising call, or on the main launching
    thread a stretch of at least QUIET_US without any runtime call (a spin on host-mapped memory
    such as DeepEP's wait for the received counts, Python work, a sleep). Also that thread's host
    spans (annotations, long framework ops, sync calls), sorted, to name the one it sat in."""
    blk = cpu[cpu["blocking"]]
    s = [blk["start_us"].to_numpy()]
    e = [(blk["start_us"] + blk["dur_us"]).to_numpy()]
    launch = cpu[cpu["launch"]]
    spans = cpu.iloc[0:0]
    if len(launch):
        tid = launch["tid"].astype(str).value_counts().index[0]          # the main launching thread
        th = cpu[cpu["tid"].astype(str) == tid]
        rt = th[th["cat"].isin(RUNTIME_CATS) | th["launch"] | th["blocking"]]
        r0, r1 = union(rt["start_us"].to_numpy(), (rt["start_us"] + rt["dur_us"]).to_numpy())
        q0, q1 = gaps(r0, r1, lo, hi) if len(r0) else (np.array([lo]), np.array([hi]))
        keep = (q1 - q0) >= QUIET_US
        s.append(q0[keep])
        e.append(q1[keep])
        spans = th[~th["cat"].isin(RUNTIME_CATS) | th["blocking"]].sort_values("start_us")
    return union(np.concatenate(s), np.concatenate(e)), spans


def _sat_in(stalls: tuple[np.ndarray, np.ndarray], spans: pd.DataFrame, step_regex: str
            ) -> tuple[np.ndarray, np.ndarray]:
    """The stalls widened to the innermost host span holding each (not a whole step): the CPU sat
    in that span, so its time there is the stall's."""
    q0, q1 = stalls
    holder = _holder(spans, (q0 + q1) / 2)
    ok = holder >= 0
    if not ok.any():
        return stalls
    st = spans["start_us"].to_numpy()[holder[ok]]
    en = st + spans["dur_us"].to_numpy()[holder[ok]]
    whole_step = pd.Series(text(spans["name"])[holder[ok]]).str.match(step_regex).to_numpy()
    return union(np.concatenate([np.where(whole_step, q0[ok], np.minimum(st, q0[ok])), q0[~ok]]),
                 np.concatenate([np.where(whole_step, q1[ok], np.maximum(en, q1[ok])), q1[~ok]]))


def _holder(spans: pd.DataFrame, t: np.ndarray) -> np.ndarray:
    """Row of the innermost host span holding each time (its latest-starting holder), -1: none."""
    out = np.full(len(t), -1, dtype=np.int64)
    if spans.empty or not len(t):
        return out
    st = spans["start_us"].to_numpy()
    en = st + spans["dur_us"].to_numpy()
    j = np.searchsorted(st, t, side="right") - 1
    for i in range(len(t)):
        for k in range(j[i], max(j[i] - 256, -1), -1):
            if en[k] >= t[i]:
                out[i] = k
                break
    return out


def _innermost(spans: pd.DataFrame, t: np.ndarray) -> np.ndarray:
    """The name of the innermost host span holding each time, or a description."""
    h = _holder(spans, t)
    out = np.full(len(t), NO_SPAN, dtype=object)
    if (h >= 0).any():
        out[h >= 0] = text(spans["name"])[h[h >= 0]]
    return out


def _peer_of(a: np.ndarray, b: np.ndarray, p0: np.ndarray, p1: np.ndarray, pp: np.ndarray) -> np.ndarray:
    """The peer waited for longest within each [a, b), from the rank's peer waits [p0, p1) -> pp
    (sorted, one stream's kernels: disjoint); -1 where none."""
    out = np.full(len(a), -1, dtype=np.int64)
    for i in range(len(a)):
        lo_i, hi_i = np.searchsorted(p1, a[i], side="right"), np.searchsorted(p0, b[i], side="left")
        if hi_i > lo_i:
            ov = np.minimum(p1[lo_i:hi_i], b[i]) - np.maximum(p0[lo_i:hi_i], a[i])
            out[i] = int(pp[lo_i + int(np.argmax(ov))])
    return out


def find(events: pd.DataFrame, flows: pd.DataFrame, min_lost_us: float = 0.0,
         peers: Peers | None = None, step_regex: str = DEFAULT_STEP) -> tuple[pd.DataFrame, dict]:
    """Findings (one row per idle piece of at least `min_lost_us`) and totals per rank and cause.
    With `peers`, idle while this rank's communication waited for a late peer is waiting_on_peer;
    `step_regex` names the step ranges, which are never "the span the CPU sat in"."""
    pieces: list[pd.DataFrame] = []
    totals: dict[int, dict[str, float]] = {}
    g = gpu_work(events)
    has_step = "step" in events
    for rank, df in g.groupby("rank", sort=True):
        comp = df[df["klass"] == "compute"].sort_values("start_us")
        comm = df[df["klass"] == "comm"]
        tot = {k: 0.0 for k in OBSERVED_IDLE_CAUSES}
        tot["unexplained"] = 0.0
        totals[int(rank)] = tot
        comm_iv = union(comm["start_us"].to_numpy(), (comm["start_us"] + comm["dur_us"]).to_numpy())
        Fc = coverage(*comm_iv)
        p0, p1, pp = peers.intervals(int(rank)) if peers is not None else (np.zeros(0), np.zeros(0), np.zeros(0))
        peer_iv = union(p0, p1)
        Fp = coverage(*peer_iv)
        order = np.argsort(p0)
        p0, p1, pp = p0[order], p1[order], pp[order]

        def add(kind: str, lost: np.ndarray, start: np.ndarray, near: pd.DataFrame, next_name, call, peer) -> None:
            sel = np.flatnonzero(lost >= max(min_lost_us, 1e-9))
            if not len(sel):
                return
            pieces.append(pd.DataFrame({
                "kind": kind, "rank": int(rank),
                "step": near["step"].to_numpy()[sel] if has_step else -1,
                "layer": near["layer"].to_numpy()[sel], "microbatch": near["microbatch"].to_numpy()[sel],
                "stage": text(near["stage"])[sel], "start_us": start[sel], "lost_us": lost[sel],
                "next": np.asarray(next_name, dtype=object)[sel], "call": np.asarray(call, dtype=object)[sel],
                "peer": np.asarray(peer)[sel]}))

        lo, hi = float(df["start_us"].min()), float((df["start_us"] + df["dur_us"]).max())
        edges = []
        if comp.empty:        # no compute at all: the whole span is idle
            edges.append((lo, hi, df.iloc[[0]]))
        else:
            cs, ce = comp["start_us"].to_numpy(), (comp["start_us"] + comp["dur_us"]).to_numpy()
            u0, u1 = union(cs, ce)
            # before the first and after the last compute (e.g. the last combine): idle while communication
            # (or a peer) is waited for, else unexplained - so that the causes add up to span minus compute
            edges += [(lo, float(u0[0]), comp.iloc[[0]]), (float(u1[-1]), hi, comp.iloc[[int(np.argmax(ce))]])]
        for a, b, near in edges:
            if b <= a:
                continue
            A, B = np.array([a]), np.array([b])
            c, p = Fc(B) - Fc(A), Fp(B) - Fp(A)
            tot[WAITING_ON_PEER] += float(p[0])
            tot[WAITING_ON_COMM] += float(c[0] - p[0])
            tot["unexplained"] += (b - a) - float(c[0])
            add(WAITING_ON_PEER, p, A, near, [""], [""], _peer_of(A, B, p0, p1, pp))
            add(WAITING_ON_COMM, c - p, A, near, [""], [""], [-1])
        if comp.empty:
            continue
        g0, g1 = gaps(u0, u1)
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
        raw, spans = cpu_stalls(cpu, lo, hi)
        stalls = _sat_in(raw, spans, step_regex)
        # the CPU's stalls while a peer was waited for count as the peer's: the stall ends when it arrives
        b0, b1 = intersection(stalls, gaps(*peer_iv, lo, hi)) if len(peer_iv[0]) else stalls
        F = coverage(b0, b1)
        peer_wait = Fp(ready) - Fp(g0)
        waiting = (ready - g0) - peer_wait
        peer_launch = Fp(launched) - Fp(ready)
        blocked = F(launched) - F(ready)
        bound = np.clip((launched - ready) - peer_launch - blocked, 0.0, None)
        rest_comm = Fc(g1) - Fc(launched)
        peer_rest = Fp(g1) - Fp(launched)
        rest = g1 - launched
        on_peer = peer_wait + peer_launch + peer_rest
        tot[WAITING_ON_PEER] += float(on_peer.sum())
        tot[WAITING_ON_COMM] += float(waiting.sum() + (rest_comm - peer_rest).sum())
        tot[CPU_BLOCKED_LAUNCH] += float(blocked.sum())
        tot[LAUNCH_BOUND] += float(bound.sum())
        tot["unexplained"] += float((rest - rest_comm).sum())
        # name what the CPU sat in: the innermost host span at the middle of its longest stall in the gap
        call = np.full(len(g0), "", dtype=object)
        sel = np.flatnonzero(blocked >= max(min_lost_us, 1e-9))
        if len(sel):
            mids = np.empty(len(sel))
            for n, i in enumerate(sel):
                a_i, z_i = np.searchsorted(b1, ready[i], side="right"), np.searchsorted(b0, launched[i], side="left")
                s_i, e_i = np.maximum(b0[a_i:z_i], ready[i]), np.minimum(b1[a_i:z_i], launched[i])
                m = int(np.argmax(e_i - s_i)) if z_i > a_i else 0
                mids[n] = (s_i[m] + e_i[m]) / 2 if z_i > a_i else ready[i]
            call[sel] = _innermost(spans, mids)
        names = text(nxt["name"])
        none = np.full(len(g0), -1)
        on_peer_sel = np.flatnonzero(on_peer >= max(min_lost_us, 1e-9))
        peer = none.copy()
        if len(on_peer_sel):
            peer[on_peer_sel] = _peer_of(g0[on_peer_sel], g1[on_peer_sel], p0, p1, pp)
        add(WAITING_ON_PEER, on_peer, g0, nxt, names, call, peer)
        add(WAITING_ON_COMM, waiting + rest_comm - peer_rest, g0, nxt, names, call, none)
        add(CPU_BLOCKED_LAUNCH, blocked, ready, nxt, names, call, none)
        add(LAUNCH_BOUND, bound, ready + blocked, nxt, names, call, none)
    findings = pd.concat(pieces, ignore_index=True) if pieces else pd.DataFrame(columns=list(FINDING_COLUMNS))
    return findings, totals


def _short(name: str, n: int = 60) -> str:
    return name if len(name) <= n else name[: n - 3] + "..."
