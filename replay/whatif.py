"""`replay whatif OBSERVED`: rebuild the stage graph an observed trace ran - each stage's
duration as observed, the order on each stream and of the CPU's launches, the CPU-blocking
dispatches, the cross-stream dependencies of the two-batch-overlap program - and re-time it under
a change (launch order, communication or compute speed, communication backend) with tracegen's
scheduler. The result is a new trace plus its span and overlap.

tracegen's own traces carry each stage's full-SM work, latency and SM use in their args, so a
what-if of a generated trace reproduces the generator exactly; for profiler traces a stage's
duration is the busy time of its kernels (stage labels from annotations such as L3:ATTN(0))."""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tracegen.catalog import hardware_of_device, load_hardware, load_model
from tracegen.base.errors import UserError
from tracegen.launch_order import load_order, unroll
from tracegen.base.contract import COMM, COMPUTE, STAGE_STREAM
from tracegen.opgraph import OpGraph, Stage, link
from tracegen.plan import Plan
from tracegen.preset import load_preset
from tracegen.schedule import Schedule, simulate, summary
from tracegen.trace import write_trace

from .analyze import Analysis

from .compare import StageRules, label_stages


@dataclass(frozen=True)
class Change:
    launch_order: str | None = None     # proper | improper (None: as observed)
    comm_scale: float = 1.0             # x communication transfer time
    compute_scale: float = 1.0          # x compute time
    comm: str | None = None             # another backend: ibgda | normal | cpu-proxy

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, 1.0)}


def _observed_stages(a: Analysis, rules: StageRules, rank: int) -> tuple[dict, dict, float]:
    """Stages of one rank from a profiler trace: busy time, first launch, kernels, blocking."""
    g = label_stages(a, rules)
    g = g[g["rank"] == rank]
    ev = a.events[a.events["rank"] == rank]
    launch = ev[ev["launch"] & (ev["correlation"] >= 0)]
    lend = dict(zip(launch["correlation"], launch["start_us"] + launch["dur_us"]))
    lcost = float(np.median(launch["dur_us"])) if len(launch) else 5.0
    blocking = ev[ev["blocking"]]
    b0 = blocking["start_us"].to_numpy()
    stages, first_launch = {}, {}
    for (layer, mb, st), part in g.groupby(["layer", "microbatch", "cstage"], sort=True):
        part = part.sort_values("start_us")
        s0, e0 = part["start_us"].to_numpy(), (part["start_us"] + part["dur_us"]).to_numpy()
        busy = float(np.sum(e0 - s0))
        launched = [lend[c] for c in part["correlation"] if c in lend]
        t_launch = min(launched) if launched else float(s0.min())
        kind = STAGE_STREAM[st]
        lat, blocked = 0.0, False
        if kind == "comm" and st == "DISPATCH":
            # a blocking call between this stage's launches and its first kernel's end: DeepEP-style
            # dispatch (the CPU waits for the counts, i.e. the stage's first kernel)
            blocked = bool(np.any((b0 >= t_launch - 1.0) & (b0 <= e0[0] + 1.0)))
            if blocked and len(part) > 1:
                lat = float(e0[0] - s0[0])
        stages[(int(layer), int(mb), st)] = Stage(int(layer), int(mb), st, COMM if kind == "comm" else COMPUTE,
                                                  max(busy - lat, 0.0), lat, 0.0, blocked, 0, len(part))
        first_launch[(int(layer), int(mb), st)] = t_launch
    return stages, first_launch, lcost


def _generated_stages(a: Analysis, rank: int) -> tuple[dict, dict, float, list[float]]:
    """Stages of one rank from tracegen's args; kernels per stage from its launch slice's length."""
    ev = a.events
    other = a.trace.meta.get("otherData", {})
    launch_us = float(other.get("launch_us", 5.0))
    gpu = ev[(ev["rank"] == rank) & (ev["device"] == "gpu") & (ev["layer"] >= 0)]
    cpu = ev[(ev["rank"] == rank) & (ev["cat"] == "cpu_launch")]
    first_launch, kernels = {}, {}
    for r in cpu.itertuples():
        k = (int(r.layer), int(r.microbatch), str(r.stage))
        first_launch[k] = float(r.start_us)
        kernels[k] = max(1, round(r.dur_us / launch_us)) if launch_us else 1
    stages = {}
    for r in gpu.itertuples():
        x = json.loads(r.extra) if isinstance(r.extra, str) else {}
        load = x.get("load_factor") or 1.0
        stream = COMM if str(r.stage_stream) == "comm" else COMPUTE
        key = (int(r.layer), int(r.microbatch), str(r.stage))
        stages[key] = Stage(key[0], key[1], key[2], stream, float(r.work_us) / load, float(x.get("latency_us") or 0.0),
                            float(x.get("post_us") or 0.0), False, int(x.get("sms") or 0), kernels.get(key, 1),
                            float(r.flops or 0.0) / load, float(r.bytes or 0.0) / load)
    loads = [float(v) for v in other.get("load_factors", [1.0])]
    return stages, first_launch, launch_us, loads


def whatif(a: Analysis, rules: StageRules, change: Change, hardware: str | None = None) -> Schedule:
    generated = a.trace.generated
    other = a.trace.meta.get("otherData", {})
    if generated:
        hw = load_hardware(other.get("hardware_key") or other["hardware"])
        model = load_model(other["model"])
        base_plan = Plan(**other["plan"])
        stages, first_launch, launch_us, loads = _generated_stages(a, 0)
        ranks = int(other.get("ranks", 1))
        # per-stage kernel counts and blocking from the generated trace's CPU track
        cpu = a.events[(a.events["rank"] == 0) & (a.events["device"] == "cpu")]
        waits = {(int(r.layer), int(r.microbatch), str(r.stage)) for r in cpu[cpu["cat"] == "cpu_wait"].itertuples()}
        blocking_backend = hw.backend(base_plan.comm).cpu_block_us > 0
        for k, st in list(stages.items()):
            stages[k] = replace(st, blocking=(st.name == "DISPATCH" and (k in waits or blocking_backend)))
    else:
        hw = load_hardware(hardware) if hardware else hardware_of_device(
            " ".join(d.get("name", "") for d in a.trace.meta.get("deviceProperties", [])[:1]))
        model = load_model(None)
        ranks_seen = sorted(a.events.loc[a.events["device"] == "gpu", "rank"].unique())
        if len(ranks_seen) != 1:
            raise UserError("what-if of a profiler trace takes one rank: pick one with --rank")
        stages, first_launch, launch_us = _observed_stages(a, rules, int(ranks_seen[0]))
        loads, ranks = [1.0], 1
        phase = "decode" if any(k[2] in ("ATTN-0", "ATTN-1") for k in stages) else "prefill"
        n_mb = max(k[1] for k in stages) + 1
        blocking = any(s.blocking for s in stages.values())
        comm = "normal" if blocking else "ibgda"
        base_plan = Plan(phase=phase, batch=1, seq_len=1, microbatches=n_mb, comm=comm)
    if not stages:
        raise UserError("no stages with known layer, micro-batch and stage in the trace: a what-if needs "
                        "tracegen's args or stage annotations (see replay/data/stages.toml)")
    # the change
    plan = base_plan if change.comm is None else replace(base_plan, comm=change.comm)
    backend = hw.backend(plan.comm) if change.comm else None
    new = {}
    for k, st in stages.items():
        if st.stream == COMM:
            st = replace(st, work_us=st.work_us * change.comm_scale)
            if backend is not None:
                st = replace(st, latency_us=backend.latency_us, holds_sms=backend.sms,
                             blocking=st.name == "DISPATCH" and backend.cpu_block_us > 0,
                             post_us=backend.per_message_us * max(1, plan.ep_size - 1))
        else:
            st = replace(st, work_us=st.work_us * change.compute_scale)
        new[k] = st
    layers = sorted({k[0] for k in new})
    dense = {layer for layer in layers if not any(k[0] == layer and STAGE_STREAM[k[2]] == COMM for k in new)}
    n_mb = max(k[1] for k in new) + 1
    new = link(new, layers, n_mb, n_mb == 1, plan.phase, dense)
    graph = OpGraph(model, replace(hw, cpu_launch_us=launch_us), replace(plan, imbalance=max(loads) if loads else 1.0),
                    load_preset("default"), tuple(layers), frozenset(dense), new, n_mb == 1)
    if change.launch_order:
        order = unroll(graph, load_order(change.launch_order, plan.phase))
    else:
        order = sorted(new, key=lambda k: (first_launch.get(k, 0.0), k[0], k[1]))
        order = _respect_deps(order, new)
    return simulate(graph, order, ranks=ranks, launch_us=launch_us, loads=loads if len(loads) == ranks else None)


def _respect_deps(order: list, stages: dict) -> list:
    """The observed launch order, nudged so that no stage precedes one it depends on."""
    placed, out, pending = set(), [], list(order)
    while pending:
        for i, k in enumerate(pending):
            if all(d in placed for d in stages[k].deps):
                out.append(k)
                placed.add(k)
                pending.pop(i)
                break
        else:
            raise UserError("the observed stages' dependencies form a cycle; check the stage annotations")
    return out


def run(path: str, out: str, a: Analysis, rules: StageRules, change: Change, hardware: str | None) -> dict[str, Any]:
    sched = whatif(a, rules, change, hardware)
    write_trace(sched, out, {"tbo": change.launch_order or "as observed",
                             "whatif": {"source": str(Path(path).name), "changes": change.describe()}})
    s = summary(sched)
    before = {r["rank"]: r for r in a.ranks}
    return {"output": out, "changes": change.describe(),
            "ranks": [{"rank": r["rank"], "span_us": r["span_us"], "overlap_us": r["overlap_us"],
                       "hidden_comm_pct": r["hidden_comm_pct"], "exposed_comm_us": r["exposed_comm_us"],
                       "observed_span_us": before.get(r["rank"], {}).get("span_us"),
                       "observed_overlap_us": before.get(r["rank"], {}).get("overlap_us")} for r in s]}


__all__ = ["Change", "whatif", "run"]
