"""The event table: every trace, generated or profiled, as one pandas DataFrame with fixed
columns, which every analysis reads. The file format itself (decoding, no table) is kineto.py;
this module turns its decoded events into columns and says what each column means.

Columns (one row per duration slice: 'X' events, and 'B'/'E' pairs):

- rank: tracegen's `rank` arg, or a profiler file's distributedInfo.rank, its name (rank3.json),
  or its position in a folder of ranks
- pid, tid: the trace's process and thread ids, as text
- thread: the thread's name where the trace gives one ("stream 7", "comm stream"), else "thread TID"
- device: "cpu" or "gpu": where the slice ran (kernels, copies, GPU annotations and tracegen's
  stage slices ran on a GPU; runtime calls, annotations and launches on a CPU thread)
- cat: the trace's category (kernel, cuda_runtime, user_annotation, cpu_launch, compute, comm, ...)
- name: the slice's name (a kernel, a runtime call, an annotation, a stage)
- start_us, dur_us: start and duration in microseconds, on the trace's own clock
- correlation: the id linking a CPU launch to the GPU work it launched (-1: none)
- stream: the CUDA stream of GPU work (the thread id where the trace has no stream arg; -1 on CPUs)
- layer, microbatch: tracegen's args, or recovered by structure.py (-1: unknown)
- stage: tracegen's stage, or the annotation a kernel was launched under ("": unknown)
- stage_stream: tracegen's `kind` arg, the stream its stage ran on: "compute" or "comm"
  ("" in profiler traces)
- flops, bytes, work_us: tracegen's cost args of a GPU stage (NaN elsewhere)
- extra: tracegen's other read args of the slice (EXTRA_ARGS) as a JSON object, or None

Classification (taxonomy.py) adds klass, subclass, blocking and launch; structure recovery
(structure.py) fills layer, microbatch and stage of profiler traces."""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import msgspec
import numpy as np
import pandas as pd
from pandas.api.types import union_categoricals

from tracegen.base import contract
from tracegen.base.errors import UserError

from .columns import (
    CPU_OP_CATS,
    EXTRA_ARGS,
    FRAMEWORK_OP,
    STRING_COLUMNS,
    _Columns,
    _merge,
)
from .kineto import Progress, rank_from_name, rank_hints, read_events, trace_files

# ----------------------------------------------------------------------------- table
def _categorical(strings: np.ndarray, codes: np.ndarray) -> pd.Categorical:
    """Codes into the interner's strings (`strings`, by code) as a categorical column of only the
    strings used, in interner order: what from_codes(...).remove_unused_categories() gives, in one
    pass over the codes instead of a sort."""
    used = np.zeros(len(strings), dtype=bool)
    used[codes] = True
    remap = (np.cumsum(used) - 1).astype(np.int32)
    return pd.Categorical.from_codes(remap[codes], categories=strings[used], validate=False)


def category_text(col: pd.Series) -> np.ndarray:
    """A categorical column's categories as text, by code, with a trailing "nan" that code -1 (a
    missing value) picks: what astype(str) reads for each code."""
    return np.asarray([str(c) for c in col.cat.categories] + ["nan"], dtype=object)


def text(col: pd.Series, rows: np.ndarray | None = None) -> np.ndarray:
    """A column as an object array of str, the way `col.astype(str)` reads it (`rows`: only those
    positions); for the table's categorical columns the categories are turned to text once and
    picked by code (the whole column through astype(str) would build a string per row)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        codes = col.cat.codes.to_numpy()
        return category_text(col)[codes if rows is None else codes[rows]]
    return (col if rows is None else col.iloc[rows]).astype(str).to_numpy(dtype=object)


def text_is(col: pd.Series, value: str) -> np.ndarray:
    """`text(col) == value` as a bool array; for a categorical column, each category is compared
    once and picked by code (no text of every row)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        return np.asarray(category_text(col) == value, dtype=bool)[col.cat.codes.to_numpy()]
    return np.asarray(text(col) == value, dtype=bool)


def text_sorted(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """`text(col)` as (codes, words): words the distinct texts in sorted order, codes their positions,
    so `words[codes] == text(col)` and sorting by codes sorts by text (a categorical column's
    categories are turned to text and sorted once, not one string per row)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        words, inverse = np.unique(category_text(col), return_inverse=True)
        return inverse.reshape(-1)[col.cat.codes.to_numpy()], words
    words, inverse = np.unique(text(col), return_inverse=True)
    return inverse.reshape(-1), words


@dataclass
class Trace:
    """One or more ranks' events: `events` is the table every analysis reads."""
    events: pd.DataFrame
    flows: pd.DataFrame
    meta: dict[str, Any]
    sources: list[str]

    @property
    def generated(self) -> bool:
        """Written by tracegen (its args carry each slice's meaning)."""
        return contract.is_generated(self.meta.get("otherData"))

    @property
    def generator(self) -> Any:
        """tracegen's otherData as a GeneratedMeta (the keys the contract says tools read), or None
        for a profiler trace."""
        if not self.generated:
            return None
        return generated_meta(self.meta.get("otherData") or {}, self.sources[0] if self.sources else "trace")

    @property
    def device_name(self) -> str:
        """The first GPU the profiler's deviceProperties name ('' when it names none as text)."""
        props = self.meta.get("deviceProperties")
        first = props[0] if isinstance(props, list) and props else None
        name = first.get("name") if isinstance(first, dict) else None
        return name if isinstance(name, str) else ""


_JSON_TYPE = {int: int, float: float, str: str, bool: bool, dict: dict, list: list}
GeneratedMeta = msgspec.defstruct("GeneratedMeta", [(k.name, _JSON_TYPE[k.type] | None, None)
                                                    for k in contract.read_keys(contract.OTHER_DATA)])


def generated_meta(other_data: dict[str, Any], src: str) -> Any:
    """A generated trace's otherData, typed and checked against the contract."""
    if contract.is_deployment(other_data):
        raise UserError(f"{src}: a deployment trace written by `tracegen deploy` (pool steps and requests, no "
                        "kernels): open it in ui.perfetto.dev; replay analyses layer and profiler timelines")
    version = other_data.get("format_version", 1)
    if not isinstance(version, int) or version > contract.FORMAT_VERSION:
        raise UserError(f"{src}: written by a newer tracegen (trace format {version}); this replay reads "
                        f"formats up to {contract.FORMAT_VERSION}: upgrade moe-timeline")
    try:
        return msgspec.convert(other_data, GeneratedMeta)
    except msgspec.ValidationError as exc:
        raise UserError(f"{src}: otherData does not follow the trace contract: {exc}") from None


def _outermost_ops(c: dict[str, np.ndarray], ops: dict[str, np.ndarray], op_code: int) -> dict[str, np.ndarray]:
    """The columns with the short framework ops that lie inside no other framework op of their
    thread appended (the kept long ops count as holders too); nested ones stay out."""
    if not len(ops.get("start_us", ())):
        return c
    kept = np.flatnonzero(c["cat"].astype(np.int64) == op_code)
    n_short = len(ops["start_us"])
    thread = np.concatenate([ops["pid"].astype(np.int64) << 32 | ops["tid"].astype(np.int64),
                             c["pid"][kept].astype(np.int64) << 32 | c["tid"][kept].astype(np.int64)])
    start = np.concatenate([ops["start_us"], c["start_us"][kept]])
    end = start + np.concatenate([ops["dur_us"], c["dur_us"][kept]])
    order = np.lexsort((-end, start, thread))        # per thread by start, the longer (outer) first
    th, st, en = thread[order], start[order], end[order]
    outer = np.ones(len(order), dtype=bool)
    bounds = np.flatnonzero(np.diff(th)) + 1
    for part in np.split(np.arange(len(order)), bounds):
        run_max = np.maximum.accumulate(en[part])
        outer[part[1:]] = st[part[1:]] >= run_max[:-1]
    pick = order[outer & (order < n_short)]
    pick.sort()
    n = len(pick)
    add = {"pid": ops["pid"][pick], "tid": ops["tid"][pick], "name": ops["name"][pick],
           "cat": np.full(n, op_code, dtype=np.int32), "start_us": ops["start_us"][pick],
           "dur_us": ops["dur_us"][pick], "correlation": np.full(n, -1, dtype=np.int64),
           "stream": np.full(n, -1, dtype=np.int64), "arank": np.full(n, -1, dtype=np.int64),
           "layer": np.full(n, -1, dtype=np.int64), "microbatch": np.full(n, -1, dtype=np.int64),
           "stage": np.zeros(n, dtype=np.int32), "stage_stream": np.zeros(n, dtype=np.int32),
           "flops": np.full(n, np.nan), "bytes": np.full(n, np.nan), "work_us": np.full(n, np.nan)}
    return {k: np.concatenate([c[k], add[k].astype(c[k].dtype) if len(c[k]) else add[k]]) for k in c}


def _to_frame(cols: _Columns, meta: dict[str, Any], path: Path, default_rank: int | None) -> pd.DataFrame:
    c = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in cols.cols.items()}
    n_before = len(c["start_us"])
    c = _outermost_ops(c, {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in cols.ops.items()},
                       cols.strings.code(FRAMEWORK_OP))
    if len(c["start_us"]) > n_before:
        cols.extra.extend([None] * (len(c["start_us"]) - n_before))
    n = len(c["start_us"])
    strings = cols.strings
    cat_list = list(strings.index)                    # code -> string, shared by every string column
    cats_arr = np.array(cat_list, dtype=object)
    pid_codes = c["pid"].astype(np.int32)
    tid_codes = c["tid"].astype(np.int32)
    cat_codes = c["cat"].astype(np.int32)
    generated = contract.is_generated(meta.get("otherData"))
    info = meta.get("distributedInfo")
    file_rank = info.get("rank") if isinstance(info, dict) else None
    if isinstance(file_rank, str) and file_rank.strip().isdigit():
        file_rank = int(file_rank)
    if not isinstance(file_rank, int) or isinstance(file_rank, bool) or not 0 <= file_rank < 2 ** 31:
        file_rank = None          # a rank we cannot read: the file name or its place in the folder decides
    if file_rank is None:
        file_rank = rank_from_name(path) if default_rank is None else default_rank
    arank = c["arank"].astype(np.int32)
    if generated:
        pid_num = pd.to_numeric(pd.Series(cats_arr), errors="coerce").fillna(0).to_numpy()[pid_codes]
        rank = np.where(arank >= 0, arank, pid_num).astype(np.int32)
    else:
        rank = np.full(n, int(file_rank or 0), dtype=np.int32)
    labelled = None if generated else pid_ranks(cats_arr, pid_codes)
    if labelled is not None:
        rank = labelled
    gpu_codes = [strings.index[x] for x in contract.GPU_CATS if x in strings.index]
    is_gpu = np.isin(cat_codes, gpu_codes)
    stream = c["stream"].astype(np.int64)
    # thread / stream label: the trace's own thread name where it has one
    pair = pid_codes.astype(np.int64) * (len(cat_list) + 1) + tid_codes
    uniq, inverse = np.unique(pair, return_inverse=True)
    labels = []
    for u in uniq:
        p_s, t_s = cats_arr[u // (len(cat_list) + 1)], cats_arr[u % (len(cat_list) + 1)]
        labels.append(cols.names.get(("thread_name", p_s, t_s), f"thread {t_s}"))
    distinct = list(dict.fromkeys(labels))
    label_code = np.array([distinct.index(lab) for lab in labels], dtype=np.int32)
    thread = pd.Categorical.from_codes(label_code[inverse], categories=distinct)
    tid_num = pd.to_numeric(pd.Series(cats_arr), errors="coerce").to_numpy()[tid_codes]
    stream = np.where(is_gpu & (stream < 0), np.nan_to_num(tid_num, nan=-1), stream).astype(np.int64)
    extra = np.empty(n, dtype=object)
    if cols.extra.count(None) < len(cols.extra):      # tracegen's args (a C count: no Python loop per event)
        extra[:] = [x.decode() if x is not None else None for x in cols.extra]
    df = pd.DataFrame({
        "rank": rank,
        "pid": _categorical(cats_arr, pid_codes),
        "tid": _categorical(cats_arr, tid_codes),
        "thread": thread,
        "device": pd.Categorical.from_codes(is_gpu.astype(np.int8), categories=["cpu", "gpu"]),
        "cat": _categorical(cats_arr, cat_codes),
        "name": _categorical(cats_arr, c["name"].astype(np.int32)),
        "start_us": c["start_us"].astype(np.float64),
        "dur_us": c["dur_us"].astype(np.float64),
        "correlation": c["correlation"].astype(np.int64),
        "stream": stream,
        "layer": c["layer"].astype(np.int32),
        "microbatch": c["microbatch"].astype(np.int32),
        "stage": _categorical(cats_arr, c["stage"].astype(np.int32)),
        "stage_stream": _categorical(cats_arr, c["stage_stream"].astype(np.int32)),
        "flops": c["flops"].astype(np.float64),
        "bytes": c["bytes"].astype(np.float64),
        "work_us": c["work_us"].astype(np.float64),
        "extra": extra,
    })
    if not generated and labelled is None:
        df, pids = split_devices(df, is_gpu, int(file_rank or 0))
        if pids:
            meta["devices_split"] = [{"file": path.name, "pids": pids,
                                      "ranks": [int(file_rank or 0) + k for k in range(len(pids))]}]
    return df


def pid_ranks(pids: np.ndarray, codes: np.ndarray) -> np.ndarray | None:
    """Each event's rank from its pid's rank label, where every pid of the file has one (an engine's merge of
    its rank files: data/annotations.toml [files] pid_rank); else None."""
    from .stepnames import file_patterns
    used = np.unique(codes)
    rx = re.compile(file_patterns()["pid_rank"])
    found = [rx.fullmatch(str(pids[u])) for u in used]
    if not len(used) or not all(found):
        return None
    lut = np.zeros(len(pids), dtype=np.int32)
    lut[used] = [int(m.group("rank")) for m in found]
    return lut[codes]


def split_devices(df: pd.DataFrame, is_gpu: np.ndarray, first_rank: int) -> tuple[pd.DataFrame, list[str]]:
    """A profiler file whose GPU work ran on several devices (one process driving several GPUs, e.g. a model
    split across them) as one rank per device: each device's GPU rows, with every host row of the process
    (the host launches for all of them), ranked first_rank + its place in device order. The table as it
    is, and no pids, where the work ran on one device."""
    codes = df["pid"].cat.codes.to_numpy()
    uniq = np.unique(codes[is_gpu])
    if len(uniq) < 2:
        return df, []
    names = [str(df["pid"].cat.categories[c]) for c in uniq]
    order = sorted(range(len(uniq)), key=lambda i: (not names[i].isdigit(), int(names[i]) if names[i].isdigit() else 0,
                                                    names[i]))
    host = ~is_gpu
    idx = [np.flatnonzero(host | (is_gpu & (codes == uniq[i]))) for i in order]
    out = df.iloc[np.concatenate(idx)].reset_index(drop=True)
    out["rank"] = np.repeat(np.arange(len(idx), dtype=np.int32) + first_rank, [len(x) for x in idx])
    return out, [names[i] for i in order]


def _flows_frame(cols: _Columns, rank_of_pid: dict[str, int]) -> pd.DataFrame:
    if not cols.flows:
        return pd.DataFrame({"ph": [], "pid": [], "tid": [], "ts": [], "id": [], "cat": [], "rank": []})
    ph, pid, tid, ts, fid, cat = zip(*cols.flows)
    return pd.DataFrame({"ph": ph, "pid": pid, "tid": tid, "ts": np.asarray(ts, dtype=np.float64),
                         "id": np.asarray(fid, dtype=np.int64), "cat": cat,
                         "rank": [rank_of_pid.get(p, 0) for p in pid]})


def load_file(path: str | Path, rank: int | None = None, progress: bool | None = None,
              keep_cpu_ops: bool = False, bar: Progress | None = None,
              parsed: tuple[list[dict[str, Any]], dict[str, Any]] | None = None) -> Trace:
    """One trace file as a Trace (`rank`: the rank to give a profiler file that names none; `bar`:
    a progress bar shared with other files, left open; `parsed`: what kineto.read_events returned
    for this file elsewhere, headstart.py)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    skip = frozenset() if keep_cpu_ops else CPU_OP_CATS
    own = bar is None
    bar = Progress(size, path.name, progress) if own else bar
    try:
        parts, meta = parsed or read_events(path, partial(_Columns, str(path), skip_cats=skip), bar)
    finally:
        if own:
            bar.close()
    cols = _merge(parts, str(path), skip)
    if cols.n_seen == 0:
        raise UserError(f"{path}: the trace holds no events")
    df = _to_frame(cols, meta, path, rank)
    if df.empty:
        raise UserError(f"{path}: the trace holds no duration ('X') events to analyse")
    if contract.is_generated(meta.get("otherData")):
        generated_meta(meta["otherData"], str(path))       # a newer format or a broken contract: say so now
    if (meta.get("otherData") or {}).get("merged_by") == "replay merge":
        raise UserError(f"{path}: a merged view written by `replay merge` (every rank in one file, for Perfetto): "
                        "analyse the folder of rank files it came from")
    pairs = df[["pid", "rank"]].drop_duplicates("pid")
    rank_of_pid = dict(zip(pairs["pid"].astype(str), pairs["rank"]))
    meta["process_names"] = {p: n for (w, p, _), n in cols.names.items() if w == "process_name"}
    if cols.negative:
        meta["negative_durations"] = {"count": cols.negative, "example": cols.negative_example}
    return Trace(df, _flows_frame(cols, rank_of_pid), meta, [str(path)])


def load(path: str | Path, progress: bool | None = None, strict: bool = False, jobs: int = 1,
         cluster: str | None = None) -> Trace:
    """A file, or a folder of per-rank files (rank from distributedInfo, else the file name). A
    folder's file that cannot be read is left out and named in meta["skipped_files"] (`strict`:
    it is an error). `jobs` / `cluster`: parse the rank files on that many processes or on a Dask
    cluster (parallel.py); the table is the same."""
    files = trace_files(Path(path))
    if len(files) == 1:
        return load_file(files[0], progress=progress)
    hints = rank_hints(files)
    bar, done = folder_progress(files, progress)
    try:
        results: list[Trace | str] = []       # each file's Trace, or why it could not be read
        if jobs == 1 and not cluster:
            for i, f in enumerate(files):
                bar.label = f"{i}/{len(files)} ranks"
                try:
                    results.append(load_file(f, rank=hints[i], bar=bar))
                except UserError as exc:
                    results.append(str(exc))
        else:
            from . import parallel
            results = parallel.parse_files(parse_one, files, hints, jobs, cluster, done)
        bar.label = f"{len(files)}/{len(files)} ranks"
        bar(0)
    finally:
        bar.close()
    parts, kept, skipped = split_results(path, files, results, strict)
    shifts, collisions = rank_shifts(kept, [set(int(r) for r in p.events["rank"].unique()) for p in parts])
    for p, shift in zip(parts, shifts):
        if shift:
            p.events["rank"] = p.events["rank"] + shift
            p.flows["rank"] = p.flows["rank"] + shift
    events = _concat_ranks([p.events for p in parts])
    meta = merge_meta([p.meta for p in parts], kept, skipped, collisions)
    return Trace(events, pd.concat([p.flows for p in parts], ignore_index=True), meta, [str(f) for f in kept])


def _concat_ranks(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The ranks' tables as one, the string columns kept categorical by uniting their categories (pandas'
    concat turns categoricals whose categories differ into strings, which cost more than the rest of the
    join on large folders)."""
    coded = [c for c in frames[0].columns
             if all(c in f and isinstance(f[c].dtype, pd.CategoricalDtype) for f in frames)]
    order = list(dict.fromkeys(c for f in frames for c in f.columns))
    events = pd.concat([f.drop(columns=coded) for f in frames], ignore_index=True)
    for col in coded:
        events[col] = union_categoricals([f[col] for f in frames], sort_categories=True)
    for col in STRING_COLUMNS:
        if col not in coded and col in events:
            events[col] = events[col].astype("category")
    return events[order]


def parse_one(path: str, rank: int | None) -> Any:
    """One rank file's Trace, or the one-line reason it could not be read (a string): what a worker
    process or a cluster worker runs per file (parallel.parse_files)."""
    try:
        return load_file(path, rank=rank, progress=False)
    except UserError as exc:
        return str(exc)


def folder_progress(files: list[Path], progress: bool | None) -> tuple[Progress, Callable[[int], None]]:
    """One bar for a folder - ranks read of all, and MB/s over all the bytes - and the callback that
    counts file i as read."""
    sizes = [f.stat().st_size for f in files]
    bar = Progress(sum(sizes), f"0/{len(files)} ranks", progress)
    finished = [0]

    def done(i: int) -> None:
        finished[0] += 1
        bar.label = f"{finished[0]}/{len(files)} ranks"
        bar(sizes[i])
    return bar, done


def split_results(path: str | Path, files: list[Path], results: list[Any], strict: bool) -> tuple[list, list, list]:
    """(the results that are tables, their files, the files that could not be read with why): one bad
    rank file must not cost the others (unless strict); none readable is an error. A file with no GPU
    work in a folder whose other files have some is left out too (cpu_only), strict or not."""
    parts, kept, skipped = [], [], []
    for f, res in zip(files, results):
        if isinstance(res, str):
            if strict:
                raise UserError(res)
            skipped.append({"file": f.name, "error": res.removeprefix(f"{f}: ")})
        else:
            parts.append(res)
            kept.append(f)
    if not parts:
        raise UserError(f"{path}: none of its {len(files)} trace files could be read (first: {files[0].name}: "
                        f"{skipped[0]['error']})")
    gpu = [bool(p["has_gpu"]) if isinstance(p, dict) else bool((p.events["device"] == "gpu").any()) for p in parts]
    if any(gpu) and not all(gpu):           # a CPU-side file beside ranks' timelines is not a rank
        skipped += [{"file": f.name, "error": CPU_ONLY, "cpu_only": True} for f, g in zip(kept, gpu) if not g]
        parts, kept = [p for p, g in zip(parts, gpu) if g], [f for f, g in zip(kept, gpu) if g]
    return parts, kept, skipped


CPU_ONLY = ("holds no GPU work (no kernel, copy or GPU annotation): a CPU-side trace beside the ranks' "
            "timelines (such as SGLang's scheduler -perfetto.json.gz), not a rank")


def rank_shifts(files: list[Path], ranks: list[set[int]]) -> tuple[list[int], list[dict[str, Any]]]:
    """Per file, what to add to its ranks so that no two files share one (a file that claims a rank an
    earlier file claimed moves above every rank claimed or given; a file whose claim is its own keeps
    it), and a note of each move."""
    claimed: set[int] = set()
    taken = set().union(*ranks) if ranks else set()
    shifts, collisions = [], []
    for f, mine in zip(files, ranks):
        shift = 0
        if mine & claimed:
            shift = max(taken) + 1 - min(mine)
            collisions.append({"file": f.name, "claimed": sorted(mine), "now": sorted(r + shift for r in mine)})
            taken |= {r + shift for r in mine}
        claimed |= mine
        shifts.append(shift)
    return shifts, collisions


def merge_meta(metas: list[dict[str, Any]], files: list[Path], skipped: list, collisions: list) -> dict[str, Any]:
    """A folder's meta: the first file's, with the files, the ones left out, the rank moves, the
    largest world size any file states and the negative durations of all."""
    meta = dict(metas[0])
    meta["files"] = [str(f) for f in files]
    if skipped:
        meta["skipped_files"] = skipped
    if collisions:
        meta["rank_collisions"] = collisions
    worlds = {int(w) for m in metas if isinstance(w := (m.get("distributedInfo") or {}).get("world_size"), int)}
    if worlds:
        meta["world_size"] = max(worlds)
    moved = {c["file"]: c["now"][0] - c["claimed"][0] for c in collisions}
    split = [{**x, "ranks": [r + moved.get(x["file"], 0) for r in x["ranks"]]}
             for m in metas for x in m.get("devices_split", [])]
    meta.pop("devices_split", None)
    if split:
        meta["devices_split"] = split
    negative = [m["negative_durations"] for m in metas if "negative_durations" in m]
    meta.pop("negative_durations", None)
    if negative:
        meta["negative_durations"] = {"count": sum(x["count"] for x in negative), "example": negative[0]["example"]}
    return meta


__all__ = ["Trace", "load", "load_file", "folder_progress", "rank_hints", "split_results", "rank_shifts", "merge_meta", "text", "text_is", "text_sorted", "category_text", "generated_meta", "EXTRA_ARGS", "STRING_COLUMNS"]
