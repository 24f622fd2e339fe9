"""Trace oddities that are not fatal but make numbers doubtful: slices with negative durations
(left out of the table at load), zero-length GPU kernels, kernels that overlap on one stream (a
stream runs its kernels one at a time), clock jumps inside a rank, and ranks with identical
content (the same file twice), files of a folder that claim the same rank, a rank missing from a
folder, a rank file that could not be read (left out), ranks that disagree on their steps or
collectives, traces in which no communication kernel was recognised, compute kernels whose launch
call the trace lacks (the CPU not profiled), one rank's file holding several GPUs' work, and a training
step (its backward has no layers). Each is one `suspicious_input` entry in the report."""
from __future__ import annotations

import hashlib
import re
from typing import Any

import numpy as np
import pandas as pd

from .events import text
from .overlap import gpu_work
from .stepnames import backward_ops

OVERLAP_TOLERANCE_US = 1.0     # profiler timestamps of back-to-back kernels may overlap by rounding
# A rank with more than this share of its kernels overlapping on their stream has timestamps (or stream
# ids) a re-time cannot stand on: whatif / stagegraph refuse it. Assumed: every capture of ours has 0 or
# 1 such kernel in thousands (deepep-h100x4/decode-proper: 1); a broken clock gives most of them.
OVERLAP_REFUSE_SHARE = 0.01
NO_LAUNCH_SHARE = 0.1          # a rank with this share of its compute kernels lacking a launch call is said so
                               # (assumed: a few launched before the profiled window are normal; 0 in our captures)
CLOCK_JUMP_US = 60e6           # a minute with nothing on a rank's timeline: clocks, not work


def _entry(what: str, count: int, message: str, ranks: list[int] | None = None) -> dict[str, Any]:
    return {"kind": "suspicious_input", "what": what, "count": int(count), "ranks": ranks or [],
            "message": message}


def facts(events: pd.DataFrame, gpu: pd.DataFrame | None = None) -> dict[str, Any]:
    """What check() reports, counted over one table (a rank file, or the whole folder): a function
    of the rank(s) it holds, so a folder's facts are the merge of its files' (merge_facts). `gpu`:
    gpu_work(events), where the caller has it."""
    g = gpu_work(events) if gpu is None else gpu
    zero = g[g["dur_us"] <= 0]
    per_rank = overlapping_kernels(g)
    overlapping, oranks = sum(per_rank.values()), set(per_rank)
    jumps, jranks = 0, set()
    ranks, starts = events["rank"].to_numpy(), events["start_us"].to_numpy()     # arrays: no copy of each rank's rows
    for rank, sel in _by_rank(ranks, np.argsort(ranks, kind="stable")):
        k = int(np.sum(np.diff(np.sort(starts[sel])) > CLOCK_JUMP_US))
        if k:
            jumps += k
            jranks.add(rank)
    sig: dict[int, str] = {}
    g_rank, g_start, g_dur, g_name = (g["rank"].to_numpy(), g["start_us"].to_numpy(dtype=float),
                                      g["dur_us"].to_numpy(dtype=float), text(g["name"]))
    for rank, sel in _by_rank(g_rank, np.lexsort((g_start, g_rank))):    # by start within a rank, ties in table order
        h = hashlib.blake2b(digest_size=16)
        h.update("\x00".join(map(str, g_name[sel])).encode())
        h.update(np.round(g_dur[sel], 3).tobytes())
        h.update(np.round(g_start[sel] - g_start[sel].min(), 3).tobytes())
        sig[rank] = h.hexdigest()
    no_launch, no_launch_ranks = _without_launch(events, g)
    several = _several_gpus(g)
    return {"ranks": sorted(int(r) for r in events["rank"].unique()), "comm": bool((g["klass"] == "comm").any()),
            "backward_ops": backward_op_count(events),
            "no_launch": no_launch, "no_launch_ranks": no_launch_ranks, "several_gpus": several,
            "zero": len(zero), "zero_example": text(zero["name"])[0] if len(zero) else None,
            "zero_ranks": sorted(int(r) for r in zero["rank"].unique()),
            "whole_us": bool(len(g)) and bool(np.all(np.mod(g["dur_us"].to_numpy(), 1.0) == 0.0)),
            "overlapping": overlapping,
            "overlapping_ranks": sorted(oranks), "jumps": jumps, "jump_ranks": sorted(jranks), "signatures": sig}


def backward_op_count(events: pd.DataFrame) -> int:
    """CPU ops of a backward pass (data/annotations.toml [training]: the first pattern that names any),
    counted by name: a training step."""
    counts = events["name"][(events["device"] == "cpu").to_numpy()].value_counts()
    for pattern in backward_ops():
        rx = re.compile(pattern)
        n = int(sum(c for name, c in counts.items() if c and rx.search(str(name))))
        if n:
            return n
    return 0


def overlapping_kernels(g: pd.DataFrame) -> dict[int, int]:
    """Per rank: the kernels that start before the previous kernel on their stream ended (more than
    the profiler's rounding); ranks with none are left out. `g`: GPU work rows."""
    out: dict[int, int] = {}
    for (rank, _), df in g.groupby(["rank", "stream"], sort=False, observed=True):
        if len(df) < 2:
            continue
        s = df["start_us"].to_numpy()
        order = np.argsort(s, kind="stable")
        s, e = s[order], (df["start_us"] + df["dur_us"]).to_numpy()[order]
        prev_end = np.maximum.accumulate(e)[:-1]
        k = int(np.sum(s[1:] < prev_end - OVERLAP_TOLERANCE_US))
        if k:
            out[int(rank)] = out.get(int(rank), 0) + k
    return out


def _several_gpus(g: pd.DataFrame) -> dict[int, list[str]]:
    """The ranks whose GPU work carries more than one GPU pid (device), with those pids."""
    if g.empty:
        return {}
    pid = g["pid"].cat.codes.to_numpy() if isinstance(g["pid"].dtype, pd.CategoricalDtype) else pd.factorize(g["pid"])[0]
    m = int(pid.max()) + 2
    pairs = np.unique(g["rank"].to_numpy().astype(np.int64) * m + (pid.astype(np.int64) + 1))    # (rank, pid)
    ranks, n = np.unique(pairs // m, return_counts=True)
    if (n < 2).all():
        return {}
    names = text(g["pid"])
    return {int(r): sorted({str(x) for x in names[g["rank"].to_numpy() == r]}) for r in ranks[n > 1]}


def _without_launch(events: pd.DataFrame, g: pd.DataFrame) -> tuple[int, list[int]]:
    """Compute kernels whose launch call the trace lacks, on the ranks where they are NO_LAUNCH_SHARE
    or more of the rank's compute kernels (and those ranks)."""
    comp = g[(g["klass"] == "compute").to_numpy()]
    if comp.empty or "launch" not in events:
        return 0, []
    corr = events["correlation"].to_numpy()
    is_launch = ((events["device"] == "cpu").to_numpy() & events["launch"].to_numpy(dtype=bool) & (corr >= 0))
    c_rank, c_corr = comp["rank"].to_numpy(), comp["correlation"].to_numpy()
    l_rank, l_corr = events["rank"].to_numpy()[is_launch], corr[is_launch]     # arrays: no copy of the rows
    n, ranks = 0, []
    for rank, sel in _by_rank(c_rank, np.argsort(c_rank, kind="stable")):
        miss = int((~np.isin(c_corr[sel], l_corr[l_rank == rank])).sum())
        if miss and miss >= NO_LAUNCH_SHARE * len(sel):
            n += miss
            ranks.append(rank)
    return n, ranks


def _by_rank(ranks: np.ndarray, order: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(rank, its row positions in `order`) for each rank, in rank order; `order` sorts by rank first."""
    r = ranks[order]
    cuts = np.flatnonzero(r[1:] != r[:-1]) + 1
    return [(int(r[a]), order[a:b]) for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(r)])] if len(r) else []


def merge_facts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The facts of several tables (in the folder's file order) as one."""
    ex = next((p["zero_example"] for p in parts if p["zero_example"] is not None), None)
    return {"ranks": sorted({r for p in parts for r in p["ranks"]}), "comm": any(p["comm"] for p in parts),
            "backward_ops": sum(p.get("backward_ops", 0) for p in parts),
            "zero": sum(p["zero"] for p in parts), "zero_example": ex,
            "zero_ranks": sorted({r for p in parts for r in p["zero_ranks"]}),
            "whole_us": all(p.get("whole_us", False) for p in parts),
            "overlapping": sum(p["overlapping"] for p in parts),
            "overlapping_ranks": sorted({r for p in parts for r in p["overlapping_ranks"]}),
            "jumps": sum(p["jumps"] for p in parts), "jump_ranks": sorted({r for p in parts for r in p["jump_ranks"]}),
            "no_launch": sum(p["no_launch"] for p in parts),
            "several_gpus": {r: v for p in parts for r, v in p["several_gpus"].items()},
            "no_launch_ranks": sorted({r for p in parts for r in p["no_launch_ranks"]}),
            "signatures": {r: v for p in parts for r, v in p["signatures"].items()}}


def check(events: pd.DataFrame, meta: dict[str, Any], warnings: list[tuple[str, str]] = ()) -> list[dict[str, Any]]:
    """The oddities of a classified event table (and the load's own count of negative durations);
    `warnings` are (what, message) pairs found by the analyses (ranks that disagree)."""
    return entries(facts(events), meta, warnings)


def entries(f: dict[str, Any], meta: dict[str, Any], warnings: list[tuple[str, str]] = ()) -> list[dict[str, Any]]:
    """check()'s entries from the facts of the table(s)."""
    out = [_entry(what, 1, msg) for what, msg in warnings]
    for bad in meta.get("skipped_files", []):
        if bad.get("cpu_only"):
            out.append(_entry("cpu_only_file", 1, f"{bad['file']}: {bad['error']}: left out, the other files analysed"))
            continue
        out.append(_entry("unreadable_file", 1, f"{bad['file']}: {bad['error']}: left out, the other files analysed "
                          f"(--strict makes this an error)"))
    if f.get("backward_ops"):
        out.append(_entry("training_step", f["backward_ops"], f"autograd ran {f['backward_ops']} backward ops "
                          "(such as MmBackward0): a training step, forward and backward; a layer's "
                          "figures hold its backward only where the trace's ranges label it (PyTorch's nn.Module "
                          "ranges mark the forward alone), and `replay whatif` and `compare` refuse it"))
    neg = meta.get("negative_durations")
    if neg:
        out.append(_entry("negative_duration", neg["count"], f"{neg['count']} slices with a negative duration "
                          f"(e.g. {neg['example']!r}) were left out: the trace's timestamps are damaged"))
    for x in meta.get("devices_split", []):
        out.append(_entry("one_process_several_gpus", len(x["pids"]), f"{x['file']} holds the GPU work of "
                          f"{len(x['pids'])} devices driven by one process (GPU pids {', '.join(x['pids'])}): analysed "
                          f"as rank(s) {', '.join(map(str, x['ranks']))}, one per GPU, each with the process's host "
                          "events; where the model is split across them, a GPU waiting for its turn behind another "
                          "shows as its own idle, under the cause its launches give", x["ranks"]))
    for c in meta.get("rank_collisions", []):
        out.append(_entry("duplicate_rank", len(c["claimed"]), f"{c['file']} says it holds rank(s) "
                          f"{', '.join(map(str, c['claimed']))}, which an earlier file also holds: analysed as "
                          f"rank(s) {', '.join(map(str, c['now']))}", c["now"]))
    world = meta.get("world_size")
    ranks = f["ranks"]
    if isinstance(world, int) and len(ranks) > 1 and set(range(world)) - set(ranks):
        gone = sorted(set(range(world)) - set(ranks))
        out.append(_entry("missing_rank", len(gone), f"the traces say world_size {world} but rank(s) "
                          f"{', '.join(map(str, gone))} have no file: peer waits are measured among the ranks "
                          f"present, and a missing rank's lateness shows as nobody's", gone))
    if not f["comm"]:
        out.append(_entry("no_communication", 0, "no communication kernel recognised, so 'hidden 0 %' says nothing: "
                          "if the trace has an all-to-all, name its kernels with --taxonomy FILE (see "
                          "replay/data/taxonomy.toml)"))
    if f["zero"]:
        why = ("the trace records whole microseconds (as older PyTorch profilers and some exporters write), so "
               "kernels under 1 us read 0 and their time is missing from the busy times" if f.get("whole_us") else
               "dropped profiler records or a clock problem")
        out.append(_entry("zero_duration", f["zero"], f"{f['zero']} GPU kernels last 0 us (e.g. "
                          f"{f['zero_example']!r}): {why}", f["zero_ranks"]))
    if f["overlapping"]:
        n = f["overlapping"]
        out.append(_entry("overlapping_kernels", n, f"{n} kernels start before the previous "
                          "kernel on their stream ended: a stream runs one kernel at a time, so the timestamps "
                          "(or the stream ids) are wrong", f["overlapping_ranks"]))
    if f["several_gpus"]:
        r, pids = next(iter(sorted(f["several_gpus"].items())))
        out.append(_entry("several_gpus", len(f["several_gpus"]), f"rank {r}'s file holds the GPU work of "
                          f"{len(pids)} devices (GPU pids {', '.join(pids)}): replay reads one GPU timeline per rank, "
                          "so their work is joined as one rank's (busy time their union, streams of the same id "
                          "merged); profile one process per GPU or split the file per device",
                          sorted(f["several_gpus"])))
    if f["no_launch"]:
        out.append(_entry("launches_missing", f["no_launch"], f"{f['no_launch']} compute kernels have no launch call "
                          "in the trace (its runtime events were filtered out or not recorded): idle time "
                          "before them is unexplained/no_launch, its CPU-side causes cannot be told; keep the "
                          "runtime events (cuda_runtime / cuda_driver) in the trace", f["no_launch_ranks"]))
    if f["jumps"]:
        out.append(_entry("clock_jump", f["jumps"], f"{f['jumps']} gaps of over {CLOCK_JUMP_US / 1e6:.0f} s with no "
                          "event on a rank: a clock jump or traces of different runs joined; spans count the gap",
                          f["jump_ranks"]))
    if len(ranks) > 1:
        sig: dict[str, list[int]] = {}
        for rank in sorted(f["signatures"]):
            sig.setdefault(f["signatures"][rank], []).append(rank)
        one_file = [set(x["ranks"]) for x in meta.get("devices_split", [])]    # one process's GPUs: not a copy
        for same in (v for v in sig.values() if len(v) > 1 and not any(set(v) <= g for g in one_file)):
            out.append(_entry("identical_ranks", len(same), f"ranks {', '.join(map(str, same))} hold identical GPU "
                              "timelines: the same file given twice?", same))
    return out


__all__ = ["check", "entries", "facts", "merge_facts"]
