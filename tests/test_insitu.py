"""In-situ communication slowdown (bench/insitu.py, tracegen/pipeline.py): the catalog holds the fit
from the DeepEP captures, its leave-one-out holds, and the scheduler stretches only SM-holding
communication, only where compute runs beside it."""
from __future__ import annotations

from dataclasses import replace

import pytest

from bench import insitu
from tracegen.base.contract import COMM
from tracegen.catalog import load_hardware, load_model
from tracegen.pipeline import TraceOptions, beside_compute, schedule
from tracegen.plan import Plan
from tracegen.preset import load_preset
from tracegen.target import Target

MODEL = load_model("deepseek-v3")
DEFAULT = load_preset("default")


def test_the_catalog_holds_the_fit():
    assert load_hardware("h100").in_situ.slowdown == pytest.approx(insitu.fit()["slowdown"], abs=5e-4)


def test_fit_samples_are_alone_and_beside_compute():
    f = insitu.fit()
    for op in insitu.OPS:
        assert f[f"{op}_in_situ_us"] > f[f"{op}_alone_us"]         # slower beside GEMMs, both ops
        assert f[f"{op}_f"] > 0.9


def test_leave_one_out_within_5_percent():
    for r in insitu.leave_one_out():
        assert abs(r["error_pct"]) <= 5.0, r


def _prefill(preset=DEFAULT, tbo="proper", mb=2):
    plan = Plan(phase="prefill", batch=2, seq_len=4096, dp=32, comm="normal", comm_release="first", microbatches=mb)
    return schedule(Target(MODEL, load_hardware("h800"), preset, plan),
                    TraceOptions(tbo=tbo, layers=4, skip_dense=True))


def test_overlapped_prefill_communication_runs_slower_by_the_term():
    on, off = _prefill(), _prefill(replace(DEFAULT, comm_in_situ=False))
    s = load_hardware("h800").in_situ.slowdown
    share = beside_compute(on)
    for key, st in on.graph.stages.items():
        if st.stream != COMM:
            continue
        base = off.graph.stages[key].work_us
        assert base - 1e-9 <= st.work_us <= base * (1 + s) + 1e-9     # stretched by at most the whole term
        d_on = on.end[(0, key)] - on.start[(0, key)]
        d_off = off.end[(0, key)] - off.start[(0, key)]
        assert d_on >= d_off - 1e-6
        assert d_on <= d_off + s * base + 1e-6           # never more than the whole term
    assert max(share.values()) > 0.5 and on.span_us > off.span_us


def test_serial_prefill_communication_runs_alone():
    """TBO off: nothing runs beside the all-to-all, so the term adds nothing."""
    on, off = _prefill(tbo="off", mb=1), _prefill(replace(DEFAULT, comm_in_situ=False), tbo="off", mb=1)
    assert on.span_us == pytest.approx(off.span_us, rel=1e-9)


def test_low_latency_kernels_hold_no_sms_and_are_not_stretched():
    plan = Plan(phase="decode", batch=128, seq_len=4096, dp=128, comm="ibgda", comm_release="first")
    hw = load_hardware("h800")
    a = schedule(Target(MODEL, hw, DEFAULT, plan), TraceOptions(tbo="proper", layers=4, skip_dense=True))
    b = schedule(Target(MODEL, hw, replace(DEFAULT, comm_in_situ=False), plan), TraceOptions(tbo="proper", layers=4,
                                                                                        skip_dense=True))
    assert a.span_us == pytest.approx(b.span_us, rel=1e-12)
