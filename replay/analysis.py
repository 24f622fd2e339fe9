"""The result of one analysis: what `replay analyze` reports, the JSON document, and what every
view reads (the whole event table when the analysis held it, else an empty frame)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tracegen.base.contract import IDLE_GROUPS, OBSERVED_IDLE_CAUSES, UNEXPLAINED

from . import peers as peer_analysis
from . import steps as step_analysis
from .events import Trace
from .findings import as_dicts, message_context
from .overlap import balancedness
from .peers import Peers

FINDINGS_PER_KIND = 20     # the --json document lists the largest this many of each kind on each rank


def _context(a: Any) -> tuple[np.ndarray, dict[Any, str]]:
    """findings.message_context of an analysis' whole finding table, computed once (every listing of its
    findings reads it); `a` is an Analysis or anything with its finding_table."""
    ctx = getattr(a, "_message_context", None)
    if ctx is None:
        ctx = a._message_context = message_context(a.finding_table)
    return ctx


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
    idle_groups: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)   # rank -> cause -> group
    analyses: dict[str, pd.DataFrame] = field(default_factory=dict)   # the pipeline's ANALYSES, by name

    @property
    def findings(self) -> list[dict[str, Any]]:
        if not hasattr(self, "_findings"):
            self._findings = as_dicts(self.finding_table, self.step_regex, _context(self))
        return self._findings

    def top_findings(self, n: int | None, per_kind: int | None = None) -> list[dict[str, Any]]:
        """The findings with the most time lost first: at most `per_kind` of each kind on each rank, at
        most `n` in all (None: no cap)."""
        t = self.finding_table
        # positions in the order sort_values("lost_us", ascending=False, kind="stable") gives (ties in
        # table order, NaN last), the rows taken only once chosen: a large folder's table is not copied
        order = np.argsort(-t["lost_us"].to_numpy(dtype=float), kind="stable")
        if per_kind is not None:
            kind = pd.factorize(t["kind"])[0][order]         # codes: no string object per row
            keys = pd.DataFrame({"kind": np.where(kind >= 0, kind, np.nan), "rank": t["rank"].to_numpy()[order]})
            order = order[(keys.groupby(["kind", "rank"], sort=False).cumcount() < per_kind).to_numpy()]
        rows = order if n is None else order[:n]
        steps, sync_call = _context(self)              # of the whole table: a listed finding says what it says there
        return as_dicts(t.iloc[rows], self.step_regex, (steps[rows], sync_call))

    def findings_by_kind(self) -> dict[str, dict[str, float]]:
        """Every finding counted, and its time lost summed, per kind (the summary beside a capped list)."""
        t = self.finding_table
        if t.empty:
            return {}
        g = t.groupby("kind", sort=True)["lost_us"]
        return {str(k): {"n": int(n), "lost_us": float(v)} for (k, n), v in zip(g.size().items(), g.sum())}

    def to_dict(self, max_findings: int | None = None, per_kind: int | None = FINDINGS_PER_KIND,
                detail: bool = True) -> dict[str, Any]:
        """The --json document; `detail` False leaves out each rank's steps and layers (the text report
        reads neither, and on a large folder they are most of the document's memory)."""
        layers = self.layers if detail else pd.DataFrame()
        ranks = []
        for r in self.ranks:
            row = {k: v for k, v in r.items() if k != "streams"}
            row["streams_busy_us"] = {str(k): v for k, v in r["streams"].items()}
            row["idle_us"] = self.idle_totals.get(r["rank"], {})
            row["idle_by_group_us"] = self.idle_groups.get(r["rank"], {})
            row["peer_wait_us"] = self.peers.wait_by_rank.get(r["rank"], 0.0)
            if detail and not self.steps.empty:
                sr = self.steps[self.steps["rank"] == r["rank"]]
                row["steps"] = [{**x, "start_us": x["start_us"] - self.t0_us}
                                for x in sr.drop(columns=["rank"]).to_dict(orient="records")]
            if not layers.empty:
                lr = layers[layers["rank"] == r["rank"]]
                row["layers"] = [{**x, "start_us": x["start_us"] - self.t0_us,
                                  "stages": [s for s in x["stages"].split(",") if s]}
                                 for x in lr.drop(columns=["rank"]).to_dict(orient="records")]
            ranks.append(row)
        findings = [{**f, "start_us": f["start_us"] - self.t0_us} for f in self.top_findings(max_findings, per_kind)]
        totals = {k: sum(t.get(k, 0.0) for t in self.idle_totals.values())
                  for k in (*OBSERVED_IDLE_CAUSES, UNEXPLAINED)}
        by_group = {c: {g: sum(t.get(c, {}).get(g, 0.0) for t in self.idle_groups.values()) for g in gs}
                    for c, gs in IDLE_GROUPS.items()}
        return {
            "sources": self.trace.sources, "generated": self.trace.generated, "structure": self.structure,
            "window_us": list(self.window) if self.window else None, "cached": self.cached, "t0_us": self.t0_us,
            "ranks": ranks, "balancedness": balancedness(self.ranks),
            "streams": self.streams.to_dict(orient="records"),
            "idle_totals_us": totals,
            "idle_by_group_us": by_group,
            "findings": findings,
            "findings_total": len(self.finding_table),
            "findings_included": len(findings),
            "findings_by_kind": self.findings_by_kind(),
            "clock": self.peers.clock,
            "stragglers": self.peers.stragglers,
            "suspicious_input": self.suspicious,
            "analyses": {name: rows.to_dict(orient="records") for name, rows in self.analyses.items()},
        }


__all__ = ["Analysis"]
