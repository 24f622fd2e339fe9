"""`replay merge DIR -o merged.json.gz`: a folder of per-rank traces as one Chrome JSON trace that
ui.perfetto.dev (or chrome://tracing) opens as a single clock-aligned view: every rank's processes
renamed "rank R: ...", their ids made unique, and each rank's timestamps moved by the clock offset
`replay analyze` found (peers.py: from the ends of matched collectives; 0 for ranks of one host).
Perfetto's importer needs nothing beyond the Chrome JSON format for this, so no manifest is assumed."""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any, Callable

import msgspec

from tracegen.base.errors import UserError
from tracegen.base.fileio import atomic_write

from .events import rank_hints, trace_files
from .kineto import rank_from_name

_decode = msgspec.json.Decoder(dict).decode
_encode = msgspec.json.Encoder().encode


def _read(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise UserError(f"{path}: not a readable gzip file ({exc})") from None
    try:
        doc = _decode(raw.lstrip(b"\xef\xbb\xbf"))
    except msgspec.DecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc.get("traceEvents"), list):
        raise UserError(f"{path}: no traceEvents list: not a Chrome / Kineto trace")
    return doc


def _rank(doc: dict[str, Any], path: Path, hint: int | None) -> int:
    info = doc.get("distributedInfo")
    r = info.get("rank") if isinstance(info, dict) else None
    if isinstance(r, int) and not isinstance(r, bool) and r >= 0:
        return r
    if hint is not None:            # the folder's names (rank_hints), or the file's place among them
        return hint
    named = rank_from_name(path)
    return named if named is not None else 0


def _pid(e: dict[str, Any]) -> Any:
    """An event's process id as a key (a pid of the wrong type, a list or an object, as its text)."""
    pid = e.get("pid")
    return pid if pid is None or isinstance(pid, (int, float, str)) else repr(pid)


def merge(folder: str | Path, out: str | Path, offsets_us: dict[int, float],
          progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Write the merged trace; returns what was merged (ranks, events, offsets applied)."""
    files = trace_files(Path(folder))
    if len(files) < 2:
        raise UserError(f"{folder}: a merge takes a folder of two or more rank files")
    hints = rank_hints(files)
    events: list[bytes] = []
    ranks, n_events = [], 0
    next_pid = 0
    for i, f in enumerate(files):
        doc = _read(f)
        rank = _rank(doc, f, hints[i])
        off = float(offsets_us.get(rank, 0.0))
        pids: dict[Any, int] = {}
        names: dict[Any, str] = {}
        for e in doc["traceEvents"]:
            if isinstance(e, dict) and e.get("ph") == "M" and e.get("name") == "process_name":
                args = e.get("args")
                names[_pid(e)] = str(args.get("name", "")) if isinstance(args, dict) else ""
        for e in doc["traceEvents"]:
            if not isinstance(e, dict):
                continue
            pid = _pid(e)
            if pid not in pids:
                pids[pid] = next_pid
                next_pid += 1
            e = dict(e, pid=pids[pid])
            if e.get("ph") == "M" and e.get("name") == "process_name":
                e["args"] = {"name": f"rank {rank}: {names.get(pid) or pid}"}
            elif isinstance(e.get("ts"), (int, float)):
                e["ts"] = e["ts"] - off
            events.append(_encode(e))
            n_events += 1
        for pid, new in pids.items():         # every process named for its rank, also those without a name
            if pid not in names:
                events.append(_encode({"ph": "M", "name": "process_name", "pid": new, "tid": 0,
                                       "args": {"name": f"rank {rank}: {pid}"}}))
            events.append(_encode({"ph": "M", "name": "process_sort_index", "pid": new, "tid": 0,
                                   "args": {"sort_index": rank * 1000 + new}}))
        ranks.append({"rank": rank, "file": f.name, "offset_us": off})
        if progress:
            progress(i + 1, len(files))
    body = b'{"displayTimeUnit":"ms","otherData":{"merged_by":"replay merge"},"traceEvents":[' + \
        b",".join(events) + b"]}"
    out = Path(out)
    atomic_write(out, gzip.compress(body, compresslevel=6) if out.name.endswith(".gz") else body)
    return {"output": str(out), "ranks": ranks, "events": n_events}


__all__ = ["merge"]
