"""replay calibrate and tracegen/fit.py: the fit recovers planted curves (from synthetic op times and
from traces tracegen generated with them), predicts what cost.op_time predicts, and the committed
H100 profile predicts the committed sweep as a fresh fit of it does."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from replay.calibrate import observations
from replay.cli import main as replay
from replay.events import load
from tracegen.catalog import EffCurve, hardware_to_dict, load_hardware, load_model
from tracegen.cli import main
from tracegen.cost import op_time, roofline as cost_roofline
from tracegen.fit import FITTED, Obs, _Products, compute_us, fit, predict_us
from tracegen.ops import layer_ops
from tracegen.preset import load_preset
from tracegen.resolve import resolve_plan
from tracegen.target import Target

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
                                      "grouped_gemm": EffCurve(0.55, 60.0, f), "grouped_gemm_masked": EffCurve(0.45, 90.0, f),
                                      "attention": EffCurve(0.5, 300.0, f),
                                      "hbm": EffCurve(0.8)})
    hw_file = d / "truth.json"
    hw_file.write_text(json.dumps(hardware_to_dict(truth)))
    files = []
    # prefill feeds the contiguous grouped GEMM, decode (low-latency dispatch) the masked one: enough
    # batch sizes of each for both curves to be identifiable
    for i, (phase, batch) in enumerate([("prefill", 0.0625), ("prefill", 0.25), ("prefill", 1), ("prefill", 2),
                                        ("prefill", 4), ("decode", 16),
                                        ("decode", 128), ("decode", 512), ("decode", 2048)]):
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
    for kind in ("gemm", "grouped_gemm", "grouped_gemm_masked", "attention", "hbm"):
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
    # started from the published-figure curves (DeepGEMM, FlashAttention-3): 'before' means before;
    # the same call as `make calibrate`, computed once per process (the README's facts read it too)
    from bench import facts
    assert (facts.HOLDOUT_M, facts.HOLDOUT_NAMES) == (HOLDOUT_M, HOLDOUT_NAMES)
    return facts.sweep_fit()


def test_committed_h100_profile_predicts_as_a_fresh_fit_of_the_sweep(sweep_fit):
    """`make calibrate` is reproducible where it matters: the catalog's h100 entry and a fresh fit
    of the committed sweep predict every op of the sweep alike (median within 0.5 %, all within 5 %)."""
    fitted, _, detail, _ = sweep_fit
    obs = observations([load(str(SWEEP))])[0]
    ratio = predict_us(obs, load_hardware("h100")) / predict_us(obs, fitted)
    assert np.median(np.abs(ratio - 1)) < 0.005 and np.max(np.abs(ratio - 1)) < 0.05


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


# ----------------------------------------------------------------------------- the fit itself
def _planted(truth_curve: EffCurve):
    base = load_hardware("h800")
    truth = replace(base, efficiency={**base.efficiency, "gemm": truth_curve})
    obs = []
    for m in (1, 4, 16, 64, 256, 1024, 4096, 16384):
        for n, k in ((7168, 1536), (2048, 7168), (24576, 1536), (7168, 16384), (4096, 512)):
            obs.append(Obs("gemm", f"g{n}x{k}", m, 2.0 * m * n * k, float(m * k + k * n + 2 * m * n), "fp8", 0.0,
                           gemms=((m, n, k, 1.0),)))
    times = predict_us(obs, truth)
    return base, truth, [replace(o, us=float(t)) for o, t in zip(obs, times)]


def test_fit_recovers_a_planted_shape_aware_curve():
    """Times made by a known curve over M, N and K (some ops memory-bound, the smallest at the kernel
    floor); the fit starts from H800's different curve and must find the planted one."""
    want = EffCurve(0.7, 120.0, 6.0, 900.0, 400.0, 1.0)
    base, truth, obs = _planted(want)
    assert base.efficiency["gemm"].max != pytest.approx(want.max, rel=0.05)
    got = fit(obs, base).efficiency["gemm"]
    assert got.max == pytest.approx(want.max, rel=0.01) and got.m_half == pytest.approx(want.m_half, rel=0.01)
    assert got.n_half == pytest.approx(want.n_half, rel=0.05) and got.k_half == pytest.approx(want.k_half, rel=0.05)
    assert got.floor_us == want.floor_us and got.m_pow == 1.0
    fitted = replace(base, efficiency={**base.efficiency, "gemm": got, "hbm": fit(obs, base).efficiency["hbm"]})
    assert predict_us(obs, fitted) == pytest.approx(predict_us(obs, truth), rel=0.01)


@pytest.mark.parametrize("phase,hardware", [("prefill", "h800"), ("decode", "h100"), ("decode", "h20")])
def test_fit_predicts_what_op_time_predicts(phase, hardware):
    """The fit's prediction for an op is the cost model's: every compute op of a real layer, turned
    into an observation, gets cost.op_time's time; the optimiser's vectorised compute term agrees."""
    model, hw, preset = load_model("deepseek-v3"), load_hardware(hardware), load_preset("default")
    plan = resolve_plan(phase, model, hw, preset)
    works = [w for dense in (True, False) for w in layer_ops(Target(model, hw, preset, plan), dense) if not w.is_comm]
    obs = [Obs(w.kind, w.name, w.m, w.flops, w.hbm_bytes, w.rate, 1.0, w.kernels, gemms=w.gemms, phase=phase)
           for w in works]
    want = np.array([op_time(w, plan, hw, preset).us for w in works])
    assert predict_us(obs, hw) == pytest.approx(want, rel=1e-12)
    for kind in FITTED:
        sel = [o for o in obs if o.kind == kind and o.flops > 0]
        if sel:
            c = hw.curve(kind)
            vec = _Products(sel, hw).compute_us(c.max, c.m_half, c.n_half, c.k_half, c.m_pow)
            assert vec == pytest.approx(compute_us(sel, hw), rel=1e-9), kind
            # the grid searches' batch of trials: each row bit-for-bit the one-trial term (the fit
            # accepts trials in order over the batch, so its choices are the one-at-a-time loop's)
            trials = np.array([[c.max, c.m_half, c.n_half, c.k_half, c.m_pow], [0.5, 0.0, 0.0, 0.0, 1.0],
                               [0.9, 120.0, 0.0, 0.0, 1.0], [0.9, 120.0, 0.0, 0.0, 2.0], [0.7, 120.0, 3e3, 5e2, 1.5]])
            many = _Products(sel, hw).compute_us_many(trials)
            for row, got in zip(trials, many):
                assert np.array_equal(got, _Products(sel, hw).compute_us(*row)), (kind, row)


def test_sweep_expert_ranges_split_into_up_and_down_gemms():
    """A range of E SwiGLU experts becomes two observations, E up GEMMs (K = hidden) and E down GEMMs
    (K = expert width), whose kernel times add up to the range's GEMM time; the down GEMMs, 3.5x
    shallower, run at a lower rate, which the fitted curve's depth term reproduces."""
    if not SWEEP.exists():
        pytest.fail(f"{SWEEP} is part of the repository (the H100 capture)")
    obs = [o for o in observations([load(str(SWEEP))])[0] if o.kind == "grouped_gemm" and o.m == 4096]
    up = [o for o in obs if o.name == "experts_up" and o.gemms[0][3] == 8]
    down = [o for o in obs if o.name == "experts_down" and o.gemms[0][3] == 8]
    assert len(up) == len(down) == 5                       # 5 repetitions
    (m, n, k, e), = up[0].gemms
    assert (m, n, k, e) == (4096, 4096, 7168, 8) and down[0].gemms == ((4096, 7168, 2048, 8),)
    rate = lambda o: o.flops / o.us                          # noqa: E731
    assert np.median([rate(o) for o in down]) < 0.95 * np.median([rate(o) for o in up])
    hw = load_hardware("h100")
    for o in up + down:                                      # the catalog curve within 5 % of each
        assert abs(predict_us([o], hw)[0] / o.us - 1) < 0.05
    assert hw.efficiency["grouped_gemm"].k_half > 0


@pytest.mark.parametrize("blend", [0.0, 2.0])
def test_fit_finds_how_compute_and_memory_combine(blend):
    """Times planted with a hard roofline (blend 0) or the p-norm of compute and memory (blend 2;
    cost.roofline): a fit allowed to blend recovers which, and the curve, from H800's other curve."""
    want = EffCurve(0.65, 300.0, 6.0, blend=blend)
    base = load_hardware("h800")
    truth = replace(base, efficiency={**base.efficiency, "gemm": want})
    n, k = 4096, 7168          # one shape, M across the knee (a masked expert GEMM's up projection)
    obs = [Obs("gemm", "g", m, 2.0 * m * n * k, float(m * k + k * n + 2 * m * n), "fp8", 0.0, profiled=False,
               gemms=((m, n, k, 1.0),)) for m in np.geomspace(16, 16384, 31)]
    obs = [replace(o, us=float(t)) for o, t in zip(obs, predict_us(obs, truth))]
    got = fit(obs, base, keep_hbm=True, blend_kinds=("gemm",)).efficiency["gemm"]
    assert got.blend == blend
    assert got.max == pytest.approx(want.max, rel=0.02) and got.m_half == pytest.approx(want.m_half, rel=0.02)
    # the knee is where blending shows: compute and memory alike there, the p-norm ~sqrt(2) x the max
    assert cost_roofline(1.0, 1.0, 0.0, 2.0) == pytest.approx(2 ** 0.5) and cost_roofline(1.0, 3.0, 5.0) == 5.0
