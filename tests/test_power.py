"""The power limit (tracegen/power.py): the catalog's figures are a fresh fit of the committed
measurements, the fit reproduces the measured mixes, and a step's clock drops only where its draw
at boost exceeds the limit - slowing its compute-bound kernels and nothing else."""
from __future__ import annotations

from dataclasses import replace

import pytest

from bench import power as bench_power
from tracegen.catalog import load_hardware, load_model
from tracegen.estimate import estimate
from tracegen.pipeline import TraceOptions, schedule
from tracegen.plan import Plan
from tracegen.power import draw
from tracegen.preset import load_preset
from tracegen.target import Target

MODEL = load_model("deepseek-v3")
H800 = load_hardware("h800")
DEFAULT = load_preset("default")
POWER = H800.power
PREFILL = Plan(phase="prefill", batch=4, seq_len=4096, dp=32, comm="normal", comm_release="first")
DECODE = Plan(phase="decode", batch=128, seq_len=4096, dp=128, comm="ibgda", comm_release="first")


def test_catalog_holds_a_fresh_fit_of_the_measurements():
    duty, per_op = bench_power.load()
    fresh = bench_power.fit(duty, per_op)
    assert load_hardware("h100").power == fresh
    # H800 and H200 are 700 W boards of the same die: they inherit it; other chips have no power model
    assert H800.power == fresh and load_hardware("h200").power == fresh
    assert load_hardware("h20").power is None and load_hardware("ascend-910c").power is None


def test_the_fit_reproduces_every_measured_mix():
    """GEMM slowdown within 4 points in each of the 13 mixes (the measurements scatter by ~3 points:
    the 0.84 copy mix ran slower than the all-GEMM run at a higher clock); no throttle below the limit."""
    duty, _ = bench_power.load()
    full = next(r["gemm_slowdown"] for r in duty if not r["fillers"])
    for r in duty:
        got = bench_power.predicted_slowdown(r, POWER, full)
        assert got == pytest.approx(r["gemm_slowdown"], abs=0.04), r
        if r["sm_mhz"] >= bench_power.BOOST_MHZ:
            assert got == 1.0


def test_draw_is_bounded_and_grows_with_the_compute_bound_share():
    assert draw(0, 0, 0, POWER).throttle == 0.0
    assert draw(0.0, 1.0, 1.0, POWER).demand_w == pytest.approx(POWER.memory_w)      # memory-bound only
    assert draw(0.0, 0.0, 1.0, POWER).demand_w == pytest.approx(POWER.idle_w)        # waiting only
    assert draw(1.0, 1.0, 1.0, POWER).throttle == 1.0
    last = -1.0
    for i in range(21):
        d = draw(i / 20, 1.0, 1.0, POWER)
        assert 0.0 <= d.throttle <= 1.0 and d.throttle >= last
        assert (d.throttle > 0) == (d.demand_w > POWER.limit_w)
        last = d.throttle


def _stage_us(sched, name: str) -> dict[str, float]:
    st = next(s for k, s in sched.graph.stages.items() if k[0] == 5 and k[1] == 0 and k[2] == name)
    return st.ops_us


def test_a_prefill_step_lowers_the_clock_and_slows_only_compute_bound_kernels():
    opts = TraceOptions(tbo="proper", layers=8)
    hot = schedule(Target(MODEL, H800, DEFAULT, PREFILL), opts)
    boost = schedule(Target(MODEL, H800, replace(DEFAULT, power_limit=False), PREFILL), opts)
    assert hot.power is not None and hot.power.throttle > 0 and boost.power is None
    assert boost.span_us < hot.span_us
    s = max(POWER.slowdown.values())
    assert hot.span_us <= boost.span_us * s
    a, b = _stage_us(hot, "MLP"), _stage_us(boost, "MLP")
    for op in ("routed_up", "routed_down"):     # compute-bound: slowed by at most their measured slowdown
        assert b[op] < a[op] <= b[op] * POWER.slowdown["grouped_gemm"] * (1 + 1e-9)
    assert a["routed_glue"] == b["routed_glue"]
    a, b = _stage_us(hot, "ATTN"), _stage_us(boost, "ATTN")
    assert a["attn_core"] > b["attn_core"]
    # memory-bound glue (norms, casts) keeps its time
    glue = [op for op in a if op.endswith("glue")]
    assert glue and all(a[op] == b[op] for op in glue)


def test_a_decode_step_keeps_the_boost_clock():
    sched = schedule(Target(MODEL, H800, DEFAULT, DECODE), TraceOptions(tbo="proper", layers=8))
    assert sched.power is not None and sched.power.throttle == 0.0
    assert sched.power.demand_w < POWER.limit_w


def test_estimate_and_trace_agree_on_the_draw_and_say_it(tmp_path, capsys):
    """The default prefill throttles in both (the estimate's span is its overlap formula, so the
    figures differ a little); the default decode in neither; seed004 has no power model."""
    plan = Plan(phase="prefill", batch=4, seq_len=4096, dp=32)
    est = estimate(Target(MODEL, H800, DEFAULT, plan)).to_dict()
    assert est["power_throttle"] > 0 and est["power_demand_w"] > POWER.limit_w
    assert estimate(Target(MODEL, H800, DEFAULT, DECODE)).to_dict()["power_throttle"] == 0.0
    seed = estimate(Target(MODEL, H800, load_preset("seed004"), plan)).to_dict()
    assert "power_demand_w" not in seed
    from tracegen.cli import main
    assert main(["estimate"]) == 0
    assert "W drawn at boost against a 700 W limit" in capsys.readouterr().out
    import gzip
    import json
    out = tmp_path / "p.json.gz"
    assert main(["trace", "--layers", "4", "-o", str(out)]) == 0
    meta = json.loads(gzip.decompress(out.read_bytes()))["otherData"]
    assert meta["power"]["throttle"] > 0 and meta["power"]["demand_w"] > POWER.limit_w


def test_train_json_draw_comes_from_its_own_kernels():
    from bench import trainjson
    if not trainjson.TRAIN.exists():
        pytest.skip(f"{trainjson.TRAIN} is absent")
    d = trainjson.train_draw()
    # DualPipe keeps the compute stream busy: ~70 % of the span in GEMMs and attention, ~96 % busy
    assert 0.6 < d.hot_us / d.span_us < 0.8 and 0.9 < d.busy_us / d.span_us <= 1.0
    assert 0 < d.throttle < 1


@pytest.mark.parametrize("change,says", [({"compute_w": 500}, "idle_w <= memory_w < limit_w < compute_w"),
                                         ({"slowdown": {"gemm": 0.5}}, "a slowdown is a time ratio >= 1"),
                                         ({"saturate": 0}, "saturate: must be positive"),
                                         ({"slowdown": {"gemmm": 1.1}}, "'gemmm' is not an op kind")])
def test_a_bad_power_table_is_one_clear_error(tmp_path, capsys, change, says):
    import json
    from tracegen.catalog import hardware_to_dict
    from tracegen.cli import main
    d = hardware_to_dict(H800)
    d["h800"]["power"].update(change)
    path = tmp_path / "hw.json"
    path.write_text(json.dumps(d))
    assert main(["estimate", "--hardware-file", str(path)]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("throttle", ["fast", 1.5, -0.1, True])
def test_a_trace_with_a_bad_throttle_is_refused(tmp_path, capsys, throttle):
    """replay re-times a generated trace at its traced clock: a throttle that is not a number in
    [0, 1] is one clear error, no output written."""
    import json
    from replay.cli import main as replay
    from tracegen.cli import main
    src, bad, out = tmp_path / "p.json", tmp_path / "bad.json", tmp_path / "w.json"
    assert main(["trace", "--layers", "2", "-o", str(src)]) == 0
    data = json.loads(src.read_text())
    data["otherData"]["power"]["throttle"] = throttle
    bad.write_text(json.dumps(data))
    capsys.readouterr()
    assert replay(["whatif", str(bad), "--launch-order", "proper", "-o", str(out), "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert "otherData.power.throttle must be a number in [0, 1]" in err and "Traceback" not in err
    assert err.count("\n") == 1 and not out.exists()


def test_a_blend_below_one_is_refused_and_the_written_table_is_a_copy(tmp_path, capsys):
    import json
    from tracegen.catalog import hardware_to_dict
    from tracegen.cli import main
    d = hardware_to_dict(H800)
    d["h800"]["power"]["slowdown"]["gemm"] = 9.0            # the caller's copy, not the catalog's
    assert H800.power.slowdown["gemm"] == POWER.slowdown["gemm"] < 9.0
    d["h800"]["efficiency"]["grouped_gemm_masked"]["blend"] = 0.5
    path = tmp_path / "hw.json"
    path.write_text(json.dumps(d))
    assert main(["estimate", "--hardware-file", str(path)]) == 2
    err = capsys.readouterr().err
    assert "blend: 0 (the larger of compute and memory) or a p-norm p >= 1, got 0.5" in err and err.count("\n") == 1
