"""The h100 `intranode` backend is fitted from the real DeepEP captures (bench/deepep.py), and
predicts their dispatch and combine within the issue's 15 %. The observed times are checked
against a plain sweep of the raw JSON: per matched collective, the kernel of the rank that started
last (it waited for nobody), median over the run."""
from __future__ import annotations

import gzip
import json
import statistics

import pytest

from bench import deepep
from tracegen.catalog import load_hardware
from tracegen.cli import main as tracegen_main


def truth(run: str) -> dict[str, float]:
    seqs = []
    for r in range(4):
        with gzip.open(deepep.CAP / run / f"rank{r}.json.gz", "rt") as f:
            ks = sorted((e for e in json.load(f)["traceEvents"] if e.get("cat") == "kernel"), key=lambda e: e["ts"])
        seqs.append(ks)
    med = {}
    for pats in deepep.KERNELS.values():
        for pat in pats:
            per_rank = [[e for e in ks if pat in e["name"]] for ks in seqs]
            durs = []
            for n in range(len(per_rank[0])):
                group = [per_rank[r][n] for r in range(4)]
                durs.append(max(group, key=lambda e: e["ts"])["dur"])
            med[pat] = statistics.median(durs)
    return {op: sum(med[p] for p in pats) for op, pats in deepep.KERNELS.items()}


@pytest.mark.parametrize("phase", list(deepep.RUNS))
def test_observed_times_are_the_last_arriving_ranks_kernels(phase):
    t = truth(deepep.RUNS[phase][0])
    got = deepep.observed(phase)
    for op in deepep.KERNELS:
        assert got[op] == pytest.approx(t[op], rel=0.01), op


def test_the_catalog_holds_the_fit():
    b = load_hardware("h100").backend("intranode")
    f = deepep.fit()
    assert b.bw_eff == pytest.approx(f["bw_eff"], rel=0.005)
    assert b.latency_us == pytest.approx(f["latency_us"], rel=0.005)
    assert b.cpu_block_us == pytest.approx(f["cpu_block_us"], rel=0.005)
    assert 0.1 < b.bw_eff < 0.6 and 5.0 < b.latency_us < 50.0            # SM-bound NVLink, tens of us


def test_prefill_dispatch_and_combine_within_15_percent():
    """In situ (the proper run, beside the other micro-batch's GEMMs): the fit alone x the in-situ term."""
    t = truth("prefill-proper")
    rows = {(case, op): pred for case, op, _, pred, _ in deepep.rows()}
    for op in deepep.KERNELS:
        assert abs(rows[("prefill in situ", op)] / t[op] - 1) * 100 <= deepep.TOLERANCE_PCT, op


def test_leave_one_out_is_reported_with_its_misses():
    """Fitted on one phase, predicting the other: reported as it comes out (make validate prints it);
    the prefill -> decode direction misses the issue's 15 % (small payloads pay more than the
    two-parameter line's latency), and stays visible."""
    rows = deepep.leave_one_out()
    assert {(a, b) for a, b, *_ in rows} == {("prefill", "decode"), ("decode", "prefill")}
    for fit_on, target, op, obs, pred, err in rows:
        assert err == pytest.approx(100 * (pred / obs - 1))
    assert any(abs(e) > 15 for *_, e in rows)       # a miss left visible, not tuned away


def test_intranode_refuses_an_ep_group_beyond_one_nvlink_domain(tmp_path, capsys):
    out = tmp_path / "t.json.gz"
    rc = tracegen_main(["trace", "--hardware", "h100", "--phase", "prefill", "--batch", "2", "--seq-len", "4096",
                        "--tp", "1", "--dp", "16", "--comm", "intranode", "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "scale-up domain" in err[0] and not out.exists()
