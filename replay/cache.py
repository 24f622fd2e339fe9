"""A columnar cache of loaded traces: Parquet files keyed by a hash of the trace's bytes (and of the
loader's own code, so another version never reads a table this one did not build), so a
second `replay analyze` of the same file skips parsing. Safe to delete at any time."""
from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from tracegen.base.fileio import atomic_parquet, atomic_write

from .kineto import trace_files

if TYPE_CHECKING:                       # the table's module (pandas) loads only where a trace is built
    from .events import Trace

FORMAT = "6"      # bump when the event table's columns change

# The modules whose code decides what a cached table holds (decoding, columns, ranks and their moves, the
# contract's categories): their bytes are part of every key, so a table cached by another version of
# them (an upgrade, a local change) is never read back as this version's.
_BUILDERS = ("kineto.py", "columns.py", "events.py", "cache.py", "parallel.py", "headstart.py",
             "../tracegen/base/contract.py")


@lru_cache(maxsize=1)
def code_key() -> bytes:
    """A digest of the table builders' source (read once per process)."""
    h = hashlib.blake2b(digest_size=16)
    here = Path(__file__).parent
    for name in _BUILDERS:
        h.update((here / name).read_bytes())
    return h.digest()


def cache_dir() -> Path:
    env = os.environ.get("MOE_TIMELINE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "moe-timeline"


def content_key(path: str | Path) -> str:
    h = hashlib.blake2b(digest_size=20)
    h.update(FORMAT.encode())
    h.update(code_key())
    for f in trace_files(Path(path)):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def _paths(key: str, where: Path) -> tuple[Path, Path, Path]:
    return where / f"{key}.events.parquet", where / f"{key}.flows.parquet", where / f"{key}.meta.json"


def load_cached(path: str | Path, use_cache: bool = True, where: Path | None = None,
                progress: bool | None = None, jobs: int = 1, cluster: str | None = None) -> tuple[Trace, bool]:
    """The trace, from the cache when its content was seen before; returns (trace, hit). `jobs` /
    `cluster`: where a folder's rank files are parsed on a miss (replay/parallel.py)."""
    from .events import load

    def build() -> Trace:
        return load(path, progress=progress, jobs=jobs, cluster=cluster)
    if not use_cache:
        return build(), False
    return _through_cache(content_key(path), where or cache_dir(), [str(f) for f in trace_files(Path(path))], build)


def load_file_cached(path: str | Path, hint: int | None, use_cache: bool = True,
                     where: Path | None = None, parsed: Callable[[], Any] | None = None) -> tuple[Trace, bool]:
    """One rank file of a folder (`hint`: the rank it gets if it names none), from the cache when its
    content was seen before with the same hint; returns (trace, hit). `parsed`: on a miss, the file's
    parse made elsewhere if there is one (headstart.take), else None."""
    from .events import load_file

    def build() -> Trace:
        return load_file(path, rank=hint, progress=False, parsed=parsed() if parsed else None)
    if not use_cache:
        return build(), False
    key = f"{content_key(path)}-r{hint if hint is not None else 'own'}"
    return _through_cache(key, where or cache_dir(), [str(path)], build)


def _through_cache(key: str, where: Path, sources: list[str], build) -> tuple[Trace, bool]:
    """The cached Trace under `key`, or build() written there (a cache that cannot be read is rebuilt;
    one that cannot be written does not fail the analysis)."""
    import pyarrow as pa              # here: a run without the cache does not pay for Parquet's import
    import pyarrow.parquet as pq

    from .events import Trace
    ev_p, fl_p, meta_p = _paths(key, where)
    if ev_p.exists() and fl_p.exists() and meta_p.exists():
        try:
            return Trace(pq.read_table(ev_p).to_pandas(), pq.read_table(fl_p).to_pandas(),
                         json.loads(meta_p.read_text()), sources), True
        except (OSError, ValueError, pa.ArrowException):
            pass     # a damaged cache entry is simply rebuilt
    trace = build()
    try:
        where.mkdir(parents=True, exist_ok=True)
        for frame, p in ((trace.events, ev_p), (trace.flows, fl_p)):
            atomic_parquet(p, frame, compression="zstd")
        atomic_write(meta_p, json.dumps(trace.meta, default=str))
    except Exception:      # noqa: BLE001 - a cache that cannot be written must not fail the analysis
        pass
    return trace, False


__all__ = ["load_cached", "load_file_cached", "cache_dir", "content_key"]
