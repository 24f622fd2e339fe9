"""`tracegen estimate / trace --stack`: the serving stack's conventions set what the plan leaves open,
the outputs say which, an explicit flag wins, and estimate and trace agree on the same plan (issue 28)."""
from __future__ import annotations

import json

import pytest

from tracegen.cli import main as tracegen
from tracegen.stack import DEFAULT_STACK, load_stack, stack_names


def _json(capsys, *argv) -> dict:
    capsys.readouterr()
    assert tracegen(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("phase", ["prefill", "decode"])
@pytest.mark.parametrize("plan", [[], ["--stack", "deepseek-2025-02"], ["--sched-ms", "5", "--clock", "boost"],
                                  ["--in-situ", "off", "--mtp", "0", "--stack", "deepseek-2025-02"]],
                         ids=["default", "deepseek-stack", "sched-5", "deepseek-no-in-situ"])
def test_estimate_and_trace_agree_on_the_same_plan(tmp_path, capsys, phase, plan):
    """The step from its start - the CPU's scheduling included (a stack's or --sched-ms's term) - to its last
    kernel; the GPU's span is that less the scheduling (plans with a scheduler term disagreed by exactly it,
    found by comparing the two on random plans)."""
    est = _json(capsys, "estimate", "--phase", phase, *plan, "--json")
    tr = _json(capsys, "trace", "--phase", phase, *plan, "--json", "-o", str(tmp_path / "t.json.gz"))
    assert est["scheduled_step_ms"] == pytest.approx(tr["step_ms"], rel=0.005)
    sched = est["assumptions"]["sched_ms"]
    before_gpu = tr["step_ms"] - tr["ranks"][0]["span_us"] / 1e3      # the scheduling, then the first launch
    assert sched <= before_gpu <= sched + 0.1
    assert est["assumptions"] == {**tr["assumptions"], "in_situ_applied": False}
    assert est["tokens_per_s_per_gpu_scheduled"] < est["tokens_per_s_per_gpu_overlap"]   # the bound is a bound


def test_the_stack_sets_the_release_and_scheduler_term_unless_a_flag_does(capsys):
    d = _json(capsys, "estimate", "--phase", "decode", "--json")
    assert d["assumptions"]["stack"] == DEFAULT_STACK
    assert d["plan"]["comm_release"] == load_stack(DEFAULT_STACK).release("ibgda") == "first"
    ds = _json(capsys, "estimate", "--stack", "deepseek-2025-02", "--json")
    assert ds["plan"]["sched_ms"] == 30.0 and ds["assumptions"]["sched_ms"] == 30.0
    assert ds["plan"]["comm_release"] == "first"
    mine = _json(capsys, "estimate", "--stack", "deepseek-2025-02", "--sched-ms", "0", "--comm-release", "latest",
                 "--json")
    assert mine["plan"]["sched_ms"] == 0.0 and mine["plan"]["comm_release"] == "latest"
    assert ds["sum_overlap_ms"] == pytest.approx(mine["sum_overlap_ms"] + 30.0 - 0.0, rel=0.05)


def test_in_situ_off_runs_communication_at_unit_test_speed(tmp_path, capsys):
    on = _json(capsys, "trace", "--layers", "6", "--json", "-o", str(tmp_path / "a.json.gz"))
    off = _json(capsys, "trace", "--layers", "6", "--in-situ", "off", "--json", "-o", str(tmp_path / "b.json.gz"))
    assert on["assumptions"]["in_situ_slowdown"] > 0 and off["assumptions"]["in_situ_slowdown"] == 0
    assert off["ranks"][0]["span_us"] < on["ranks"][0]["span_us"]


def test_an_unknown_stack_is_one_clear_error(capsys):
    assert tracegen(["estimate", "--stack", "no-such-stack"]) == 2
    err = capsys.readouterr().err
    assert "no-such-stack" in err and "Traceback" not in err
    assert "catalog" in stack_names()
