"""SQL over one analysis: the event table and the per-rank, per-layer and per-finding results as
DuckDB views, so users ask their own questions of a trace or a folder of ranks, as Perfetto's trace
processor lets them. DuckDB is an optional dependency (`pip install 'moe-timeline[sql]'`).

Views (times in us; `start_us` counts from the trace's first event, as every replay output does):
  events    every slice the loader kept (CPU and GPU): rank, device, cat, name, start_us, dur_us,
            stream, layer, microbatch, stage, stage_stream, klass (kernel class), step, ...
  kernels   the GPU work only (kernels, memcpys, memsets, tracegen's stage slices; not the profiler's GPU-side
            copies of CPU ranges, gpu_user_annotation, which span the work they mark)
  layers    one row per rank, step and layer: span, compute, comm, overlap, exposed communication
  findings  one row per idle piece: kind (cause), rank, layer, stage, start_us, lost_us, peer, ...
  ranks     one row per rank: span, busy, overlap, exposed, idle by cause, peer wait
  steps     one row per rank and profiler step; phase (prefill / decode / mixed) and its requests and tokens
            where the step's range says them (vLLM's iteration ranges), else NULL"""
from __future__ import annotations

from typing import Any

import pandas as pd

from tracegen.base.errors import UserError

from .analysis import Analysis
from .overlap import gpu_work
from .steps import PHASE_COUNTS

VIEWS = ("events", "kernels", "layers", "findings", "ranks", "steps")


def tables(a: Analysis) -> dict[str, pd.DataFrame]:
    """The analysis as plain tables, one per view."""
    ev = a.events.drop(columns=["extra"], errors="ignore").assign(start_us=a.events["start_us"] - a.t0_us)
    gpu = gpu_work(ev)                # the rows every busy-time figure counts, so a sum here agrees with them
    ranks = []
    for r in a.ranks:
        row: dict[str, Any] = {k: v for k, v in r.items() if not isinstance(v, (dict, list))}
        row.update({f"idle_{cause}_us": us for cause, us in a.idle_totals.get(r["rank"], {}).items()})
        row["peer_wait_us"] = float(a.peers.wait_by_rank.get(r["rank"], 0.0))
        ranks.append(row)
    rank_df = pd.DataFrame(ranks)
    findings = a.finding_table.assign(start_us=a.finding_table["start_us"] - a.t0_us) \
        if "start_us" in a.finding_table else a.finding_table
    return {"events": ev.reset_index(drop=True), "kernels": gpu.reset_index(drop=True), "layers": a.layers,
            "findings": findings, "ranks": rank_df, "steps": _with_phase_columns(a.steps)}


def _with_phase_columns(steps: pd.DataFrame) -> pd.DataFrame:
    """The steps view with its phase columns on every trace (NULL where no range said what a step ran), so
    one query runs on any trace."""
    if steps.empty or "phase" in steps:
        return steps
    n = len(steps)
    return steps.assign(phase=pd.Series([None] * n, dtype="string", index=steps.index),
                        **{k: pd.Series([None] * n, dtype="Int64", index=steps.index) for k in PHASE_COUNTS})


def query(a: Analysis, sql: str) -> pd.DataFrame:
    """Run one SQL statement over the views of `a`; a bad statement is one UserError line."""
    try:
        import duckdb
    except ImportError:
        raise UserError("replay sql needs DuckDB: pip install 'moe-timeline[sql]' (or pip install duckdb)") from None
    # nothing downloads at run time: DuckDB would fetch a missing extension (httpfs for an https:// path,
    # spatial, ...) from its server on first use
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    for name, df in tables(a).items():
        # a table with no columns (no profiler steps, no findings) still exists, empty
        con.register(name, df if len(df.columns) else pd.DataFrame({"rank": pd.Series(dtype="int64")}))
    try:
        return con.execute(sql).df()
    except duckdb.Error as exc:
        msg = str(exc).strip().splitlines()[0]
        raise UserError(f"SQL error: {msg} (views: {', '.join(VIEWS)}; `replay sql TRACE --views` lists their "
                        f"columns)") from None
    finally:
        con.close()


def describe(a: Analysis) -> str:
    """Each view with its rows and columns (name and type)."""
    out = []
    for name, df in tables(a).items():
        cols = ", ".join(f"{c} {str(t).replace('category', 'text').replace('object', 'text')}"
                         for c, t in df.dtypes.items())
        out.append(f"{name} ({len(df):,} rows): {cols}")
    return "\n".join(out)


__all__ = ["VIEWS", "tables", "query", "describe"]
