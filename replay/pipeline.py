"""The one per-rank analysis pipeline, shared by the whole-table path (`analyze()`, every rank in one
table) and the two-stage folder path (folder.py, one rank file at a time):

    prepare(events, opts)            classify, recover the structure and the steps, keep --step
    ... the cross-rank step (peers.py) puts every rank on one clock and says who waited for whom ...
    per_rank(events, flows, peers)   metrics, layers, steps, findings and input facts of the rank(s)
    assemble(results, ...)           the Analysis the report, the JSON and the views read

A new per-rank analysis is one function of the event table (rows with a `rank` column) and one line in
`ANALYSES`: `per_rank` runs it, `assemble` concatenates it across rank files in rank order, and
`replay analyze --json` lists its rows under `analyses.<name>` (tests/test_extension.py adds one)."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from tracegen.base.errors import UserError

from . import peers as peer_analysis
from . import steps as step_analysis
from . import kernels, suspicious
from .analysis import Analysis
from .events import Trace
from .findings import FINDING_COLUMNS, find
from .overlap import gpu_work, layer_metrics, rank_metrics, step_metrics, stream_layout
from .peers import Peers
from .structure import DEFAULT_ANNOTATION, recover
from .taxonomy import classify, load_taxonomy


@dataclass(frozen=True)
class Options:
    """What a user chooses for one analysis (the command line's flags)."""
    taxonomy: str | None = None
    annotation_regex: str = DEFAULT_ANNOTATION
    microbatches: int | None = None
    step_regex: str = step_analysis.DEFAULT_STEP
    step: int | None = None
    min_lost_us: float = 1.0
    window: tuple[float, float] | None = None
    rank: int | None = None
    use_cache: bool = True
    allow_mixed: bool = False        # analyse a folder whose files look like different runs
    findings: bool = True            # why compute idles (findings.py); whatif, which re-times, needs none
    file_phase: str | None = None    # every step's phase by the files' names (kineto.file_phase), where no range says


@dataclass
class Prepared:
    """A rank file (or the whole table) classified, with structure and steps: the per-rank stage's input."""
    events: pd.DataFrame
    spans: pd.DataFrame          # step spans of every step (before --step keeps one)
    how: str                     # how the structure was recovered (structure.recover)
    has_gpu: bool
    ranks: list[int]             # every rank in the file
    ranks_in_step: list[int]     # the ranks with events in the kept step(s)


def prepare(events: pd.DataFrame, opts: Options) -> Prepared:
    """Classify (taxonomy), recover layers / micro-batches / stages, assign steps, keep --step."""
    classified = classify(events, load_taxonomy(opts.taxonomy))
    spans, _ = step_analysis.find_spans(classified, opts.step_regex)  # steps first: layers restart at each
    events = step_analysis.with_spans(classified, spans)
    events, how = recover(events, opts.annotation_regex, opts.microbatches)
    has_gpu = bool((events["device"] == "gpu").any())
    if spans.empty and opts.step_regex == step_analysis.DEFAULT_STEP:
        # no step ranges: steps from the layer sequence, else from the GPU timeline's gaps; then the
        # structure again, so that layers counted from the sequence restart at every step
        _, spans = step_analysis.from_repetition(events)
        if spans.empty:
            spans = step_analysis.gap_spans(classified)
        if len(spans):
            events = step_analysis.with_gpu_spans(classified, spans)
            events, how = recover(events, opts.annotation_regex, opts.microbatches)
    ranks = sorted(int(r) for r in events["rank"].unique())
    if opts.step is not None:
        events = events[events["step"] == opts.step]
    return Prepared(events, spans, how, has_gpu, ranks, sorted(int(r) for r in events["rank"].unique()))


# the per-rank analyses beyond the built-in tables: name -> function of a rank file's (or the whole
# table's) events -> rows, one `rank` column among them
ANALYSES: dict[str, Callable[[pd.DataFrame], pd.DataFrame]] = {
    "top_kernels": kernels.top_kernels,
}


@dataclass
class RankResult:
    """One rank's (or one table's) share of the analysis, on the common clock."""
    empty: bool
    ranks: list[dict[str, Any]]
    layers: pd.DataFrame
    findings: pd.DataFrame
    totals: dict[int, dict[str, float]]
    groups: dict[int, dict[str, dict[str, float]]]     # rank -> cause -> group -> us
    steps: pd.DataFrame
    streams: pd.DataFrame
    facts: dict[str, Any] = field(default_factory=dict)
    analyses: dict[str, pd.DataFrame] = field(default_factory=dict)    # ANALYSES' rows, by name


def per_rank(events: pd.DataFrame, flows: pd.DataFrame, peers: Peers, opts: Options) -> RankResult:
    """Every per-rank analysis of the events (already narrowed to --rank / --window)."""
    gpu = gpu_work(events)          # the metrics read only the GPU work: filtered once, not once each
    if opts.findings:
        findings, totals, groups = find(events, flows, opts.min_lost_us, peers, opts.step_regex, gpu)
    else:
        findings, totals, groups = pd.DataFrame(columns=list(FINDING_COLUMNS)), {}, {}
    return RankResult(
        empty=events.empty,
        ranks=rank_metrics(gpu),
        layers=layer_metrics(gpu),
        findings=findings,
        totals=totals,
        groups=groups,
        steps=step_analysis.with_phases(peer_analysis.with_step_waits(step_metrics(gpu), peers.table),
                                        step_analysis.step_phases(events, opts.file_phase)),
        streams=stream_layout(gpu),
        facts=suspicious.facts(events, gpu),
        analyses={name: fn(events) for name, fn in ANALYSES.items()},
    )


def assemble(trace: Trace, events: pd.DataFrame, how: str, results: list[RankResult], peers: Peers,
             warnings: list[tuple[str, str]], opts: Options, cached: bool, t0: float) -> Analysis:
    """The Analysis from the per-rank results (one for the whole table, one per rank file)."""
    totals = {r: t for x in results for r, t in x.totals.items()}
    groups = {r: t for x in results for r, t in x.groups.items()}
    one = len(results) == 1          # the whole table (or a single file): its frames as they are

    def table(name: str) -> pd.DataFrame:
        return getattr(results[0], name) if one else _by_rank([getattr(x, name) for x in results])
    facts = results[0].facts if one else suspicious.merge_facts([x.facts for x in results])
    return Analysis(trace, events, how,
                    sorted((r for x in results for r in x.ranks), key=lambda r: r["rank"]),
                    table("layers"), table("streams"), table("findings"), {r: totals[r] for r in sorted(totals)},
                    opts.window, cached, t0, suspicious.entries(facts, trace.meta, warnings),
                    peers, table("steps"), opts.step_regex, {r: groups[r] for r in sorted(groups)},
                    {name: results[0].analyses[name] if one else _by_rank([x.analyses[name] for x in results])
                     for name in results[0].analyses})


def _by_rank(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Per-file tables as the whole folder's: in rank order (each file's own order kept)."""
    full = [f for f in frames if len(f)]
    if not full:
        return frames[0] if frames else pd.DataFrame()      # empty, with the columns its function gives
    if "rank" in full[0]:
        ranks = [f["rank"].to_numpy() for f in full]
        order = sorted(range(len(full)), key=lambda i: ranks[i][0])
        if (all(bool((r[1:] >= r[:-1]).all()) for r in ranks)
                and all(ranks[i][-1] < ranks[j][0] for i, j in zip(order, order[1:]))):
            # each file's rows already in rank order, the files' ranks apart (the usual folder: one rank
            # a file): the files in rank order are the sorted table, without a second copy of it
            return pd.concat([full[i] for i in order], ignore_index=True)
    out = pd.concat(full, ignore_index=True)
    return out.sort_values("rank", kind="stable").reset_index(drop=True) if "rank" in out else out


# ----------------------------------------------------------------------------- narrowing and checks
def narrow(events: pd.DataFrame, rank: int | None, window: tuple[float, float] | None,
           t0: float = 0.0) -> pd.DataFrame:
    if rank is not None:
        check_rank(rank, sorted(int(r) for r in events["rank"].unique()))
        events = events[events["rank"] == rank]
    if window is not None:
        events = in_window(events, window, t0)
        if events.empty:
            raise window_error(window)
    return events


def in_window(events: pd.DataFrame, window: tuple[float, float], t0: float) -> pd.DataFrame:
    """The events cut to [t0 + window[0], t0 + window[1])."""
    lo, hi = t0 + window[0], t0 + window[1]
    end = events["start_us"] + events["dur_us"]
    events = events[(end > lo) & (events["start_us"] < hi)].copy()
    s = events["start_us"].clip(lower=lo)
    events["dur_us"] = (events["start_us"] + events["dur_us"]).clip(upper=hi) - s
    events["start_us"] = s
    return events


def window_error(window: tuple[float, float]) -> UserError:
    return UserError(f"--window {window[0]:g}:{window[1]:g} us holds no events")


def no_gpu_error(path: str | Path, meta: dict | None = None, cats: pd.Series | None = None) -> UserError:
    """The trace has no GPU work; an Ascend (torch_npu) trace, whose NPU tasks sit under a process named
    'Ascend Hardware' with no kernel category, is told apart: replay does not read NPU timelines. `cats`
    (the events' count per category) are named, so a trace of another device (MTIA's mtia_ccp_events, a CUPTI
    profiler range) says what it holds instead; so does one of XLA's profiler (JAX, TensorFlow: processes named
    /device:GPU:0 and /host:CPU, no categories)."""
    names = " ".join(str(n) for n in ((meta or {}).get("process_names") or {}).values())
    if "Ascend" in names or "NPU" in names:
        return UserError(f"{path}: an Ascend (torch_npu) trace: its NPU tasks ('Ascend Hardware') are not a GPU "
                         "timeline replay reads (kernels of a Kineto CUDA or ROCm trace); model Ascend layers with "
                         "`tracegen --hardware ascend-910c`")
    if any(n.startswith(("/device:", "/host:")) for n in names.split()):
        return UserError(f"{path}: an XLA profiler trace (JAX / TensorFlow: processes named /device:GPU:0, /host:CPU): "
                         "its device ops carry no Kineto categories or launch correlations; replay reads PyTorch-"
                         "profiler (Kineto) traces")
    held = ""
    if cats is not None and len(cats):
        top = cats[cats > 0].sort_values(ascending=False, kind="stable")
        held = " (its events: " + ", ".join(f"{c or 'no category'} x{n:,}" for c, n in top.head(6).items()) + \
            (", ..." if len(top) > 6 else "") + ")"
    return UserError(f"{path}: no GPU events (kernels, memcpy) in the trace{held}; replay reads CUDA or ROCm "
                     "kernels: was it captured with ProfilerActivity.CUDA?")


def check_step(step: int, spans: pd.DataFrame) -> None:
    """--step must name one of the trace's profiler steps."""
    have = sorted(int(x) for x in spans["step"].unique()) if len(spans) else []
    if step not in have:
        raise UserError(f"--step {step}: " + (f"the trace has steps {', '.join(map(str, have))}" if have
                                              else "the trace has no profiler steps"))


def check_rank(rank: int, known: list[int]) -> None:
    """--rank must name one of the trace's ranks."""
    if rank not in known:
        raise UserError(f"--rank {rank}: the trace has ranks {', '.join(map(str, known))}")


RESULT_FIELDS = tuple(f.name for f in fields(RankResult))

__all__ = ["ANALYSES", "Options", "Prepared", "prepare", "RankResult", "per_rank", "assemble", "narrow", "in_window",
           "window_error", "no_gpu_error", "check_step", "check_rank", "RESULT_FIELDS"]
