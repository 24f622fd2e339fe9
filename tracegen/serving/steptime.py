"""Step time of one pool instance as a function of its load, read off the per-step model: each grid
point is one scheduled step (pipeline.schedule: every layer, two micro-batches, the LM head, MTP
drafting, the scheduler slice), the same timeline `tracegen trace` writes and `make validate`
checks. Between grid points the time is interpolated (piecewise linear in tokens, linear in
context), so a simulation of 100,000 requests needs a few dozen scheduled steps, not millions.

There is no second cost model here: change a kernel's cost and these tables follow."""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from ..catalog import Hardware, Model
from ..estimate import estimate
from ..memory import kv_bytes_per_seq, weight_bytes_per_gpu
from ..pipeline import TraceOptions, schedule
from ..plan import Plan, validate
from ..target import Target

GRID_POINTS = 9          # load points per context point (geometric from 1 to the pool's limit)
CONTEXT_POINTS = 3       # context (prompt / KV length) points across the workload's range


def _geom(lo: float, hi: float, n: int) -> np.ndarray:
    if hi <= lo * 1.0001:
        return np.array([float(hi)])
    return np.unique(np.geomspace(lo, hi, n))


@dataclass
class StepTable:
    """Step time in ms on a (load, context) grid for one phase of one instance shape."""
    plan: Plan                    # the instance's plan; batch and seq_len vary over the grid
    load: np.ndarray              # prefill: new tokens per DP group; decode: requests per DP group
    context: np.ndarray           # prefill: prompt length; decode: KV length, tokens
    ms: np.ndarray                # [len(context), len(load)]
    spread: np.ndarray | None = None   # [len(context), len(load)]: share of the step in the routed experts

    def __call__(self, load: float, context: float, mean: float | None = None) -> float:
        """Step time in ms at `load` (clipped to the grid's ends: beyond the largest point it grows in
        proportion, below the smallest it stays at the smallest's time) and `context`. With `mean`
        (the DP groups' mean load, below `load` = the busiest group's): the routed experts, which see
        every group's tokens spread over the EP ranks, take their time at the mean; the rest of the
        step (attention, and the all-to-all that waits for the busiest sender) at the busiest."""
        t = self._at("ms", load, context)
        if mean is None or self.spread is None or mean >= load:
            return t
        experts_at_mean = self._at("ms", mean, context) * self._at("spread", mean, context)
        return t * (1 - self._at("spread", load, context)) + experts_at_mean

    def busiest(self, load, context, mean: float) -> float:
        """The step of DP groups at these (load, context) pairs: the slowest group's time, with its
        routed experts at the groups' `mean` load (as __call__ with `mean`)."""
        k = max(range(len(load)), key=lambda i: self._at("ms", float(load[i]), float(context[i])))
        return self(float(load[k]), float(context[k]), mean)

    def _at(self, grid: str, load: float, context: float) -> float:
        """Grid `grid` ("ms" or "spread") interpolated in plain Python: the simulator asks this once or
        a few times per step, on grids of a few dozen points, where numpy's per-call cost would dominate."""
        loads, ctxs, rows = self._py("load"), self._py("context"), self._py(grid)
        top = loads[-1]
        j = min(max(bisect_right(loads, load) - 1, 0), len(loads) - 2) if len(loads) > 1 else 0

        def along(row: list[float]) -> float:
            if load > top:              # past the grid: the step scales with the load (linear extrapolation)
                return row[-1] * load / top
            if len(loads) == 1 or load <= loads[0]:
                return row[0]
            f = (load - loads[j]) / (loads[j + 1] - loads[j])
            return row[j] * (1 - f) + row[j + 1] * f

        if len(ctxs) == 1 or context <= ctxs[0]:
            return along(rows[0])
        if context >= ctxs[-1]:
            return along(rows[-1])
        i = bisect_right(ctxs, context) - 1
        f = (context - ctxs[i]) / (ctxs[i + 1] - ctxs[i])
        return along(rows[i]) * (1 - f) + along(rows[i + 1]) * f

    def _py(self, name: str) -> list:
        """Field `name` as (nested) Python floats, converted once."""
        key = f"_py_{name}"
        if key not in self.__dict__:
            self.__dict__[key] = np.asarray(getattr(self, name), float).tolist()
        return self.__dict__[key]


MEMO_SIZE = 4096         # grid points remembered per process (a deployment table has a few dozen)
_MEMO: dict[tuple, float] = {}


def _memo(kind: str, target: Target, extra: object, fn: Callable[[], float]) -> float:
    """fn() remembered by value: the target's repr holds every field of the model, hardware, preset and
    plan (floats exactly), so two equal targets share one scheduled step - deployments, searches and
    validation rows that price the same instance shape schedule it once per process."""
    key = (kind, repr(target), extra)
    hit = _MEMO.get(key)
    if hit is None:
        if len(_MEMO) >= MEMO_SIZE:
            _MEMO.pop(next(iter(_MEMO)))
        hit = _MEMO[key] = fn()
    return hit


def _step_ms(target: Target, launch_us: float | None = None) -> float:
    opts = TraceOptions(tbo="proper" if target.plan.microbatches == 2 else "off", launch_us=launch_us)
    return _memo("step", target, launch_us, lambda: schedule(target, opts).span_us / 1e3)


def _expert_share(target: Target) -> float:
    """Share of a step's serial op time in the routed experts (estimate.py's rows)."""
    def share() -> float:
        e = estimate(target)
        return sum(r.total_ms for r in e.rows if r.name == "RoutedExpert") / e.sum_ms
    return _memo("share", target, None, share)


def prefill_table(target: Target, max_tokens: float, prompt_lens: tuple[float, float], hit: float) -> StepTable:
    """Step time of a prefill instance for `n` new prompt tokens per DP group of prompts of length
    L, with a share `hit` of each prompt already cached (its tokens are attended, not computed)."""
    model, hw, _, plan = target
    loads = _geom(1.0, max_tokens, GRID_POINTS)
    ctx = _geom(*prompt_lens, CONTEXT_POINTS)
    ms = np.empty((len(ctx), len(loads)))
    spread = np.empty_like(ms)
    for i, L in enumerate(ctx):
        L = max(1, int(round(L)))
        for j, n in enumerate(loads):
            p = validate(replace(plan, seq_len=L, kv_hit=hit, batch=n / (L * (1 - hit))), model, hw)
            ms[i, j] = _step_ms(target.with_plan(p))
            spread[i, j] = _expert_share(target.with_plan(p))
    return StepTable(plan, loads, ctx, ms, spread)


def decode_table(target: Target, max_batch: float, contexts: tuple[float, float], graphs: bool = True) -> StepTable:
    """Step time of a decode instance with `b` requests per DP group at KV length `c`. With `graphs`
    the step replays a captured graph (CUDA / ACL graphs, as SGLang's and DeepSeek's decode do): no
    per-kernel CPU launch cost, which otherwise bounds small batches."""
    model, hw, _, plan = target

    def at(b: float, c: int) -> Target:
        return target.with_plan(validate(replace(plan, seq_len=c, batch=b), model, hw))
    return custom_table(plan, max_batch, contexts, lambda b, c: _step_ms(at(b, c), 0.0 if graphs else None),
                        lambda b, c: _expert_share(at(b, c)))


def custom_table(plan: Plan, max_batch: float, contexts: tuple[float, float], step, share=None) -> StepTable:
    """A decode table from a step model `step(batch, context) -> ms` (the scheduled step; AF decode's
    pipeline, af.py) on GRID_POINTS batches x CONTEXT_POINTS contexts; with `share(batch, context)`,
    the routed experts' share of each step (StepTable.spread)."""
    loads = _geom(1.0, max(1.0, max_batch), GRID_POINTS)
    ctx = _geom(max(1.0, contexts[0]), max(1.0, contexts[1]), CONTEXT_POINTS)
    points = [[(float(b), max(1, int(round(c)))) for b in loads] for c in ctx]
    ms = np.array([[step(b, c) for b, c in row] for row in points])
    spread = np.array([[share(b, c) for b, c in row] for row in points]) if share else None
    return StepTable(plan, loads, ctx, ms, spread)


def kv_capacity_tokens(target: Target) -> float:
    """KV-cache tokens one DP group holds: HBM x the preset's usable share, less the weights
    (memory.py's accounting, the same one `tracegen estimate` reports as max batch)."""
    model, hw, preset, plan = target
    hw = preset.apply(hw)
    free = hw.hbm_gb * 1e9 * preset.memory["util"] - weight_bytes_per_gpu(model, plan, preset.decode_mla_form)
    return max(0.0, free / kv_bytes_per_seq(model, plan, 1))      # per GPU = per group (MLA: replicated)


def kv_transfer_s(model: Model, hw: Hardware, plan: Plan, input_len: np.ndarray) -> np.ndarray:
    """Seconds to move each request's KV cache from its prefill GPU to its decode GPU: the cache's
    bytes (the model's KV layout, the decode plan's KV type) over one GPU's scale-out link."""
    per_token = kv_bytes_per_seq(model, plan, 1)
    return input_len * per_token / (hw.scaleout_gbps * 1e9)


__all__ = ["StepTable", "prefill_table", "decode_table", "custom_table", "kv_capacity_tokens", "kv_transfer_s"]
