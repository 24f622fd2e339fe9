"""The per-rank stage of a folder's load - parse one rank file into its event table - run on
several processes (`--jobs N`) or on a Dask cluster (`--cluster ADDRESS`): the rank files of a
profiling session are independent until the cross-rank analysis, which runs where the command
runs. Either way the result is the same table the one-process load builds (same order, same
ranks), so every output is identical.

Dask (`pip install 'moe-timeline[cluster]'`, the `distributed` package) is the engine past one
machine: its workers must be able to read the trace paths (a shared filesystem) and import this
package. `--cluster` takes a scheduler address (tcp://host:8786) or, when DASK_SCHEDULER_ADDRESS
is set, `--cluster env`."""
from __future__ import annotations

import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable

from tracegen.base.errors import UserError

MAX_JOBS = 256
CONNECT_TIMEOUT = "10s"     # how long --cluster waits for the scheduler


def parse_files(parse: Callable[[str, int | None], Any], files: list[Path], ranks: list[int | None], jobs: int = 1,
        cluster: str | None = None, done: Callable[[int], None] | None = None) -> list[Any]:
    """parse(path, rank) for every file, in the files' order (a module-level function: the processes
    and the cluster's workers import it by name); `done(i)` after file i finishes (progress)."""
    if cluster:
        files = [f.resolve() for f in files]
    return map_calls(parse, [(str(f), r) for f, r in zip(files, ranks)], jobs, cluster, done)


def map_calls(fn: Callable[..., Any], calls: list[tuple], jobs: int = 1, cluster: str | None = None,
              done: Callable[[int], None] | None = None) -> list[Any]:
    """fn(*args) for every args of `calls`, in their order: in this process (jobs 1), on `jobs`
    processes, or on a Dask cluster; `done(i)` after call i finishes. `fn` must be importable by
    name (a module-level function) for the processes and the cluster's workers."""
    with Runner(jobs, cluster, len(calls)) as runner:
        return runner.map(fn, calls, done)


class Runner:
    """Where calls run - this process, a pool of `jobs` processes, or a Dask cluster - kept open
    across several map() calls (a folder's two stages share one pool and its imports)."""

    def __init__(self, jobs: int = 1, cluster: str | None = None, most: int | None = None):
        if not cluster and not 1 <= jobs <= MAX_JOBS:
            raise UserError(f"--jobs must lie in [1, {MAX_JOBS}], got {jobs}")
        self.jobs, self.cluster, self.most = jobs, cluster, most
        self.pool: ProcessPoolExecutor | None = None
        self.client: Any = None

    def __enter__(self) -> "Runner":
        if self.cluster:
            self.client = _client(self.cluster)
        elif self.jobs > 1:
            self.pool = ProcessPoolExecutor(max_workers=min(self.jobs, self.most or self.jobs),
                                            initializer=_one_parser)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        if self.client is not None:
            self.client.close()

    def map(self, fn: Callable[..., Any], calls: list[tuple], done: Callable[[int], None] | None = None) -> list[Any]:
        results: list[Any] = [None] * len(calls)
        if self.client is not None:
            from distributed import as_completed as dask_completed
            futures = [self.client.submit(fn, *args, pure=False) for args in calls]
            index = {f.key: i for i, f in enumerate(futures)}
            pending = dask_completed(futures)
        elif self.pool is not None:
            futures = [self.pool.submit(_released, fn, *args) for args in calls]
            index = {f: i for i, f in enumerate(futures)}
            pending = as_completed(futures)
        else:
            for i, args in enumerate(calls):
                results[i] = fn(*args)
                if done:
                    done(i)
            return results
        for fut in pending:
            i = index[fut.key] if self.client is not None else index[fut]
            results[i] = fut.result()
            if done:
                done(i)
        return results


def cluster_address(value: str) -> str:
    """The scheduler address of --cluster: as given, or DASK_SCHEDULER_ADDRESS for 'env'."""
    if value == "env":
        env = os.environ.get("DASK_SCHEDULER_ADDRESS")
        if not env:
            raise UserError("--cluster env needs DASK_SCHEDULER_ADDRESS (e.g. tcp://10.0.0.5:8786)")
        return env
    return value


def _released(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) in a pool worker, then the memory its tables freed given back to the system: a
    worker holds on to a rank file's worth of freed heap and Arrow pool pages otherwise (290 -> 136 MB
    after a 103 MB rank file), and a folder's peak is the main process plus every idle worker."""
    out = fn(*args)
    release_memory()
    return out


def release_memory() -> None:
    """Free heap pages back to the OS (glibc's malloc_trim) and Arrow's pool's unused memory."""
    arrow = sys.modules.get("pyarrow")
    if arrow is not None:
        getattr(arrow.default_memory_pool(), "release_unused", lambda: None)()
    global _TRIM
    if _TRIM is None:
        import ctypes
        try:
            _TRIM = getattr(ctypes.CDLL(None), "malloc_trim", False)
        except OSError:
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM: Any = None       # glibc's malloc_trim, False where the C library has none


def _one_parser() -> None:
    """In a pool worker: parse each file in this one process (the pool already spreads the files
    over the cores; kineto.py would otherwise fork its own range parsers inside every worker)."""
    os.environ.setdefault("REPLAY_WORKERS", "1")


def _client(address: str) -> Any:
    try:
        from distributed import Client
    except ImportError:
        raise UserError("--cluster needs Dask's distributed: pip install 'moe-timeline[cluster]'") from None
    address = cluster_address(address)
    try:
        return Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as exc:
        raise UserError(f"--cluster {address}: cannot reach the Dask scheduler ({exc})") from None


__all__ = ["parse_files", "map_calls", "Runner", "cluster_address", "MAX_JOBS"]
