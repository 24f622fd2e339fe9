"""Regression against the golden traces in traces/golden (regenerated only by `make goldens`).

Tolerance: timestamps and durations within 0.002 us. The files store microseconds rounded to
1 ns; the same schedule recomputed elsewhere can differ only in the last bits of a float, which
moves a rounded value by at most one nanosecond, on ts and on ts + dur (hence 2 ns on dur).
Numeric args within a relative 1e-9 for the same reason; everything else must match exactly."""
from __future__ import annotations

import math

import pytest

from tracegen.cli import main

from .goldens import GOLDENS, golden_path
from .helpers import read_trace

TOL_US = 0.002


def _same(a, b, where):
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{where}: length differs"
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        tol = TOL_US if where.endswith((".ts", ".dur")) else 0.0
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=tol), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("name", sorted(GOLDENS))
def test_matches_golden(name, tmp_path):
    path = golden_path(name)
    if not path.exists():
        pytest.fail(f"{path} missing: run `make goldens` and commit traces/golden")
    out = tmp_path / "now.json.gz"
    assert main(["trace", *GOLDENS[name], "-o", str(out)]) == 0
    want, got = read_trace(path), read_trace(out)
    want["otherData"].pop("generator", None)
    got["otherData"].pop("generator", None)
    _same(want["otherData"], got["otherData"], "otherData")
    we, ge = want["traceEvents"], got["traceEvents"]
    assert len(we) == len(ge), f"{len(we)} events in the golden, {len(ge)} now"
    for i, (a, b) in enumerate(zip(we, ge)):
        _same(a, b, f"event[{i}]({a.get('name')})")
