"""Issue 12: the per-rank stage of a folder (parsing each rank file) on several processes or on a
Dask cluster gives exactly the JSON of the one-process run; the cluster test starts a local Dask
cluster of 2 worker processes."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from replay.cli import main as replay

CAP = Path(__file__).resolve().parents[1] / "traces" / "observed" / "deepep-h100x4"


def _json(capsys, *argv: str) -> str:
    assert replay(["analyze", *argv, "--json", "--no-cache"]) == 0
    return capsys.readouterr().out


def test_jobs_give_the_same_json(capsys):
    one = _json(capsys, str(CAP / "prefill-skew"))
    assert _json(capsys, str(CAP / "prefill-skew"), "--jobs", "2") == one


def test_a_local_dask_cluster_gives_the_same_json(capsys):
    distributed = pytest.importorskip("distributed")
    one = _json(capsys, str(CAP / "prefill-late"))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc:
        assert _json(capsys, str(CAP / "prefill-late"), "--cluster", lc.scheduler_address) == one


def test_bad_parallel_options_are_one_line(capsys, monkeypatch):
    import replay.parallel as parallel
    assert replay(["analyze", str(CAP / "graph"), "--jobs", "0", "--no-cache"]) == 2
    assert "--jobs must lie in" in capsys.readouterr().err
    monkeypatch.setattr(parallel, "CONNECT_TIMEOUT", "1s")
    assert replay(["analyze", str(CAP / "decode-proper"), "--cluster", "tcp://127.0.0.1:9", "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Dask scheduler" in err and "Traceback" not in err
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    assert replay(["analyze", str(CAP / "decode-proper"), "--cluster", "env", "--no-cache"]) == 2
    assert "DASK_SCHEDULER_ADDRESS" in capsys.readouterr().err



_CHURN = """
import os, numpy as np
from replay import parallel
def rss():
    with open(f"/proc/{os.getpid()}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024
def churn(n):      # mid-sized buffers on the C heap (below malloc's mmap threshold), freed on return
    bufs = [np.ones(8192) for _ in range(n)]
    return len(bufs)
before = rss()
assert parallel._released(churn, 4000) == 4000      # ~250 MB allocated and freed
print(rss() - before)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads RSS from /proc")
def test_a_pool_worker_gives_freed_memory_back():
    """parallel._released returns the call's result and leaves the worker without the heap pages
    the call freed (malloc_trim: here 0.3 MB is left; without it 54 MB): a folder's peak
    counts every idle worker."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", _CHURN], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout) < 20, r.stdout
