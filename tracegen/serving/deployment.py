"""A deployment plan (pools, their parallelism, batching limits, MTP) turned into the simulator's
pools: one plan per pool instance through the shared resolver, its step-time tables, its KV-cache
room and the KV transfer time of each request."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..base.errors import UserError
from ..catalog import Hardware, Model
from ..plan import Plan
from ..preset import Preset
from ..resolve import resolve_plan
from ..stack import load_stack
from ..target import Target
from .simulate import COLOCATED, PD, Pool, Result, simulate
from .steptime import custom_table, decode_table, kv_capacity_tokens, kv_transfer_s, prefill_table
from .workload import Workload

DEFAULT_TOKEN_BUDGET = 16384      # prefill tokens per DP group per step (DeepSeek's profiled 16K per GPU)


@dataclass(frozen=True)
class PoolPlan:
    """GPUs of one role: `nodes` nodes cut into instances of `ep` GPUs (one expert-parallel group,
    attention TP `tp` x DP ep/tp); ep 0: the whole pool is one instance."""
    nodes: int
    tp: int = 1
    ep: int = 0

    def instance_gpus(self, gpus_per_node: int) -> int:
        return self.ep or self.nodes * gpus_per_node


@dataclass(frozen=True)
class Deployment:
    mode: str                                   # pd | colocated | prefill | decode
    prefill: PoolPlan | None = None             # pd, prefill; colocated uses this one for both phases
    decode: PoolPlan | None = None              # pd, decode
    token_budget: float = DEFAULT_TOKEN_BUDGET  # prefill: new tokens per DP group per step
    max_batch: float = 0                        # decode: requests per DP group (0: the memory limit)
    slo_tpot_ms: float | None = None            # decode: cap the batch so a step keeps TPOT under this
    plan_fields: dict[str, Any] = field(default_factory=dict)   # shared plan fields (mtp, comm_release, ...)
    gpus_per_node: int = 8                      # the hardware's, unless plan_fields says otherwise
    expert_nodes: int = 0                       # decode: nodes of the decode pool holding only routed experts
                                                # (attention-FFN disaggregation); 0: expert parallel decode
    af_microbatches: int = 3                    # AF: micro-batches in the ping-pong pipeline
    decode_graphs: bool = True                  # decode steps replay a captured graph (no launch cost)
    stack: str = ""                             # serving stack (data/stacks.toml): release, scheduler term

    def label(self) -> str:
        gpn = self.plan_fields.get("gpus_per_node") or self.gpus_per_node

        def one(name: str, p: PoolPlan | None) -> str:
            if not p:
                return ""
            if name == "decode" and self.expert_nodes:
                return (f"decode {p.nodes} nodes = AF {p.nodes - self.expert_nodes} attention + {self.expert_nodes} "
                        f"expert nodes, {self.af_microbatches} micro-batches")
            ep = p.instance_gpus(gpn)
            n = p.nodes * gpn // ep
            return (f"{name} {p.nodes} node{'s' if p.nodes != 1 else ''} = {n} x EP{ep}" + (f" TP{p.tp}" if p.tp > 1 else ""))
        parts = [one("prefill" if self.mode != COLOCATED else COLOCATED, self.prefill), one("decode", self.decode)]
        return f"{self.mode}: " + " + ".join(x for x in parts if x)


def _instance_plan(phase: str, pp: PoolPlan, model: Model, hw: Hardware, preset: Preset, fields: dict,
                   stack: str = "") -> Plan:
    """The plan of one instance of pool `pp` (which must split into whole instances)."""
    gpn = fields.get("gpus_per_node") or hw.gpus_per_node
    gpus = pp.instance_gpus(gpn)
    total = pp.nodes * gpn
    if gpus < 1 or total % gpus:
        raise UserError(f"the {phase} pool's {total} GPUs ({pp.nodes} nodes x {gpn}) do not split into instances "
                        f"of EP{gpus}: give an EP that divides {total}")
    if gpus % pp.tp:
        raise UserError(f"the {phase} pool's TP{pp.tp} does not divide its instance of {gpus} GPUs")
    kw = {k: v for k, v in fields.items() if v is not None}
    if phase == "prefill":
        kw.pop("mtp", None)
        kw.pop("mtp_accept", None)
    return resolve_plan(phase, model, hw, preset, stack=stack, **{**kw, "tp": pp.tp, "dp": gpus // pp.tp, "ep": gpus})


def _span(a: np.ndarray) -> tuple[float, float]:
    return float(a.min()), float(a.max())


def build_pools(model: Model, hw: Hardware, preset: Preset, d: Deployment, w: Workload,
                cache: dict | None = None) -> tuple[list[Pool], np.ndarray]:
    """The simulator's pools for deployment `d` and workload `w`, and each request's KV transfer time.
    `cache` keeps step tables per instance shape across calls (a plan search builds many pools of
    few shapes; the tables depend on the workload's length ranges, which it keeps)."""
    if d.mode not in (PD, COLOCATED, "prefill", "decode"):
        raise UserError(f"--mode must be pd, colocated, prefill or decode, got {d.mode!r}")
    if d.mode in (PD, COLOCATED, "prefill") and d.prefill is None:
        raise UserError(f"mode {d.mode} needs --prefill-nodes")
    if d.mode in (PD, "decode") and d.decode is None:
        raise UserError(f"mode {d.mode} needs --decode-nodes")
    if not (math.isfinite(d.token_budget) and d.token_budget >= 1):
        raise UserError(f"--prefill-tokens must be at least 1 token per DP group, got {d.token_budget}")
    if d.max_batch < 0:
        raise UserError(f"--decode-batch must not be negative, got {d.max_batch}")
    fields = dict(d.plan_fields)
    gpn = fields.get("gpus_per_node") or hw.gpus_per_node
    cache = {} if cache is None else cache

    def shape(phase: str, pp: PoolPlan) -> dict[str, Any]:
        if pp.nodes < 1:
            raise UserError(f"a {COLOCATED if d.mode == COLOCATED else phase} pool needs at least 1 node, "
                            f"got {pp.nodes}")
        gpus = pp.instance_gpus(gpn)
        plan = _instance_plan(phase, pp, model, hw, preset, fields, d.stack)    # depends on the instance, not the pool
        key = (phase, gpus, pp.tp, d.token_budget, d.max_batch, d.slo_tpot_ms, d.decode_graphs)
        if key not in cache:
            of_phase = _prefill_shape if phase == "prefill" else _decode_shape
            cache[key] = of_phase(Target(model, hw, preset, plan), d, w)
        return {**cache[key], "gpus": gpus, "instances": pp.nodes * gpn // gpus, "dp": gpus // pp.tp}

    pools: list[Pool] = []
    transfer = np.zeros(len(w))
    if d.mode == COLOCATED:
        pre, dec = shape("prefill", d.prefill), shape("decode", d.prefill)
        pools.append(Pool(COLOCATED, pre["instances"], pre["gpus"], pre["dp"], gpn, pre["table"], dec["table"],
                          d.token_budget, dec["cap"], dec["kv"], dec["plan"].accepted_per_request))
        return pools, transfer
    if d.mode in (PD, "prefill"):
        pre = shape("prefill", d.prefill)
        pools.append(Pool("prefill", pre["instances"], pre["gpus"], pre["dp"], gpn, pre["table"], None, d.token_budget))
    if d.mode in (PD, "decode"):
        # an AF decode pool is one instance (attention and expert GPUs together); af.py refuses MTP
        dec = ({"instances": 1, **_af_shape(model, hw, preset, d, w, fields, cache)} if d.expert_nodes
               else shape("decode", d.decode))
        pools.append(Pool("decode", dec["instances"], dec["gpus"], dec["dp"], gpn, None, dec["table"],
                          d.token_budget, dec["cap"], dec["kv"], dec["plan"].accepted_per_request))
        if d.mode == PD:
            transfer = kv_transfer_s(model, hw, dec["plan"], w.input_len.astype(float))
    return pools, transfer


def _prefill_shape(target: Target, d: Deployment, w: Workload) -> dict[str, Any]:
    model, plan = target.model, target.plan
    if kv_capacity_tokens(target) < d.token_budget:
        raise UserError(f"the weights of {model.name} on a prefill instance of {plan.num_gpus} GPUs leave no room "
                        f"for a step of {d.token_budget:g} tokens' KV cache: use a larger EP")
    hit = float(np.clip(w.hit_rate, 0.0, 0.99))
    table = prefill_table(target, d.token_budget, _span(w.input_len.astype(float)), hit)
    return {"plan": plan, "table": _placed(d, "prefill", table)}


def _placed(d: Deployment, phase: str, table):
    """The step table under the stack's default expert placement: its published throughput relative
    to balanced experts (data/stacks.toml `eplb`) stretches every step."""
    f = load_stack(d.stack).eplb[phase] if d.stack else 1.0
    return table if f == 1.0 else replace(table, ms=table.ms / f)


def _decode_shape(target: Target, d: Deployment, w: Workload) -> dict[str, Any]:
    plan = target.plan
    kv = kv_capacity_tokens(target)
    contexts, top = _decode_range(d, w, kv, "a decode GPU of this plan", "use a larger EP or shorter requests")
    table = _placed(d, "decode", decode_table(target, top, contexts, d.decode_graphs))
    return {"table": table, "plan": plan, "kv": kv, "cap": _cap(d, table, plan.accepted_per_request, contexts, top)}


def _decode_range(d: Deployment, w: Workload, kv: float, who: str, advice: str) -> tuple[tuple[float, float], float]:
    """The decode table's contexts (first token to the longest request) and its largest batch per DP
    group (what the KV room holds at the mean request, or --decode-batch); too little room for one
    request is an error."""
    lengths = (w.input_len + w.output_len).astype(float)
    if kv < lengths.min():
        raise UserError(f"{who} has room for {kv:,.0f} KV tokens after the weights, less than one request's "
                        f"{lengths.min():,.0f}: {advice}")
    top = max(1.0, kv / lengths.mean())
    if d.max_batch:
        top = min(top, d.max_batch)
    return (float(w.input_len.min() + 1), float(lengths.max())), top


def _cap(d: Deployment, table, accepted: float, contexts: tuple[float, float], top: float) -> float:
    """The decode batch limit: --decode-batch, or the TPOT target's at the longest context."""
    return tpot_batch(table, accepted, d.slo_tpot_ms, contexts[1], top) if d.slo_tpot_ms else d.max_batch


def _af_shape(model: Model, hw: Hardware, preset: Preset, d: Deployment, w: Workload, fields: dict,
              cache: dict) -> dict[str, Any]:
    """The decode pool as one AF instance: (nodes - expert_nodes) nodes of attention GPUs, expert_nodes
    nodes of expert GPUs; step times from af.py on the (batch, context) grid."""
    from . import af
    gpn = fields.get("gpus_per_node") or hw.gpus_per_node
    pp = d.decode
    if not 0 < d.expert_nodes < pp.nodes:
        raise UserError(f"--decode-expert-nodes must lie in [1, {pp.nodes - 1}] (the rest of the {pp.nodes} decode "
                        f"nodes run attention), got {d.expert_nodes}")
    if not 1 <= d.af_microbatches <= 8:
        raise UserError(f"--af-microbatches must lie in [1, 8], got {d.af_microbatches}")
    A, F = (pp.nodes - d.expert_nodes) * gpn, d.expert_nodes * gpn
    key = ("af", A, F, d.af_microbatches, pp.tp, d.max_batch, d.slo_tpot_ms)
    if key in cache:
        return cache[key]
    kw = {k: v for k, v in fields.items() if v is not None}
    experts = model.routed_experts + (kw.get("redundant_experts") or 0)
    if F > experts:
        raise UserError(f"{F} expert GPUs for {experts} experts: give the expert side at most {experts // gpn} nodes")
    plan = resolve_plan("decode", model, hw, preset, stack=d.stack, **{**kw, "tp": pp.tp, "dp": A // pp.tp,
                                                        "ep": min(A, experts), "microbatches": 1})
    target = Target(model, hw, preset, plan)
    af.check_expert_memory(target, F)
    shape_ = af.AFShape(A, F, d.af_microbatches)
    kv = af.attention_kv_tokens(target)
    contexts, top = _decode_range(d, w, kv, "an attention GPU", "give the attention side more nodes or shorten the "
                                                                "requests")
    table = custom_table(plan, top, contexts,
                         lambda b, c: af.step_ms(target.with_plan(replace(plan, batch=b, seq_len=c)), shape_))
    cache[key] = {"table": table, "plan": plan, "kv": kv, "cap": _cap(d, table, 1.0, contexts, top), "gpus": A + F,
                  "dp": A // pp.tp}
    return cache[key]


def tpot_batch(table, accepted: float, slo_ms: float, context: float, top: float) -> float:
    """The largest decode batch per DP group whose step, over the tokens a request gains per step,
    stays within `slo_ms` at `context` (0 when even one request misses it)."""
    if table(1.0, context) / accepted > slo_ms:
        return 0.0
    lo, hi = 1.0, max(1.0, top)
    if table(hi, context) / accepted <= slo_ms:
        return math.floor(hi)
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if table(mid, context) / accepted <= slo_ms else (lo, mid)
    return max(1.0, math.floor(lo))


# a capacity run (every request at t = 0) sized to fill every pool: two full decode batches (the second
# waits while the first decodes, so the decode pool runs full), eight full prefill steps, at least 2,000
CAPACITY_DECODE_BATCHES, CAPACITY_PREFILL_STEPS, CAPACITY_MIN_REQUESTS = 2, 8, 2000


def capacity_requests(model: Model, hw: Hardware, preset: Preset, d: Deployment, input_len: int, output_len: int,
                      prefix_hit: float = 0.0, cache: dict | None = None) -> int:
    """How many requests of these lengths a capacity run of deployment `d` needs to fill every pool."""
    from .workload import synthetic
    pools, _ = build_pools(model, hw, preset, d, synthetic(1, None, input_len, output_len, prefix_hit), cache)
    new = max(1, input_len - min(input_len - 1, int(round(prefix_hit * input_len))))
    need = CAPACITY_MIN_REQUESTS
    for p in pools:
        if p.role in ("prefill", COLOCATED):
            need = max(need, math.ceil(CAPACITY_PREFILL_STEPS * p.instances * max(1, p.dp) * p.token_budget / new))
        if p.role in ("decode", COLOCATED):
            need = max(need, math.ceil(CAPACITY_DECODE_BATCHES * p.decode_slots(input_len + output_len)))
    return need


def simulate_deployment(model: Model, hw: Hardware, preset: Preset, d: Deployment, w: Workload, cache: dict | None = None) -> Result:
    """Simulate workload `w` on deployment `d`."""
    pools, transfer = build_pools(model, hw, preset, d, w, cache)
    for p in pools:
        if p.role in ("decode", COLOCATED) and d.slo_tpot_ms and p.max_batch == 0:
            raise UserError(f"no decode batch meets TPOT < {d.slo_tpot_ms:g} ms on this plan: one request per DP group "
                            f"takes {p.decode(1.0, p.decode.context[-1]) / p.tokens_per_step:.1f} ms per token at "
                            f"the longest context")
    return simulate(w, pools, d.mode, transfer)


__all__ = ["PoolPlan", "Deployment", "build_pools", "simulate_deployment", "capacity_requests", "tpot_batch",
           "DEFAULT_TOKEN_BUDGET"]
