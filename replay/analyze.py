"""`replay analyze`: load -> classify -> recover structure -> narrow -> metrics -> findings.
Each step is a function of the one event table (Holistic Trace Analysis style)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tracegen.base.contract import OBSERVED_IDLE_CAUSES
from tracegen.base.errors import UserError

from . import peers as peer_analysis
from . import steps as step_analysis
from . import suspicious
from .cache import load_cached
from .events import Trace
from .findings import as_dicts, find
from .overlap import balancedness, layer_metrics, rank_metrics, step_metrics, stream_layout
from .peers import Peers
from .structure import DEFAULT_ANNOTATION, recover
from .taxonomy import classify, load_taxonomy


@dataclass
class Analysis:
    trace: Trace
    events: pd.DataFrame
    structure: str
    ranks: list[dict[str, Any]]
    layers: pd.DataFrame
    streams: pd.DataFrame
    finding_table: pd.DataFrame          # one row per idle piece; `findings` has them as dicts
    idle_totals: dict[int, dict[str, float]]
    window: tuple[float, float] | None
    cached: bool
    t0_us: float = 0.0           # the trace's first event: reported times count from here
    suspicious: list[dict[str, Any]] = field(default_factory=list)   # oddities of the input (suspicious.py)
    peers: Peers = field(default_factory=peer_analysis.empty)          # who waited for whom (peers.py)
    steps: pd.DataFrame = field(default_factory=pd.DataFrame)          # per rank and profiler step
    step_regex: str = step_analysis.DEFAULT_STEP

    @property
    def findings(self) -> list[dict[str, Any]]:
        if not hasattr(self, "_findings"):
            self._findings = as_dicts(self.finding_table, self.step_regex)
        return self._findings

    def top_findings(self, n: int | None) -> list[dict[str, Any]]:
        """The findings with the most time lost first (all of them when n is None)."""
        t = self.finding_table.sort_values("lost_us", ascending=False, kind="stable")
        return as_dicts(t if n is None else t.head(n), self.step_regex)

    def to_dict(self, max_findings: int | None = None) -> dict[str, Any]:
        layers = self.layers
        ranks = []
        for r in self.ranks:
            row = {k: v for k, v in r.items() if k != "streams"}
            row["streams_busy_us"] = {str(k): v for k, v in r["streams"].items()}
            row["idle_us"] = self.idle_totals.get(r["rank"], {})
            row["peer_wait_us"] = self.peers.wait_by_rank.get(r["rank"], 0.0)
            if not self.steps.empty:
                sr = self.steps[self.steps["rank"] == r["rank"]]
                row["steps"] = [{**x, "start_us": x["start_us"] - self.t0_us}
                                for x in sr.drop(columns=["rank"]).to_dict(orient="records")]
            if not layers.empty:
                lr = layers[layers["rank"] == r["rank"]]
                row["layers"] = [{**x, "start_us": x["start_us"] - self.t0_us,
                                  "stages": [s for s in x["stages"].split(",") if s]}
                                 for x in lr.drop(columns=["rank"]).to_dict(orient="records")]
            ranks.append(row)
        findings = [{**f, "start_us": f["start_us"] - self.t0_us} for f in self.top_findings(max_findings)]
        totals = {k: sum(t.get(k, 0.0) for t in self.idle_totals.values())
                  for k in (*OBSERVED_IDLE_CAUSES, "unexplained")}
        return {
            "sources": self.trace.sources, "generated": self.trace.generated, "structure": self.structure,
            "window_us": list(self.window) if self.window else None, "cached": self.cached, "t0_us": self.t0_us,
            "ranks": ranks, "balancedness": balancedness(self.ranks),
            "streams": self.streams.to_dict(orient="records"),
            "idle_totals_us": totals,
            "findings": findings,
            "findings_total": len(self.finding_table),
            "clock": self.peers.clock,
            "stragglers": self.peers.stragglers,
            "suspicious_input": self.suspicious,
        }


_T = re.compile(r"^\s*([-+]?\d+(?:\.\d*)?(?:e[-+]?\d+)?)\s*(us|ms|s)?\s*$", re.I)


def analyze_one_step(path: str | Path, step: int | None = None, **kw: Any) -> tuple[Analysis, str | None]:
    """An analysis of one profiler step: `step`, or the last one when the trace has several (stage
    times summed over steps would be several steps' worth); returns it and a note saying which."""
    a = analyze(path, step=step, **kw)
    if step is not None:
        return a, f"step {step}"
    have = sorted(int(x) for x in a.events.loc[a.events["step"] >= 0, "step"].unique()) if "step" in a.events else []
    if len(have) <= 1:
        return a, None
    kw.pop("use_cache", None)
    return (analyze(path, step=have[-1], trace=a.trace, **kw),
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


def prepare(events: pd.DataFrame, taxonomy: str | None, annotation_regex: str,
            microbatches: int | None) -> tuple[pd.DataFrame, str, bool]:
    """A loaded table classified and its structure recovered: (events, how, whether it has GPU work)."""
    events = classify(events, load_taxonomy(taxonomy))
    events, how = recover(events, annotation_regex, microbatches)
    return events, how, bool((events["device"] == "gpu").any())


def no_gpu_error(path: str | Path) -> UserError:
    return UserError(f"{path}: no GPU events (kernels, memcpy) in the trace; was it captured with "
                     "ProfilerActivity.CUDA?")


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


def analyze(path: str | Path, taxonomy: str | None = None, rank: int | None = None,
            window: tuple[float, float] | None = None, use_cache: bool = True,
            annotation_regex: str = DEFAULT_ANNOTATION, microbatches: int | None = None,
            min_lost_us: float = 1.0, progress: bool | None = None, trace: Trace | None = None,
            step_regex: str = step_analysis.DEFAULT_STEP, step: int | None = None, strict: bool = False,
            jobs: int = 1, cluster: str | None = None) -> Analysis:
    """`strict`: a rank file of a folder that cannot be read is an error (else it is left out and
    reported as suspicious input). `jobs` / `cluster`: parse a folder's rank files on that many
    processes / on a Dask cluster (replay/parallel.py); the analysis is the same."""
    cached = False
    if trace is None:
        trace, cached = load_cached(path, use_cache=use_cache, progress=progress, jobs=jobs, cluster=cluster)
    if strict and trace.meta.get("skipped_files"):
        bad = trace.meta["skipped_files"][0]
        raise UserError(f"{Path(path) / bad['file']}: {bad['error']}")
    events, how, has_gpu = prepare(trace.events, taxonomy, annotation_regex, microbatches)
    if not has_gpu:
        raise no_gpu_error(path)
    events, spans = step_analysis.assign(events, step_regex)
    all_ranks = sorted(int(r) for r in events["rank"].unique())
    if step is not None:
        check_step(step, spans)
        events = events[events["step"] == step]
    if trace.generated:      # tracegen's idle causes are its own (no peer cause): the round trip stays exact
        peers = peer_analysis.empty("tracegen's clock")
    else:
        peers, events = peer_analysis.analyze(events, trace.meta)   # all ranks, before --rank narrows: one clock
    warnings = [("ranks_disagree", w) for w in step_analysis.disagreements(spans, all_ranks) + peers.warnings]
    t0 = float(events["start_us"].min())
    events = narrow(events, rank, window, t0)
    ranks = rank_metrics(events)
    layers = layer_metrics(events)
    findings, totals = find(events, trace.flows, min_lost_us, peers, step_regex)
    steps = peer_analysis.with_step_waits(step_metrics(events), peers.table)
    return Analysis(trace, events, how, ranks, layers, stream_layout(events), findings, totals, window, cached,
                    t0, suspicious.check(events, trace.meta, warnings), peers, steps, step_regex)
