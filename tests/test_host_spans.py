"""hostview._Spans answers by binary search; it must give what a scan of every span gives (ties of
start and end included), on random span sets."""
from __future__ import annotations

import numpy as np

from replay.hostview import _Spans


def _scan_holder(sp: _Spans, t: float, outermost: bool) -> str:
    hold = np.flatnonzero((sp.st <= t) & (sp.en >= t))
    return str(sp.names[hold[0] if outermost else hold[-1]]) if len(hold) else ""


def _scan_before(sp: _Spans, t: float) -> str:
    idx = np.flatnonzero(sp.en <= t + 1e-6)
    return str(sp.names[idx[np.argmax(sp.en[idx])]]) if len(idx) else ""


def test_binary_searches_agree_with_scans():
    rng = np.random.default_rng(7)
    for _ in range(1500):
        n = int(rng.integers(0, 200))
        st = np.sort(rng.choice(np.arange(0, 100, 0.5), n))          # a coarse grid: many equal starts and ends
        dur = rng.choice([0.0, 0.5, 1, 2, 5, 20, 50, 90], n)
        sp = _Spans(st.astype(float), dur.astype(float), np.array([f"s{i}" for i in range(n)], dtype=object))
        for t in rng.choice(np.arange(-2, 150, 0.25), 15):
            assert sp.holder(t, True) == _scan_holder(sp, t, True)
            assert sp.holder(t, False) == _scan_holder(sp, t, False)
            assert sp.before(t) == _scan_before(sp, t)


def test_unsorted_or_nan_spans_fall_back_to_the_scan():
    sp = _Spans(np.array([5.0, 1.0, 3.0]), np.array([1.0, 10.0, np.nan]), np.array(["a", "b", "c"], dtype=object))
    for t in (0.0, 2.0, 5.5, 12.0):
        for outer in (True, False):
            assert sp.holder(t, outer) == _scan_holder(sp, t, outer)
        assert sp.before(t) == _scan_before(sp, t)


def test_widest_names_the_span_that_covers_most_of_a_stretch():
    """_Spans.widest: the span covering most of [t0, t1) and by how much, by binary search over start-sorted spans
    and by a scan where they are not sorted; none overlapping gives ("", 0)."""
    names = np.array(["a", "b", "c"], dtype=object)
    s = _Spans(np.array([0.0, 10.0, 20.0]), np.array([5.0, 30.0, 2.0]), names)
    assert s.widest(12.0, 25.0) == ("b", 13.0) and s.widest(0.0, 4.0) == ("a", 4.0)
    assert s.widest(100.0, 200.0) == ("", 0.0)
    u = _Spans(np.array([10.0, 0.0]), np.array([30.0, 5.0]), np.array(["late", "early"], dtype=object))
    assert u._exact and u.widest(12.0, 25.0) == ("late", 13.0) and u.widest(0.0, 4.0) == ("early", 4.0)
