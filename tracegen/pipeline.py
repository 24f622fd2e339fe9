"""From names and a plan to a schedule: catalogs -> op graph -> launch order -> simulation.
The one entry point the CLI, the dashboard and the tests share."""
from __future__ import annotations

from dataclasses import dataclass, replace

from .base.contract import COMPUTE
from .base.errors import UserError
from .catalog import Hardware, Model, Power
from .launch_order import load_order, unroll
from .opgraph import build
from .plan import Plan
from .power import Draw, draw
from .preset import Preset
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


def schedule(model: Model, hw: Hardware, plan: Plan, preset: Preset, opts: TraceOptions) -> Schedule:
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
    graph = build(model, hw, plan, preset, layers=opts.layers, skip_dense=opts.skip_dense)
    sched = simulate(graph, unroll(graph, order), ranks=opts.ranks, launch_us=opts.launch_us)
    power = graph.hardware.power
    if not preset.power_limit or power is None:
        return sched
    # the curves are boost-clock curves: where the step at boost would draw more than the limit,
    # schedule it again at the clock that draw leaves
    d = step_draw(sched, power)
    if d.throttle > 0:
        graph = build(model, replace(hw, throttle=d.throttle), plan, preset, layers=opts.layers,
                      skip_dense=opts.skip_dense)
        sched = simulate(graph, unroll(graph, order), ranks=opts.ranks, launch_us=opts.launch_us)
    sched.power = d
    return sched


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
