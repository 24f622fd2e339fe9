"""kineto decodes each chunk of a trace in place: '[' and ']' written over the separators just outside
the chunk in a private copy-on-write map, then put back. The events are the ones a whole-file decode
gives, cuts that land inside an event's nested arrays are retried, and the file is never written."""
from __future__ import annotations

import gzip
import hashlib
import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from replay import kineto
from replay.columns import _INTERNED, CPU_OP_CATS, _Columns, _merge

CAP = Path(__file__).resolve().parents[1] / "traces" / "observed" / "deepep-h100x4" / "prefill-proper" / "rank0.json.gz"


def _columns(path: Path):
    parts, meta = kineto.read_events(path, partial(_Columns, str(path), skip_cats=CPU_OP_CATS), lambda n: None)
    return _merge(parts, str(path), CPU_OP_CATS), meta


def _same(a, b) -> None:
    """The same columns, string columns compared as strings (the interner's codes follow the chunks)."""
    assert a.n_seen == b.n_seen and a.names == b.names and a.flows == b.flows and a.extra == b.extra
    sa, sb = np.array(list(a.strings.index), dtype=object), np.array(list(b.strings.index), dtype=object)
    for k in a.cols:
        x = np.concatenate(a.cols[k]) if a.cols[k] else np.zeros(0)
        y = np.concatenate(b.cols[k]) if b.cols[k] else np.zeros(0)
        if k in _INTERNED:
            x, y = sa[x.astype(np.int64)], sb[y.astype(np.int64)]
            assert (x == y).all(), k
        else:
            assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), k


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.skipif(not CAP.exists(), reason="needs traces/observed/deepep-h100x4")
def test_small_chunks_give_the_whole_files_events_and_leave_the_file_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "rank0.json"
    path.write_bytes(gzip.decompress(CAP.read_bytes()))
    before, mtime = _digest(path), path.stat().st_mtime_ns
    whole, meta = _columns(path)                    # one chunk (the file is under CHUNK)
    monkeypatch.setattr(kineto, "CHUNK", 64 << 10)  # dozens of chunks, each bracketed in place
    chunked, meta2 = _columns(path)
    _same(whole, chunked)
    assert meta == meta2
    assert _digest(path) == before and path.stat().st_mtime_ns == mtime


def test_a_cut_inside_nested_args_is_retried(tmp_path, monkeypatch):
    """Events whose args hold arrays of objects ('}, {' inside an event): a chunk's cut may land there,
    its bracket is put back and the cut moves to the previous event's end."""
    events = [{"ph": "X", "name": f"k{i}", "cat": "kernel", "pid": 0, "tid": 7, "ts": 1000.0 + 10 * i, "dur": 5.0,
               "args": {"correlation": i, "stream": 7, "shapes": [{"a": i}, {"b": [{"c": 1}, {"d": 2}]}] * 20}}
              for i in range(3000)]
    path = tmp_path / "nested.json"
    path.write_text(json.dumps({"traceEvents": events}, indent=1))
    before = _digest(path)
    monkeypatch.setattr(kineto, "CHUNK", 16 << 10)
    cols, _ = _columns(path)
    assert cols.n_seen == len(events)
    names = [list(cols.strings.index)[c] for c in np.concatenate(cols.cols["name"])]
    assert names == [e["name"] for e in events]
    assert np.array_equal(np.concatenate(cols.cols["correlation"]), np.arange(len(events)))
    assert _digest(path) == before


def test_the_cut_is_the_last_event_boundary_in_the_window():
    """kineto._cut searches backwards for '}' and checks the separator after it; it must find what a
    forward scan for the last '}\\s*,\\s*{' inside the window finds, on random byte soups."""
    import random
    import re
    boundary = re.compile(rb"\}\s*,\s*\{")

    def scan(buf: bytes, pos: int, before: int | None) -> int | None:
        end = len(buf) if before is None else before
        found = [m.start() for m in boundary.finditer(buf, pos, end)]
        return found[-1] if found else None
    rnd = random.Random(3)
    pieces = [b"}", b"{", b",", b" ", b"\n", b"a", b"}}", b"}, {", b"},\n{", b"} ,{", b"]", b'"x":{"y":1}']
    for _ in range(20000):
        buf = b"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 40)))
        pos = rnd.randint(0, len(buf))
        before = rnd.choice([None, rnd.randint(pos, len(buf))])
        assert kineto._cut(buf, pos, before) == scan(buf, pos, before), (buf, pos, before)
