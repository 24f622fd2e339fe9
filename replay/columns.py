"""Decoded trace events to numpy columns: the part of loading a trace that needs no pandas (so it
can run while the analysis modules still import, prefetch.py). Each range of a file fills one
_Columns sink (its X slices as typed columns, strings as integer codes, the short framework ops,
flows and names); _merge joins the ranges' sinks. events.py turns the columns into the table."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from tracegen.base import contract
from tracegen.base.errors import UserError

from .kineto import NO_ARGS, Event, decode_args

# tracegen's args that become columns of their own; its other read args travel in `extra`
_COLUMN_ARGS = ("correlation", "rank", "layer", "microbatch", "stage", "kind", "flops", "bytes", "work_us")
EXTRA_ARGS = tuple(k.name for k in contract.read_keys(contract.SLICE_ARGS) if k.name not in _COLUMN_ARGS)
STRING_COLUMNS = ("pid", "tid", "thread", "cat", "name", "stage", "stage_stream")
_INTERNED = tuple(c for c in STRING_COLUMNS if c != "thread")   # coded through the interner while parsing
FRAMEWORK_OP = "cpu_op"            # the category of framework ops (aten::mm, ...) in Kineto traces
_LEGACY = contract.KINETO_LEGACY_CATS
_FRAMEWORK_OPS = frozenset({FRAMEWORK_OP} | {k for k, v in _LEGACY.items() if v == FRAMEWORK_OP})   # "Operator" too
CPU_OP_CATS = frozenset(contract.KINETO_CPU_OPS) | _FRAMEWORK_OPS   # short ones skipped unless keep_cpu_ops
# framework CPU spans at least this long are kept even so: only they can hold a CPU stall long enough
# to starve the GPU, which findings.py names (`blocking_call`); of the millions of short ones only the
# outermost framework ops of each thread (an op inside no other op) are kept, so that findings.py can
# tell host work inside an op (overhead on the launch path) from host work outside any op
KEEP_CPU_SPAN_US = 100.0
MODULE_PREFIX = "nn.Module:"       # Python-tracer ranges of nn.Modules (with_stack=True): always kept
_PAIRED_OR_META = frozenset({"B", "E", "M"})
MAX_TS_US = 1e17          # ~3,000 years: a timestamp beyond this is corrupt
MAX_DUR_US = 86_400e6     # one day
_COLS = ("pid", "tid", "cat", "name", "start_us", "dur_us", "correlation", "stream", "arank", "layer",
         "microbatch", "stage", "stage_stream", "flops", "bytes", "work_us")
_OP_COLS = ("pid", "tid", "name", "start_us", "dur_us")     # the skipped framework ops (candidates to keep)


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


def _num(x: Any, what: str, i: int, src: str) -> float:
    if isinstance(x, (int, float)):
        return float(x)
    try:
        return float(x)
    except (TypeError, ValueError):
        raise UserError(f"{src}: event {i}: field '{what}' is {x!r}, not a number") from None


_NUM = (int, float)


def _int(x: Any) -> int:
    """An id as an int64 (-1: none, not a number, or beyond int64)."""
    if isinstance(x, str) and x.lstrip("-").isdigit():
        x = int(x)
    if isinstance(x, int) and not isinstance(x, bool) and -(2 ** 63) <= x < 2 ** 63:
        return x
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
    ops: dict[str, list] = field(default_factory=lambda: {k: [] for k in _OP_COLS})   # short framework ops
    skip_cats: frozenset[str] = frozenset()
    negative: int = 0                    # slices with a negative duration, left out
    negative_example: str = ""

    def _codes(self, values: list[Any]) -> np.ndarray:
        """Global string codes for a batch: each distinct value through the interner once, then every
        value looked up in C (a batch holds few distinct pids, threads, categories and names)."""
        if not values:
            return np.zeros(0, dtype=np.int32)
        lut = {u: self.strings.code(None if u is None else str(u)) for u in set(values)}
        if len(lut) == 1:          # one process or thread in the batch: no lookup per value
            return np.full(len(values), next(iter(lut.values())), dtype=np.int32)
        return np.fromiter(map(lut.__getitem__, values), dtype=np.int32, count=len(values))

    def _plausible(self, ts: np.ndarray, dur: np.ndarray, xs: list[Event]) -> None:
        """Times must be finite microseconds of a plausible size (Kineto counts from the epoch,
        ~1.7e15 us; a duration of more than a day is not a slice of one run)."""
        bad = ~np.isfinite(ts) | (np.abs(ts) > MAX_TS_US) | ~np.isfinite(dur) | (dur > MAX_DUR_US)
        if bad.any():
            i = int(np.argmax(bad))
            e = xs[i]
            raise UserError(f"{self.src}: event {e.name!r} at pid {e.pid} tid {e.tid}: ts {float(ts[i])!r} / "
                            f"dur {float(dur[i])!r} is not a plausible time in microseconds")

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
                    a = decode_args([e], self.src)[0] or NO_ARGS
                    value = a.name if e.name != "process_labels" else a.labels
                    if value is not None:
                        self.names[(str(e.name), str(e.pid), str(e.tid))] = value.strip()
        flows = [e for e in other if e.ph in ("s", "f", "t") and e.ts is not None and e.id is not None]
        self.flows.extend((e.ph, str(e.pid), str(e.tid), _num(e.ts, "ts", 0, self.src),
                           e.id if isinstance(e.id, int) else hash(e.id), e.cat or "") for e in flows)
        return ts_extra, dur_extra

    def _short_ops(self, ops: list[Event]) -> None:
        """The framework ops left out as short (numeric ts and dur): their times, threads and names, from
        which the outermost ones of each thread are kept (_outermost_ops)."""
        if not ops:
            return
        o = self.ops
        ts = np.array([e.ts for e in ops], dtype=np.float64)
        dur = np.array([e.dur for e in ops], dtype=np.float64)
        ok = np.isfinite(ts) & np.isfinite(dur) & (dur >= 0) & (np.abs(ts) <= MAX_TS_US)
        o["start_us"].append(ts[ok])
        o["dur_us"].append(dur[ok])
        o["pid"].append(self._codes([e.pid for e in ops])[ok])     # attribute loads: getattr(e, k) costs 2x
        o["tid"].append(self._codes([e.tid for e in ops])[ok])
        o["name"].append(self._codes([e.name for e in ops])[ok])

    def _partition(self, events: list[Event]) -> tuple[list[Event], list[Event], list[Event]]:
        """One pass: the complete slices kept (every 'X' outside the skipped categories, and skipped
        ones of KEEP_CPU_SPAN_US or more and nn.Module ranges), the short framework ops, and the other phases."""
        skip, flows, keep = self.skip_cats, contract.LAUNCH_FLOWS, KEEP_CPU_SPAN_US
        short_ops = FRAMEWORK_OP in skip
        xs: list[Event] = []
        short: list[Event] = []
        other: list[Event] = []
        for e in events:
            if e.ph == "X":
                c = e.cat
                if c not in skip:
                    xs.append(e)
                    continue
                d = e.dur
                if (type(d) in _NUM and d >= keep) or (c == "python_function" and isinstance(e.name, str)
                                                        and e.name.startswith(MODULE_PREFIX)):
                    xs.append(e)
                elif short_ops and c in _FRAMEWORK_OPS and type(e.ts) in _NUM and type(d) in _NUM:
                    short.append(e)
            elif e.cat not in flows:
                other.append(e)
        return xs, short, other

    def add(self, events: list[Event]) -> None:
        xs, short, other = self._partition(events)
        self._short_ops(short)
        ts_extra, dur_extra = self._other(other, xs) if other else ([], [])
        self.n_seen += len(events)
        if not xs:
            return
        n_plain = len(xs) - len(ts_extra)
        plain = xs[:n_plain]
        ts = self._numbers([e.ts for e in plain], "ts", plain)
        dur = self._numbers([e.dur for e in plain], "dur", plain)
        if ts_extra:
            ts, dur = np.concatenate([ts, np.asarray(ts_extra)]), np.concatenate([dur, np.asarray(dur_extra)])
        self._plausible(ts, dur, xs)
        negative = dur < 0
        if negative.any():       # not fatal: left out of the table, reported as suspicious input
            self.negative += int(negative.sum())
            self.negative_example = self.negative_example or str(xs[int(np.argmax(negative))].name)
            keep = ~negative
            xs = [e for e, k in zip(xs, keep) if k]
            ts, dur = ts[keep], dur[keep]
            if not xs:
                return
        n = len(xs)
        pids, tids = [e.pid for e in xs], [e.tid for e in xs]
        if None in pids or None in tids:
            bad = next(e for e in xs if e.pid is None or e.tid is None)
            raise UserError(f"{self.src}: event {bad.name!r}: 'X' event without 'pid' or 'tid'")
        c = self.cols
        c["start_us"].append(ts)
        c["dur_us"].append(dur)
        c["pid"].append(self._codes(pids))
        c["tid"].append(self._codes(tids))
        c["cat"].append(self._codes([e.cat if e.cat not in _LEGACY else _legacy_cat(e) for e in xs]))
        c["name"].append(self._codes([e.name for e in xs]))
        none = NO_ARGS
        args = [a or none for a in decode_args(xs, self.src)]
        c["correlation"].append(_ints([a.correlation for a in args]))
        c["stream"].append(_ints([a.stream for a in args]))
        if any(a.kind is not None or a.layer is not None for a in args):      # tracegen's args (the contract)
            for k in ("rank", "layer", "microbatch"):
                c["arank" if k == "rank" else k].append(_ints([getattr(a, k) for a in args]))
            c["stage"].append(self._codes([a.stage for a in args]))
            c["stage_stream"].append(self._codes([a.kind for a in args]))
            for k in ("flops", "bytes", "work_us"):
                c[k].append(np.array([getattr(a, k) for a in args], dtype=np.float64))
            for a in args:
                x = {k: v for k in EXTRA_ARGS if (v := getattr(a, k)) is not None}
                self.extra.append(msgspec.json.encode(x) if x else None)
        else:
            for k in ("arank", "layer", "microbatch"):
                c[k].append(np.full(n, -1, dtype=np.int64))
            for k in ("stage", "stage_stream"):
                c[k].append(np.zeros(n, dtype=np.int32))
            for k in ("flops", "bytes", "work_us"):
                c[k].append(np.full(n, np.nan))
            self.extra.extend([None] * n)

    @property
    def paired(self) -> bool:
        """An unmatched 'B' event is open: its 'E' may lie in another range."""
        return bool(self.open_b)

    def result(self) -> dict[str, Any]:
        """The columns of this sink's events, picklable (a worker process returns it)."""
        return {"cols": {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in self.cols.items()},
                "ops": {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in self.ops.items()},
                "strings": list(self.strings.index), "names": self.names, "flows": self.flows,
                "extra": self.extra, "n_seen": self.n_seen,
                "negative": self.negative, "negative_example": self.negative_example}


def _legacy_cat(e: Event) -> str:
    """Today's category of an event in PyTorch 1.8-1.10's naming; their ProfilerStep#N ranges were
    'Operator' too, but they are steps, not framework ops (today's user_annotation)."""
    cat = _LEGACY[e.cat]  # type: ignore[index]
    if cat == FRAMEWORK_OP and isinstance(e.name, str) and e.name.startswith("ProfilerStep#"):
        return contract.KINETO_ANNOTATION
    return cat


def _ints(values: list[Any]) -> np.ndarray:
    """Integer ids (None and non-numbers as -1)."""
    try:
        return np.array([-1 if v is None else v for v in values], dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        return np.array([_int(v) for v in values], dtype=np.int64)


def _merge(parts: list[dict[str, Any]], src: str, skip: frozenset[str]) -> _Columns:
    """One set of columns from the ranges, string codes re-mapped to one interner."""
    cols = _Columns(src, skip_cats=skip)
    for p in parts:
        remap = np.array([cols.strings.code(x) for x in p["strings"]], dtype=np.int32)
        for k, v in p["cols"].items():
            cols.cols[k].append(remap[v.astype(np.int64)] if k in _INTERNED and len(v) else v)
        for k, v in p.get("ops", {}).items():
            cols.ops[k].append(remap[v.astype(np.int64)] if k in ("pid", "tid", "name") and len(v) else v)
        cols.names.update(p["names"])
        cols.flows.extend(p["flows"])
        cols.extra.extend(p["extra"])
        cols.n_seen += p["n_seen"]
        cols.negative += p["negative"]
        cols.negative_example = cols.negative_example or p["negative_example"]
    return cols
