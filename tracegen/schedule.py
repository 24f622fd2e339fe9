"""Discrete-event schedule of an op graph on N ranks. Each rank has a CPU launch thread, a compute
stream and a communication stream (plus a CPU proxy thread for non-IBGDA RDMA):

- the CPU issues stages in launch order, paying a launch cost per kernel; a blocking dispatch
  (DeepEP normal) holds the CPU until the received counts are back;
- each stream runs its stages in launch order, each once its dependencies have finished;
- an all-to-all finishes on every rank when the last rank has started it plus latency and
  transfer time, so ranks wait for the slowest;
- while a comm kernel that holds SMs is in flight, compute runs at (SMs - comm SMs) / SMs.

The result is a list of intervals (the trace is written from it) and the bookkeeping that tests
and `replay` check against: per-rank CPU-blocked compute idle time."""
from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass, field
from itertools import islice

from .base.contract import (
    COMM,
    COMPUTE,
    CPU_BLOCKED_LAUNCH,
    IDLE_CAUSES,
    LAUNCH_BOUND,
    WAITING_ON_PEER,
    WAITING_ON_COMM,
)
from .base.errors import UserError
from .cost import vector_rate
from .opgraph import OpGraph, Stage
from .power import Draw

Key = tuple[int, int, str]


@dataclass(frozen=True)
class Interval:
    rank: int
    track: str          # "cpu", "compute", "comm", "proxy"
    name: str
    start: float        # us
    end: float
    key: Key | None = None     # (layer, mb, stage) of the stage it belongs to
    activity: str = ""  # launch, wait, sched, compute, comm, post

    @property
    def dur(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Idle:
    """A stretch where the compute stream had nothing to run, and why (the stage that ended it)."""
    rank: int
    start: float
    end: float
    cause: str          # one of IDLE_CAUSES
    key: Key            # the compute stage that ran next


@dataclass
class Schedule:
    graph: OpGraph
    ranks: int
    load: list[float]                     # per-rank MoE load factor (mean 1)
    launch_us: float
    intervals: list[Interval] = field(default_factory=list)
    start: dict[tuple[int, Key], float] = field(default_factory=dict)
    end: dict[tuple[int, Key], float] = field(default_factory=dict)
    launched: dict[tuple[int, Key], float] = field(default_factory=dict)
    ready: dict[tuple[int, Key], float] = field(default_factory=dict)       # inputs available
    blocked: list[list[tuple[float, float]]] = field(default_factory=list)   # per rank: CPU wait spans
    idle: list[Idle] = field(default_factory=list)
    power: Draw | None = None             # the step's draw and the clock it set (pipeline.py)

    def idle_us(self, rank: int, cause: str) -> float:
        return sum(i.end - i.start for i in self.idle if i.rank == rank and i.cause == cause)

    def layer_time_us(self, rank: int = 0) -> list[float]:
        """Time between the first stage starts of consecutive layers (micro-batch 0)."""
        firsts = [self.start[(rank, (layer, 0, self.graph.layer_stages(layer)[0]))] for layer in self.graph.layers]
        return [b - a for a, b in zip(firsts, firsts[1:])]

    @property
    def span_us(self) -> float:
        return max(i.end for i in self.intervals) - min(i.start for i in self.intervals)


def load_factors(ranks: int, imbalance: float) -> list[float]:
    """Per-rank MoE load with mean 1 and max `imbalance`, spread evenly; the last rank is slowest."""
    if ranks == 1 or imbalance == 1.0:
        return [1.0] * ranks
    if imbalance >= 2.0:
        raise UserError(f"--imbalance {imbalance} with {ranks} ranks needs some rank below zero load; use < 2")
    return [1 + (imbalance - 1) * (2 * r / (ranks - 1) - 1) for r in range(ranks)]


class _Rank:
    """State of one rank during the simulation."""

    def __init__(self, r: int, n: int):
        self.r = r
        self.cpu_t = 0.0
        self.cpu_pos = 0
        self.blocked: Key | None = None
        self.blocked_since = 0.0
        self.launched: dict[Key, float] = {}
        self.queues: dict[str, list[Key]] = {COMPUTE: [], COMM: []}
        self.qpos = {COMPUTE: 0, COMM: 0}
        self.free = {COMPUTE: 0.0, COMM: 0.0}
        self.running: dict[str, Key | None] = {COMPUTE: None, COMM: None}
        self.work_left = 0.0
        self.rate = 1.0
        self.t_last = 0.0
        self.sm_history: list[tuple[float, int]] = [(0.0, 0)]   # (time, SMs communication held from then), in time order
        self.blocked_spans: list[tuple[float, float]] = []
        self.launch_end: dict[Key, float] = {}   # when the CPU finished launching a stage's kernels


RATE_FLOOR = 0.05    # the slowest a compute stage may run beside communication (a stage's measured loss per SM
                     # scaled to more SMs than it was measured at could otherwise stop it)


def stage_rate(hw, st: Stage, held: int) -> float:
    """Progress rate of a compute stage while communication holds `held` SMs: its measured loss per SM where an
    observed trace gave one (Stage.sm_loss), else the SM share (cost.vector_rate)."""
    if held and st.sm_loss is not None:
        return max(RATE_FLOOR, 1.0 - st.sm_loss * held)
    return vector_rate(hw, st.work_us, st.vector_us, held)


def simulate(graph: OpGraph, order: list[Key], ranks: int = 1, launch_us: float | None = None,
             loads: list[float] | None = None) -> Schedule:
    """Run the op graph on `ranks` ranks in launch `order`; returns every interval. `loads` sets
    each rank's MoE load factor (default: spread evenly up to the plan's imbalance)."""
    return Simulation(graph, order, ranks, launch_us, loads).run()


class Simulation:
    """The discrete-event simulation: each rank's next event (`peek`) is one of launch, unblock,
    compute_start / compute_end, comm_start / comm_end, each a method; `run` pops them in time order."""

    def __init__(self, graph: OpGraph, order: list[Key], ranks: int, launch_us: float | None,
                 loads: list[float] | None):
        plan, hw = graph.plan, graph.hardware
        if loads is not None and len(loads) != ranks:
            raise UserError(f"{len(loads)} load factors for {ranks} ranks")
        self.graph, self.order, self.stages, self.n, self.hw, self.plan = graph, order, graph.stages, len(order), hw, plan
        self.launch = hw.cpu_launch_us if launch_us is None else launch_us
        self.cpu_block_us = hw.backend(plan.comm).cpu_block_us if plan.comm in hw.comm else 0.0
        self.sched = Schedule(graph, ranks, list(loads) if loads is not None else load_factors(ranks, plan.imbalance),
                              self.launch)
        self.R = [_Rank(r, self.n) for r in range(ranks)]
        if plan.sched_ms:       # the CPU schedules the step before it launches anything
            for rk in self.R:
                rk.cpu_t = plan.sched_ms * 1e3
                self.sched.intervals.append(Interval(rk.r, "cpu", "scheduler", 0.0, rk.cpu_t, None, "sched"))
        self.ended, self.started = self.sched.end, self.sched.start
        self.group_starts: dict[Key, list[float]] = {}
        self.group_end: dict[Key, float] = {}
        self.out = self.sched.intervals
        self.heap: list[tuple[float, int, int, str]] = []
        self.version = [0] * ranks
        self.done = 0

    # ------------------------------------------------------------------ state
    def work(self, r: int, st: Stage) -> float:
        return st.work_us * (self.sched.load[r] if st.name == "MLP" and st.layer not in self.graph.dense else 1.0)

    def deps_done(self, rk: _Rank, st: Stage) -> float | None:
        t = 0.0
        for d in st.deps:
            e = self.ended.get((rk.r, d))
            if e is None:
                return None
            t = max(t, e)
        return t

    def rate(self, st: Stage, held: int) -> float:
        return stage_rate(self.hw, st, held)

    def change_sms(self, rk: _Rank, t: float, sms: int) -> None:
        """Comm SMs taken or released at `t`: kept in the rank's history, and the running compute's progress
        re-banked through it (an event can be dated before one already handled: a stage starts from its first
        kernel's launch, which may precede the end of its own launches)."""
        bisect.insort(rk.sm_history, (t, sms), key=lambda h: h[0])
        if rk.running[COMPUTE] is not None:
            self.progress(rk)

    def progress(self, rk: _Rank) -> None:
        """The running compute's work left, as of the rank's last SM change, at the rates the SM history
        gives since it started."""
        st = self.stages[rk.running[COMPUTE]]
        t = self.started[(rk.r, rk.running[COMPUTE])]
        hist = rk.sm_history
        i = max(1, bisect.bisect_right(hist, t, key=lambda h: h[0]))
        left, rate = self.work(rk.r, st), self.rate(st, hist[i - 1][1])
        for tc, sms in hist[i:]:
            if left <= (tc - t) * rate:         # done before this change: later ones do not touch it
                break
            left -= (tc - t) * rate
            t, rate = tc, self.rate(st, sms)
        rk.work_left, rk.t_last, rk.rate = left, t, rate

    def sms_free(self, rk: _Rank, st: Stage, t: float) -> float:
        """When a communication stage ready at `t` gets SMs: at once, or - where a wait was observed
        (Stage.sm_wait_us) and compute runs at `t` - that much later, at most when the compute ends."""
        cur = rk.running[COMPUTE]
        if not st.sm_wait_us or cur is None:
            return t
        end = self.compute_ends(rk)
        return min(t + st.sm_wait_us, end) if t < end else t

    def compute_ends(self, rk: _Rank) -> float:
        """When the running compute stage ends at its current rate: never before its last kernel was launched."""
        cur = rk.running[COMPUTE]
        return max(rk.t_last + rk.work_left / rk.rate + self.stages[cur].gap_us, rk.launch_end.get(cur, 0.0))

    # ------------------------------------------------------------------ the next event of a rank
    def peek(self, rk: _Rank) -> tuple[float, str] | None:
        stages = self.stages
        best: tuple[float, str] | None = None

        def consider(t: float, what: str) -> None:
            nonlocal best
            if best is None or t < best[0]:
                best = (t, what)

        if rk.blocked is not None:                          # the CPU
            if self.group_end.get(rk.blocked) is not None:
                st = stages[rk.blocked]
                consider(max(self.group_starts[rk.blocked]) + st.latency_us + self.cpu_block_us, "unblock")
        elif rk.cpu_pos < self.n:
            st = stages[self.order[rk.cpu_pos]]
            cpu = st.cpu_us if st.cpu_us is not None else st.kernels * self.launch
            consider(rk.cpu_t + cpu - (st.cpu_after_us if st.blocking else 0.0), "launch")
        for stream in (COMPUTE, COMM):                      # the streams
            cur = rk.running[stream]
            if cur is not None:
                if stream == COMPUTE:
                    consider(self.compute_ends(rk), "compute_end")
                elif cur in self.group_end:
                    consider(self.group_end[cur], "comm_end")
                continue
            q = rk.queues[stream]
            if rk.qpos[stream] < len(q):
                key = q[rk.qpos[stream]]
                d = self.deps_done(rk, stages[key])
                if d is not None:
                    t0 = max(rk.launched[key], d, rk.free[stream])
                    consider(t0 if stream == COMPUTE else self.sms_free(rk, stages[key], t0),
                             "compute_start" if stream == COMPUTE else "comm_start")
        return best

    def push(self, rk: _Rank) -> None:
        self.version[rk.r] += 1
        ev = self.peek(rk)
        if ev is not None:
            heapq.heappush(self.heap, (ev[0], rk.r, self.version[rk.r], ev[1]))

    # ------------------------------------------------------------------ events (each returns the ranks it touched)
    def launch_next(self, rk: _Rank, t: float) -> list[_Rank]:
        key = self.order[rk.cpu_pos]
        st = self.stages[key]
        self.out.append(Interval(rk.r, "cpu", f"launch {st.name}", rk.cpu_t, t, key, "launch"))
        first = rk.cpu_t + st.cpu_first_us if st.cpu_first_us is not None else t
        rk.launched[key] = first               # the GPU may start it from its first kernel's launch
        self.sched.launched[(rk.r, key)] = first
        rk.launch_end[key] = t
        rk.queues[st.stream].append(key)
        rk.cpu_t = t
        rk.cpu_pos += 1
        if st.blocking:
            rk.blocked, rk.blocked_since = key, t
        return [rk]

    def unblock(self, rk: _Rank, t: float) -> list[_Rank]:
        key = rk.blocked
        self.out.append(Interval(rk.r, "cpu", "wait dispatch counts", rk.blocked_since, t, key, "wait"))
        rk.blocked_spans.append((rk.blocked_since, t))
        rk.blocked = None
        st = self.stages[key]
        rk.cpu_t = t + st.cpu_after_us         # the stage's own launches after the wait (observed)
        if st.cpu_after_us:
            self.out.append(Interval(rk.r, "cpu", f"launch {st.name}", t, rk.cpu_t, key, "launch"))
        return [rk]

    def compute_start(self, rk: _Rank, t: float) -> list[_Rank]:
        key = rk.queues[COMPUTE][rk.qpos[COMPUTE]]
        rk.running[COMPUTE] = key
        self.started[(rk.r, key)] = t
        self.progress(rk)
        self.sched.ready[(rk.r, key)] = self.deps_done(rk, self.stages[key]) or 0.0
        return [rk]

    def compute_end(self, rk: _Rank, t: float) -> list[_Rank]:
        key = rk.running[COMPUTE]
        self.ended[(rk.r, key)] = t
        self.out += _drawn(rk.r, COMPUTE, self.stages[key], self.started[(rk.r, key)], t)
        self._finish(rk, COMPUTE, t)
        return [rk]

    def comm_start(self, rk: _Rank, t: float) -> list[_Rank]:
        key = rk.queues[COMM][rk.qpos[COMM]]
        st = self.stages[key]
        rk.running[COMM] = key
        self.started[(rk.r, key)] = t
        if st.holds_sms:
            self.change_sms(rk, t, st.holds_sms)
        starts = self.group_starts.setdefault(key, [])
        starts.append(t)
        if len(starts) < len(self.R):
            return [rk]
        # the last rank joined: the all-to-all ends on every rank together
        self.group_end[key] = max(max(starts) + st.latency_us + st.post_us
                                  + max(self.work(q, st) for q in range(len(self.R))),
                                  max(x.launch_end.get(key, 0.0) for x in self.R))
        return self.R

    def comm_end(self, rk: _Rank, t: float) -> list[_Rank]:
        key = rk.running[COMM]
        st = self.stages[key]
        self.ended[(rk.r, key)] = t
        s0 = self.started[(rk.r, key)]
        self.out += _drawn(rk.r, COMM, st, s0, t)
        if st.post_us:
            self.out.append(Interval(rk.r, "proxy", f"post {key[2]}", s0, s0 + st.post_us, key, "post"))
        if st.holds_sms:
            self.change_sms(rk, t, 0)
        self._finish(rk, COMM, t)
        return [rk]

    def _finish(self, rk: _Rank, stream: str, t: float) -> None:
        rk.running[stream] = None
        rk.qpos[stream] += 1
        rk.free[stream] = t
        self.done += 1

    # ------------------------------------------------------------------ the loop
    def run(self) -> Schedule:
        handlers = {"launch": self.launch_next, "unblock": self.unblock, "compute_start": self.compute_start,
                    "compute_end": self.compute_end, "comm_start": self.comm_start, "comm_end": self.comm_end}
        for rk in self.R:
            self.push(rk)
        while self.heap:
            t, r, v, what = heapq.heappop(self.heap)
            if v != self.version[r]:
                continue
            for x in handlers[what](self.R[r], t):
                self.push(x)
        total = self.n * len(self.R)
        if self.done != total:
            raise UserError(f"schedule stalled after {self.done} of {total} stages: the launch order and the "
                            "dependencies deadlock (a stream waits on work queued behind it)")
        sched = self.sched
        self.out.sort(key=lambda i: (i.rank, i.start, i.track))
        sched.blocked = [rk.blocked_spans for rk in self.R]
        sched.idle = [x for r in range(len(self.R)) for x in _idle_causes(sched, r)]
        return sched


def _drawn(rank: int, track: str, st: Stage, start: float, end: float) -> list[Interval]:
    """A stage's busy intervals: its whole run, or where an observed stage's kernels ran within it
    (Stage.segments), stretched to the run's length."""
    if not st.segments or end <= start:
        return [Interval(rank, track, st.name, start, end, st.key, track)]
    span = end - start
    return [Interval(rank, track, st.name, start + a * span, start + b * span, st.key, track) for a, b in st.segments]


def _idle_causes(sched: Schedule, rank: int) -> list[Idle]:
    """Split each gap between compute stages by what held the next stage back: first its inputs
    (waiting_on_comm, until they are ready), then its launch: not yet issued while the CPU sat in
    a blocking wait (cpu_blocked_launch) or while it was busy launching (launch_bound)."""
    busy = [i for i in sched.intervals if i.rank == rank and i.track == COMPUTE]
    out: list[Idle] = []
    gpu = [i for i in sched.intervals if i.rank == rank and i.track in (COMPUTE, COMM)]
    if busy and gpu:     # before the first and after the last compute, communication runs: waiting on it
        first, last = min(i.start for i in gpu), max(i.end for i in gpu)
        if busy[0].start > first:
            out.append(Idle(rank, first, busy[0].start, WAITING_ON_COMM, busy[0].key))
        end = max(i.end for i in busy)
        if last > end:
            out.append(Idle(rank, end, last, WAITING_ON_COMM, busy[-1].key))
    spans = sched.blocked[rank]                  # in time order, one at a time (the rank's CPU)
    ends = [b1 for _, b1 in spans]
    for prev, nxt in zip(busy, busy[1:]):
        g0, g1 = prev.end, nxt.start
        if g1 <= g0:
            continue
        ready = min(max(sched.ready[(rank, nxt.key)], g0), g1)
        if ready > g0:
            out.append(Idle(rank, g0, ready, WAITING_ON_COMM, nxt.key))
        cursor = ready
        for b0, b1 in islice(spans, bisect.bisect_right(ends, cursor), None):   # from the first ending after it
            if b0 >= g1:
                break
            lo, hi = max(b0, cursor), min(b1, g1)
            if hi <= lo:
                continue
            if lo > cursor:
                out.append(Idle(rank, cursor, lo, LAUNCH_BOUND, nxt.key))
            out.append(Idle(rank, lo, hi, CPU_BLOCKED_LAUNCH, nxt.key))
            cursor = hi
        if g1 > cursor:
            out.append(Idle(rank, cursor, g1, LAUNCH_BOUND, nxt.key))
    return _split_by_peers(out, _peer_waits(sched, rank))


def _peer_waits(sched: Schedule, rank: int) -> list[tuple[float, float]]:
    """Where this rank's communication waited for a peer: each collective runs from the rank's own
    start until the last rank has started it (and the data has moved), so from its start to the last
    start it waited for the last rank (what replay's peers.py measures on a real trace)."""
    if sched.ranks < 2:
        return []
    out = []
    for (r, key), s in sched.start.items():
        if r != rank or sched.graph.stages[key].stream != COMM:
            continue
        last = max(sched.start.get((q, key), s) for q in range(sched.ranks))
        end = min(last, sched.end.get((r, key), last))
        if end > s:
            out.append((s, end))
    return sorted(out)


def _split_by_peers(idle: list[Idle], waits: list[tuple[float, float]]) -> list[Idle]:
    """Idle while the rank's communication waited for a peer is the peer's, whatever else held it."""
    if not waits:
        return idle
    out = []
    for i in idle:
        cursor = i.start
        for a, b in waits:
            lo, hi = max(a, cursor), min(b, i.end)
            if hi <= lo:
                continue
            if lo > cursor:
                out.append(Idle(i.rank, cursor, lo, i.cause, i.key))
            out.append(Idle(i.rank, lo, hi, WAITING_ON_PEER, i.key))
            cursor = hi
        if i.end > cursor:
            out.append(Idle(i.rank, cursor, i.end, i.cause, i.key))
    return out


def overlap_us(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Length of the intersection of two sorted lists of disjoint intervals (a two-pointer sweep)."""
    i = j = 0
    total = 0.0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            total += hi - lo
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def summary(sched: Schedule) -> list[dict]:
    """Per rank: span, compute and comm busy time, their overlap, idle by cause, and per layer
    the same (a layer's overlap is the part of its communication hidden by any compute)."""
    by_rank: dict[int, dict[str, list[Interval]]] = {r: {COMPUTE: [], COMM: []} for r in range(sched.ranks)}
    for i in sched.intervals:
        if i.track in (COMPUTE, COMM):
            by_rank[i.rank][i.track].append(i)
    out = []
    for r in range(sched.ranks):
        comp_iv = sorted(by_rank[r][COMPUTE], key=lambda i: i.start)
        comm_iv = sorted(by_rank[r][COMM], key=lambda i: i.start)
        comp = [(i.start, i.end) for i in comp_iv]
        comm = [(i.start, i.end) for i in comm_iv]
        gpu = comp + comm
        span = max(e for _, e in gpu) - min(s for s, _ in gpu)
        c_us, m_us = sum(e - s for s, e in comp), sum(e - s for s, e in comm)
        ov = overlap_us(comp, comm)
        layers: dict[int, dict[str, float]] = {
            layer: {"compute_us": 0.0, "comm_us": 0.0, "overlap_us": 0.0} for layer in sched.graph.layers}
        for i in comp_iv:
            layers[i.key[0]]["compute_us"] += i.dur
        comp_starts, comp_ends = [s for s, _ in comp], [e for _, e in comp]
        for i in comm_iv:
            d = layers[i.key[0]]
            d["comm_us"] += i.dur
            j = bisect.bisect_right(comp_ends, i.start)      # compute intervals that can meet it
            k = bisect.bisect_left(comp_starts, i.end)
            d["overlap_us"] += overlap_us([(i.start, i.end)], comp[j:k])
        out.append({"rank": r, "span_us": span, "compute_us": c_us, "comm_us": m_us, "overlap_us": ov,
                    "exposed_comm_us": m_us - ov, "compute_idle_us": span - c_us,
                    "hidden_comm_pct": 100 * ov / m_us if m_us else 0.0,
                    "idle_us": {c: sched.idle_us(r, c) for c in IDLE_CAUSES}, "layers": layers})
    return out
