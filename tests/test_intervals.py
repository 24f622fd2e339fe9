"""Interval algebra against a brute-force reference on random intervals."""
from __future__ import annotations

import numpy as np
import pytest

from replay.intervals import gaps, intersection, length, overlap, union


def brute(intervals, grid):
    covered = np.zeros(len(grid) - 1, dtype=bool)
    mids = (grid[:-1] + grid[1:]) / 2
    for s, e in intervals:
        covered |= (mids >= s) & (mids < e)
    return covered


@pytest.mark.parametrize("seed", range(20))
def test_union_and_intersection_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, m = rng.integers(1, 40, size=2)
    a = rng.integers(0, 200, size=(n, 2)).astype(float)
    b = rng.integers(0, 200, size=(m, 2)).astype(float)
    a.sort(axis=1)
    b.sort(axis=1)
    grid = np.arange(0, 201, 1.0)
    ua, ub = union(a[:, 0], a[:, 1]), union(b[:, 0], b[:, 1])
    ca, cb = brute(a, grid), brute(b, grid)
    assert length(*ua) == pytest.approx(ca.sum())
    assert np.all(np.diff(ua[0]) > 0) and np.all(ua[0][1:] > ua[1][:-1])      # sorted, disjoint
    assert overlap(ua, ub) == pytest.approx((ca & cb).sum())
    inter = intersection(ua, ub)
    assert length(*inter) <= min(length(*ua), length(*ub)) + 1e-9
    g0, g1 = gaps(*ua, lo=0.0, hi=200.0)
    assert length(g0, g1) == pytest.approx((~ca).sum())


def test_touching_intervals_merge_and_do_not_overlap():
    s, e = union(np.array([0.0, 1.0, 5.0]), np.array([1.0, 2.0, 6.0]))
    assert list(s) == [0.0, 5.0] and list(e) == [2.0, 6.0]
    assert overlap((np.array([0.0]), np.array([1.0])), (np.array([1.0]), np.array([2.0]))) == 0.0
    assert length(*union(np.zeros(0), np.zeros(0))) == 0.0
