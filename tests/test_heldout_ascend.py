"""DeepEP-Ascend's README tables as held-out rows (bench/data/heldout.toml deepep-ascend-*): pinned whole,
predicted by the rule the pin names, and the rule's arithmetic checked where its answer is known."""
from __future__ import annotations

import pytest

from bench.heldout import _ascend_kernel, reason, rows
from bench.labels import pinned
from tracegen.catalog import load_hardware

ROWS = {k: r for k, r in pinned().items() if k.startswith("deepep-ascend-")}


def test_both_tables_are_pinned_whole():
    """Every EP size of both README tables, dispatch and combine: no figure picked out of a table."""
    got = {(r["unit"] == "us", r["kernel"], r["ep"]) for r in ROWS.values()}
    want = {(True, k, ep) for k in ("dispatch", "combine") for ep in (8, 16, 32)}
    want |= {(False, k, ep) for k in ("dispatch", "combine") for ep in (8, 16, 32, 64, 128)}
    assert got == want
    assert all(r["rule"] == "ascend-fused" and r["dataset"] == "deepep-ascend-readme" for r in ROWS.values())


@pytest.mark.parametrize("kernel", ["dispatch", "combine"])
def test_the_papers_own_payload_gives_the_papers_figure(kernel):
    """At EP8 with the paper's benchmark payload (128 tokens, INT8 dispatch) the rule returns the catalog's
    published figure unchanged: the payload scaling is the identity there."""
    paper = load_hardware("ascend-910c").backend("ascend-fused").pick("paper")
    row = {"model": "deepseek-v3", "hardware": "ascend-910c", "ep": 8, "tokens": 128, "phase": "decode",
           "kernel": kernel, "unit": "us"}
    assert _ascend_kernel(row) == pytest.approx(paper.at(kernel, 8), rel=1e-9)


def test_bandwidth_rows_count_bytes_as_deepep_ascend_does():
    """GB/s rows: the (token, expert) pairs a rank receives x hidden x 1 (INT8) or 2 (BF16) over the time;
    combine moves twice dispatch's bytes, so its rate over its own time is 2 x pairs x hidden / time."""
    base = {"model": "deepseek-v3", "hardware": "ascend-910c", "ep": 16, "tokens": 4096, "phase": "prefill"}
    for kernel, elem in (("dispatch", 1.0), ("combine", 2.0)):
        us = _ascend_kernel({**base, "kernel": kernel, "unit": "us"})
        gbps = _ascend_kernel({**base, "kernel": kernel, "unit": "GB/s"})
        assert gbps == pytest.approx(4096 * 8 * 7168 * elem / (us * 1e3))


def test_each_row_has_a_target_an_error_and_a_reason():
    got = {r["key"]: r for r in rows() if r["key"] in ROWS}
    assert set(got) == set(ROWS)
    for key, r in got.items():
        assert r["published"] == ROWS[key]["published"] and r["label"] == "held-out"
        assert r["error_pct"] == pytest.approx(100 * (r["predicted"] / r["published"] - 1))
        assert reason(key), key           # a figure set's reason reaches each of its rows
