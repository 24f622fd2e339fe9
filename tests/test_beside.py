"""Compute beside SM-holding communication at the rate the trace shows (replay/beside.py): a kernel's own rate
from its instances alone and beside, a stage's as its kernels' combined, the SM share where a kernel has none."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from replay.beside import MIN_SEEN, RATE_FLOOR, beside_shares, combined_rate, kernel_rates

DEEPEP = Path(__file__).resolve().parents[1] / "traces" / "observed" / "deepep-h100x4"


def test_share_of_each_kernel_run_beside_communication():
    s, e = np.array([0.0, 10.0, 30.0]), np.array([10.0, 30.0, 40.0])
    c0, c1 = np.array([5.0, 20.0]), np.array([8.0, 35.0])       # beside: 3 of 10, 10 of 20, 5 of 10
    assert beside_shares(s, e, c0, c1) == pytest.approx([0.3, 0.5, 0.5])
    assert beside_shares(s, e, np.array([]), np.array([])) == pytest.approx([0, 0, 0])


def test_a_kernels_rate_is_what_its_instances_beside_take_against_alone():
    # a persistent GEMM: 100 us alone; wholly beside it takes 200 (x0.5); half beside, 150 (x0.5 again)
    names = np.array(["gemm"] * 8 + ["small"] * 8 + ["rare"] * 2)
    dur = np.array([100, 100, 101, 99, 200, 200, 150, 150] + [10] * 8 + [5, 9], dtype=float)
    share = np.array([0, 0, 0, 0, 1, 1, 0.5 / 0.75, 0.5 / 0.75] + [0] * 4 + [1] * 4 + [0, 1], dtype=float)
    rates = kernel_rates(names, dur, share)
    # 150 us with 100 of it beside: 50 alone + r x 100 beside = 100 us of work, r = 0.5
    assert rates["gemm"] == pytest.approx(0.5)
    assert rates["small"] == pytest.approx(1.0)          # as fast beside as alone: the SMs left were enough
    assert "rare" not in rates                             # fewer than MIN_SEEN each way: the SM share stays
    assert MIN_SEEN > 1


def test_rates_are_bounded_and_a_stage_combines_its_kernels_over_their_time():
    names = np.array(["k"] * 6)
    dur = np.array([10, 10, 10, 1000, 1000, 1000], dtype=float)
    share = np.array([0, 0, 0, 1, 1, 1], dtype=float)
    assert kernel_rates(names, dur, share)["k"] == pytest.approx(RATE_FLOOR)
    # 100 us of a kernel at x0.5 and 100 us of one with no rate (SM share 0.8): 200 us of work in 325 us
    got = combined_rate(np.array(["a", "b"]), np.array([100.0, 100.0]), {"a": 0.5}, 0.8)
    assert got == pytest.approx(200 / (100 / 0.5 + 100 / 0.8))


def test_an_op_is_a_kernel_name_at_one_place_of_its_stage():
    """One library kernel runs many shapes: the same name at another place of the stage is another op, and the
    same place in another layer or micro-batch is the same op."""
    import pandas as pd

    from replay.beside import kernel_keys
    k = pd.DataFrame({"start_us": [0, 10, 20, 100, 110, 120, 200, 210],
                      "layer": [3, 3, 3, 4, 4, 4, 3, 3], "microbatch": [0, 0, 0, 0, 0, 0, 1, 1],
                      "cstage": ["MLP"] * 6 + ["ATTN"] * 2,
                      "name": ["gemm", "act", "gemm", "gemm", "act", "gemm", "gemm", "gemm"]}).sample(frac=1, random_state=0)
    keys = dict(zip(k.index, kernel_keys(k)))
    assert keys[0] == keys[3] == "MLP#0 gemm" and keys[2] == keys[5] == "MLP#2 gemm" and keys[0] != keys[2]
    assert keys[6] == "ATTN#0 gemm" and keys[7] == "ATTN#1 gemm"


@pytest.mark.skipif(not DEEPEP.exists(), reason="traces/observed/deepep-h100x4 is absent")
def test_deepep_ops_beside_dispatch_are_measured_one_by_one():
    """On the 4 x H100 DeepEP capture some ops run far slower beside DeepEP's kernels than the SM share says (a
    short projection GEMM, 30 us alone, about twice that beside: a second wave) and the long expert GEMMs about
    as it says; the stage graph carries each stage's own rate, between the bound and full speed."""
    from replay.analyze import analyze_one_step
    from replay.beside import RATE_FLOOR
    from replay.stagegraph import stage_graph
    from replay.stagerules import load_stage_rules

    a, _ = analyze_one_step(DEEPEP / "prefill-improper", None, rank=0, use_cache=False, findings=False)
    g = stage_graph(a, load_stage_rules(None))
    held = max(st.holds_sms for st in g.stages.values())
    share = (g.hardware.sm_count - held) / g.hardware.sm_count
    rates = {k: 1 - st.sm_loss * held for k, st in g.stages.items() if st.sm_loss is not None}
    assert len(rates) >= 10 and all(RATE_FLOOR <= r <= 1.0 for r in rates.values()), rates
    attn = [r for k, r in rates.items() if k[2] == "ATTN"]
    assert min(attn) < share, (attn, share)
    note = next(x for x in g.assumptions if "rates its own ops ran at" in x)
    assert int(note.split(": ")[1].split(" ops")[0]) >= 10, note
