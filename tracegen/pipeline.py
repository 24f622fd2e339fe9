"""From names and a plan to a schedule: catalogs -> op graph -> launch order -> simulation.
The one entry point the CLI, the dashboard and the tests share."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from .base.contract import COMM, COMPUTE
from .base.errors import UserError
from .base.intervals import coverage, union
from .catalog import Power
from .launch_order import load_order, unroll
from .opgraph import OpGraph, Stage, build
from .power import Draw, draw
from .target import Target
from .schedule import Schedule, simulate

MAX_RANKS = 1024        # ranks one trace simulates (time and trace size grow linearly)
MAX_LAUNCH_US = 1e6     # a second per kernel launch: beyond it a typo, not a CPU


@dataclass(frozen=True)
class TraceOptions:
    tbo: str = "proper"              # off | proper | improper
    order_file: str | None = None    # a user launch order instead of --tbo's
    layers: int | None = None        # emit the first N layers only
    skip_dense: bool = False
    ranks: int = 1
    launch_us: float | None = None   # CPU cost per kernel launch (None: the hardware's)

    @property
    def tbo_label(self) -> str:
        return self.order_file or self.tbo


def schedule(target: Target, opts: TraceOptions) -> Schedule:
    model, hw, preset, plan = target
    if not 1 <= opts.ranks <= MAX_RANKS:
        raise UserError(f"--ranks must lie in [1, {MAX_RANKS}], got {opts.ranks} (the scheduler simulates every "
                        "rank: 64 ranks of 61 decode layers take ~6 s and 0.25 GB; time and memory grow with the "
                        "ranks)")
    available = model.layers - (model.dense_layers if opts.skip_dense else 0)
    if opts.layers is not None and not 1 <= opts.layers <= available:
        raise UserError(f"--layers must lie in [1, {available}] ({model.name} has {model.layers} layers"
                        f"{f', {model.dense_layers} of them dense and skipped' if opts.skip_dense else ''}), "
                        f"got {opts.layers}")
    if opts.launch_us is not None and not 0 <= opts.launch_us <= MAX_LAUNCH_US:
        raise UserError(f"--launch-us must lie in [0, {MAX_LAUNCH_US:g}] microseconds per kernel, got {opts.launch_us}")
    order = load_order(opts.tbo, plan.phase, opts.order_file)
    if order is not None and plan.microbatches == 1:
        raise UserError("two-batch overlap needs --microbatches 2 (or --tbo off)")
    graph = build(target, layers=opts.layers, skip_dense=opts.skip_dense)
    sched = _settle(graph, order, opts)
    power = graph.hardware.power
    if not preset.power_limit or power is None:
        return sched
    # the curves are boost-clock curves: where the step at boost would draw more than the limit,
    # schedule it again at the clock that draw leaves
    d = step_draw(sched, power)
    if d.throttle > 0:
        graph = build(target.with_hardware(replace(hw, throttle=d.throttle)), layers=opts.layers,
                      skip_dense=opts.skip_dense)
        sched = _settle(graph, order, opts)
    sched.power = d
    return sched


IN_SITU_ROUNDS = 6          # the fixed point settles in 2-3 rounds on every plan of the suite
IN_SITU_TOLERANCE = 1e-3    # relative change of the span that ends the rounds


def _settle(graph: OpGraph, order, opts: TraceOptions) -> Schedule:
    """Simulate, with the in-situ slowdown of SM-holding communication settled (settle())."""
    return settle(graph, lambda g: simulate(g, unroll(g, order), ranks=opts.ranks, launch_us=opts.launch_us),
                  in_situ_slowdown(graph))


def in_situ_slowdown(graph: OpGraph) -> float:
    """The slowdown SM-holding communication suffers beside compute on this graph's hardware (0: none,
    under a preset that does not model it, or for a release whose figures were measured in situ)."""
    hw = graph.hardware
    if not graph.preset.comm_in_situ or hw.in_situ is None or not hw.in_situ.slowdown:
        return 0.0
    rel = hw.backend(graph.plan.comm).pick(graph.plan.comm_release) if graph.plan.comm in hw.comm else None
    return 0.0 if rel is not None and rel.in_situ else hw.in_situ.slowdown


def _stretched(stages: dict, slowdown: float, share: dict, inverse: bool = False) -> dict:
    f = (lambda k: 1 / (1 + slowdown * share.get(k, 0.0))) if inverse else (lambda k: 1 + slowdown * share.get(k, 0.0))
    return {k: (replace(st, work_us=st.work_us * f(k)) if st.slows_beside_compute else st) for k, st in stages.items()}


def settle(graph: OpGraph, run: Callable[[OpGraph], Schedule], slowdown: float) -> Schedule:
    """Where SM-holding communication runs slower beside compute, stretch each such stage by
    1 + slowdown x the share of its run spent beside compute in the previous round, until the span
    settles. `run` simulates a graph (its launch order and ranks fixed by the caller)."""
    sched = run(graph)
    if not slowdown or not any(st.slows_beside_compute for st in graph.stages.values()):
        return sched
    for _ in range(IN_SITU_ROUNDS):
        nxt = run(replace(graph, stages=_stretched(graph.stages, slowdown, beside_compute(sched))))
        done = abs(nxt.span_us - sched.span_us) <= IN_SITU_TOLERANCE * sched.span_us
        sched = nxt
        if done:
            break
    return sched


def unstretch(graph: OpGraph, observed: Schedule, slowdown: float) -> OpGraph:
    """An observed graph's communication at its speed alone: each SM-holding stage's observed time over
    1 + slowdown x its share beside compute in `observed` (the inverse of settle's stretch)."""
    if not slowdown:
        return graph
    return replace(graph, stages=_stretched(graph.stages, slowdown, beside_compute(observed), inverse=True))


def beside_compute(sched: Schedule) -> dict:
    """Per communication stage: the share of its run that compute ran beside it."""
    return share_beside(sched, COMM, COMPUTE)


def share_beside(sched: Schedule, of: str, by: str, only: Callable[[Stage], bool] | None = None) -> dict:
    """Per stage on track `of`: the share of its run (weighted by time, over its intervals and ranks)
    during which track `by` was busy, counting only `by`'s stages that `only` accepts."""
    num: dict = {}
    den: dict = {}
    stages = sched.graph.stages
    for r in range(sched.ranks):
        mine = [i for i in sched.intervals if i.rank == r and i.track == of and i.key is not None and i.end > i.start]
        other = [i for i in sched.intervals if i.rank == r and i.track == by and i.key is not None and i.end > i.start
                 and (only is None or only(stages[i.key]))]
        if not mine:
            continue
        s = np.array([i.start for i in mine])
        e = np.array([i.end for i in mine])
        if other:
            F = coverage(*union(np.array([i.start for i in other]), np.array([i.end for i in other])))
            cov = F(e) - F(s)
        else:
            cov = np.zeros(len(mine))
        for i, c, d in zip(mine, cov, e - s):
            num[i.key] = num.get(i.key, 0.0) + float(c)
            den[i.key] = den.get(i.key, 0.0) + float(d)
    return {k: num[k] / den[k] for k in num if den[k] > 0}


def step_draw(sched: Schedule, power: Power) -> Draw:
    """The mean draw over the scheduled span at the boost clock (power.py) of the rank that draws
    most: the busiest rank throttles most, and every all-to-all waits for it."""
    hot, busy = [0.0] * sched.ranks, [0.0] * sched.ranks
    for iv in sched.intervals:
        if iv.track == COMPUTE and iv.key is not None:
            st = sched.graph.stages[iv.key]
            busy[iv.rank] += iv.dur
            hot[iv.rank] += iv.dur * (st.hot_us / st.work_us if st.work_us > 0 else 0.0)
    return max((draw(h, b, sched.span_us, power) for h, b in zip(hot, busy)), key=lambda d: d.demand_w)
