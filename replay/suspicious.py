"""Trace oddities that are not fatal but make numbers doubtful: slices with negative durations
(left out of the table at load), zero-length GPU kernels, kernels that overlap on one stream (a
stream runs its kernels one at a time), clock jumps inside a rank, and ranks with identical
content (the same file twice), files of a folder that claim the same rank, a rank missing from a
folder, a rank file that could not be read (left out), ranks that disagree on their steps or
collectives, and traces in which no communication kernel was recognised. Each is one `suspicious_input` entry in the report."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .events import text
from .overlap import gpu_work

OVERLAP_TOLERANCE_US = 1.0     # profiler timestamps of back-to-back kernels may overlap by rounding
CLOCK_JUMP_US = 60e6           # a minute with nothing on a rank's timeline: clocks, not work


def _entry(what: str, count: int, message: str, ranks: list[int] | None = None) -> dict[str, Any]:
    return {"kind": "suspicious_input", "what": what, "count": int(count), "ranks": ranks or [],
            "message": message}


def check(events: pd.DataFrame, meta: dict[str, Any], warnings: list[tuple[str, str]] = ()) -> list[dict[str, Any]]:
    """The oddities of a classified event table (and the load's own count of negative durations);
    `warnings` are (what, message) pairs found by the analyses (ranks that disagree)."""
    out = [_entry(what, 1, msg) for what, msg in warnings]
    for bad in meta.get("skipped_files", []):
        out.append(_entry("unreadable_file", 1, f"{bad['file']}: {bad['error']}: left out, the other files analysed "
                          f"(--strict makes this an error)"))
    neg = meta.get("negative_durations")
    if neg:
        out.append(_entry("negative_duration", neg["count"], f"{neg['count']} slices with a negative duration "
                          f"(e.g. {neg['example']!r}) were left out: the trace's timestamps are damaged"))
    for c in meta.get("rank_collisions", []):
        out.append(_entry("duplicate_rank", len(c["claimed"]), f"{c['file']} says it holds rank(s) "
                          f"{', '.join(map(str, c['claimed']))}, which an earlier file also holds: analysed as "
                          f"rank(s) {', '.join(map(str, c['now']))}", c["now"]))
    world = meta.get("world_size")
    ranks = sorted(int(r) for r in events["rank"].unique())
    if isinstance(world, int) and len(ranks) > 1 and set(range(world)) - set(ranks):
        gone = sorted(set(range(world)) - set(ranks))
        out.append(_entry("missing_rank", len(gone), f"the traces say world_size {world} but rank(s) "
                          f"{', '.join(map(str, gone))} have no file: peer waits are measured among the ranks "
                          f"present, and a missing rank's lateness shows as nobody's", gone))
    g = gpu_work(events)
    if not (g["klass"] == "comm").any():
        out.append(_entry("no_communication", 0, "no communication kernel recognised, so 'hidden 0 %' says nothing: "
                          "if the trace has an all-to-all, name its kernels with --taxonomy FILE (see "
                          "replay/data/taxonomy.toml)"))
    zero = g[g["dur_us"] <= 0]
    if len(zero):
        out.append(_entry("zero_duration", len(zero), f"{len(zero)} GPU kernels last 0 us (e.g. "
                          f"{text(zero['name'])[0]!r}): dropped profiler records or a clock problem",
                          sorted(int(r) for r in zero["rank"].unique())))
    overlapping, ranks = 0, set()
    for (rank, _), df in g.groupby(["rank", "stream"], sort=False, observed=True):
        if len(df) < 2:
            continue
        s = df["start_us"].to_numpy()
        order = np.argsort(s, kind="stable")
        s, e = s[order], (df["start_us"] + df["dur_us"]).to_numpy()[order]
        prev_end = np.maximum.accumulate(e)[:-1]
        k = int(np.sum(s[1:] < prev_end - OVERLAP_TOLERANCE_US))
        if k:
            overlapping += k
            ranks.add(int(rank))
    if overlapping:
        out.append(_entry("overlapping_kernels", overlapping, f"{overlapping} kernels start before the previous "
                          "kernel on their stream ended: a stream runs one kernel at a time, so the timestamps "
                          "(or the stream ids) are wrong", sorted(ranks)))
    jumps, jranks = 0, set()
    for rank, df in events.groupby("rank", sort=True):
        s = np.sort(df["start_us"].to_numpy())
        k = int(np.sum(np.diff(s) > CLOCK_JUMP_US))
        if k:
            jumps += k
            jranks.add(int(rank))
    if jumps:
        out.append(_entry("clock_jump", jumps, f"{jumps} gaps of over {CLOCK_JUMP_US / 1e6:.0f} s with no event on "
                          "a rank: a clock jump or traces of different runs joined; spans count the gap",
                          sorted(jranks)))
    if events["rank"].nunique() > 1:
        sig: dict[int, list[int]] = {}
        for rank, df in g.groupby("rank", sort=True):
            d = df.sort_values("start_us", kind="stable")
            key = hash((tuple(text(d["name"])), tuple(np.round(d["dur_us"].to_numpy(), 3)),
                        tuple(np.round(d["start_us"].to_numpy() - d["start_us"].min(), 3))))
            sig.setdefault(key, []).append(int(rank))
        for same in (v for v in sig.values() if len(v) > 1):
            out.append(_entry("identical_ranks", len(same), f"ranks {', '.join(map(str, same))} hold identical GPU "
                              "timelines: the same file given twice?", same))
    return out


__all__ = ["check"]
