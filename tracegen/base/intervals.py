"""Interval algebra on numpy arrays: union, total length, intersection, gaps, and the covered
length before a time. Every busy time, overlap and idle stretch `replay` reports comes from these."""
from __future__ import annotations

import numpy as np


def union(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge possibly overlapping intervals into sorted disjoint ones."""
    if len(starts) == 0:
        return np.zeros(0), np.zeros(0)
    s, e = np.asarray(starts, dtype=np.float64), np.asarray(ends, dtype=np.float64)
    if len(s) > 1 and not (s[1:] >= s[:-1]).all():      # most callers pass start-sorted intervals: no sort
        order = np.argsort(s, kind="stable")
        s, e = s[order], e[order]
    reach = np.maximum.accumulate(e)
    new = np.empty(len(s), dtype=bool)
    new[0] = True
    new[1:] = s[1:] > reach[:-1]
    idx = np.flatnonzero(new)
    merged_end = np.maximum.reduceat(e, idx)
    return s[idx], merged_end


def length(starts: np.ndarray, ends: np.ndarray) -> float:
    """Total length of disjoint intervals."""
    return float(np.sum(ends - starts)) if len(starts) else 0.0


def intersection(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Intersection of two sets of disjoint intervals, as disjoint intervals (a sweep over edges)."""
    (a0, a1), (b0, b1) = a, b
    if not len(a0) or not len(b0):
        return np.zeros(0), np.zeros(0)
    t = np.concatenate([a0, a1, b0, b1])
    da = np.concatenate([np.ones(len(a0)), -np.ones(len(a1)), np.zeros(len(b0) + len(b1))])
    db = np.concatenate([np.zeros(len(a0) + len(a1)), np.ones(len(b0)), -np.ones(len(b1))])
    order = np.lexsort((da + db, t))       # at equal times, ends (-1) before starts (+1)
    t, ca, cb = t[order], np.cumsum(da[order]), np.cumsum(db[order])
    both = (ca > 0) & (cb > 0)
    seg_s, seg_e = t[:-1][both[:-1]], t[1:][both[:-1]]
    keep = seg_e > seg_s
    return union(seg_s[keep], seg_e[keep])


def overlap(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    return length(*intersection(a, b))


def gaps(starts: np.ndarray, ends: np.ndarray, lo: float | None = None, hi: float | None = None
         ) -> tuple[np.ndarray, np.ndarray]:
    """Stretches not covered by the (disjoint, sorted) intervals, within [lo, hi]."""
    if not len(starts):
        return (np.array([lo]), np.array([hi])) if lo is not None and hi is not None and hi > lo else (np.zeros(0), np.zeros(0))
    g0 = np.concatenate([[starts[0] if lo is None else lo], ends])
    g1 = np.concatenate([starts, [ends[-1] if hi is None else hi]])
    keep = g1 > g0
    return g0[keep], g1[keep]


def clip(starts: np.ndarray, ends: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    s, e = np.maximum(starts, lo), np.minimum(ends, hi)
    keep = e > s
    return s[keep], e[keep]


def coverage(starts: np.ndarray, ends: np.ndarray):
    """F(t) = covered length of the disjoint intervals before t (vectorised, piecewise linear)."""
    cum = np.concatenate([[0.0], np.cumsum(ends - starts)])

    def F(t: np.ndarray) -> np.ndarray:
        j = np.searchsorted(starts, t, side="right") - 1
        inside = np.clip(t - starts[np.clip(j, 0, None)], 0, None) if len(starts) else np.zeros_like(t)
        inside = np.minimum(inside, (ends - starts)[np.clip(j, 0, None)]) if len(starts) else inside
        return np.where(j >= 0, cum[np.clip(j, 0, None)] + inside, 0.0)
    return F
