"""The traces captured on the lent H100 (traces/observed/h100, committed with the script that
made them): replay finds the overlap and the CPU-blocked launches, and tracegen predicts the
observed span of the same configuration within 15 %. No GPU needed: the traces are files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from replay.analyze import analyze
from tracegen.catalog import load_hardware, load_model
from tracegen.pipeline import TraceOptions, schedule
from tracegen.plan import Plan
from tracegen.preset import load_preset
from tracegen.target import Target

OBS = Path(__file__).resolve().parents[1] / "traces" / "observed" / "h100"
TAXONOMY = OBS / "taxonomy.toml"


@pytest.fixture(scope="module")
def capture():
    return json.loads((OBS / "capture.json").read_text())


@pytest.fixture(scope="module")
def observed():
    return {o: analyze(OBS / f"layers-{o}.json.gz", taxonomy=str(TAXONOMY), use_cache=False)
            for o in ("proper", "improper")}


def test_stream_roles_and_overlap_found(observed):
    for a in observed.values():
        roles = {s["role"] for s in a.streams.to_dict(orient="records")}
        assert roles == {"compute", "comm"}
        (r,) = a.ranks
        assert r["hidden_comm_pct"] > 50 and r["overlap_us"] > 0
        assert a.structure == "annotations" and sorted(a.layers["layer"]) == [3, 4, 5, 6]


def test_improper_order_shows_cpu_blocked_launches_proper_fewer(observed):
    def blocked(a):
        return sum(f["lost_us"] for f in a.findings if f["kind"] == "cpu_blocked_launch")
    assert blocked(observed["improper"]) > 500.0            # microseconds
    assert blocked(observed["proper"]) < 0.25 * blocked(observed["improper"])
    msgs = [f["message"] for f in observed["improper"].findings if f["kind"] == "cpu_blocked_launch"]
    assert any("cudaEventSynchronize" in m for m in msgs)
    assert observed["improper"].ranks[0]["span_us"] > observed["proper"].ranks[0]["span_us"]


@pytest.mark.parametrize("order", ["proper", "improper"])
def test_tracegen_predicts_the_observed_span_within_15_percent(capture, observed, order):
    run = next(r for r in capture["layer_runs"] if r["order"] == order)
    # the stand-in copied one payload per node of each chosen group (routing "spread", as captured)
    plan = Plan(**{"routing": "spread", **capture["layer_plan"]}, gpus_per_node=8)
    sched = schedule(Target(load_model("deepseek-v3"), load_hardware("h100"), load_preset("default"), plan),
                     TraceOptions(tbo=order, layers=len(run["layers"]), skip_dense=True))
    predicted = sched.span_us
    seen = observed[order].ranks[0]["span_us"]
    assert abs(predicted - seen) / seen <= 0.15, (predicted, seen)
