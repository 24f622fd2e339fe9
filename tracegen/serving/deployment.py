"""A deployment plan (pools, their parallelism, batching limits, MTP) turned into the simulator's
pools: one plan per pool instance through the shared resolver, its step-time tables, its KV-cache
room and the KV transfer time of each request."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..base.errors import UserError
from ..catalog import Hardware, Model
from ..plan import Plan
from ..preset import Preset
from ..resolve import resolve_plan
from .simulate import Pool, Result, simulate
from .steptime import decode_table, kv_capacity_tokens, kv_transfer_s, prefill_table
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

    def label(self) -> str:
        def one(name: str, p: PoolPlan | None) -> str:
            return f"{name} {p.nodes} node{'s' if p.nodes != 1 else ''} (TP{p.tp}, EP{p.ep or 'all'})" if p else ""
        parts = [one("prefill" if self.mode != "colocated" else "colocated", self.prefill), one("decode", self.decode)]
        return f"{self.mode}: " + " + ".join(x for x in parts if x)


def _instance_plan(phase: str, pp: PoolPlan, model: Model, hw: Hardware, preset: Preset, fields: dict) -> Plan:
    gpn = fields.get("gpus_per_node") or hw.gpus_per_node
    gpus = pp.instance_gpus(gpn)
    total = pp.nodes * gpn
    if pp.nodes < 1:
        raise UserError(f"a {phase} pool needs at least 1 node, got {pp.nodes}")
    if gpus < 1 or total % gpus:
        raise UserError(f"the {phase} pool's {total} GPUs ({pp.nodes} nodes x {gpn}) do not split into instances "
                        f"of EP{gpus}: give an EP that divides {total}")
    if gpus % pp.tp:
        raise UserError(f"the {phase} pool's TP{pp.tp} does not divide its instance of {gpus} GPUs")
    kw = {k: v for k, v in fields.items() if v is not None}
    if phase == "prefill":
        kw.pop("mtp", None)
        kw.pop("mtp_accept", None)
    return resolve_plan(phase, model, hw, preset, **{**kw, "tp": pp.tp, "dp": gpus // pp.tp, "ep": gpus})


def _span(a: np.ndarray) -> tuple[float, float]:
    return float(a.min()), float(a.max())


def build_pools(model: Model, hw: Hardware, preset: Preset, d: Deployment, w: Workload) -> tuple[list[Pool], np.ndarray]:
    """The simulator's pools for deployment `d` and workload `w`, and each request's KV transfer time."""
    fields = dict(d.plan_fields)
    gpn = fields.get("gpus_per_node") or hw.gpus_per_node
    hit = float(np.clip(w.hit_rate, 0.0, 0.99))
    prompts = _span(w.input_len.astype(float))
    contexts = (float(w.input_len.min() + 1), float((w.input_len + w.output_len).max()))
    pools: list[Pool] = []
    if d.mode not in ("pd", "colocated", "prefill", "decode"):
        raise UserError(f"--mode must be pd, colocated, prefill or decode, got {d.mode!r}")
    need_prefill = d.mode in ("pd", "colocated", "prefill")
    need_decode = d.mode in ("pd", "colocated", "decode")
    if need_prefill and d.prefill is None:
        raise UserError(f"mode {d.mode} needs --prefill-nodes")
    if d.mode in ("pd", "decode") and d.decode is None:
        raise UserError(f"mode {d.mode} needs --decode-nodes")
    if not (math.isfinite(d.token_budget) and d.token_budget >= 1):
        raise UserError(f"--prefill-tokens must be at least 1 token per DP group, got {d.token_budget}")
    if d.max_batch < 0:
        raise UserError(f"--decode-batch must not be negative, got {d.max_batch}")

    def decode_side(pp: PoolPlan) -> dict[str, Any]:
        plan = _instance_plan("decode", pp, model, hw, preset, fields)
        kv = kv_capacity_tokens(model, hw, plan, preset)
        mean_ctx = float((w.input_len + w.output_len).mean())
        if kv < float((w.input_len + w.output_len).min()):
            raise UserError(f"a decode GPU of this plan has room for {kv:,.0f} KV tokens after the weights, less than "
                            f"one request's {int((w.input_len + w.output_len).min()):,}: use a larger EP or "
                            "shorter requests")
        top = max(1.0, kv / mean_ctx)
        if d.max_batch:
            top = min(top, d.max_batch)
        table = decode_table(model, hw, plan, preset, top, contexts)
        cap = d.max_batch
        if d.slo_tpot_ms:
            cap = tpot_batch(table, plan.accepted_per_request, d.slo_tpot_ms, float(np.mean(contexts)), top)
        return {"table": table, "plan": plan, "kv": kv, "cap": cap}

    if d.mode == "colocated":
        pp = d.prefill
        pre_plan = _instance_plan("prefill", pp, model, hw, preset, fields)
        dec = decode_side(pp)
        gpus = pp.instance_gpus(gpn)
        pools.append(Pool("colocated", pp.nodes * gpn // gpus, gpus, gpus // pp.tp, gpn,
                          prefill_table(model, hw, pre_plan, preset, d.token_budget, prompts, hit), dec["table"],
                          d.token_budget, dec["cap"], dec["kv"], dec["plan"].accepted_per_request))
        return pools, np.zeros(len(w))
    transfer = np.zeros(len(w))
    if need_prefill:
        pp = d.prefill
        plan = _instance_plan("prefill", pp, model, hw, preset, fields)
        gpus = pp.instance_gpus(gpn)
        pools.append(Pool("prefill", pp.nodes * gpn // gpus, gpus, gpus // pp.tp, gpn,
                          prefill_table(model, hw, plan, preset, d.token_budget, prompts, hit), None, d.token_budget))
    if need_decode:
        pp = d.decode
        dec = decode_side(pp)
        gpus = pp.instance_gpus(gpn)
        pools.append(Pool("decode", pp.nodes * gpn // gpus, gpus, gpus // pp.tp, gpn, None, dec["table"],
                          d.token_budget, dec["cap"], dec["kv"], dec["plan"].accepted_per_request))
        if d.mode == "pd":
            transfer = kv_transfer_s(model, hw, dec["plan"], w.input_len.astype(float))
    return pools, transfer


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


def run(model: Model, hw: Hardware, preset: Preset, d: Deployment, w: Workload) -> Result:
    """Simulate workload `w` on deployment `d`."""
    pools, transfer = build_pools(model, hw, preset, d, w)
    for p in pools:
        if p.role in ("decode", "colocated") and d.slo_tpot_ms and p.max_batch == 0:
            raise UserError(f"no decode batch meets TPOT < {d.slo_tpot_ms:g} ms on this plan: one request per DP group "
                            f"takes {p.decode(1.0, float(w.input_len.mean())) / p.tokens_per_step:.1f} ms per token")
    return simulate(w, pools, d.mode, transfer)


__all__ = ["PoolPlan", "Deployment", "build_pools", "run", "tpot_batch", "DEFAULT_TOKEN_BUDGET"]
