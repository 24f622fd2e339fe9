"""Plan search: over the prefill/decode split of a node budget and the EP of each pool, under TTFT and
TPOT targets. Each candidate's capacity (requests per second) comes from its step-time tables at
full load (the prefill token budget; the largest decode batch that keeps the TPOT target); the best
few are then simulated under Poisson load at falling fractions of that capacity until the SLO holds
for the required share of requests. The answer is the plan with the most SLO-attaining requests
per second per GPU (goodput)."""
from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from ..base.errors import UserError
from ..catalog import Hardware, Model
from ..preset import Preset
from .deployment import Deployment, PoolPlan, build_pools
from .metrics import summary
from .simulate import PD, simulate
from .workload import Workload, synthetic

LOADS = (0.95, 0.85, 0.7, 0.55, 0.4, 0.25, 0.1)     # fractions of the estimated capacity tried, high to low
VERIFY = 3                                            # candidates simulated


@dataclass
class Candidate:
    deployment: Deployment
    capacity_rps: float            # requests/s the slower pool sustains at full load
    bottleneck: str
    gpus: int
    goodput_rps: float = 0.0       # requests/s simulated with the SLO attained (0: not verified or missed)
    load: float = 0.0
    metrics: dict | None = None

    def row(self) -> dict:
        d = self.deployment
        return {"plan": d.label(), "prefill_nodes": d.prefill.nodes if d.prefill else 0,
                "prefill_ep": d.prefill.ep if d.prefill else 0, "decode_nodes": d.decode.nodes if d.decode else 0,
                "decode_ep": d.decode.ep if d.decode else 0, "gpus": self.gpus, "capacity_rps": self.capacity_rps,
                "bottleneck": self.bottleneck, "goodput_rps": self.goodput_rps,
                "goodput_rps_per_gpu": self.goodput_rps / self.gpus, "load": self.load}


def _eps(nodes: int, gpn: int, experts: int) -> list[int]:
    """Instance sizes a pool of `nodes` nodes splits into evenly: whole nodes, at most one GPU per expert."""
    return [k * gpn for k in range(1, nodes + 1) if nodes % k == 0 and k * gpn <= experts]


def capacity(pools, w: Workload) -> tuple[float, str]:
    """Requests per second each pool sustains at full load; the lower one and its role."""
    new = float((w.input_len - w.prefix_hit_len).mean())
    L = float(w.input_len.mean())
    out = float(np.maximum(w.output_len - 1, 0).mean())
    ctx = float((w.input_len + w.output_len / 2).mean())
    rates = {}
    for p in pools:
        if p.role == "prefill":
            ms = p.prefill(p.token_budget, L)
            rates["prefill"] = p.instances * p.token_budget * p.dp / (ms / 1e3) / new
        elif p.role == "decode":
            b = p.batch_limit(float((w.input_len + w.output_len).mean()))
            ms = p.decode(max(1.0, b), ctx)
            rates["decode"] = p.instances * b * p.dp * p.tokens_per_step / (ms / 1e3) / max(out, 1e-9)
    role = min(rates, key=rates.get)
    return rates[role], role


def search(model: Model, hw: Hardware, preset: Preset, base: Deployment, w: Workload, nodes: int,
           slo_ttft_ms: float, slo_tpot_ms: float, attain: float = 0.9, requests: int = 2000, seed: int = 0,
           log: Callable[[str], None] | None = None) -> tuple[Candidate | None, list[Candidate]]:
    """The best PD plan for `nodes` nodes (None when none meets the SLO) and every candidate, ranked."""
    say = log or (lambda m: print(m, file=sys.stderr))
    if nodes < 2:
        raise UserError(f"--search splits --nodes into prefill and decode pools: at least 2 nodes, got {nodes}")
    gpn = base.plan_fields.get("gpus_per_node") or hw.gpus_per_node
    experts = model.routed_experts + (base.plan_fields.get("redundant_experts") or 0)
    cands: list[Candidate] = []
    tables: dict = {}
    why: list[str] = []            # splits that cannot run at all (memory, shapes)
    slow: list[str] = []           # splits that run but cannot meet the TPOT target
    for p_nodes in range(1, nodes):
        d_nodes = nodes - p_nodes
        for ep_p in _eps(p_nodes, gpn, experts):
            for ep_d in _eps(d_nodes, gpn, experts):
                d = replace(base, mode=PD, prefill=PoolPlan(p_nodes, 1, ep_p), decode=PoolPlan(d_nodes, 1, ep_d),
                            slo_tpot_ms=slo_tpot_ms)
                try:
                    pools, _ = build_pools(model, hw, preset, d, w, tables)
                except UserError as e:
                    why.append(str(e))
                    continue
                if any(p.role == "decode" and p.max_batch == 0 for p in pools):
                    slow.append(f"decode EP{ep_d}")
                    continue
                rate, role = capacity(pools, w)
                cands.append(Candidate(d, rate, role, nodes * gpn))
    if not cands:
        if slow:         # the target, not memory, is what no plan meets: say that first
            raise UserError(f"no plan of {nodes} nodes meets TPOT <= {slo_tpot_ms:g} ms: even one request per DP "
                            f"group takes longer on every split that runs ({len(slow)}: {', '.join(slow[:4])}"
                            + (", ..." if len(slow) > 4 else "") + ")" +
                            (f"; {len(why)} other split(s) do not fit in memory" if why else ""))
        raise UserError(f"no split of {nodes} nodes can run: {why[-1] if why else 'no pool shape fits'}")
    cands.sort(key=lambda c: -c.capacity_rps)
    say(f"search: {len(cands)} plans; simulating the best {min(VERIFY, len(cands))} under Poisson load")
    for c in cands[:VERIFY]:
        for load in LOADS:
            wl = synthetic_like(w, requests, load * c.capacity_rps, seed)
            pools, transfer = build_pools(model, hw, preset, c.deployment, wl, tables)
            m = summary(simulate(wl, pools, PD, transfer), slo_ttft_ms, slo_tpot_ms)
            c.metrics, c.load = m, load
            if m["slo"]["attained"] >= attain:
                c.goodput_rps = load * c.capacity_rps
                break
        say(f"  {c.deployment.label()}: capacity {c.capacity_rps:.2f} req/s ({c.bottleneck}-bound), "
            + (f"SLO held at {c.load:.0%} load" if c.goodput_rps else "SLO missed at every load"))
    ok = [c for c in cands[:VERIFY] if c.goodput_rps > 0]
    best = max(ok, key=lambda c: c.goodput_rps) if ok else None
    return best, cands


def synthetic_like(w: Workload, requests: int, rate: float, seed: int) -> Workload:
    """`requests` drawn from `w`'s lengths (in order, cycling), Poisson at `rate` per second."""
    idx = np.arange(requests) % len(w)
    base = synthetic(requests, rate, 1, 1, seed=seed)
    return Workload(base.arrival_s, w.input_len[idx], w.output_len[idx], w.prefix_hit_len[idx],
                    f"{requests:,} requests like {w.source}, Poisson at {rate:.3g}/s")


__all__ = ["search", "Candidate", "capacity", "synthetic_like", "LOADS"]
