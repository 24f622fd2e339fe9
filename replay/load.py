"""Load Chrome / Kineto traces (PyTorch profiler JSON, `.json` or `.json.gz`, one file or a folder of
ranks, tracegen's own output) into one columnar event table.

The file is streamed: the `traceEvents` array is cut at event boundaries into chunks of a few MB,
each chunk is decoded by msgspec straight into small typed structs (fields we never read are
skipped), and turned into columns at once, so only the columns and one chunk live in memory.
A cut that falls inside a nested object cannot decode and is moved back to the previous boundary."""
from __future__ import annotations

import mmap
import os
import re
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable

import msgspec
import numpy as np
import pandas as pd

from tracegen.errors import UserError

CHUNK = 8 << 20                      # bytes of JSON decoded per step
PARALLEL_MIN_BYTES = 48 << 20        # smaller files are parsed in one process
GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset", "gpu_user_annotation", "compute", "comm"}
_BOUNDARY = re.compile(rb"\}\s*,\s*\{")
_BRACKET = re.compile(rb"\s*:\s*\[")
_KEY = b'"traceEvents"'


class Args(msgspec.Struct):
    """The args we read; everything else in an event's args is skipped by the decoder."""
    correlation: int | str | None = None
    stream: int | str | None = None
    device: int | str | None = None
    external_id: int | str | None = msgspec.field(default=None, name="External id")
    # tracegen's own args (the trace contract)
    rank: int | None = None
    layer: int | None = None
    microbatch: int | None = None
    stage: str | None = None
    kind: str | None = None
    flops: float | None = None
    bytes: float | None = None
    work_us: float | None = None
    latency_us: float | None = None
    post_us: float | None = None
    sms: int | None = None
    load_factor: float | None = None
    ops_us: dict[str, float] | None = None
    cost_us: dict[str, float] | None = None
    # metadata events
    name: str | None = None
    labels: str | None = None


_NO_ARGS = Args()


class Event(msgspec.Struct):
    ph: str = ""
    name: str | int | float | None = None
    cat: str | None = None
    pid: int | str | None = None
    tid: int | str | None = None
    ts: float | str | None = None
    dur: float | str | None = None
    id: int | str | None = None
    bp: str | None = None
    # kept raw: most events' args (cpu_op input shapes, runtime ids) are never read, and decoding
    # them into Args costs twice the rest of the event; the kept ones are decoded in one batch
    args: msgspec.Raw = None  # type: ignore[assignment]  (absent: None; Raw cannot be in a union)


class _Tail(msgspec.Struct):
    traceEvents: list[Event]
    distributedInfo: dict[str, Any] | None = None
    otherData: dict[str, Any] | None = None


class _Head(msgspec.Struct):
    distributedInfo: dict[str, Any] | None = None
    otherData: dict[str, Any] | None = None
    deviceProperties: list[dict[str, Any]] | None = None


_decode_events = msgspec.json.Decoder(list[Event]).decode
_decode_args = msgspec.json.Decoder(list[Args | None]).decode
_decode_tail = msgspec.json.Decoder(_Tail).decode
_decode_head = msgspec.json.Decoder(_Head).decode


# ----------------------------------------------------------------------------- columns
class _Interner:
    """Strings to integer codes, so a column of a million repeated names costs a million ints."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {"": 0}

    def code(self, s: str | None) -> int:
        if s is None:
            return 0
        c = self.index.get(s)
        if c is None:
            c = self.index[s] = len(self.index)
        return c

    def categorical(self, codes: np.ndarray) -> pd.Categorical:
        cats = list(self.index)
        return pd.Categorical.from_codes(codes, categories=cats)


def _num(x: Any, what: str, i: int, src: str) -> float:
    if isinstance(x, (int, float)):
        return float(x)
    try:
        return float(x)
    except (TypeError, ValueError):
        raise UserError(f"{src}: event {i}: field '{what}' is {x!r}, not a number") from None


def _int(x: Any) -> int:
    if isinstance(x, int):
        return x
    if isinstance(x, str) and x.lstrip("-").isdigit():
        return int(x)
    return -1


@dataclass
class _Columns:
    """Growing columns of X events, plus process/thread names and non-launch flows."""
    src: str
    strings: _Interner = field(default_factory=_Interner)
    cols: dict[str, list] = field(default_factory=lambda: {k: [] for k in _COLS})
    names: dict[tuple[str, str, str], str] = field(default_factory=dict)   # (what, pid, tid) -> name
    flows: list[tuple[str, str, str, float, int, str]] = field(default_factory=list)
    open_b: dict[tuple[str, str], list[Event]] = field(default_factory=dict)
    n_seen: int = 0
    extra: list[bytes | None] = field(default_factory=list)
    skip_cats: frozenset[str] = frozenset()

    def _codes(self, values: list[Any]) -> np.ndarray:
        """Global string codes for a batch (factorised in C, then mapped through the interner)."""
        if not values:
            return np.zeros(0, dtype=np.int32)
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        codes, uniques = pd.factorize(arr, use_na_sentinel=True)
        table = np.array([self.strings.code(None if u is None else str(u)) for u in uniques] + [0], dtype=np.int32)
        return table[codes]      # the NA sentinel (-1) picks the trailing 0: the empty string

    def _numbers(self, values: list[Any], what: str, xs: list[Event]) -> np.ndarray:
        try:
            arr = np.array(values, dtype=np.float64)
        except (TypeError, ValueError):
            arr = None
        if arr is None or np.isnan(arr).any():
            for e, v in zip(xs, values):
                if v is None:
                    raise UserError(f"{self.src}: event {e.name!r} at pid {e.pid}: '{e.ph}' event without '{what}'")
                _num(v, what, self.n_seen, self.src)
            arr = np.asarray([float(v) for v in values], dtype=np.float64)
        return arr

    def _args_of(self, events: list[Event]) -> list[Args | None]:
        """The events' args, decoded in one call over their raw JSON joined into one array."""
        raws = [e.args if e.args is not None else b"null" for e in events]
        try:
            return _decode_args(b"[" + b",".join(raws) + b"]")
        except msgspec.ValidationError:
            for e, raw in zip(events, raws):      # the error path only: name the event at fault
                try:
                    _decode_args(b"[" + bytes(raw) + b"]")
                except msgspec.ValidationError as exc:
                    where = str(exc).replace("`$[0]", "`args").replace("$[0]", "args")
                    raise UserError(f"{self.src}: event {e.name!r} at pid {e.pid} tid {e.tid} ts {e.ts}: "
                                    f"{where}") from None
            raise

    def _other(self, other: list[Event], xs: list[Event]) -> tuple[list[float], list[float]]:
        """The rare kinds: B/E pairs (appended to xs as slices), metadata names, flows."""
        ts_extra: list[float] = []
        dur_extra: list[float] = []
        for i, e in enumerate(x for x in other if x.ph in _PAIRED_OR_META):
            ph = e.ph
            if ph == "B":
                self.open_b.setdefault((str(e.pid), str(e.tid)), []).append(e)
            elif ph == "E":
                stack = self.open_b.get((str(e.pid), str(e.tid)))
                if stack:
                    b = stack.pop()
                    t0 = _num(b.ts, "ts", i, self.src)
                    xs.append(b)
                    ts_extra.append(t0)
                    dur_extra.append(_num(e.ts, "ts", i, self.src) - t0)
            elif ph == "M":
                if e.args is not None and e.name in ("process_name", "thread_name", "process_labels"):
                    a = self._args_of([e])[0] or _NO_ARGS
                    value = a.name if e.name != "process_labels" else a.labels
                    if value is not None:
                        self.names[(str(e.name), str(e.pid), str(e.tid))] = value.strip()
        flows = [e for e in other if e.ph in ("s", "f", "t") and e.ts is not None and e.id is not None]
        self.flows.extend((e.ph, str(e.pid), str(e.tid), _num(e.ts, "ts", 0, self.src),
                           e.id if isinstance(e.id, int) else hash(e.id), e.cat or "") for e in flows)
        return ts_extra, dur_extra

    def add(self, events: list[Event]) -> None:
        skip = self.skip_cats
        xs = [e for e in events if e.ph == "X" and e.cat not in skip]
        other = [e for e in events if e.ph != "X" and e.cat not in _LAUNCH_FLOWS]
        ts_extra, dur_extra = self._other(other, xs) if other else ([], [])
        self.n_seen += len(events)
        if not xs:
            return
        n = len(xs)
        n_plain = n - len(ts_extra)
        plain = xs[:n_plain]
        pids, tids = [e.pid for e in xs], [e.tid for e in xs]
        if None in pids or None in tids:
            bad = next(e for e in xs if e.pid is None or e.tid is None)
            raise UserError(f"{self.src}: event {bad.name!r}: 'X' event without 'pid' or 'tid'")
        ts = self._numbers([e.ts for e in plain], "ts", plain)
        dur = self._numbers([e.dur for e in plain], "dur", plain)
        if ts_extra:
            ts, dur = np.concatenate([ts, np.asarray(ts_extra)]), np.concatenate([dur, np.asarray(dur_extra)])
        c = self.cols
        c["start_us"].append(ts)
        c["dur_us"].append(dur)
        c["pid"].append(self._codes(pids))
        c["tid"].append(self._codes(tids))
        c["cat"].append(self._codes([e.cat for e in xs]))
        c["name"].append(self._codes([e.name for e in xs]))
        none = _NO_ARGS
        args = [a or none for a in self._args_of(xs)]
        c["correlation"].append(_ints([a.correlation for a in args]))
        c["stream"].append(_ints([a.stream for a in args]))
        if any(a.kind is not None or a.layer is not None for a in args):      # tracegen's args
            for k in ("rank", "layer", "microbatch"):
                c["arank" if k == "rank" else k].append(_ints([getattr(a, k) for a in args]))
            c["stage"].append(self._codes([a.stage for a in args]))
            c["akind"].append(self._codes([a.kind for a in args]))
            for k in ("flops", "bytes", "work_us"):
                c[k].append(np.array([getattr(a, k) for a in args], dtype=np.float64))
            self.extra.extend(
                msgspec.json.encode({"ops_us": a.ops_us, "cost_us": a.cost_us, "latency_us": a.latency_us,
                                     "post_us": a.post_us, "sms": a.sms, "load_factor": a.load_factor})
                if a.ops_us is not None or a.cost_us is not None else None for a in args)
        else:
            for k in ("arank", "layer", "microbatch"):
                c[k].append(np.full(n, -1, dtype=np.int64))
            for k in ("stage", "akind"):
                c[k].append(np.zeros(n, dtype=np.int32))
            for k in ("flops", "bytes", "work_us"):
                c[k].append(np.full(n, np.nan))
            self.extra.extend([None] * n)


def _ints(values: list[Any]) -> np.ndarray:
    """Integer ids (None and non-numbers as -1)."""
    try:
        return np.array([-1 if v is None else v for v in values], dtype=np.int64)
    except (TypeError, ValueError):
        return np.array([_int(v) for v in values], dtype=np.int64)


_PAIRED_OR_META = frozenset({"B", "E", "M"})
_LAUNCH_FLOWS = ("ac2g", "launch")   # CPU launch -> kernel links: the correlation column has them
# Framework-level CPU ops (aten::*, Python frames): a third of a Kineto trace that no analysis
# reads; kept with keep_cpu_ops=True. Runtime calls, annotations and kernels always load.
CPU_OP_CATS = frozenset({"cpu_op", "python_function"})
_COLS = ("pid", "tid", "cat", "name", "start_us", "dur_us", "correlation", "stream", "arank", "layer",
         "microbatch", "stage", "akind", "flops", "bytes", "work_us")


# ----------------------------------------------------------------------------- reading
def _open(path: Path, progress: Callable[[int], None]) -> tuple[Any, Any]:
    """The trace's JSON bytes as a read-only buffer (a memory map: no copy in RAM) and a closer.
    gzip (detected by its magic bytes, not the name) is first decompressed to a temporary file."""
    try:
        f: BinaryIO = open(path, "rb")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder (pass it as a folder of ranks, or name one file)") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with f:
        magic = f.read(2)
        f.seek(0)
        if magic == b"\x1f\x8b":
            tmp = tempfile.TemporaryFile(prefix="replay-", suffix=".json")
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            while raw := f.read(CHUNK // 2):
                progress(len(raw))
                try:
                    tmp.write(d.decompress(raw))
                except zlib.error as exc:
                    tmp.close()
                    raise UserError(f"{path}: corrupt gzip data ({exc})") from None
                if d.eof and d.unused_data:
                    tmp.close()
                    raise UserError(f"{path}: several gzip members; only one trace per file is supported")
            if not d.eof:
                tmp.close()
                raise UserError(f"{path}: truncated gzip file (the compressed stream ends early)")
            tmp.flush()
            src = tmp
        else:
            if str(path).endswith(".gz"):
                raise UserError(f"{path}: named .gz but not gzip data")
            src = open(path, "rb")
            progress(os.fstat(src.fileno()).st_size)
        size = os.fstat(src.fileno()).st_size
        if size == 0:
            src.close()
            raise UserError(f"{path}: empty file")
        buf = mmap.mmap(src.fileno(), 0, access=mmap.ACCESS_READ)

    def close() -> None:
        buf.close()
        src.close()
    return buf, close


def _json_error(path: Path, exc: Exception) -> UserError:
    msg = str(exc)
    if "truncated" in msg.lower() or "unexpected end" in msg.lower():
        return UserError(f"{path}: truncated JSON (the file ends inside the trace): {msg}")
    return UserError(f"{path}: not a valid trace: {msg}")


def _header(buf: Any, path: Path) -> tuple[str, int, dict[str, Any]]:
    """Where the events start ('object' form: after "traceEvents": [, or 'array' form), and the
    metadata written before them."""
    head_len = min(len(buf), 64 << 20)
    start = buf[:64].lstrip()
    if start[:1] == b"[":
        return "array", buf.find(b"[") + 1, {}
    if start[:1] != b"{":
        raise UserError(f"{path}: not a JSON trace (starts with {start[:20]!r})")
    k = buf.find(_KEY, 0, head_len)
    while k >= 0:
        bracket = _BRACKET.match(buf, k + len(_KEY))
        if bracket:
            meta: dict[str, Any] = {}
            head = buf[:k].rstrip()
            try:
                h = _decode_head(head + (b'"_":0}' if head.endswith((b"{", b",")) else b',"_":0}'))
                meta.update({k2: v for k2, v in msgspec.structs.asdict(h).items() if v is not None})
            except (msgspec.DecodeError, msgspec.ValidationError):
                pass   # a header we cannot read costs only the metadata
            return "object", bracket.end(), meta
        k = buf.find(_KEY, k + 1, head_len)
    raise UserError(f"{path}: JSON without 'traceEvents' (not a Chrome/Kineto trace)")


def _bracketed(buf: Any, start: int, end: int) -> bytearray:
    """'[' + buf[start:end] + ']' in one copy (a slice of the map, then two concatenations, made three)."""
    out = bytearray(end - start + 2)
    out[0], out[-1] = 0x5B, 0x5D
    out[1:-1] = memoryview(buf)[start:end]
    return out


def _cut(buf: Any, pos: int, before: int | None = None) -> int | None:
    """Position of the last '}' that ends an event (followed by ', {') in buf[pos:before]."""
    end = len(buf) if before is None else before
    lo = end
    while lo > pos:
        lo = max(pos, lo - (1 << 20))      # look back 1 MB at a time: events are far smaller
        last = None
        for m in _BOUNDARY.finditer(buf, lo, end):
            last = m.start()
        if last is not None:
            return last
    return None


def _consume(buf: Any, pos: int, end: int, cols: _Columns) -> int:
    """Decode whole events of buf[pos:end] a chunk at a time; returns where it stopped. A cut that
    falls inside a nested object cannot decode and moves back to the previous boundary."""
    while end - pos > CHUNK:
        cut = _cut(buf, pos, before=pos + CHUNK)
        while cut is not None:
            try:
                events = _decode_events(_bracketed(buf, pos, cut + 1))
            except (msgspec.DecodeError, msgspec.ValidationError):
                cut = _cut(buf, pos, before=cut)
                continue
            cols.add(events)
            pos = buf.find(b"{", cut + 1)
            break
        else:
            return pos       # no event boundary in a whole chunk: the rest is decoded at once
    return pos


def _event_start_at_or_after(buf: Any, offset: int, limit: int) -> int | None:
    """The first position >= offset where a top-level event begins, checked by decoding a few
    events from it (a '{' inside an event's args cannot decode as a list of events)."""
    for m in _BOUNDARY.finditer(buf, offset, min(limit, offset + (16 << 20))):
        cand = m.end() - 1
        cut = _cut(buf, cand, before=min(limit, cand + (256 << 10)))
        if cut is None:
            continue
        try:
            _decode_events(b"[" + buf[cand:cut + 1] + b"]")
            return cand
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
    return None


def _parse_range(path: str, start: int, end: int, last: bool, mode: str, skip: frozenset[str]) -> dict[str, Any]:
    """Parse events in buf[start:end] (the last range: to the end of the file, trailer included)."""
    buf = _SHARED[path]
    cols = _Columns(path, skip_cats=skip)
    meta: dict[str, Any] = {}
    stop = len(buf) if last else end
    pos = _consume(buf, start, stop, cols)
    rest = buf[pos:stop]
    try:
        if not last:
            cols.add(_decode_events(b"[" + rest.rstrip().rstrip(b",") + b"]"))
        elif mode == "object":
            tail = _decode_tail(b'{"traceEvents":[' + rest)
            cols.add(tail.traceEvents)
            meta.update({k: v for k, v in (("distributedInfo", tail.distributedInfo),
                                           ("otherData", tail.otherData)) if v is not None})
        else:
            body = rest.rstrip()
            body = body[:-1] if body.endswith(b"]") else body
            cols.add(_decode_events(b"[" + body.rstrip().rstrip(b",") + b"]"))
    except msgspec.ValidationError as exc:
        raise UserError(f"{path}: an event has a field of the wrong type: {exc}") from None
    except msgspec.DecodeError as exc:
        raise _json_error(Path(path), exc) from None
    return {"cols": {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in cols.cols.items()},
            "strings": list(cols.strings.index), "names": cols.names, "flows": cols.flows,
            "extra": cols.extra, "n_seen": cols.n_seen, "meta": meta, "paired": bool(cols.open_b)}


_SHARED: dict[str, Any] = {}        # path -> buffer, inherited by forked workers


def _workers() -> int:
    n = os.environ.get("REPLAY_WORKERS")
    return max(1, int(n)) if n else max(1, min(8, os.cpu_count() or 1))


def _parse(path: Path, progress: Callable[[int], None], keep_cpu_ops: bool = False) -> tuple[_Columns, dict[str, Any]]:
    """Header, then the events array in ranges: large files split at checked event boundaries and
    parsed by forked worker processes (one per core), small ones in this process."""
    buf, close = _open(path, progress)
    skip = frozenset() if keep_cpu_ops else CPU_OP_CATS
    key = str(path)
    try:
        mode, pos, meta = _header(buf, path)
        size = len(buf)
        workers = _workers()
        n_ranges = 1 if size < PARALLEL_MIN_BYTES or workers == 1 else 4 * workers
        starts = [pos]
        for k in range(1, n_ranges):
            s0 = _event_start_at_or_after(buf, pos + k * (size - pos) // n_ranges, size)
            if s0 is not None and s0 > starts[-1]:
                starts.append(s0)
        bounds = list(zip(starts, starts[1:] + [size]))
        _SHARED[key] = buf
        jobs = [(key, a, b, i == len(bounds) - 1, mode, skip) for i, (a, b) in enumerate(bounds)]
        if len(jobs) == 1:
            parts = [_parse_range(*jobs[0])]
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=mp.get_context("fork")) as ex:
                parts = list(ex.map(_parse_range, *zip(*jobs)))
        if any(p["paired"] for p in parts) and len(parts) > 1:
            parts = [_parse_range(key, pos, size, True, mode, skip)]     # B/E pairs may straddle ranges
    finally:
        _SHARED.pop(key, None)
        close()
    return _merge(parts, str(path), skip), {**meta, **parts[-1]["meta"]}


def _merge(parts: list[dict[str, Any]], src: str, skip: frozenset[str]) -> _Columns:
    """One set of columns from the ranges, string codes re-mapped to one interner."""
    cols = _Columns(src, skip_cats=skip)
    string_cols = ("pid", "tid", "cat", "name", "stage", "akind")
    for p in parts:
        remap = np.array([cols.strings.code(x) for x in p["strings"]], dtype=np.int32)
        for k, v in p["cols"].items():
            cols.cols[k].append(remap[v.astype(np.int64)] if k in string_cols and len(v) else v)
        cols.names.update(p["names"])
        cols.flows.extend(p["flows"])
        cols.extra.extend(p["extra"])
        cols.n_seen += p["n_seen"]
    return cols


# ----------------------------------------------------------------------------- table
def text(col: pd.Series) -> np.ndarray:
    """A column as an object array of str, the way `col.astype(str)` reads it; for the table's
    categorical columns the categories are turned to text once and picked by code (the whole
    column through astype(str) would build a string per row)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        cats = np.asarray([str(c) for c in col.cat.categories] + ["nan"], dtype=object)
        return cats[col.cat.codes.to_numpy()]            # code -1 (missing) picks the trailing "nan"
    return col.astype(str).to_numpy(dtype=object)


@dataclass
class Trace:
    """One or more ranks' events: `events` is the table every analysis reads."""
    events: pd.DataFrame
    flows: pd.DataFrame
    meta: dict[str, Any]
    sources: list[str]

    @property
    def generated(self) -> bool:
        return str(self.meta.get("otherData", {}).get("generator", "")).startswith("tracegen")


def _rank_from_name(path: Path) -> int | None:
    m = re.search(r"rank[_\-]?(\d+)", path.name, re.I) or re.search(r"[_\-.](\d+)\.json", path.name)
    return int(m.group(1)) if m else None


def _to_frame(cols: _Columns, meta: dict[str, Any], path: Path, default_rank: int | None) -> pd.DataFrame:
    c = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in cols.cols.items()}
    n = len(c["start_us"])
    strings = cols.strings
    cat_list = list(strings.index)                    # code -> string, shared by every string column
    cats_arr = np.array(cat_list, dtype=object)
    pid_codes = c["pid"].astype(np.int32)
    tid_codes = c["tid"].astype(np.int32)
    cat_codes = c["cat"].astype(np.int32)
    generated = str(meta.get("otherData", {}).get("generator", "")).startswith("tracegen")
    info = meta.get("distributedInfo")
    file_rank = info.get("rank") if isinstance(info, dict) else None
    if file_rank is None:
        file_rank = _rank_from_name(path) if default_rank is None else default_rank
    arank = c["arank"].astype(np.int32)
    if generated:
        pid_num = pd.to_numeric(pd.Series(cats_arr), errors="coerce").fillna(0).to_numpy()[pid_codes]
        rank = np.where(arank >= 0, arank, pid_num).astype(np.int32)
    else:
        rank = np.full(n, int(file_rank or 0), dtype=np.int32)
    gpu_codes = [strings.index[x] for x in GPU_CATS if x in strings.index]
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
    if any(x is not None for x in cols.extra):
        extra[:] = [x.decode() if x is not None else None for x in cols.extra]
    df = pd.DataFrame({
        "rank": rank,
        "pid": strings.categorical(pid_codes),
        "tid": strings.categorical(tid_codes),
        "thread": thread,
        "kind": pd.Categorical.from_codes(is_gpu.astype(np.int8), categories=["cpu", "gpu"]),
        "cat": strings.categorical(cat_codes),
        "name": strings.categorical(c["name"].astype(np.int32)),
        "start_us": c["start_us"].astype(np.float64),
        "dur_us": c["dur_us"].astype(np.float64),
        "correlation": c["correlation"].astype(np.int64),
        "stream": stream,
        "layer": c["layer"].astype(np.int32),
        "microbatch": c["microbatch"].astype(np.int32),
        "stage": strings.categorical(c["stage"].astype(np.int32)),
        "akind": strings.categorical(c["akind"].astype(np.int32)),
        "flops": c["flops"].astype(np.float64),
        "bytes": c["bytes"].astype(np.float64),
        "work_us": c["work_us"].astype(np.float64),
        "extra": extra,
    })
    for col in ("pid", "tid", "cat", "name", "stage", "akind"):
        df[col] = df[col].cat.remove_unused_categories()
    return df


def _flows_frame(cols: _Columns, rank_of_pid: dict[str, int]) -> pd.DataFrame:
    if not cols.flows:
        return pd.DataFrame({"ph": [], "pid": [], "tid": [], "ts": [], "id": [], "cat": [], "rank": []})
    ph, pid, tid, ts, fid, cat = zip(*cols.flows)
    return pd.DataFrame({"ph": ph, "pid": pid, "tid": tid, "ts": np.asarray(ts, dtype=np.float64),
                         "id": np.asarray(fid, dtype=np.int64), "cat": cat,
                         "rank": [rank_of_pid.get(p, 0) for p in pid]})


class _Progress:
    """A progress bar on stderr for long loads, only when stderr is a terminal."""

    def __init__(self, total: int, label: str, enabled: bool | None = None):
        self.total, self.done, self.label = max(total, 1), 0, label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.t0 = time.monotonic()
        self.last = 0.0

    def __call__(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < 0.2 and self.done < self.total:
            return
        self.last = now
        frac = min(1.0, self.done / self.total)
        bar = "#" * int(30 * frac)
        rate = self.done / 1e6 / max(now - self.t0, 1e-9)
        sys.stderr.write(f"\r{self.label} [{bar:<30}] {100 * frac:5.1f}% {rate:7.1f} MB/s")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and time.monotonic() - self.t0 > 0.5:
            sys.stderr.write("\n")


def load_file(path: str | Path, rank: int | None = None, progress: bool | None = None,
              keep_cpu_ops: bool = False) -> Trace:
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    bar = _Progress(size, path.name, progress)
    try:
        cols, meta = _parse(path, bar, keep_cpu_ops)
    finally:
        bar.close()
    if cols.n_seen == 0:
        raise UserError(f"{path}: the trace holds no events")
    df = _to_frame(cols, meta, path, rank)
    if df.empty:
        raise UserError(f"{path}: the trace holds no duration ('X') events to analyse")
    pairs = df[["pid", "rank"]].drop_duplicates("pid")
    rank_of_pid = dict(zip(pairs["pid"].astype(str), pairs["rank"]))
    meta["process_names"] = {p: n for (w, p, _), n in cols.names.items() if w == "process_name"}
    return Trace(df, _flows_frame(cols, rank_of_pid), meta, [str(path)])


def trace_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.endswith((".json", ".json.gz", ".pt.trace.json"))
                       and p.is_file())
        if not files:
            raise UserError(f"{path}: folder holds no .json or .json.gz traces")
        return files
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    return [path]


def load(path: str | Path, progress: bool | None = None) -> Trace:
    """A file, or a folder of per-rank files (rank from distributedInfo, else the file name)."""
    files = trace_files(Path(path))
    if len(files) == 1:
        return load_file(files[0], progress=progress)
    parts = [load_file(f, rank=i if _rank_from_name(f) is None else None, progress=progress)
             for i, f in enumerate(files)]
    events = pd.concat([p.events for p in parts], ignore_index=True)
    for col in ("pid", "tid", "thread", "cat", "name", "stage", "akind"):
        events[col] = events[col].astype("category")
    meta = dict(parts[0].meta)
    meta["files"] = [str(f) for f in files]
    return Trace(events, pd.concat([p.flows for p in parts], ignore_index=True), meta, [str(f) for f in files])


def file_size(path: str | Path) -> int:
    return sum(os.path.getsize(f) for f in trace_files(Path(path)))


__all__ = ["Trace", "load", "load_file", "Event", "Args"]
