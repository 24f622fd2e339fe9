"""A folder of rank files analysed in two stages, so memory is bounded by the ranks in flight, not
by the folder. Stage one, per rank file: load, classify, recover the structure and the steps,
reduce the file to the compact tables the cross-rank analysis needs (peers.kernel_table: its
collective kernels with their launch ends and compute coverage; its first kernel per step; its
step spans), and park the classified table as an Arrow IPC file (uncompressed: written and read
at memory speed, a fifth of Parquet's time; the folder lives only as long as the command).
Between the stages, on the compact tables only: rank moves for files that claim one rank, the
peer matching, clock offsets, waits and stragglers (peers.cross), the time origin. Stage two, per rank file again: read the parked
table, put it on the common clock, and compute the rank's metrics, layers, steps, findings (with
its own rows of the peer table) and input checks. The results are assembled into the same
Analysis `analyze()` builds from the whole table, without its event table: `replay analyze DIR`
prints the same JSON. Both stages run here, on `--jobs N` processes, or on a Dask cluster
(parallel.py); parked tables go to a temporary folder under the cache folder (on a cluster it
must be a path every worker can read: MOE_TIMELINE_CACHE on a shared filesystem)."""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from tracegen.base.errors import UserError

from . import headstart, parallel
from . import peers as peer_analysis
from . import steps as step_analysis
from .analysis import Analysis
from .cache import cache_dir, load_file_cached
from .events import Trace, folder_progress, merge_meta, rank_hints, rank_shifts, split_results, trace_files
from .kineto import file_phase, left_out
from .peers import Peers
from .pipeline import (
    Options,
    RankResult,
    assemble,
    check_rank,
    check_step,
    in_window,
    no_gpu_error,
    per_rank,
    prepare,
    window_error,
)


def stage_one(path: str, hint: int | None, opts: Options, park: str, index: int,
              early: str | None = None) -> dict[str, Any] | str:
    """One rank file reduced to what the cross-rank stage needs, its table parked (Arrow IPC); or
    the one-line reason it could not be read. `early`: the folder of a head start's parses
    (headstart.py), where this file may already be parsed."""
    try:
        trace, cached = load_file_cached(path, hint, opts.use_cache,
                                         parsed=partial(headstart.take, early, index) if early else None)
    except UserError as exc:
        return str(exc)
    p = prepare(trace.events, opts)
    events = p.events
    ev_p, fl_p = Path(park) / f"{index}.events.arrow", Path(park) / f"{index}.flows.arrow"
    _park(events, ev_p)
    _park(trace.flows, fl_p)
    return {"ranks": p.ranks, "ranks_in_step": p.ranks_in_step, "how": p.how,
            "has_gpu": p.has_gpu, "cats": None if p.has_gpu else events["cat"].value_counts(), "spans": p.spans, "kernels": peer_analysis.kernel_table(events),
            "first": peer_analysis.first_kernels(events),
            "start_min": {int(r): float(v) for r, v in events.groupby("rank")["start_us"].min().items()},
            "meta": trace.meta, "cached": cached, "events": str(ev_p), "flows": str(fl_p)}


def stage_two(events_path: str, flows_path: str, shift: int, offsets: dict[int, float], peer_rows: pd.DataFrame,
              clock: str, opts: Options, t0: float) -> RankResult:
    """One rank file's share of the analysis, on the common clock."""
    events, flows = _unpark(events_path), _unpark(flows_path)
    if shift:
        events["rank"] = events["rank"] + shift
        flows["rank"] = flows["rank"] + shift
    if offsets:
        events = events.assign(start_us=events["start_us"].to_numpy()
                               - events["rank"].map(offsets).fillna(0.0).to_numpy())
    if opts.rank is not None:
        events = events[events["rank"] == opts.rank]
    if opts.window is not None:
        events = in_window(events, opts.window, t0)
    return per_rank(events, flows, Peers(peer_rows, {}, [], clock), opts)


def analyze_folder(path: str | Path, opts: Options, strict: bool = False, jobs: int = 1, cluster: str | None = None,
                   progress: bool | None = None, early: headstart.HeadStart | None = None) -> Analysis:
    """The Analysis of a folder of rank files, as analyze() gives it, without the event table
    (`early`: a head start parsing the folder's last files since before the imports)."""
    files = trace_files(Path(path))
    opts = replace(opts, file_phase=file_phase(Path(path)))
    hints = rank_hints(files)
    root = cache_dir() if cluster else Path(tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    park = Path(tempfile.mkdtemp(prefix="moe-timeline-ranks-", dir=root))
    try:
        with parallel.Runner(jobs, cluster, len(files)) as runner:
            bar, done = folder_progress(files, progress)
            if early is not None:
                early.stop()
            try:
                first = runner.map(stage_one, [(str(f.resolve()) if cluster else str(f), hints[i], opts, str(park), i,
                                                early.folder if early is not None and not cluster else None)
                                               for i, f in enumerate(files)], done)
            finally:
                bar.close()
            parts, kept, skipped = split_results(path, files, first, strict)
            shifts, collisions = rank_shifts(kept, [set(p["ranks"]) for p in parts])
            meta = merge_meta([p["meta"] for p in parts], kept, skipped, collisions)
            for p, shift in zip(parts, shifts):
                if shift:
                    _move(p, shift)
            trace = Trace(pd.DataFrame(), pd.DataFrame(), meta, [str(f) for f in kept])
            peers, warnings, t0 = _across(path, parts, meta, opts)
            calls = [(p["events"], p["flows"], shift, {r: o for r, o in peers.offsets_us.items() if r in p["ranks_in_step"]},
                      _rows_of(peers, p["ranks_in_step"]), peers.clock, opts, t0)
                     for p, shift in zip(parts, shifts) if opts.rank is None or opts.rank in p["ranks_in_step"]]
            second = runner.map(stage_two, calls)
    finally:
        shutil.rmtree(park, ignore_errors=True)
    if opts.window is not None and all(x.empty for x in second):
        raise window_error(opts.window)
    return assemble(trace, pd.DataFrame(), parts[0]["how"], second, peers, warnings, opts,
                    all(p["cached"] for p in parts), t0)


def _park(frame: pd.DataFrame, path: Path) -> None:
    """A rank's table written for stage two (Arrow IPC, the pandas dtypes kept in its metadata)."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def _unpark(path: str) -> pd.DataFrame:
    """A table _park wrote, read whole into memory (the park folder is removed after stage two)."""
    with pa.OSFile(path, "rb") as source:
        return pa.ipc.open_file(source).read_all().to_pandas()


def _across(path: str | Path, parts: list[dict[str, Any]], meta: dict[str, Any], opts: Options
            ) -> tuple[Peers, list[tuple[str, str]], float]:
    """The cross-rank step on the files' compact tables: the folder-wide checks, who waited for
    whom (peers.cross), the warnings, and the time origin on the common clock."""
    if not any(p["has_gpu"] for p in parts):
        raise no_gpu_error(path, meta, pd.concat([p["cats"] for p in parts]).groupby(level=0).sum())
    spans = pd.concat([p["spans"] for p in parts], ignore_index=True)
    if opts.step is not None:
        check_step(opts.step, spans)
    in_step = sorted({r for p in parts for r in p["ranks_in_step"]})
    firsts = [p["first"] for p in parts if len(p["first"])]
    peers = peer_analysis.cross(pd.concat([p["kernels"] for p in parts], ignore_index=True),
                                pd.concat(firsts) if firsts else pd.Series(dtype=float), meta, in_step,
                                opts.allow_mixed)
    all_ranks = sorted({r for p in parts for r in p["ranks"]})
    warnings = [("ranks_disagree", w) for w in step_analysis.disagreements(spans, all_ranks) + peers.warnings]
    warnings += [("left_out_file", note) for note in left_out(Path(path))]
    if opts.rank is not None:
        check_rank(opts.rank, in_step)
    off = peers.offsets_us
    t0 = min(v - off.get(r, 0.0) for p in parts for r, v in p["start_min"].items())
    return peers, warnings, t0


def _rows_of(peers: Peers, ranks: list[int]) -> pd.DataFrame:
    """The peer table's rows of these ranks (what a rank file's findings need of it)."""
    t = peers.table
    return t[t["rank"].isin(ranks)] if len(t) else t


def _move(p: dict[str, Any], shift: int) -> None:
    """A file's compact tables with its ranks moved up by `shift` (it claimed a rank already taken)."""
    p["ranks"] = [r + shift for r in p["ranks"]]
    p["ranks_in_step"] = [r + shift for r in p["ranks_in_step"]]
    p["start_min"] = {r + shift: v for r, v in p["start_min"].items()}
    if len(p["spans"]):
        p["spans"] = p["spans"].assign(rank=p["spans"]["rank"] + shift)
    if len(p["kernels"]):
        p["kernels"] = p["kernels"].assign(rank=p["kernels"]["rank"] + shift)
    if len(p["first"]):
        f = p["first"]
        p["first"] = pd.Series(f.to_numpy(), index=pd.MultiIndex.from_arrays(
            [f.index.get_level_values("step"), f.index.get_level_values("rank") + shift], names=["step", "rank"]))


__all__ = ["Options", "analyze_folder", "stage_one", "stage_two"]
