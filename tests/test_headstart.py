"""A folder's head start (replay/headstart.py): a child forked before the analysis modules import
parses rank files from the folder's end; stage one takes those parses instead of parsing again.
Whatever the child did - parsed a file, lost the race for it, failed on it, was stopped - the
analysis is the one without a head start."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from replay import headstart
from replay.cli import main as replay
from replay.columns import CPU_OP_CATS, _Columns
from replay.folder import Options, analyze_folder
from replay.kineto import read_events, trace_files

CAP = Path(__file__).resolve().parents[1] / "traces" / "observed" / "deepep-h100x4" / "prefill-proper"


def _files(d: Path) -> list[str]:
    return [str(f) for f in trace_files(d)]


def _wait_for_child(hs: headstart.HeadStart, timeout: float = 60.0) -> None:
    """Until the child has exited (it stops where a claim is taken, or after the first file)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pid, _ = os.waitpid(hs.pid, os.WNOHANG)
        if pid:
            return
        time.sleep(0.01)
    raise AssertionError("the head start's child did not finish")


def _own_parse(path: str):
    return read_events(Path(path), lambda: _Columns(path, skip_cats=CPU_OP_CATS), lambda n: None)


def _same_parts(a, b) -> None:
    (pa_, ma), (pb, mb) = a, b
    assert ma == mb
    assert len(pa_) == len(pb)
    for x, y in zip(pa_, pb):
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], dict) and k in ("cols", "ops"):
                assert x[k].keys() == y[k].keys()
                for c in x[k]:
                    u, v = x[k][c], y[k][c]
                    assert u.dtype == v.dtype and np.array_equal(u, v, equal_nan=u.dtype.kind == "f"), (k, c)
            else:
                assert x[k] == y[k], k


def test_the_childs_parse_is_the_workers_own():
    files = _files(CAP)
    hs = headstart.start(files, cores=2)
    assert hs is not None
    try:
        _wait_for_child(hs)          # never stopped: it parses every file from the end
        for i in reversed(range(len(files))):
            got = headstart.take(hs.folder, i)
            assert got is not None, f"file {i} was not parsed by the child"
            _same_parts(got, _own_parse(files[i]))
    finally:
        hs.end()
    assert not os.path.exists(hs.folder)


def test_a_file_a_worker_claimed_first_is_left_to_it(tmp_path):
    files = _files(CAP)
    hs = headstart.start(files, cores=2)
    assert hs is not None
    try:
        # claimed before the child reaches it (it starts at the end): this worker parses it
        assert headstart.take(hs.folder, 0) is None
        _wait_for_child(hs)
        assert headstart.take(hs.folder, len(files) - 1) is not None
        assert not os.path.exists(os.path.join(hs.folder, "0.parsed"))
    finally:
        hs.end()


def test_stopped_before_it_starts_it_parses_nothing():
    files = _files(CAP)
    hs = headstart.start(files, cores=2)
    assert hs is not None
    hs.stop()
    try:
        _wait_for_child(hs)
        # at most the file it had claimed before the stop; every other one is parsed by its worker
        served = [i for i in range(len(files)) if headstart.take(hs.folder, i) is not None]
        assert served in ([], [len(files) - 1])
    finally:
        hs.end()


def test_no_head_start_where_it_cannot_help():
    files = _files(CAP)
    assert headstart.start(files, cores=1) is None
    assert headstart.start(files[:1], cores=8) is None


def test_a_file_the_child_cannot_read_is_read_by_its_worker(tmp_path):
    d = tmp_path / "ranks"
    d.mkdir()
    shutil.copy(CAP / "rank0.json.gz", d / "rank0.json.gz")
    shutil.copy(CAP / "rank1.json.gz", d / "rank1.json.gz")
    (d / "rank2.json").write_bytes(gzip.decompress((CAP / "rank2.json.gz").read_bytes())[:50_000])  # truncated
    files = _files(d)
    hs = headstart.start(files, cores=2)
    assert hs is not None
    try:
        _wait_for_child(hs)
        assert headstart.take(hs.folder, 2) is None      # no result: the worker's own parse says why
    finally:
        hs.end()


def test_analysis_with_a_head_start_is_the_one_without(tmp_path, monkeypatch):
    """Stage one in this process (jobs 1), so the files the child served can be counted."""
    served = []
    take = headstart.take

    def counted(folder: str, index: int):
        got = take(folder, index)
        if got is not None:
            served.append(index)
        return got
    monkeypatch.setattr(headstart, "take", counted)
    files = _files(CAP)
    opts = Options(use_cache=False)
    without = json.dumps(analyze_folder(CAP, opts, progress=False).to_dict(), default=str)
    hs = headstart.start(files, cores=2)
    assert hs is not None
    try:
        _wait_for_child(hs)
        with_ = json.dumps(analyze_folder(CAP, opts, progress=False, early=hs).to_dict(), default=str)
    finally:
        hs.end()
    # the stop at stage one's start comes after the child finished, so it parsed every file
    assert served == list(range(len(files)))
    assert with_ == without


def test_replay_analyze_with_jobs_gives_the_same_json_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert replay(["analyze", str(CAP), "--json", "--no-cache", "--jobs", "2"]) == 0
    a = json.loads(capsys.readouterr().out)
    monkeypatch.setattr(headstart, "start", lambda files, cores: None)
    assert replay(["analyze", str(CAP), "--json", "--no-cache", "--jobs", "2"]) == 0
    b = json.loads(capsys.readouterr().out)
    for d in (a, b):
        d.pop("elapsed_s", None)
    assert a == b
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("moe-timeline-headstart-")]


def test_stage_one_waits_for_the_childs_claim(tmp_path):
    """A worker that finds the child's claim waits on its lock, then takes its result."""
    files = _files(CAP)
    hs = headstart.start(files, cores=2)
    assert hs is not None
    claim = os.path.join(hs.folder, f"{len(files) - 1}.claim")
    try:
        end = time.monotonic() + 60
        while not os.path.exists(claim) and time.monotonic() < end:
            time.sleep(0.001)
        got = headstart.take(hs.folder, len(files) - 1)   # at once: the child is most likely parsing it
        assert got is not None
        _same_parts(got, _own_parse(files[-1]))
    finally:
        hs.end()


pytestmark = pytest.mark.skipif(not CAP.exists() or not hasattr(os, "fork"),
                                reason="needs traces/observed/deepep-h100x4 and fork()")