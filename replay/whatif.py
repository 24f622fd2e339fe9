"""`replay whatif OBSERVED`: re-time an observed trace under a change (launch order,
communication or compute speed, communication backend) with tracegen's scheduler, and write the
new trace with its span and overlap. The stage graph it re-times, and the assumptions made for
profiler traces, come from replay/stagegraph.py."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tracegen.base.contract import COMM, COMPUTE, STAGE_STREAM
from tracegen.base.errors import UserError
from tracegen.launch_order import load_order, unroll
from tracegen.opgraph import OpGraph, link
from tracegen.pipeline import in_situ_slowdown, settle, share_beside, unstretch
from tracegen.schedule import Interval, Schedule, simulate, stage_rate, summary
from tracegen.trace import write_trace

from .analysis import Analysis
from .findings import LAUNCH_LATENCY_US
from .stagerules import StageRules
from .stagegraph import Key, StageGraph, rank_graphs, stage_graph


def layer_kind(stages: set[str]) -> str:
    """A layer's PROGRAM type from the stages it holds: the step's head, an MoE layer (it has
    communication, or a shared expert: an MoE layer whose experts are all local has no all-to-all)
    or a dense one."""
    if stages == {"HEAD"}:
        return "head"
    return "moe" if "SHARED" in stages or any(STAGE_STREAM[s] == COMM for s in stages) else "dense"


@dataclass(frozen=True)
class Change:
    launch_order: str | None = None     # proper | improper (None: as observed)
    comm_scale: float = 1.0             # x communication transfer time
    compute_scale: float = 1.0          # x compute time
    comm: str | None = None             # another backend: ibgda | normal | cpu-proxy

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, 1.0)}


SM_RACE_US = 20.0   # compute starting this soon after a communication stage is ready races it for the SMs
                    # (the next queued kernel starts within a few us: KERNEL_SWITCH_US in findings.py is 8)


def _graph(g: StageGraph, stages: dict, plan) -> OpGraph:
    """An op graph of the observed stages (linked as tracegen links its own)."""
    layers = sorted({k[0] for k in stages})
    kinds = {layer: layer_kind({k[2] for k in stages if k[0] == layer}) for layer in layers}
    dense = {layer for layer, kind in kinds.items() if kind == "dense"}
    n_mb = max(k[1] for k in stages) + 1
    linked = link(stages, layers, n_mb, n_mb == 1, plan.phase, kinds)
    left = sorted(set(stages) - set(linked))
    if left:        # a stage no layer program runs would drop its work from the re-time: say so instead
        layer, mb, name = left[0]
        raise UserError(f"layer {layer} micro-batch {mb}: stage {name} is not one a {kinds[layer]} layer runs "
                        f"({', '.join(sorted({k[2] for k in stages if k[0] == layer}))} labelled): its stages "
                        "cannot be re-timed; check the stage labels (--stages) or the communication taxonomy")
    for k, extra in observed_waits(g, linked).items():
        linked[k] = replace(linked[k], deps=tuple(sorted(set(linked[k].deps) | extra)))
    return OpGraph(g.model, replace(g.hardware, cpu_launch_us=g.launch_us),
                   replace(plan, imbalance=max(g.loads) if g.loads else 1.0), g.preset, tuple(layers),
                   frozenset(dense), linked, n_mb == 1, kinds)


def _observed_order(g: StageGraph, stages: dict) -> list:
    order = sorted(stages, key=lambda k: (g.first_launch.get(k, 0.0), k[0], k[1]))
    return _respect_deps(order, stages)


def retime(g: StageGraph, change: Change, waits: dict[tuple[str, int], float] | None = None) -> Schedule:
    """The stage graph with the change applied, scheduled by tracegen's simulator. What overlap did to
    the observed times is taken out first, against the observed arrangement: compute of a profiler trace
    back to all SMs (it lost those SM-holding communication held beside it), SM-holding communication
    back to its speed alone (the hardware's in-situ slowdown x its share beside compute); the new
    schedule puts back what its own overlap costs (the simulator's SM sharing, pipeline.settle).
    `waits`: the trace's SM waits (sm_waits), measured here unless the caller already has them."""
    sim = dict(ranks=g.ranks, launch_us=g.launch_us, loads=g.loads if len(g.loads) == g.ranks else None)
    base = as_alone(g, sim)
    waits = sm_waits(g, _graph(g, g.stages, g.plan)) if waits is None else waits
    base = {k: (replace(st, sm_wait_us=waits[(k[2], k[1])]) if (k[2], k[1]) in waits else st)
            for k, st in base.items()}
    plan = g.plan if change.comm is None else replace(g.plan, comm=change.comm)
    backend = g.hardware.backend(plan.comm) if change.comm else None
    new = {}
    for k, st in base.items():
        if st.stream == COMM:
            st = replace(st, work_us=st.work_us * change.comm_scale)
            if backend is not None:
                st = replace(st, latency_us=backend.latency_us, holds_sms=backend.sms, in_situ=backend.sms > 0,
                             blocking=st.name == "DISPATCH" and backend.cpu_block_us > 0,
                             post_us=backend.per_message_us * max(1, plan.ep_size - 1))
        else:
            st = replace(st, work_us=st.work_us * change.compute_scale)
        new[k] = st
    if (change.comm or change.comm_scale != 1.0) and not any(st.stream == COMM for st in base.values()):
        raise UserError("--comm and --comm-scale change the communication stages; this trace labels none (no "
                        "all-to-all recognised in its layers), so a re-time would only repeat the observed run")
    graph = _graph(g, new, plan)
    if change.launch_order and not graph.moe_layers:      # unroll would keep program order: say so instead
        raise UserError("--launch-order reorders the two micro-batches of MoE layers around their communication; "
                        "no layer of this trace has a communication stage (or a shared expert) labelled, so there "
                        "is nothing to reorder and a re-time would only repeat the observed order")
    if change.launch_order:
        order = unroll(graph, load_order(change.launch_order, plan.phase))
    else:
        order = _observed_order(g, graph.stages)
    return settle(graph, lambda gr: simulate(gr, order, **sim), in_situ_slowdown(graph))


PEER_ROUNDS = 96            # rounds of the ranks' re-times the peer waits get to settle (each round settles one
                            # more collective in time order at the least: a step has a few dozen)
PEER_TOLERANCE_US = 2.0     # the largest change of any peer wait that ends the rounds
PEER_RESIDUAL_SHARE = 0.005  # waits still moving by less than this share of the span after PEER_ROUNDS: kept, and said
                             # (a wait that crosses a kernel's end flips between two values: schedule.kernel_wait)
PEER_DAMP_AFTER = 24        # rounds after which each round moves the waits halfway to their new values


def collectives(gs: list[StageGraph]) -> list:
    """The communication stages every rank ran (each an all-to-all its peers join)."""
    keys = [{k for k, st in g.stages.items() if st.stream == COMM} for g in gs]
    return sorted(set.intersection(*keys)) if keys else []


def peer_waits(gs: list[StageGraph], keys: list) -> list[dict]:
    """Per rank, how long each collective waited for its last peer to join, as observed: the last rank's
    first kernel start less this rank's (the ranks are on the analysis's common clock)."""
    return [{k: max(0.0, max(h.first_start[k] for h in gs) - g.first_start[k]) for k in keys} for g in gs]


def without_peer_waits(g: StageGraph, waits: dict) -> StageGraph:
    """The rank's collectives as they would run with every peer there: the observed wait taken out of the
    time until the data flows (a blocking dispatch's latency: the CPU waited for counts that needed every
    peer), then out of the transfer (at most nine tenths: the kernels' own time stays)."""
    stages = dict(g.stages)
    for k, w in waits.items():
        st = stages[k]
        cut = min(w, st.latency_us) if st.blocking else 0.0
        rest = min(w - cut, 0.9 * st.work_us)
        stages[k] = replace(st, latency_us=st.latency_us - cut, work_us=st.work_us - rest)
    return replace(g, stages=stages)


def retime_ranks(gs: list[StageGraph], change: Change, waits: list[dict] | None = None
                 ) -> tuple[list[Schedule], list[float], int, float]:
    """Every rank re-timed with its peers: each collective starts moving data when its last rank joins.
    The observed peer waits are taken out (without_peer_waits), then each rank is re-timed (retime) with
    a wait before each collective of (the last rank's arrival - its own), arrivals on the common clock
    (each rank's first launch kept where it was), until no wait moves by PEER_TOLERANCE_US. Returns the
    schedules (each on its rank's own clock), the ranks' offsets (us), the rounds it took and how far the
    waits still moved in the last (over PEER_TOLERANCE_US: it did not settle; refused past
    PEER_RESIDUAL_SHARE of the span)."""
    keys = collectives(gs)
    bare = [without_peer_waits(g, w) for g, w in zip(gs, peer_waits(gs, keys))]
    starts = [min(g.first_launch.values()) for g in gs]
    offsets = [t - min(starts) for t in starts]
    waits = waits or [sm_waits(g, _graph(g, g.stages, g.plan)) for g in gs]
    add = [dict.fromkeys(keys, 0.0) for _ in gs]
    for rounds in range(1, PEER_ROUNDS + 1):
        scheds = [retime(replace(g, stages={k: replace(st, latency_us=st.latency_us + ad[k]) if k in ad else st
                                            for k, st in g.stages.items()}), change, w)
                  for g, ad, w in zip(bare, add, waits)]
        arrive = [{k: off + s.start[(0, k)] for k in keys} for s, off in zip(scheds, offsets)]
        new = [{k: max(a[k] for a in arrive) - mine[k] for k in keys} for mine in arrive]
        moved = max((abs(n[k] - o[k]) for n, o in zip(new, add) for k in keys), default=0.0)
        if rounds > PEER_DAMP_AFTER:    # a wait that feeds back on itself flips between two values: meet halfway
            new = [{k: (n[k] + o[k]) / 2 for k in keys} for n, o in zip(new, add)]
        add = new
        if moved <= PEER_TOLERANCE_US:
            return scheds, offsets, rounds, moved
    if moved > PEER_RESIDUAL_SHARE * max(s.span_us for s in scheds):
        raise UserError(f"the ranks' peer waits did not settle in {PEER_ROUNDS} rounds (still moving by {moved:.0f} us): "
                        "re-time one rank with --rank")
    return scheds, offsets, rounds, moved


def merged(scheds: list[Schedule], offsets: list[float]) -> Schedule:
    """The ranks' schedules as one, on the common clock (the trace writer's input). The stage args are
    rank 0's, with each rank's expert load as its MLP work against rank 0's."""
    g0 = scheds[0].graph
    mlp = [sum(st.work_us for k, st in s.graph.stages.items() if k[2] == "MLP") for s in scheds]
    out = Schedule(g0, len(scheds), [m / mlp[0] if mlp[0] else 1.0 for m in mlp], scheds[0].launch_us)
    for r, (s, off) in enumerate(zip(scheds, offsets)):
        out.intervals += [replace(iv, rank=r, start=iv.start + off, end=iv.end + off) for iv in s.intervals]
        out.idle += [replace(i, rank=r, start=i.start + off, end=i.end + off) for i in s.idle]
        out.blocked += [[(a + off, b + off) for a, b in spans] for spans in s.blocked]
        for name in ("start", "end", "launched", "ready"):
            getattr(out, name).update({(r, k): t + off for (_, k), t in getattr(s, name).items()})
    out.intervals.sort(key=lambda i: (i.rank, i.start, i.track))
    return out


def as_alone(g: StageGraph, sim: dict) -> dict:
    """The observed stages with what overlap cost them taken out (see retime)."""
    as_seen = {k: replace(st, holds_sms=0) for k, st in g.stages.items()} if g.compute_as_seen else g.stages
    observed = _graph(g, as_seen, g.plan)
    slowdown = in_situ_slowdown(observed)
    if not slowdown and not g.compute_as_seen:
        return g.stages
    # the arrangement that cost them: where the stages' kernels ran (a profiler trace), else as simulated
    before = (Schedule(observed, 1, [1.0], g.launch_us, g.observed) if g.observed else
              simulate(observed, _observed_order(g, observed.stages), **sim))
    out = dict(g.stages)
    if slowdown:
        alone = unstretch(observed, before, slowdown).stages
        out = {k: replace(st, work_us=alone[k].work_us) for k, st in out.items()}
    if g.compute_as_seen:
        # communication holds its SMs from its first kernel's start to its last's end, as the scheduler
        # holds them (the take-out and the put-back agree); its kernels' own times set its in-situ share
        held = share_beside(_held_spans(before, g.first_start) if g.observed else before, COMPUTE, COMM,
                            lambda st: g.stages[st.key].holds_sms > 0)
        sms = max((s.holds_sms for s in g.stages.values() if s.stream == COMM), default=0)
        for k, st in out.items():
            if st.stream != COMM and held.get(k):
                rate = stage_rate(g.hardware, st, sms)
                out[k] = replace(st, work_us=st.work_us * ((1 - held[k]) + held[k] * rate))
    return out


def _observed_ends(g: StageGraph) -> dict[Key, float]:
    """When each stage's last kernel ended in the observed run."""
    end: dict[Key, float] = {}
    for iv in g.observed:
        end[iv.key] = max(end.get(iv.key, iv.end), iv.end)
    return end


def observed_waits(g: StageGraph, stages: dict) -> dict[Key, set[Key]]:
    """Cross-stream waits the trace shows and the stage links lack: a compute stage whose first kernel
    started more than a launch's latency after everything the links know it waits for (its launch, the
    compute stream's previous kernel, its linked inputs) waited for something else; where a communication
    stage ended in that window, it waited for that one (a wait_event / wait_stream on it: the program's,
    which a re-time must keep). Communication waiting for compute is an SM wait (sm_waits), not this."""
    if not g.observed or not g.first_start:
        return {}
    end = _observed_ends(g)
    cp = sorted((iv for iv in g.observed if iv.track == COMPUTE), key=lambda iv: iv.end)
    c_end, c_key = np.array([iv.end for iv in cp]), [iv.key for iv in cp]
    comm = sorted((e, k) for k, e in end.items() if k in stages and stages[k].stream == COMM)
    out: dict[Key, set[Key]] = {}
    for k, st in stages.items():
        start = g.first_start.get(k)
        if st.stream != COMPUTE or start is None or any(d not in end for d in st.deps):
            continue
        j = int(np.searchsorted(c_end, start, side="right")) - 1
        while j >= 0 and c_key[j] == k:
            j -= 1
        bound = max([g.first_launch.get(k, 0.0), c_end[j] if j >= 0 else 0.0] + [end[d] for d in st.deps])
        if start - bound <= LAUNCH_LATENCY_US:
            continue
        waited = [ck for e, ck in comm if bound < e <= start and ck not in st.deps and not _needs(stages, ck, k)]
        if waited:
            out[k] = {waited[-1]}
    return out


def _needs(stages: dict, a: Key, b: Key) -> bool:
    """Stage a waits for b through the links (a wait of b on a would close a cycle)."""
    seen, todo = set(), [a]
    while todo:
        k = todo.pop()
        if k == b:
            return True
        if k not in seen and k in stages:
            seen.add(k)
            todo.extend(stages[k].deps)
    return False


def sm_waits(g: StageGraph, graph: OpGraph) -> dict[tuple[str, int], float]:
    """How long each kind of communication stage (its name and micro-batch) waited for SMs in the
    observed run: the median, over the stages of that kind that became ready (inputs done, already
    launched) just as compute started or ran, of the time from ready to their first kernel's start - a
    GEMM that took the SMs first holds them until its blocks retire. A kind with fewer than two such
    stages waits none (a profiler trace's only: tracegen's own stages start at once)."""
    if not g.observed or not g.first_start:
        return {}
    end = _observed_ends(g)
    cp = sorted((iv for iv in g.observed if iv.track == COMPUTE), key=lambda iv: iv.start)
    k0, k1 = np.array([iv.start for iv in cp]), np.array([iv.end for iv in cp])
    comm_end = sorted(e for k, e in end.items() if graph.stages.get(k) is not None and graph.stages[k].stream == COMM)
    waits: dict[tuple[str, int], list[float]] = {}
    for k, st in graph.stages.items():
        if st.stream != COMM or not st.deps or k not in g.first_start or any(d not in end for d in st.deps):
            continue
        ready, first = max(end[d] for d in st.deps), g.first_start[k]
        if g.first_launch.get(k, np.inf) > ready or first < ready:
            continue                    # launched late, or not waiting on its inputs: not an SM wait
        if any(ready < e < first for e in comm_end):
            continue                    # its stream was still busy with the communication before it
        # the compute kernel running at, or starting within SM_RACE_US of, its readiness; it waited
        # behind that kernel if it began before that kernel ended
        j = int(np.searchsorted(k0, ready + SM_RACE_US, side="right")) - 1
        if j >= 0 and k1[j] > ready and first <= k1[j] + SM_RACE_US:
            waits.setdefault((k[2], k[1]), []).append(first - ready)
    return {kind: float(np.median(w)) for kind, w in waits.items() if len(w) >= 2}


def _held_spans(sched: Schedule, first_start: dict | None = None) -> Schedule:
    """The schedule with each communication stage's intervals merged into its span: from `first_start` where
    given (an observed stage's first kernel, its preamble's included: the scheduler holds the SMs from the
    stage's start), else from its first interval."""
    spans: dict = {}
    for iv in sched.intervals:
        if iv.track == COMM and iv.key is not None:
            a, b = spans.get((iv.rank, iv.key), (min(iv.start, (first_start or {}).get(iv.key, iv.start)), iv.end))
            spans[(iv.rank, iv.key)] = (min(a, iv.start), max(b, iv.end))
    merged = [iv for iv in sched.intervals if iv.track != COMM or iv.key is None]
    merged += [Interval(r, COMM, k[2], a, b, k, COMM) for (r, k), (a, b) in spans.items()]
    return replace(sched, intervals=merged)


PEER_CAVEAT_SHARE = 0.02   # a rank that waited this share of its span for peers: say what the re-time keeps of it


def _peer_caveat(a: Analysis, g: StageGraph) -> list[str]:
    """A profiler trace's rank that waited for its peers: its stages keep those waits as they were, and a
    change that moves its collectives moves its peers' arrival too, which one rank re-timed alone cannot
    see (on the DeepEP 4 x H100 prefill captures improper -> proper overshoots the real proper run for this
    reason; bench/whatif_fidelity.py prints by how much)."""
    if a.trace.generated or g.ranks != 1:
        return []
    rank = g.observed_ranks[0]
    wait = a.peers.wait_by_rank.get(rank, 0.0)
    span = next((r["span_us"] for r in a.ranks if r["rank"] == rank), 0.0)
    if not span or wait < PEER_CAVEAT_SHARE * span:
        return []
    return [f"rank {rank} waited {wait / 1e3:.1f} ms ({100 * wait / span:.0f} % of its span) for its peers inside its "
            "collectives: kept as observed; a change that moves the collectives moves the peers too, which this "
            "re-time of one rank does not model"]


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


def whatif_trace(path: str, out: str, a: Analysis, rules: StageRules, change: Change, hardware: str | None) -> dict[str, Any]:
    """Rebuild, change, re-time, write the new trace; the spans and overlaps before and after, and the
    error of re-timing the trace with no change at all (which every what-if number carries). A profiler
    trace of several ranks (a folder without --rank) is re-timed with every rank together
    (retime_ranks): its collectives wait for their last peer in the new schedule too."""
    together = not a.trace.generated and len(a.ranks) > 1
    gs = rank_graphs(a, rules, hardware) if together else [stage_graph(a, rules, hardware)]
    waits = [sm_waits(g, _graph(g, g.stages, g.plan)) for g in gs]
    notes = _sm_wait_note(waits)
    if together:
        sched, offsets, rounds, moved = retime_ranks(gs, change, waits)
        base = summary(merged(*retime_ranks(gs, Change(), waits)[:2])) if change.describe() else None
        sched = merged(sched, offsets)
        notes += [f"ranks {', '.join(str(g.observed_ranks[0]) for g in gs)} re-timed together: each collective moves "
                  "data once its last rank joins, the observed waits for peers taken out first "
                  + (f"(settled in {rounds} rounds)" if moved <= PEER_TOLERANCE_US else
                     f"(after {rounds} rounds a wait still moves by {moved:.0f} us between two values)")
                  + "; written with rank 0's stage args, each rank's expert load as its "
                  "MLP time against rank 0's"]
        observed_ranks = [g.observed_ranks[0] for g in gs]
    else:
        g = gs[0]
        notes += _peer_caveat(a, g)
        sched = retime(g, change, waits[0])
        base = summary(retime(g, Change(), waits[0])) if change.describe() else None
        observed_ranks = g.observed_ranks
    assumptions = (gs[0].assumptions[1:] if together else gs[0].assumptions) + notes    # [0]: "rank N"
    write_trace(sched, out, {"tbo": change.launch_order or "as observed",
                             "whatif": {"source": str(Path(path).name), "changes": change.describe(),
                                        "assumptions": assumptions}})
    s = summary(sched)
    base = base or s
    before = {r["rank"]: r for r in a.ranks}
    rows = []
    for r, b in zip(s, base):
        seen = before.get(observed_ranks[r["rank"]], {})
        obs_span = seen.get("span_us")
        rows.append({"rank": observed_ranks[r["rank"]], "span_us": r["span_us"], "overlap_us": r["overlap_us"],
                     "hidden_comm_pct": r["hidden_comm_pct"], "exposed_comm_us": r["exposed_comm_us"],
                     "observed_span_us": obs_span, "observed_overlap_us": seen.get("overlap_us"),
                     "no_change_span_us": b["span_us"],
                     "no_change_error_pct": 100 * (b["span_us"] - obs_span) / obs_span if obs_span else None,
                     "observed_hidden_comm_pct": seen.get("hidden_comm_pct"),
                     "no_change_hidden_comm_pct": b["hidden_comm_pct"]})
    return {"output": out, "changes": change.describe(), "assumptions": assumptions, "ranks": rows}


def _sm_wait_note(waits: list[dict]) -> list[str]:
    """The SM waits measured (one rank's, or the first rank's of several: each rank keeps its own)."""
    w = waits[0] if waits else {}
    return (["communication ready while a GEMM runs waits for its SMs as long as it did here (per stage, median"
             + ("; each rank keeps its own, the first rank's shown" if len(waits) > 1 else "") + "): "
             + ", ".join(f"{name}({mb}) {x:.0f} us" for (name, mb), x in sorted(w.items()))] if w else [])


__all__ = ["Change", "retime", "retime_ranks", "merged", "whatif_trace", "sm_waits"]
