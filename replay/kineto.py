"""The trace file format: Chrome / Kineto JSON (PyTorch profiler traces, `.json` or `.json.gz`,
and tracegen's own output), decoded into small typed event structs. No table here: a sink
(replay/events.py) turns each batch of decoded events into columns.

The file is memory-mapped (gzip first decompressed to a temporary file) and its `traceEvents`
array cut at event boundaries into chunks of a few MB, each decoded by msgspec straight into
structs (fields no analysis reads are skipped; `args` are kept raw and decoded only for the events
a sink keeps). A cut that falls inside a nested object cannot decode and is moved back to the
previous boundary. Large files are split into ranges at checked event boundaries and parsed by
forked worker processes, one per core."""
from __future__ import annotations

import mmap
import os
import re
import sys
import tempfile
import time
import zlib
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Callable, Protocol

import msgspec

from tracegen.base import contract
from tracegen.base.errors import UserError

CHUNK = 8 << 20                      # bytes of JSON decoded per step
PARALLEL_MIN_BYTES = 48 << 20        # smaller files are parsed in one process
_BOUNDARY = re.compile(rb"\}\s*,\s*\{")
_BRACKET = re.compile(rb"\s*:\s*\[")
_KEY = b'"traceEvents"'

_JSON_TYPE = {int: int, float: float, str: str, bool: bool, dict: dict[str, float], list: list}
_KINETO_ARGS = [("correlation", int | str | None, None),     # Kineto's launch <-> kernel id (tracegen's too)
                ("stream", int | str | None, None),          # CUDA stream of a kernel
                ("name", str | None, None),                  # metadata events: process / thread name
                ("labels", str | None, None)]                # metadata events: process labels
# The args decoded from each event: Kineto's, and tracegen's as the contract declares them (the keys
# some tool reads); everything else in an event's args is skipped by the decoder.
Args = msgspec.defstruct("Args", _KINETO_ARGS + [
    (k.name, _JSON_TYPE[k.type] | None, None) for k in contract.read_keys(contract.SLICE_ARGS)
    if k.name not in {n for n, _, _ in _KINETO_ARGS}], gc=False)
NO_ARGS = Args()

class Event(msgspec.Struct, gc=False):
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
_decode_args = msgspec.json.Decoder(list[Args | None]).decode  # type: ignore[valid-type]
_decode_tail = msgspec.json.Decoder(_Tail).decode
_decode_head = msgspec.json.Decoder(_Head).decode


def decode_args(events: list[Event], src: str) -> list[Any]:
    """The events' args (an Args or None each), decoded in one call over their raw JSON joined
    into one array; a wrong-typed field names its event."""
    raws = [e.args if e.args is not None else b"null" for e in events]
    try:
        return _decode_args(b"[" + b",".join(raws) + b"]")
    except msgspec.ValidationError:
        for e, raw in zip(events, raws):      # the error path only: name the event at fault
            try:
                _decode_args(b"[" + bytes(raw) + b"]")
            except msgspec.ValidationError as exc:
                where = str(exc).replace("`$[0]", "`args").replace("$[0]", "args")
                raise UserError(f"{src}: event {e.name!r} at pid {e.pid} tid {e.tid} ts {e.ts}: {where}") from None
        raise


class Sink(Protocol):
    """What the reader hands decoded events to (replay/events.py builds columns)."""
    paired: bool          # holds an unmatched 'B' event: ranges must not be split

    def add(self, events: list[Event]) -> None: ...

    def result(self) -> dict[str, Any]: ...


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
        # a private copy-on-write map: _consume writes the brackets of each chunk into the bytes between
        # two events (the file itself is never written; only the two pages touched are copied)
        buf = mmap.mmap(src.fileno(), 0, access=mmap.ACCESS_COPY)

    def close() -> None:
        try:
            buf.close()
        except BufferError:      # an event's raw args still view the map (an error's traceback): freed with it
            pass
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
    bom = 3 if buf[:3] == b"\xef\xbb\xbf" else 0          # a UTF-8 byte-order mark, as some editors write
    start = buf[bom:bom + 64].lstrip()
    if start[:1] == b"[":
        return "array", buf.find(b"[") + 1, {}
    if start[:1] != b"{":
        if path.suffix in (".pftrace", ".perfetto-trace", ".pb", ".proto"):
            raise UserError(f"{path}: a Perfetto protobuf trace, not Chrome / Kineto JSON: replay reads JSON "
                            "(tracegen writes it with -o NAME.json.gz; torch.profiler with export_chrome_trace)")
        raise UserError(f"{path}: not a JSON trace (starts with {start[:20]!r})")
    k = buf.find(_KEY, 0, head_len)
    while k >= 0:
        bracket = _BRACKET.match(buf, k + len(_KEY))
        if bracket:
            meta: dict[str, Any] = {}
            head = buf[bom:k].rstrip()
            try:
                h = _decode_head(head + (b'"_":0}' if head.endswith((b"{", b",")) else b',"_":0}'))
                meta.update({k2: v for k2, v in msgspec.structs.asdict(h).items() if v is not None})
            except (msgspec.DecodeError, msgspec.ValidationError):
                pass   # a header we cannot read costs only the metadata
            return "object", bracket.end(), meta
        k = buf.find(_KEY, k + 1, head_len)
    raise UserError(f"{path}: JSON without 'traceEvents' (not a Chrome/Kineto trace)")


def _decode_between(buf: Any, start: int, end: int) -> list[Event]:
    """The events of buf[start:end] (whole events, start > 0), decoded in place: '[' and ']' are
    written over the bytes just outside them - a separator (',' or white space) or the array's own
    '[' - and put back after, so no copy of the chunk is made. The events' raw args view the map."""
    before, after = buf[start - 1], buf[end]
    buf[start - 1], buf[end] = 0x5B, 0x5D
    try:
        return _decode_events(memoryview(buf)[start - 1:end + 1])
    finally:
        buf[start - 1], buf[end] = before, after


def _cut(buf: Any, pos: int, before: int | None = None) -> int | None:
    """Position of the last '}' that ends an event (followed by ', {') in buf[pos:before]: the last
    '}' found backwards whose separator matches within the window (most often the first one tried)."""
    end = len(buf) if before is None else before
    hi = end
    while hi > pos:
        i = buf.rfind(b"}", pos, hi)
        if i < 0:
            return None
        if _BOUNDARY.match(buf, i, end):
            return i
        hi = i
    return None


def _consume(buf: Any, pos: int, end: int, sink: Sink) -> int:
    """Decode whole events of buf[pos:end] a chunk at a time; returns where it stopped. A cut that
    falls inside a nested object cannot decode and moves back to the previous boundary."""
    while end - pos > CHUNK:
        cut = _cut(buf, pos, before=pos + CHUNK)
        while cut is not None:
            try:
                events = _decode_between(buf, pos, cut + 1)
            except (msgspec.DecodeError, msgspec.ValidationError):
                cut = _cut(buf, pos, before=cut)
                continue
            sink.add(events)
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


def _parse_range(path: str, start: int, end: int, last: bool, mode: str,
                 make_sink: Callable[[], Sink]) -> dict[str, Any]:
    """Parse events in buf[start:end] (the last range: to the end of the file, trailer included)."""
    buf = _SHARED[path]
    sink = make_sink()
    meta: dict[str, Any] = {}
    stop = len(buf) if last else end
    pos = _consume(buf, start, stop, sink)
    rest = buf[pos:stop]
    try:
        if not last:
            sink.add(_decode_events(b"[" + rest.rstrip().rstrip(b",") + b"]"))
        elif mode == "object":
            tail = _decode_tail(b'{"traceEvents":[' + rest)
            sink.add(tail.traceEvents)
            meta.update({k: v for k, v in (("distributedInfo", tail.distributedInfo),
                                           ("otherData", tail.otherData)) if v is not None})
        else:
            body = rest.rstrip()
            body = body[:-1] if body.endswith(b"]") else body
            sink.add(_decode_events(b"[" + body.rstrip().rstrip(b",") + b"]"))
    except msgspec.ValidationError as exc:
        raise UserError(f"{path}: an event has a field of the wrong type: {exc}") from None
    except msgspec.DecodeError as exc:
        raise _json_error(Path(path), exc) from None
    return {"sink": sink.result(), "meta": meta, "paired": sink.paired}


_SHARED: dict[str, Any] = {}        # path -> buffer, inherited by forked workers


def _workers() -> int:
    n = os.environ.get("REPLAY_WORKERS")
    return max(1, int(n)) if n else max(1, min(8, os.cpu_count() or 1))


def read_events(path: Path, make_sink: Callable[[], Sink],
                progress: Callable[[int], None]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every event of the file handed to sinks, one per range; returns each sink's result (in file
    order) and the trace's metadata (otherData, distributedInfo, deviceProperties)."""
    buf, close = _open(path, progress)
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
        jobs = [(key, a, b, i == len(bounds) - 1, mode, make_sink) for i, (a, b) in enumerate(bounds)]
        if len(jobs) == 1:
            parts = [_parse_range(*jobs[0])]
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=mp.get_context("fork")) as ex:
                parts = list(ex.map(_parse_range, *zip(*jobs)))
        if any(p["paired"] for p in parts) and len(parts) > 1:
            parts = [_parse_range(key, pos, size, True, mode, make_sink)]     # B/E pairs may straddle ranges
    finally:
        _SHARED.pop(key, None)
        close()
    return [p["sink"] for p in parts], {**meta, **parts[-1]["meta"]}


def rank_from_name(path: Path) -> int | None:
    """The rank a per-rank file's name gives (rank3.json, trace_3.json, vLLM's ...-rank-3.<ns>.pt.trace.json,
    SGLang's <id>-TP-3[-DP-0][-EP-3][-DECODE].trace.json.gz: its TP rank, the rank within the model's
    group), if any."""
    m = _keyword_rank(path.name) or re.search(r"[_\-.](\d+)\.json", path.name)
    return int(m.group(1)) if m else None


def _keyword_rank(name: str) -> re.Match[str] | None:
    """A rank a name states with a word (rank3, TP-3), not by a bare number's place."""
    return re.search(r"rank[_\-]?(\d+)", name, re.I) or re.search(r"(?:^|[_\-.])TP-(\d+)(?=[-.])", name)


SNIFF_BYTES = 1 << 20       # the head of a file read to tell a trace from other JSON beside it (config, metadata)


def looks_like_trace(path: Path) -> bool:
    """Whether a file's head (gzip decompressed) reads as a Chrome / Kineto trace: a JSON array, or an object
    whose first MB names traceEvents. A file that does not is left out of the places rank_hints counts."""
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
        if head[:2] == b"\x1f\x8b":
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, SNIFF_BYTES)
    except (OSError, zlib.error):
        return True             # unreadable here: the parse says why, in its place
    body = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    return body[:1] == b"[" or _KEY in head


def rank_hints(files: list[Path]) -> list[int | None]:
    """Per file of a folder, the rank it gets if it names none: the one number that tells the folder's names apart
    (varying_number), else its place among the folder's traces (a JSON file beside them that is not one, such as a
    capture's metadata, takes no place), unless its name gives one (None: rank_from_name's)."""
    varying = varying_number(files)
    if varying is not None:
        return list(varying)
    out: list[int | None] = []
    place = 0
    for f in files:
        named = rank_from_name(f) is not None
        out.append(None if named else place)
        place += named or looks_like_trace(f)
    return out


_SUFFIX = re.compile(r"(?:\.pt)?(?:\.trace)?\.json(?:\.gz)?$")


def varying_number(files: list[Path]) -> list[int] | None:
    """Where a folder's file names share one pattern with several numbers and exactly one number differs from
    file to file, each file's value of it (`trace_<rank>_<step>.json`: trace_0_17, trace_1_17 are ranks 0 and 1,
    where rank_from_name alone would read the last number, 17, for both); else None (one number a name, several
    that differ, or names of different patterns, or names that state their rank with a word: rank0_step5.json)."""
    if len(files) < 2 or any(_keyword_rank(f.name) for f in files):
        return None
    stems = [_SUFFIX.sub("", f.name) for f in files]
    if len({re.sub(r"\d+", "#", s) for s in stems}) != 1:
        return None
    numbers = [re.findall(r"\d+", s) for s in stems]
    if len(numbers[0]) < 2:
        return None
    differ = [i for i in range(len(numbers[0])) if len({int(n[i]) for n in numbers}) > 1]
    if len(differ) != 1:
        return None
    values = [int(n[differ[0]]) for n in numbers]
    return values if len(set(values)) == len(values) else None


def trace_files(path: Path) -> list[Path]:
    """The trace files a path names: itself, or a folder's .json / .json.gz files, one per rank (an
    engine's merge of the rank files beside it left out: folder_files)."""
    if path.is_dir():
        return folder_files(path)[0]
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    return [path]


def folder_files(path: Path) -> tuple[list[Path], list[str]]:
    """A folder's rank files, and a line for each file left out. File names that are not one rank each
    (data/annotations.toml [files]): an engine's merge of the rank files beside it is left out (the same
    events twice would make up ranks); rank files of several forward modes (SGLang's profile_by_stage:
    a rank's prefill and its decode profiled apart, two runs) are refused, one stage per analysis; a process's
    earlier profiling cycles (torch.profiler's tensorboard_trace_handler files) are left out, its latest analysed; a
    gzip copy beside its file (X.json.gz beside X.json) is left out."""
    from .stepnames import file_patterns
    files = sorted(p for p in path.iterdir() if p.name.endswith((".json", ".json.gz", ".pt.trace.json")) and p.is_file())
    if not files:
        raise UserError(f"{path}: folder holds no .json or .json.gz traces")
    rules = {k: re.compile(v) for k, v in file_patterns().items()}
    notes: list[str] = []
    for f in list(files):
        m = rules["merged"].fullmatch(f.name)
        sources = [g for g in files if m and g != f and g.name.startswith(m.group("id") + "-")]
        if sources:
            files.remove(f)
            notes.append(f"{f.name}: left out, the merge of the {len(sources)} rank files beside it (analysed instead)")
    for rule in (_gzip_twins, partial(_latest_cycles, rule=rules["cycle"])):
        files, note = rule(files)
        notes += [note] if note else []
    stages: dict[str, list[str]] = {}
    for f in files:
        if m := rules["stage"].fullmatch(f.name):
            stages.setdefault(m.group("stage"), []).append(f.name)
    if len(stages) > 1:
        names = ", ".join(f"{k} ({len(v)} files, e.g. {v[0]})" for k, v in sorted(stages.items()))
        raise UserError(f"{path}: rank files of {len(stages)} profiled stages ({names}): each stage was profiled "
                        f"apart, a run of its own; analyse one stage's files at a time (a folder each)")
    return files, notes


def left_out(path: Path) -> list[str]:
    """The lines naming what a folder's listing leaves out (folder_files); none for a file."""
    return folder_files(path)[1] if path.is_dir() else []


def _gzip_twins(files: list[Path]) -> tuple[list[Path], str]:
    """The files less any gzip copy beside its file (X.json.gz beside X.json: one trace twice, never two ranks),
    and a line naming what was left out."""
    plain = {f.name for f in files}
    twins = [f for f in files if f.name.endswith(".gz") and f.name[:-3] in plain]
    if not twins:
        return files, ""
    named = ", ".join(f.name for f in twins[:3]) + (", ..." if len(twins) > 3 else "")
    return [f for f in files if f not in twins], (f"{len(twins)} file(s) left out: gzip copies of the files beside "
                                                  f"them ({named}); the uncompressed files analysed")


def _latest_cycles(files: list[Path], rule: re.Pattern[str]) -> tuple[list[Path], str]:
    """The files less the earlier profiling cycles of any process that wrote several (torch.profiler's
    tensorboard_trace_handler names, data/annotations.toml [files] cycle), and a line naming what was left out."""
    cycles: dict[str, list[tuple[int, Path]]] = {}
    for f in files:
        if m := rule.fullmatch(f.name):
            cycles.setdefault(m.group("worker"), []).append((int(m.group("ns")), f))
    several = {w: [f for _, f in sorted(v)] for w, v in cycles.items() if len(v) > 1}     # oldest first
    if not several:
        return files, ""
    earlier = [f for v in several.values() for f in v[:-1]]
    workers, kept = list(several), [v[-1].name for v in several.values()]
    return [f for f in files if f not in earlier], (
        f"{len(earlier)} file(s) left out: earlier profiling cycles of the same process (torch.profiler's "
        f"tensorboard_trace_handler writes one file per cycle, <worker>.<time>.pt.trace.json; worker(s) "
        f"{', '.join(workers)}), not ranks: each process's latest cycle analysed ({', '.join(kept)}); name a "
        f"file to analyse another, e.g. {earlier[0].name}, or compare two with `replay diff EARLIER LATER`")


def file_phase(path: Path) -> str | None:
    """The phase every step of a trace has by its files' names: all of them one profiled stage with a phase
    (data/annotations.toml [files]: SGLang's `...-TP-0-DECODE.trace.json.gz` is decode), else None."""
    from .stepnames import file_patterns, stage_phases
    rx = re.compile(file_patterns()["stage"])
    stages = {m.group("stage") if (m := rx.fullmatch(f.name)) else None for f in trace_files(path)}
    return stage_phases().get(stages.pop()) if len(stages) == 1 and None not in stages else None


class Progress:
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


