"""`replay analyze`: load -> prepare (classify, structure, steps) -> peers (one clock) -> narrow ->
per-rank analyses -> Analysis. The per-rank steps are pipeline.py's, shared with the folder path."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tracegen.base.errors import UserError

from . import peers as peer_analysis
from . import steps as step_analysis
from .analysis import Analysis
from .cache import load_cached
from .events import Trace
from .kineto import file_phase, left_out
from .pipeline import (
    Options,
    assemble,
    check_rank,
    check_step,
    in_window,
    narrow,
    no_gpu_error,
    per_rank,
    prepare,
    window_error,
)
from .structure import DEFAULT_ANNOTATION

_T = re.compile(r"^\s*([-+]?\d+(?:\.\d*)?(?:e[-+]?\d+)?)\s*(us|ms|s)?\s*$", re.I)


def analyze_one_step(path: str | Path, step: int | None = None, **kw: Any) -> tuple[Analysis, str | None]:
    """An analysis of one profiler step: `step`, or the last one with GPU work when the trace has several (stage
    times summed over steps would be several steps' worth); returns it and a note saying which. The
    steps are read from the prepared table first, so the trace is analysed once."""
    if step is not None:
        return analyze(path, step=step, **kw), f"step {step}"
    trace = kw.pop("trace", None)
    if trace is None:
        trace, _ = load_cached(path, use_cache=kw.get("use_cache", True), progress=kw.get("progress"),
                               jobs=kw.get("jobs", 1), cluster=kw.get("cluster"))
    opts = Options(**{k: v for k, v in kw.items() if k in ("taxonomy", "annotation_regex", "microbatches",
                                                           "step_regex")})
    events = prepare(trace.events, opts).events
    if kw.get("rank") is not None:
        events = events[events["rank"] == kw["rank"]]
    # the steps with GPU work (a profiler's last step is often an empty or cut-off ProfilerStep range)
    gpu = (events["device"] == "gpu").to_numpy()
    have = (sorted(int(x) for x in events.loc[gpu & (events["step"] >= 0).to_numpy(), "step"].unique())
            if "step" in events else [])
    if len(have) <= 1:
        return analyze(path, trace=trace, **kw), None
    return (analyze(path, step=have[-1], trace=trace, **kw),
            f"step {have[-1]} of steps {', '.join(map(str, have))} (--step picks another)")


def parse_window(text: str) -> tuple[float, float]:
    """'START:END' in microseconds from the trace's first event (us, ms or s may follow each number)."""
    parts = text.split(":")
    if len(parts) != 2:
        raise UserError(f"--window must be START:END (e.g. 0:5ms), got {text!r}")
    vals = []
    for p in parts:
        m = _T.match(p)
        if not m:
            raise UserError(f"--window: cannot read {p!r} as a time (a number, optionally with us, ms or s)")
        vals.append(float(m.group(1)) * {"us": 1.0, "ms": 1e3, "s": 1e6}[(m.group(2) or "us").lower()])
    if vals[1] <= vals[0]:
        raise UserError(f"--window: END must be after START, got {text!r}")
    return vals[0], vals[1]


def analyze(path: str | Path, taxonomy: str | None = None, rank: int | None = None,
            window: tuple[float, float] | None = None, use_cache: bool = True,
            annotation_regex: str = DEFAULT_ANNOTATION, microbatches: int | None = None,
            min_lost_us: float = 1.0, progress: bool | None = None, trace: Trace | None = None,
            step_regex: str = step_analysis.DEFAULT_STEP, step: int | None = None, strict: bool = False,
            jobs: int = 1, cluster: str | None = None, allow_mixed: bool = False, findings: bool = True) -> Analysis:
    """The analysis of a trace file or folder with every rank in one table. `strict`: a rank file of
    a folder that cannot be read is an error (else it is left out and reported as suspicious input).
    `jobs` / `cluster`: parse a folder's rank files on that many processes / on a Dask cluster
    (replay/parallel.py); the analysis is the same. `allow_mixed`: analyse files that look like
    different runs (refused otherwise)."""
    opts = Options(taxonomy, annotation_regex, microbatches, step_regex, step, min_lost_us, window, rank, use_cache,
                   allow_mixed, findings, file_phase(Path(path)) if Path(path).exists() else None)
    cached = False
    if trace is None:
        trace, cached = load_cached(path, use_cache=use_cache, progress=progress, jobs=jobs, cluster=cluster)
    unreadable = [b for b in trace.meta.get("skipped_files", []) if not b.get("cpu_only")]
    if strict and unreadable:
        bad = unreadable[0]
        raise UserError(f"{Path(path) / bad['file']}: {bad['error']}")
    p = prepare(trace.events, opts)
    if not p.has_gpu:
        raise no_gpu_error(path, trace.meta, p.events["cat"].value_counts())
    if step is not None:
        check_step(step, p.spans)
    events = p.events
    peers, events = peer_analysis.analyze(events, trace.meta, allow_mixed)   # all ranks, before --rank: one clock
    warnings = [("ranks_disagree", w) for w in step_analysis.disagreements(p.spans, p.ranks) + peers.warnings]
    warnings += [("left_out_file", note) for note in left_out(Path(path))]
    t0 = float(events["start_us"].min())
    events = narrow(events, rank, window, t0)
    return assemble(trace, events, p.how, [per_rank(events, trace.flows, peers, opts)], peers, warnings, opts,
                    cached, t0)


__all__ = ["Analysis", "Options", "analyze", "analyze_one_step", "parse_window", "check_rank", "check_step",
           "in_window", "narrow", "no_gpu_error", "window_error"]
