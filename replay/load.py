"""Load Chrome / Kineto traces (PyTorch profiler JSON, `.json` or `.json.gz`, one file or a folder of
ranks, tracegen's own output) into one columnar event table.

The file is streamed: the `traceEvents` array is cut at event boundaries into chunks of a few MB,
each chunk is decoded by msgspec straight into small typed structs (fields we never read are
skipped), and turned into columns at once, so only the columns and one chunk live in memory.
A cut that falls inside a nested object cannot decode and is moved back to the previous boundary."""
from __future__ import annotations

import os
import re
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import msgspec
import numpy as np
import pandas as pd

from tracegen.errors import UserError

CHUNK = 8 << 20                      # bytes of JSON decoded per step
GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset", "gpu_user_annotation", "compute", "comm"}
_BOUNDARY = re.compile(rb"\}\s*,\s*\{")
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
    args: Args | None = None


class _Tail(msgspec.Struct):
    traceEvents: list[Event]
    distributedInfo: dict[str, Any] | None = None
    otherData: dict[str, Any] | None = None


class _Head(msgspec.Struct):
    distributedInfo: dict[str, Any] | None = None
    otherData: dict[str, Any] | None = None
    deviceProperties: list[dict[str, Any]] | None = None


_decode_events = msgspec.json.Decoder(list[Event]).decode
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

    def _codes(self, values: list[Any]) -> np.ndarray:
        """Global string codes for a batch (factorised in C, then mapped through the interner)."""
        if not values:
            return np.zeros(0, dtype=np.int32)
        codes, uniques = pd.factorize(pd.Series(values, dtype=object), use_na_sentinel=True)
        table = np.array([self.strings.code(None if u is None else str(u)) for u in uniques] + [0], dtype=np.int32)
        return table[codes]      # the NA sentinel (-1) picks the trailing 0: the empty string

    def _numbers(self, values: list[Any], what: str, xs: list[Event]) -> np.ndarray:
        try:
            arr = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            arr = None
        if arr is None or np.isnan(arr).any():
            for e, v in zip(xs, values):
                if v is None:
                    raise UserError(f"{self.src}: event {e.name!r} at pid {e.pid}: '{e.ph}' event without '{what}'")
                _num(v, what, self.n_seen, self.src)
            arr = np.asarray([float(v) for v in values], dtype=np.float64)
        return arr

    def add(self, events: list[Event]) -> None:
        xs = [e for e in events if e.ph == "X"]
        other = [e for e in events if e.ph != "X"] if len(xs) != len(events) else []
        ts_extra: list[float] = []
        dur_extra: list[float] = []
        for i, e in enumerate(other):       # rare kinds: B/E pairs, metadata
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
                    value = e.args.name if e.name != "process_labels" else e.args.labels
                    if value is not None:
                        self.names[(str(e.name), str(e.pid), str(e.tid))] = value.strip()
        flows = [e for e in other if e.ph in ("s", "f", "t") and e.cat not in _LAUNCH_FLOWS
                 and e.ts is not None and e.id is not None]
        self.flows.extend((e.ph, str(e.pid), str(e.tid), _num(e.ts, "ts", 0, self.src),
                           e.id if isinstance(e.id, int) else hash(e.id), e.cat or "") for e in flows)
        self.n_seen += len(events)
        if not xs:
            return
        n_plain = len(xs) - len(ts_extra)
        plain = xs[:n_plain]
        for e in plain:
            if e.pid is None or e.tid is None:
                raise UserError(f"{self.src}: event {e.name!r}: 'X' event without 'pid' or 'tid'")
        ts = np.concatenate([self._numbers([e.ts for e in plain], "ts", plain), np.asarray(ts_extra)])
        dur = np.concatenate([self._numbers([e.dur for e in plain], "dur", plain), np.asarray(dur_extra)])
        args = [e.args for e in xs]
        c = self.cols
        c["start_us"].append(ts)
        c["dur_us"].append(dur)
        c["pid"].append(self._codes([str(e.pid) for e in xs]))
        c["tid"].append(self._codes([str(e.tid) for e in xs]))
        c["cat"].append(self._codes([e.cat for e in xs]))
        c["name"].append(self._codes([e.name for e in xs]))
        if all(a is None for a in args):
            n = len(xs)
            for k in ("correlation", "stream", "arank", "layer", "microbatch"):
                c[k].append(np.full(n, -1, dtype=np.int64))
            for k in ("stage", "akind"):
                c[k].append(np.zeros(n, dtype=np.int32))
            for k in ("flops", "bytes", "work_us"):
                c[k].append(np.full(n, np.nan))
            self.extra.extend([None] * n)
            return
        none = Args()
        args = [a if a is not None else none for a in args]
        c["correlation"].append(np.asarray([_int(a.correlation if a.correlation is not None else a.external_id)
                                            for a in args], dtype=np.int64))
        c["stream"].append(np.asarray([_int(a.stream) for a in args], dtype=np.int64))
        for k in ("rank", "layer", "microbatch"):
            col = "arank" if k == "rank" else k
            c[col].append(np.asarray([-1 if getattr(a, k) is None else getattr(a, k) for a in args], dtype=np.int64))
        c["stage"].append(self._codes([a.stage for a in args]))
        c["akind"].append(self._codes([a.kind for a in args]))
        for k in ("flops", "bytes", "work_us"):
            c[k].append(np.asarray([np.nan if getattr(a, k) is None else getattr(a, k) for a in args],
                                   dtype=np.float64))
        self.extra.extend(
            msgspec.json.encode({"ops_us": a.ops_us, "cost_us": a.cost_us, "latency_us": a.latency_us,
                                 "post_us": a.post_us, "sms": a.sms, "load_factor": a.load_factor})
            if a.ops_us is not None or a.cost_us is not None else None for a in args)


_LAUNCH_FLOWS = ("ac2g", "launch")   # CPU launch -> kernel links: the correlation column has them
_COLS = ("pid", "tid", "cat", "name", "start_us", "dur_us", "correlation", "stream", "arank", "layer",
         "microbatch", "stage", "akind", "flops", "bytes", "work_us")


# ----------------------------------------------------------------------------- reading
def _open_chunks(path: Path, progress: Callable[[int], None]) -> Iterator[bytes]:
    """Raw JSON bytes in pieces; gzip is detected by its magic bytes, not the file name."""
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
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            while True:
                raw = f.read(CHUNK // 4)
                if not raw:
                    break
                progress(len(raw))
                try:
                    out = d.decompress(raw)
                except zlib.error as exc:
                    raise UserError(f"{path}: corrupt gzip data ({exc})") from None
                if out:
                    yield out
                if d.eof and d.unused_data:
                    raise UserError(f"{path}: several gzip members; only one trace per file is supported")
            if not d.eof:
                raise UserError(f"{path}: truncated gzip file (the compressed stream ends early)")
            return
        if str(path).endswith(".gz"):
            raise UserError(f"{path}: named .gz but not gzip data")
        while True:
            raw = f.read(CHUNK)
            if not raw:
                break
            progress(len(raw))
            yield raw


def _json_error(path: Path, exc: Exception) -> UserError:
    msg = str(exc)
    if "truncated" in msg.lower() or "unexpected end" in msg.lower():
        return UserError(f"{path}: truncated JSON (the file ends inside the trace): {msg}")
    return UserError(f"{path}: not a valid trace: {msg}")


def _parse(path: Path, progress: Callable[[int], None]) -> tuple[_Columns, dict[str, Any]]:
    cols = _Columns(str(path))
    meta: dict[str, Any] = {}
    chunks = _open_chunks(path, progress)
    buf = b""
    eof = False

    def more() -> bool:
        nonlocal buf, eof
        if eof:
            return False
        try:
            buf += next(chunks)
            return True
        except StopIteration:
            eof = True
            return False

    # header: up to the traceEvents array (object form) or the opening bracket (array form)
    while True:
        stripped = buf.lstrip()
        if stripped[:1] == b"[":
            mode, pos = "array", len(buf) - len(stripped) + 1
            break
        if stripped[:1] not in (b"{", b""):
            raise UserError(f"{path}: not a JSON trace (starts with {stripped[:20]!r})")
        k = buf.find(_KEY)
        if k >= 0:
            bracket = re.compile(rb"\s*:\s*\[").match(buf, k + len(_KEY))
            if bracket:
                head = buf[:k].rstrip()
                try:
                    h = _decode_head(head + (b'"_":0}' if head.endswith((b"{", b",")) else b',"_":0}'))
                    meta.update({k2: v for k2, v in msgspec.structs.asdict(h).items() if v is not None})
                except (msgspec.DecodeError, msgspec.ValidationError):
                    pass   # a header we cannot read costs only the metadata
                mode, pos = "object", bracket.end()
                break
        if not more():
            if not buf.strip():
                raise UserError(f"{path}: empty file")
            raise UserError(f"{path}: JSON without 'traceEvents' (not a Chrome/Kineto trace)")
    # events
    while True:
        while len(buf) - pos < CHUNK and more():
            pass
        if eof:
            break
        cut = _cut(buf, pos)
        while cut is not None:
            try:
                events = _decode_events(b"[" + buf[pos:cut + 1] + b"]")
            except (msgspec.DecodeError, msgspec.ValidationError):
                cut = _cut(buf, pos, before=cut)
                continue
            cols.add(events)
            nxt = buf.index(b"{", cut + 1)
            buf, pos = buf[nxt:], 0
            break
        else:
            if not more():
                break
    rest = buf[pos:]
    try:
        if mode == "object":
            tail = _decode_tail(b'{"traceEvents":[' + rest)
            cols.add(tail.traceEvents)
            meta.update({k: v for k, v in (("distributedInfo", tail.distributedInfo),
                                           ("otherData", tail.otherData)) if v is not None})
        else:
            body = rest.rstrip()
            body = body[:-1] if body.endswith(b"]") else body
            body = body.rstrip().rstrip(b",")
            cols.add(_decode_events(b"[" + body + b"]"))
    except msgspec.ValidationError as exc:
        raise UserError(f"{path}: an event has a field of the wrong type: {exc}") from None
    except msgspec.DecodeError as exc:
        raise _json_error(path, exc) from None
    return cols, meta


def _cut(buf: bytes, pos: int, before: int | None = None) -> int | None:
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


# ----------------------------------------------------------------------------- table
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
    pid_codes = np.asarray(c["pid"], dtype=np.int32)
    tid_codes = np.asarray(c["tid"], dtype=np.int32)
    cats = strings.categorical(np.asarray(c["cat"], dtype=np.int32))
    pid = strings.categorical(pid_codes)
    tid = strings.categorical(tid_codes)
    generated = str(meta.get("otherData", {}).get("generator", "")).startswith("tracegen")
    file_rank = meta.get("distributedInfo", {}).get("rank") if isinstance(meta.get("distributedInfo"), dict) else None
    if file_rank is None:
        file_rank = _rank_from_name(path) if default_rank is None else default_rank
    arank = np.asarray(c["arank"], dtype=np.int32)
    if generated:
        rank = np.where(arank >= 0, arank, pd.to_numeric(pid.astype(str), errors="coerce")).astype(np.int32)
    else:
        rank = np.full(n, int(file_rank or 0), dtype=np.int32)
    cat_arr = np.asarray(cats.astype(str)) if n else np.array([], dtype=object)
    is_gpu = np.isin(cat_arr, list(GPU_CATS))
    stream = np.asarray(c["stream"], dtype=np.int64)
    # thread / stream label: the trace's own thread name where it has one
    names = cols.names
    tid_str = np.asarray(tid.astype(str)) if n else np.array([], dtype=object)
    pid_str = np.asarray(pid.astype(str)) if n else np.array([], dtype=object)
    pairs = pd.Series(list(zip(pid_str, tid_str)), dtype=object) if n else pd.Series([], dtype=object)
    uniq = {p: names.get(("thread_name", p[0], p[1]), f"thread {p[1]}") for p in set(pairs)}
    thread = pd.Categorical(pairs.map(uniq)) if n else pd.Categorical([])
    df = pd.DataFrame({
        "rank": rank,
        "pid": pid,
        "tid": tid,
        "thread": thread,
        "kind": pd.Categorical(np.where(is_gpu, "gpu", "cpu"), categories=["cpu", "gpu"]),
        "cat": cats,
        "name": strings.categorical(np.asarray(c["name"], dtype=np.int32)),
        "start_us": np.asarray(c["start_us"], dtype=np.float64),
        "dur_us": np.asarray(c["dur_us"], dtype=np.float64),
        "correlation": np.asarray(c["correlation"], dtype=np.int64),
        "stream": np.where(is_gpu & (stream < 0), pd.to_numeric(tid_str, errors="coerce"), stream)
        if n else stream,
        "layer": np.asarray(c["layer"], dtype=np.int32),
        "microbatch": np.asarray(c["microbatch"], dtype=np.int32),
        "stage": strings.categorical(np.asarray(c["stage"], dtype=np.int32)),
        "akind": strings.categorical(np.asarray(c["akind"], dtype=np.int32)),
        "flops": np.asarray(c["flops"], dtype=np.float64),
        "bytes": np.asarray(c["bytes"], dtype=np.float64),
        "work_us": np.asarray(c["work_us"], dtype=np.float64),
        "extra": pd.array([x.decode() if x is not None else None for x in cols.extra], dtype="string"),
    })
    df["stream"] = df["stream"].fillna(-1).astype(np.int64)
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


def load_file(path: str | Path, rank: int | None = None, progress: bool | None = None) -> Trace:
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    bar = _Progress(size, path.name, progress)
    try:
        cols, meta = _parse(path, bar)
    finally:
        bar.close()
    if cols.n_seen == 0:
        raise UserError(f"{path}: the trace holds no events")
    df = _to_frame(cols, meta, path, rank)
    if df.empty:
        raise UserError(f"{path}: the trace holds no duration ('X') events to analyse")
    rank_of_pid = dict(zip(df["pid"].astype(str), df["rank"]))
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
