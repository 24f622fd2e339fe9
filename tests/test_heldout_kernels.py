"""Published kernel tables as held-out rows (bench/data/heldout.toml deepep-ascend-*, uccl-ep-*, pplx-*): pinned
whole, predicted by the rule the pin names, and the rule's arithmetic checked where its answer is known."""
from __future__ import annotations

import pytest

from bench.heldout import _ascend_kernel, _kernel_us, reason, rows
from bench.labels import pinned
from tracegen.catalog import load_hardware

ROWS = {k: r for k, r in pinned().items() if k.startswith("deepep-ascend-")}
UCCL = {k: r for k, r in pinned().items() if k.startswith("uccl-ep-")}
PPLX = {k: r for k, r in pinned().items() if k.startswith("pplx-")}


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


def test_uccl_p5en_tables_are_pinned_whole_with_the_backend_of_each_kernel_kind():
    """Low-latency EP 16/24/32 over cpu-proxy; normal EP8 intranode (256 experts, as the intranode test),
    EP 16/24/32 normal (288 = 256 + 32 redundant, as the internode test); latencies in us."""
    got = {(k.split("-")[3], r["kernel"], r["ep"], r["comm"], r["redundant"]) for k, r in UCCL.items()}
    want = {("ll", k, ep, "cpu-proxy", 32) for k in ("dispatch", "combine") for ep in (16, 24, 32)}
    want |= {("normal", k, 8, "intranode", 0) for k in ("dispatch", "combine")}
    want |= {("normal", k, ep, "normal", 32) for k in ("dispatch", "combine") for ep in (16, 24, 32)}
    assert got == want and all(r["unit"] == "us" and r["hardware"] == "h200" for r in UCCL.values())


def test_the_proxy_rule_charges_each_peer():
    """cpu-proxy low-latency times grow with EP by the backend's per-peer posting cost at least: the
    rule runs the catalog's backend, not a figure of its own."""
    from tracegen.catalog import load_hardware
    per_peer = load_hardware("h200").backend("cpu-proxy").per_message_us
    row = dict(rule="catalog-backend", model="deepseek-v3", hardware="h200", tokens=128, phase="decode",
               kernel="dispatch", comm="cpu-proxy", redundant=32)
    assert _kernel_us({**row, "ep": 32}) - _kernel_us({**row, "ep": 16}) >= per_peer * 16 - 1e-9


def test_pplx_tables_are_pinned_whole_with_the_backend_of_each_transport():
    """Both token counts, dispatch and combine: NVLink at EP8 and IBGDA at EP16-128 on the low-latency
    backend (ibgda), IBRC at EP16-128 on cpu-proxy; the tables' DeepEP rows are not pinned (the catalog
    holds them: in-sample), nor the dense all-to-all rows."""
    got = {(k.split("-")[1], r["kernel"], r["tokens"], r["ep"], r["comm"]) for k, r in PPLX.items()}
    want = {("nvlink", k, t, 8, "ibgda") for k in ("dispatch", "combine") for t in (1, 128)}
    want |= {(tr, k, t, ep, comm) for tr, comm in (("ibgda", "ibgda"), ("ibrc", "cpu-proxy"))
             for k in ("dispatch", "combine") for t in (1, 128) for ep in (16, 32, 64, 128)}
    assert got == want and len(PPLX) == 36
    assert all(r["hardware"] == "h100" and r["dataset"] == "pplx-kernels-readme" and r["stack"] == "catalog"
               for r in PPLX.values())
    first = load_hardware("h100").backend("ibgda").pick("first")
    assert first.at("dispatch", 128) == 192 and first.at("combine", 8) == 318     # the tables' DeepEP rows


def test_one_token_rows_are_the_backends_fixed_latency_and_little_more():
    """At one token per GPU the rule's time is the backend's latency plus 1/128 of the rest of its
    128-token figure: the catalog holds no figure at that payload (why those rows miss)."""
    hw = load_hardware("h100")
    lat = hw.backend("ibgda").latency_us
    for key in ("pplx-ibgda-dispatch-1tok-ep128", "pplx-nvlink-combine-1tok-ep8"):
        us = _kernel_us(PPLX[key])
        assert lat <= us <= lat + 400 / 128, (key, us)


def test_each_row_has_a_target_an_error_and_a_reason():
    got = {r["key"]: r for r in rows() if r["key"] in ROWS or r["key"] in UCCL or r["key"] in PPLX}
    assert set(got) == set(ROWS) | set(UCCL) | set(PPLX)
    for key, r in got.items():
        assert r["published"] == {**ROWS, **UCCL, **PPLX}[key]["published"] and r["label"] == "held-out"
        assert r["error_pct"] == pytest.approx(100 * (r["predicted"] / r["published"] - 1))
        assert reason(key), key           # a figure set's reason reaches each of its rows
