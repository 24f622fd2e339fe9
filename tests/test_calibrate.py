"""tracegen calibrate: recovers known efficiency curves from traces tracegen generated with them,
and the committed H100 profile is what a fresh fit of the committed sweep gives."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from replay.calibrate import run
from replay.cli import main as replay
from tracegen.catalog import EffCurve, hardware_to_dict, load_hardware
from tracegen.cli import main

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "traces" / "observed" / "h100" / "sweep.json.gz"
HOLDOUT_M = {3, 24, 96, 384, 1536, 6144, 48, 768}
HOLDOUT_NAMES = {"shared_up", "shared_down"}


@pytest.fixture(scope="module")
def truth_and_traces(tmp_path_factory):
    d = tmp_path_factory.mktemp("cal")
    base = load_hardware("h800")
    f = base.efficiency["gemm"].floor_us
    truth = replace(base, efficiency={**base.efficiency, "gemm": EffCurve(0.62, 150.0, f),
                                      "grouped_gemm": EffCurve(0.55, 60.0, f), "attention": EffCurve(0.5, 300.0, f),
                                      "hbm": EffCurve(0.8)})
    hw_file = d / "truth.json"
    hw_file.write_text(json.dumps(hardware_to_dict(truth)))
    files = []
    for i, (phase, batch) in enumerate([("prefill", 1), ("prefill", 2), ("prefill", 4), ("decode", 16),
                                        ("decode", 128), ("decode", 512)]):
        out = d / f"g{i}.json.gz"
        assert main(["trace", "--hardware-file", str(hw_file), "--phase", phase, "--batch", str(batch),
                     "--layers", "5", "-o", str(out)]) == 0
        files.append(str(out))
    return truth, files, d


def test_fit_recovers_the_generating_curves_within_2_percent(truth_and_traces, capsys):
    truth, files, d = truth_and_traces
    capsys.readouterr()
    out = d / "fit.json"
    # start from H800's own (different) curves: the fit must move them to the truth
    assert replay(["calibrate", *files, "--hardware", "h800", "-o", str(out)]) == 0
    fitted = load_hardware(path=out)
    for kind in ("gemm", "grouped_gemm", "attention", "hbm"):
        want, got = truth.efficiency[kind], fitted.efficiency[kind]
        assert got.max == pytest.approx(want.max, rel=0.02), kind
        if want.m_half:
            assert got.m_half == pytest.approx(want.m_half, rel=0.02), kind
    assert "calibrated" in fitted.name
    text = capsys.readouterr().out
    assert "prediction error per op kind" in text and "grouped_gemm" in text


def test_calibrated_file_is_a_normal_hardware_file(truth_and_traces, capsys):
    _, files, d = truth_and_traces
    out = d / "fit2.json"
    assert replay(["calibrate", files[0], "--hardware", "h800", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["estimate", "--hardware-file", str(out), "--json"]) == 0
    assert "(calibrated)" in json.loads(capsys.readouterr().out)["hardware"]
    assert main(["trace", "--hardware-file", str(out), "--layers", "4", "-o", str(d / "t.json")]) == 0


def test_bad_calibrate_inputs(tmp_path, capsys):
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"traceEvents": [{"ph": "X", "cat": "kernel", "name": "k", "pid": 0, "tid": 1,
                                                  "ts": 0, "dur": 1}]}))
    assert replay(["calibrate", str(plain), "--hardware", "h100", "-o", str(tmp_path / "o.json")]) == 2
    assert "no matchable ops" in capsys.readouterr().err
    assert replay(["calibrate", str(plain), "-o", str(tmp_path / "o.txt")]) == 2
    assert "JSON hardware file" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


@pytest.fixture(scope="module")
def sweep_fit():
    if not SWEEP.exists():
        pytest.fail(f"{SWEEP} is part of the repository (the H100 capture)")
    # started from the published-figure curves (DeepGEMM, FlashAttention-3): 'before' means before
    return run([str(SWEEP)], "h100-datasheet", None, HOLDOUT_M, HOLDOUT_NAMES)


def test_h100_profile_is_the_fit_of_the_committed_sweep(sweep_fit):
    fitted, _, _, _ = sweep_fit
    catalog = load_hardware("h100")
    for kind in ("gemm", "grouped_gemm", "attention", "hbm"):
        a, b = catalog.efficiency[kind], fitted.efficiency[kind]
        for field in ("max", "m_half", "n_half", "k_half", "floor_us", "m_pow"):
            assert getattr(a, field) == pytest.approx(getattr(b, field), rel=2e-3, abs=1e-6), (kind, field)
    assert catalog.comm["pcie-copy"].bw_eff == pytest.approx(fitted.comm["pcie-copy"].bw_eff, rel=1e-3)


def test_h100_held_out_error_meets_the_target(sweep_fit):
    _, table, detail, _ = sweep_fit
    after = detail[(detail["model"] == "after") & detail["held_out"] & detail["kind"].isin(["gemm", "grouped_gemm"])]
    before = detail[(detail["model"] == "before") & ~detail["held_out"] & detail["kind"].isin(
        ["gemm", "grouped_gemm", "attention"])]
    fitted = detail[(detail["model"] == "after") & ~detail["held_out"] & detail["kind"].isin(
        ["gemm", "grouped_gemm", "attention"])]
    assert len(after) > 300
    assert after["err_pct"].abs().median() <= 15.0          # ops the fit never saw
    assert fitted["err_pct"].abs().median() < before["err_pct"].abs().median()
