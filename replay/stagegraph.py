"""Observed trace -> stage graph: the two-batch-overlap stages a trace ran, with each stage's
duration as observed, its stream, kernel count and CPU blocking, the order the CPU launched them
in, and the assumptions made where the trace does not say. `replay whatif` re-times this graph.

tracegen's own traces carry each stage's full-SM work, latency, SM use, kernels and blocking in
their args and the model, hardware and plan in otherData, so nothing is assumed. For profiler
traces a stage's duration is the busy time of its kernels (stage labels from annotations such as
L3:ATTN(0), see replay/data/stages.toml), and the rest is inferred; `assumptions` says how."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from tracegen.base.contract import CAT_LAUNCH, COMM, COMPUTE, STAGE_STREAM
from tracegen.base.errors import UserError
from tracegen.catalog import (
    Hardware,
    Model,
    hardware_of_device,
    load_hardware,
    load_model,
)
from tracegen.cost import vector_rate
from tracegen.opgraph import Stage
from tracegen.base.backends import IBGDA, NORMAL
from tracegen.plan import Plan
from tracegen.preset import Preset, load_preset
from tracegen.schedule import Interval

from .analysis import Analysis
from .beside import beside_shares, combined_rate, kernel_keys, kernel_rates
from .compare import label_stages, refuse_overlapping, refuse_training
from .events import text
from .stagerules import StageRules
from .hostview import host_view
from .intervals import coverage, intersection, length, union
from .generated import generated_run

if TYPE_CHECKING:
    import pandas as pd

Key = tuple[int, int, str]


@dataclass
class StageGraph:
    """One rank's stages (or every rank's template, for a generated trace) and what they ran on."""
    stages: dict[Key, Stage]
    first_launch: dict[Key, float]      # when the CPU first launched each stage (observed order)
    launch_us: float                    # CPU cost per kernel launch
    loads: list[float]                  # per-rank expert load factors
    ranks: int
    model: Model
    hardware: Hardware
    plan: Plan
    assumptions: list[str] = field(default_factory=list)
    observed_ranks: list[int] = field(default_factory=list)   # the observed rank each simulated rank stands for
    compute_as_seen: bool = False       # compute stages last what they took, SMs lent to communication included
    observed: list[Interval] = field(default_factory=list)   # profiler trace: where each stage's kernels ran
                                                              # (rank 0, the trace's clock, as first_launch)
    first_start: dict[Key, float] = field(default_factory=dict)   # profiler trace: each stage's first kernel
    preset: Preset = field(default_factory=lambda: load_preset("default"))   # as the trace was generated


def stage_graph(a: Analysis, rules: StageRules, hardware: str | None = None) -> StageGraph:
    """The stage graph of an analysed trace (one rank for a profiler trace: pick it with --rank, or take
    every rank's with rank_graphs)."""
    ranks = _gpu_ranks(a)
    if not ranks:
        raise UserError("no GPU work to re-time in the analysed part of the trace (--rank, --step, --window)")
    if not a.trace.generated and len(ranks) != 1:
        raise UserError(f"what-if of a profiler trace takes one rank: pick one of ranks "
                        f"{', '.join(map(str, ranks))} with --rank")
    g = _generated(a) if a.trace.generated else _observed(a, rules, hardware, ranks[0])
    return _checked(g)


def rank_graphs(a: Analysis, rules: StageRules, hardware: str | None = None) -> list[StageGraph]:
    """Each rank's stage graph of a profiler trace's folder (or file) of several ranks, on the common clock
    the analysis put them on (replay whatif re-times them together: whatif.retime_ranks)."""
    return [_checked(_observed(a, rules, hardware, r)) for r in _gpu_ranks(a)]


def _gpu_ranks(a: Analysis) -> list[int]:
    return [int(r) for r in sorted(a.events.loc[a.events["device"] == "gpu", "rank"].unique())]


def _checked(g: StageGraph) -> StageGraph:
    if not g.stages:
        raise UserError("no stages with known layer, micro-batch and stage in the trace: a what-if needs "
                        "tracegen's args or stage annotations (see replay/data/stages.toml)")
    return g


def _generated(a: Analysis) -> StageGraph:
    """Stages of rank 0 from tracegen's args (the other ranks differ only by their load factor)."""
    t = generated_run(a.trace)
    ev = a.events
    if t.ranks > 1 and ev["rank"].nunique() < t.ranks:
        raise UserError(f"--rank: a tracegen trace is re-timed on all its {t.ranks} ranks together (they wait "
                        "for each other in every all-to-all); leave --rank out")
    gpu = ev[(ev["rank"] == 0) & (ev["device"] == "gpu") & (ev["layer"] >= 0)]
    cpu = ev[(ev["rank"] == 0) & (ev["cat"] == CAT_LAUNCH)]
    first_launch, kernels = {}, {}
    for r in cpu.itertuples():
        k = (int(r.layer), int(r.microbatch), str(r.stage))
        first_launch[k] = float(r.start_us)
        x = json.loads(r.extra) if isinstance(r.extra, str) else {}
        kernels[k] = int(x.get("kernels") or 1)
    blocking_backend = t.hardware.backend(t.plan.comm).cpu_block_us > 0
    stages = {}
    for r in gpu.itertuples():
        x = json.loads(r.extra) if isinstance(r.extra, str) else {}
        load = x.get("load_factor") or 1.0
        stream = COMM if str(r.stage_stream) == COMM else COMPUTE
        key = (int(r.layer), int(r.microbatch), str(r.stage))
        blocking = bool(x.get("blocking")) if "blocking" in x else (key[2] == "DISPATCH" and blocking_backend)
        stages[key] = Stage(key[0], key[1], key[2], stream, float(r.work_us) / load, float(x.get("latency_us") or 0.0),
                            float(x.get("post_us") or 0.0), blocking and stream == COMM, int(x.get("sms") or 0),
                            kernels.get(key, 1), float(r.flops or 0.0) / load, float(r.bytes or 0.0) / load)
    return StageGraph(stages, first_launch, t.launch_us, list(t.load_factors), t.ranks, t.model, t.hardware, t.plan,
                      [f"a tracegen trace: {t.model.name} on {t.hardware.name}, stages, loads and launch costs "
                       "from its args and otherData (nothing assumed)"]
                      + ([f"compute at the clock the trace's power draw set (throttle {t.hardware.throttle:.3f}); "
                          "a change that alters the draw does not re-time it (tracegen/power.py)"]
                         if t.hardware.throttle else []), list(range(t.ranks)), preset=t.preset)


def _observed(a: Analysis, rules: StageRules, hardware: str | None, rank: int) -> StageGraph:
    """Stages of one rank of a profiler trace: busy time, first launch, kernels, blocking."""
    alone = len(_gpu_ranks(a)) == 1
    assumptions = [f"rank {rank} only, re-timed alone (other ranks' waits are not modelled)" if alone else
                   f"rank {rank}"]
    hw, said = _hardware(a, hardware)
    assumptions.append(said)
    refuse_training(a)
    refuse_overlapping(a, rank)
    g = label_stages(a, rules)
    g = g[g["rank"] == rank]
    if g.empty:
        raise UserError(f"no stage of rank {rank} could be labelled (structure: {a.structure}): a what-if needs "
                        "stage annotations such as L3:ATTN(0) or tracegen's args (see replay/data/stages.toml)")
    g = _one_microbatch_or_refuse(g, rank, a.structure)
    ev = a.events[a.events["rank"] == rank]
    _refuse_unstaged_comm(ev, g, rank)
    assumptions += _comm_in_compute_stages(g)
    launch = ev[ev["launch"] & (ev["correlation"] >= 0)]
    lend = dict(zip(launch["correlation"], launch["start_us"] + launch["dur_us"]))
    launch_us = float(np.median(launch["dur_us"])) if len(launch) else 5.0
    assumptions.append("CPU time per stage as observed (from the previous stage's last launch to its own, less "
                       "the waits the scheduler models itself)" if len(launch) else
                       "CPU launch cost 5 us per kernel: the trace has no launch calls")
    lo, hi = float(ev["start_us"].min()), float((ev["start_us"] + ev["dur_us"]).max())
    hv = host_view(ev[ev["device"] == "cpu"], ev[ev["device"] == "gpu"], lo, hi)     # what analyze measures
    b0, b1 = union(*(np.concatenate(x) for x in zip(hv.blocked("sync"), hv.blocked("dispatch"))))
    stages, first_launch, last_launch, first_start = {}, {}, {}, {}
    stand_ins: set[str] = set()      # kernels of communication stages that the taxonomy does not call communication
    seen: list[Interval] = []
    for (layer, mb, st), part in g.groupby(["layer", "microbatch", "cstage"], sort=True):
        part = part.sort_values("start_us")
        s0, e0 = part["start_us"].to_numpy(), (part["start_us"] + part["dur_us"]).to_numpy()
        span = float(e0.max() - s0.min())      # its span on its stream: with the gaps between its kernels
        busy = float(length(*union(s0, e0)))
        launched = [lend[c] for c in part["correlation"] if c in lend]
        t_launch = min(launched) if launched else float(s0.min())
        stream = STAGE_STREAM[st]
        lat, blocked = 0.0, False
        if stream == COMM and st == "DISPATCH":
            # the CPU waited (a synchronising call, or DeepEP's spin on the received counts, as
            # hostview.py finds them) between this stage's first and last launch: it waited for the
            # counts, i.e. the stage's first kernel, before it could launch the rest
            t_last = max(launched) if launched else t_launch
            hit = (b1 > t_launch) & (b0 < t_last)
            blocked = bool(np.any(hit))
            if blocked:     # the CPU was let go when the counts came: that long after the stage began on the GPU
                lat = float(np.clip(min(float(b1[hit].max()), t_last) - s0.min(), 0.0, e0.max() - s0.min()))
        key = (int(layer), int(mb), st)
        if stream == COMM:           # the comm stage lasts its span (its latency: until the CPU was let go)
            work, extra = max(span - lat, 0.0), {}
        else:                        # compute: its busy time, plus the gaps between its kernels
            work, extra = busy, ({"gap_us": span - busy} if span > busy else {})
        # a communication stage is drawn (and measured) where its communication kernels ran: the small
        # compute kernels DeepEP runs on its stream (layouts, fills) take stream time but are not transfer
        drawn = (part["klass"] == "comm").to_numpy() if stream == COMM else np.ones(len(part), dtype=bool)
        if not drawn.any():
            drawn = np.ones(len(part), dtype=bool)      # (the comparison's array may be read-only)
            if stream == COMM:
                stand_ins.update(str(x) for x in part["name"].unique()[:2])
        stages[key] = Stage(key[0], key[1], st, stream, work, lat, 0.0, blocked, 0, len(part),
                            segments=_segments(s0[drawn], e0[drawn], float(s0.min()), float(e0.max())), **extra)
        # compute: each kernel (sm_waits needs the one a communication kernel waited behind); comm: its busy time
        u0, u1 = union(s0[drawn], e0[drawn]) if stream == COMM else (s0, e0)
        seen += [Interval(0, stream, st, float(x), float(y), key, stream) for x, y in zip(u0, u1)]
        first_launch[key] = t_launch
        first_start[key] = float(s0.min())
        last_launch[key] = max(launched) if launched else t_launch
    stages = _with_cpu_time(stages, first_launch, last_launch, (b0, b1))
    if stand_ins:
        assumptions.append(f"communication stages without a communication kernel ({', '.join(sorted(stand_ins)[:3])}) "
                           "re-timed as communication; the observed hidden share counts communication kernels only "
                           "(class them with --taxonomy to compare the two)")
    plan, stages, more = _plan_of(stages, hw)
    stages, measured = _beside_rates(g, stages, hw)
    return StageGraph(stages, first_launch, launch_us, [1.0], 1, load_model(None), hw, plan, assumptions + more + measured,
                      [rank], compute_as_seen=True, observed=seen, first_start=first_start)


def _beside_rates(labelled: pd.DataFrame, stages: dict, hw: Hardware) -> tuple[dict, list[str]]:
    """Each compute stage's loss per SM held beside SM-holding communication, as its ops show it in the trace
    (replay/beside.py), and the assumption it makes."""
    held = max((st.holds_sms for st in stages.values() if st.stream == COMM), default=0)
    if not held:
        return stages, []
    stream = labelled["cstage"].astype(str).map(STAGE_STREAM)
    comm = labelled[(stream == COMM).to_numpy() & (labelled["klass"] == "comm").to_numpy()]
    comp = labelled[(stream == COMPUTE).to_numpy()]
    s, d = comp["start_us"].to_numpy(float), comp["dur_us"].to_numpy(float)
    # an op's rate is read where communication kernels ran (what holds the SMs); the re-time's take-out and
    # put-back hold them over each stage's span (whatif._held_spans), as the scheduler does
    c0 = comm["start_us"].to_numpy(float)
    share = beside_shares(s, s + d, c0, c0 + comm["dur_us"].to_numpy(float))
    ops = kernel_keys(comp)
    rates = kernel_rates(ops, d, share)
    if not rates:
        return stages, []
    linear = vector_rate(hw, 1.0, 0.0, held)
    out = dict(stages)
    for (layer, mb, st), idx in comp.groupby(["layer", "microbatch", "cstage"], sort=False, observed=True).indices.items():
        key = (int(layer), int(mb), str(st))
        if key in out:
            out[key] = replace(out[key], sm_loss=(1.0 - combined_rate(ops[idx], d[idx], rates, linear)) / held)
    slowest = min(rates, key=rates.get)
    return out, [f"compute beside communication at the rates its own ops ran at there: {len(rates)} ops seen "
                 f"alone and beside (slowest {slowest[:48]}: x{rates[slowest]:.2f}), the rest at the SM share "
                 f"x{linear:.3f} (replay/beside.py)"]


def _one_microbatch_or_refuse(labelled: pd.DataFrame, rank: int, structure: str) -> pd.DataFrame:
    """Stages need a micro-batch: none known anywhere is one micro-batch (0); known for some kernels
    and not others (the communication sequence gave its kernels theirs, the compute between has none)
    cannot be split into micro-batches, so it is refused rather than re-timed as something else."""
    unknown = (labelled["microbatch"] < 0).to_numpy()
    if not unknown.any():
        return labelled
    if unknown.all():
        return labelled.assign(microbatch=0)
    stages = sorted(set(labelled.loc[unknown, "cstage"].astype(str)))
    raise UserError(f"rank {rank}: {int(unknown.sum())} kernels of known layers ({', '.join(stages)}) have no "
                    f"micro-batch while others have one (structure: {structure}), so their stages cannot be "
                    "re-timed per micro-batch: a what-if needs micro-batch annotations such as L3:ATTN(0) "
                    "(see replay/data/stages.toml)")


UNSTAGED_COMM_SHARE = 0.1     # communication in no stage past this share of the rank's: the re-time would drop it


def _refuse_unstaged_comm(ev, labelled, rank: int) -> None:
    """A what-if re-times stages; communication kernels that belong to none (an all-reduce beside GEMMs
    with no stage ranges, say) would vanish from the new schedule and its overlap with them: refused."""
    comm = ev[(ev["device"] == "gpu") & (ev["klass"] == "comm")]
    total = float(comm["dur_us"].sum())
    staged = float(labelled.loc[labelled["klass"] == "comm", "dur_us"].sum())
    if total > 0 and total - staged > UNSTAGED_COMM_SHARE * total:
        names = ", ".join(sorted(comm["subclass"].astype(str).unique())[:3])
        raise UserError(f"rank {rank}: {(total - staged) / 1e3:.3f} ms of its {total / 1e3:.3f} ms of communication "
                        f"({names}) belongs to no stage, so a re-time would drop it: whatif re-times the stages of "
                        "two-batch overlap (name them: replay/data/stages.toml); `replay analyze` measures its overlap")


def _hardware(a: Analysis, hardware: str | None) -> tuple[Hardware, str]:
    """The hardware a re-time runs on (--hardware, else the trace's device name) and how it was chosen."""
    if hardware:
        hw = load_hardware(hardware)
        return hw, f"hardware {hw.name} (--hardware)"
    device = a.trace.device_name
    hw = hardware_of_device(device)
    return hw, f"hardware {hw.name}, from the trace's device name {device!r} (set --hardware)"


def _comm_in_compute_stages(g: pd.DataFrame) -> list[str]:
    """What a re-time assumes of communication kernels labelled with a compute stage (NCCL's all-to-all
    launched inside an nn.Module MoE block: stage MLP): they are re-timed as that stage's work."""
    folded = g[(g["klass"] == "comm") & g["cstage"].map(lambda st: STAGE_STREAM.get(st) == COMPUTE)]
    if not len(folded):
        return []
    return [f"{len(folded)} communication kernels ({folded['dur_us'].sum() / 1e3:.3f} ms: "
            f"{', '.join(sorted(set(text(folded['subclass']))))}) ran inside compute stages "
            f"({', '.join(sorted(set(folded['cstage'])))}): re-timed as part of those stages, so their overlap with "
            "compute is not modelled (name them as DISPATCH / COMBINE stages to re-time it)"]


def _plan_of(stages: dict, hw: Hardware) -> tuple[Plan, dict, list[str]]:
    """What the observed stages say of the plan (phase, micro-batches, backend), the stages with the SMs
    their communication holds, and the assumptions that makes."""
    phase = "decode" if any(k[2] in ("ATTN-0", "ATTN-1") for k in stages) else "prefill"
    n_mb = max((k[1] for k in stages), default=0) + 1
    blocking = any(s.blocking for s in stages.values())
    comm = NORMAL if blocking else IBGDA
    sms = hw.backend(comm).sms if comm in hw.comm else 0     # its kernels hold SMs: compute beside them slows,
    stages = {k: (replace(st, holds_sms=sms, in_situ=sms > 0) if st.stream == COMM else st)   # and they slow too
              for k, st in stages.items()}
    plan = Plan(phase=phase, batch=1, seq_len=1, microbatches=n_mb, comm=comm)
    said = [f"{n_mb} micro-batch{'es' if n_mb > 1 else ''} (from the stage labels)",
            "stage durations as observed (busy time of their kernels); the model and batch are not used "
            "(the new trace's otherData names DeepSeek-V3, batch 1 as placeholders)"]
    if not any(st.stream == COMM for st in stages.values()):       # no backend, phase or SM share to assume
        return plan, stages, said + ["no communication stage: no all-to-all backend assumed"]
    return plan, stages, [
        f"phase {phase} ({'ATTN-0/ATTN-1' if phase == 'decode' else 'no ATTN-0/ATTN-1'} stages seen), " + said[0],
        f"backend {comm}: {'the CPU stalled inside a dispatch' if blocking else 'no dispatch stalled the CPU'}",
        said[1],
        f"{comm} communication holds {sms} SMs while in flight ({hw.name} catalog)"
        + (f" and runs {hw.in_situ.slowdown:g} x its share beside compute slower than alone (hardware in_situ): "
           "both are taken out of the observed times and re-applied where the new schedule overlaps them"
           if sms and hw.in_situ else "")]


def _segments(s0: np.ndarray, e0: np.ndarray, lo: float | None = None, hi: float | None = None,
              most: int = 64) -> tuple[tuple[float, float], ...]:
    """Where a stage's kernels ran, as shares (0-1) of its span [lo, hi] (default: theirs); at most `most`
    pieces (the shortest gaps closed first), so that a re-timed trace draws the stage's busy and idle
    stretches as they were. Empty: busy over the whole span."""
    u0, u1 = union(s0, e0)
    lo = float(u0[0]) if lo is None else lo
    span = (float(u1[-1]) if hi is None else hi) - lo
    if span <= 0 or (len(u0) < 2 and u0[0] <= lo and u1[-1] >= lo + span):
        return ()
    while len(u0) > most:
        g = u0[1:] - u1[:-1]
        i = int(np.argmin(g))
        u1 = np.delete(u1, i)
        u0 = np.delete(u0, i + 1)
    return tuple((float((a - lo) / span), float((b - lo) / span)) for a, b in zip(u0, u1))


def _with_cpu_time(stages: dict, first: dict, last: dict, waits: tuple[np.ndarray, np.ndarray]) -> dict:
    """Each stage with the CPU time it took to launch, as observed: in launch order, from the previous
    stage's last launch to its own last launch (the first stage: its own launches), less the waits the
    scheduler models itself - a blocking dispatch's, between its first and last launch. Any other wait
    (a second spin after the dispatch's last launch, a sync) stays in the CPU time: the scheduler has no
    cause to end it, so it is kept as it lasted."""
    w0, w1 = waits
    spans = [(first[k], last[k]) for k, st in stages.items() if st.blocking and last[k] > first[k]]
    if len(w0) and spans:
        s0, s1 = union(np.array([a for a, _ in spans]), np.array([b for _, b in spans]))
        w0, w1 = intersection(union(w0, w1), (s0, s1))
    else:
        w0, w1 = np.zeros(0), np.zeros(0)
    F = coverage(w0, w1) if len(w0) else (lambda t: np.zeros_like(np.asarray(t, dtype=float)))
    order = sorted(stages, key=lambda k: (first[k], k))
    out, prev = {}, None
    for k in order:
        start = first[k] if prev is None else last[prev]
        end = max(last[k], start)
        waited = float(F(np.array([end]))[0] - F(np.array([start]))[0])
        first_at = min(max(first[k], start), end)
        waited_first = float(F(np.array([first_at]))[0] - F(np.array([start]))[0])
        cpu = max(end - start - waited, 0.0)
        after = 0.0
        if stages[k].blocking and len(w0):      # its launches after the wait: the scheduler puts them there
            hit = (w1 > start) & (w0 < end)
            if hit.any():
                after = min(max(end - float(w1[hit].max()), 0.0), cpu)
        out[k] = replace(stages[k], cpu_us=cpu, cpu_first_us=min(max(first_at - start - waited_first, 0.0), cpu),
                         cpu_after_us=after)
        prev = k
    return out


__all__ = ["rank_graphs", "StageGraph", "stage_graph"]
