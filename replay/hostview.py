"""What a rank's launching thread was doing when it was not launching: waiting (a synchronising
call, a dispatch waiting for its received counts) or working outside the launch path (host work
outside any framework op), as disjoint interval sets per group, with the names findings.py prints.

Everything else the thread did - framework ops doing their host work before their own launch,
Python glue between ops, the launch calls themselves - is the launch path: idle compute while the
thread was on it is host overhead (launch_bound), never a wait. The rules (which spans wait, after
which kernels the host waits) are taxonomy data (replay/data/taxonomy.toml [[wait]], host_wait)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tracegen.base.contract import RUNTIME_CATS

from .events import FRAMEWORK_OP, text, text_is
from .intervals import gaps, intersection, union

QUIET_US = 100.0   # the launching thread making no runtime call (or sitting in no op) this long is not launching
CALL_SHARE = 0.5   # a runtime call (cudaFree, cudaMalloc) that held this share of a launch-path stretch is named in it
GROUPS = ("sync", "dispatch", "host")   # in priority order: a stretch in two is booked to the first
NO_RUNTIME = "host work with no runtime call (the trace has no framework ops to say where)"


def _minus(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], lo: float, hi: float
           ) -> tuple[np.ndarray, np.ndarray]:
    """a without b (both unions of disjoint sorted intervals)."""
    if not len(b[0]) or not len(a[0]):
        return a
    return intersection(a, gaps(*b, min(lo, float(a[0][0])), max(hi, float(a[1][-1]))))


class _Spans:
    """Host spans as arrays (start-sorted): which hold a time, and their names. Each question is a
    binary search, not a scan of every span (a rank's findings ask it hundreds of times)."""

    def __init__(self, st: np.ndarray, dur: np.ndarray, names: np.ndarray):
        self.st = st
        self.en = self.st + dur
        self.names = names
        self._exact = bool(np.isnan(self.en).any()) or bool(np.any(np.diff(self.st) < 0))   # scan instead
        self._reach = np.maximum.accumulate(self.en) if len(self.en) and not self._exact else self.en
        self._order = np.argsort(self.en, kind="stable")          # by end; equal ends in start order
        self._by_end = self.en[self._order]

    def holder(self, t: float, outermost: bool) -> str:
        """The outermost (earliest-starting) or innermost (latest-starting) span with st <= t <= en."""
        i = self._holding(t, outermost)
        return str(self.names[i]) if i >= 0 else ""

    def covered(self, t0: float, t1: float) -> float:
        """How much of [t0, t1] the outermost span holding its middle covers (0: none holds it)."""
        i = self._holding((t0 + t1) / 2, True)
        return max(0.0, float(min(self.en[i], t1) - max(self.st[i], t0))) if i >= 0 else 0.0

    def _holding(self, t: float, outermost: bool) -> int:
        """The position of the span holder() names, -1 for none."""
        if self._exact:
            hold = np.flatnonzero((self.st <= t) & (self.en >= t))
            return int(hold[0] if outermost else hold[-1]) if len(hold) else -1
        k = int(np.searchsorted(self.st, t, side="right"))        # the spans starting at or before t: [0, k)
        if outermost:
            i = int(np.searchsorted(self._reach, t, side="left"))  # the first whose end reaches t
            return i if i < k else -1
        lo = max(0, k - 64)                                      # the innermost is most often a recent span
        hold = np.flatnonzero(self.en[lo:k] >= t)
        if len(hold):
            return lo + int(hold[-1])
        hold = np.flatnonzero(self.en[:lo] >= t)
        return int(hold[-1]) if len(hold) else -1

    def widest(self, t0: float, t1: float) -> tuple[str, float]:
        """The span that covers most of [t0, t1), and how much of it (("", 0.0): none)."""
        if not len(self.st) or t1 <= t0:
            return "", 0.0
        if self._exact:                                                  # unsorted or open spans: every one
            i, k = 0, len(self.st)
        else:
            k = int(np.searchsorted(self.st, t1, side="left"))          # the spans starting before t1
            i = int(np.searchsorted(self._reach, t0, side="right"))     # the first reaching past t0
        if k <= i:
            return "", 0.0
        cover = np.nan_to_num(np.minimum(self.en[i:k], t1) - np.maximum(self.st[i:k], t0), nan=0.0)
        j = int(np.argmax(cover))
        return (str(self.names[i + j]), float(cover[j])) if cover[j] > 0 else ("", 0.0)

    def before(self, t: float) -> str:
        """The name of the span that ended last at or before t (of equal ends, the first to start)."""
        j = int(np.searchsorted(self._by_end, t + 1e-6, side="right")) - 1
        if j < 0:
            return ""
        first = int(np.searchsorted(self._by_end, self._by_end[j], side="left"))
        return str(self.names[self._order[first]])

    def after(self, t: float) -> str:
        """The name of the first span starting at or after t."""
        j = np.searchsorted(self.st, t - 1e-6, side="left")
        return str(self.names[j]) if j < len(self.st) else ""


def _no_spans() -> _Spans:
    return _Spans(np.zeros(0), np.zeros(0), np.zeros(0, dtype=object))


@dataclass
class HostView:
    """The launching thread's waits and outside-op work on one rank (empty: no launching thread)."""
    thread: str = ""
    groups: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    sync: _Spans = field(default_factory=_no_spans)        # spans that wait, all of them
    dispatch: _Spans = field(default_factory=_no_spans)    # dispatch waits (span or quiet)
    ranges: _Spans = field(default_factory=_no_spans)      # host spans other than framework ops
    ops: _Spans = field(default_factory=_no_spans)         # the outermost framework ops
    after: list[tuple[float, float, str]] = field(default_factory=list)   # host-wait stretches, kernel waited on
    ops_known: bool = False
    runtime: _Spans = field(default_factory=_no_spans)     # runtime calls that neither launch nor wait (cudaFree, ...)

    def blocked(self, group: str) -> tuple[np.ndarray, np.ndarray]:
        return self.groups.get(group, (np.zeros(0), np.zeros(0)))

    def name(self, group: str, t0: float, t1: float) -> str:
        """What the thread sat in during [t0, t1) (a stretch of `group`; "launch_call": of the launch path, naming the
        runtime call that held CALL_SHARE of it, if one did, after the op around it: "aten::empty (in cudaFree)")."""
        mid = (t0 + t1) / 2
        if group == "sync":
            return self.sync.holder(mid, outermost=True) or "a sync"
        if group == "dispatch":
            got = self.dispatch.holder(mid, outermost=False)
            if got:
                return got
            k = next((n for a, b, n in self.after if a <= mid <= b), "")
            return f"the host's wait after {k}" if k else "a dispatch's wait"
        if group == "host":
            if not self.ops_known:
                return NO_RUNTIME
            before, after = self.ops.before(t0), self.ops.after(t1)
            where = self.ranges.holder(mid, outermost=False)
            return ("host work outside ops" + (f" after {before}" if before else "") +
                    (f", before {after}" if after else "") + (f", inside {where}" if where else ""))
        op = self.ops.holder(mid, outermost=True)
        if group == "launch_call":      # a runtime call the thread sat in (cudaFree, cudaMalloc), named after its op
            call, held = self.runtime.widest(t0, t1)
            if call and held >= CALL_SHARE * (t1 - t0):
                return f"{op} (in {call})" if op else call
        return op


HOST_COLUMNS = ("tid", "cat", "name", "start_us", "dur_us", "launch", "blocking", "wait_group", "quiet_wait",
                 "correlation")


def host_view(cpu: pd.DataFrame, gpu: pd.DataFrame, lo: float, hi: float, thread: str | None = None) -> HostView:
    """The waits and outside-op work of a launching thread within [lo, hi): `thread`, else the rank's
    main one (the most launches). `cpu`: the rank's CPU rows; `gpu`: its GPU rows (for the kernels
    after whose launch the host waits)."""
    cpu = cpu[[c for c in HOST_COLUMNS if c in cpu]]     # the columns read here: row filters copy only them
    is_launch = cpu["launch"].to_numpy()
    if not is_launch.any():
        return HostView()
    tid = thread or pd.Series(text(cpu["tid"][is_launch])).value_counts().index[0]    # the main launching thread
    # the thread's rows by start (ties in table order), as arrays: no copy of the rows as a table
    mine = np.flatnonzero(text_is(cpu["tid"], tid))
    start = cpu["start_us"].to_numpy(dtype=float)
    order = mine[np.argsort(start[mine], kind="stable")]
    st, du = start[order], cpu["dur_us"].to_numpy(dtype=float)[order]

    def iv(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return union(st[m], st[m] + du[m])
    launch = is_launch[order]
    blocking, quiet_wait = cpu["blocking"].to_numpy()[order], cpu["quiet_wait"].to_numpy()[order]
    is_rt = cpu["cat"].isin(RUNTIME_CATS).to_numpy()[order] | launch | blocking
    r0, r1 = iv(is_rt)
    q0, q1 = gaps(r0, r1, lo, hi) if len(r0) else (np.array([lo]), np.array([hi]))
    keep = (q1 - q0) >= QUIET_US
    quiet = (q0[keep], q1[keep])
    in_dispatch = text_is(cpu["wait_group"], "dispatch")[order]
    sync = iv(blocking & ~in_dispatch)
    disp_span = iv(blocking & in_dispatch)
    disp_quiet = intersection(quiet, iv(quiet_wait & in_dispatch))
    after_iv, after = _waits_after_launch(st + du, launch, cpu["correlation"].to_numpy()[order], gpu, quiet)
    dispatch = union(np.concatenate([disp_span[0], disp_quiet[0], after_iv[0]]),
                     np.concatenate([disp_span[1], disp_quiet[1], after_iv[1]]))
    is_op = text_is(cpu["cat"], FRAMEWORK_OP)[order]
    ops_known = bool(is_op.any())
    if ops_known:
        c0, c1 = iv(is_rt | is_op)
        o0, o1 = gaps(c0, c1, lo, hi) if len(c0) else (np.array([lo]), np.array([hi]))
        keep = (o1 - o0) >= QUIET_US
        outside = (o0[keep], o1[keep])
    else:
        outside = quiet
    dispatch = _minus(dispatch, sync, lo, hi)
    host = _minus(_minus(outside, sync, lo, hi), dispatch, lo, hi)
    names = text(cpu["name"], order)

    def spans(m: np.ndarray) -> _Spans:
        return _Spans(st[m], du[m], names[m])
    span = ~is_rt | blocking
    return HostView(tid, {"sync": sync, "dispatch": dispatch, "host": host}, spans(span & blocking),
                    spans(span & (blocking | quiet_wait) & in_dispatch), spans(span & ~is_op), spans(is_op),
                    after, ops_known, spans(is_rt & ~launch & ~blocking))


def _waits_after_launch(ends: np.ndarray, launch: np.ndarray, correlation: np.ndarray, gpu: pd.DataFrame,
                        quiet: tuple[np.ndarray, np.ndarray]
                        ) -> tuple[tuple[np.ndarray, np.ndarray], list[tuple[float, float, str]]]:
    """The quiet stretches that follow the launch of a kernel after which the host waits (taxonomy
    host_wait: DeepEP's notify_dispatch, whose counts the CPU then spins for), with that kernel's name.
    `ends`, `launch`, `correlation`: the launching thread's spans (their ends, which are launches, their ids)."""
    if "host_wait" not in gpu or not len(quiet[0]):
        return (np.zeros(0), np.zeros(0)), []
    hw = ~text_is(gpu["host_wait"], "") & (gpu["correlation"].to_numpy() >= 0)
    if not hw.any():
        return (np.zeros(0), np.zeros(0)), []
    ok_launch = launch & (correlation >= 0)
    if not ok_launch.any():
        return (np.zeros(0), np.zeros(0)), []
    lend = ends[ok_launch]
    order = np.argsort(lend, kind="stable")
    lend, corr = lend[order], correlation[ok_launch][order]
    names = dict(zip(gpu["correlation"].to_numpy()[hw], text(gpu["name"][hw])))
    j = np.searchsorted(lend, quiet[0] + 1e-6, side="right") - 1         # the last launch before each stretch
    ok = j >= 0
    hit = np.zeros(len(quiet[0]), dtype=bool)
    hit[ok] = [c in names for c in corr[j[ok]]]
    after = [(float(quiet[0][i]), float(quiet[1][i]), names[corr[j[i]]]) for i in np.flatnonzero(hit)]
    return (quiet[0][hit], quiet[1][hit]), after


__all__ = ["HostView", "host_view", "QUIET_US", "GROUPS", "HOST_COLUMNS"]
