"""Pinned before the capture (traces/observed/sm-standin, bench/capture/capture_sm_standin.py): the single-GPU
layers of traces/observed/h100 with an all-to-all stand-in that holds 24 SMs, as DeepEP's normal kernels do
(a Triton copy kernel of 24 programs), instead of host copies that hold none. replay/beside.py (compute beside
SM-holding communication at the rate its own kernels show) was built on the DeepEP captures; this is the first
capture it did not see. What it must do here, written before the capture ran:
  1. the stand-in is the communication of every DISPATCH / COMBINE stage (the taxonomy file);
  2. `replay whatif` with no change reproduces both orders: span within 5 %, hidden share within 2 points;
  3. improper re-timed in the proper order lands within 5 % of the observed proper run, and no further from it
     than the same re-time at the SM share (the rule switched off) plus half a point.
Skips while the capture is absent."""
from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1] / "traces" / "observed" / "sm-standin"
TAX = str(HERE / "taxonomy.toml")
FILES = {o: HERE / f"sm-standin-{o}.json.gz" for o in ("proper", "improper")}
pytestmark = pytest.mark.skipif(not all(p.exists() for p in FILES.values()),
                                reason="traces/observed/sm-standin is not captured yet (bench/capture/capture_sm_standin.py)")


def _graph(order: str):
    from replay.analyze import analyze_one_step
    from replay.stagegraph import stage_graph
    from replay.stagerules import load_stage_rules
    a, _ = analyze_one_step(FILES[order], None, taxonomy=TAX, rank=0, use_cache=False, findings=False)
    return a, stage_graph(a, load_stage_rules(None))


def test_the_standin_is_the_communication_of_every_dispatch_and_combine():
    a, g = _graph("improper")
    comm = [k for k, st in g.stages.items() if st.stream == "comm"]
    assert comm and {k[2] for k in comm} == {"DISPATCH", "COMBINE"}
    assert a.ranks[0]["comm_us"] > 0


@pytest.mark.parametrize("order", ["proper", "improper"])
def test_whatif_with_no_change_reproduces_the_capture(order):
    from bench.whatif_fidelity import HIDDEN_BAR_PTS, SPAN_BAR_PCT, _one, errors
    e = errors(_one(FILES[order], TAX, 0))
    assert abs(e["span_error_pct"]) <= SPAN_BAR_PCT and abs(e["hidden_error_pts"]) <= HIDDEN_BAR_PTS, e


def _reorders(monkeypatch) -> tuple[dict, dict]:
    """improper -> proper with the rule, and with it switched off (the SM share)."""
    from bench.whatif_fidelity import _reorder
    import replay.stagegraph as sg
    with_rule = _reorder(FILES["improper"], FILES["proper"], TAX, 0)
    monkeypatch.setattr(sg, "_beside_rates", lambda labelled, stages, hw: (stages, []))
    return with_rule, _reorder(FILES["improper"], FILES["proper"], TAX, 0)


def _err(r: dict) -> float:
    return 100 * (r["predicted_ms"] / r["proper_ms"] - 1)


@pytest.mark.xfail(strict=True, reason="missed as pinned (2026-12-07): the observed proper run is 26 % SLOWER than the "
                   "improper one (93.2 against 73.7 ms) and the re-time predicts 71.4 ms (-23.5 %, the same at the SM "
                   "share). The stand-in's 24 blocks, launched while a persistent GEMM or attention kernel holds every "
                   "SM, take 2-3x their time alone (a combine: 9.0 ms against 3.1) and keep that pace after the "
                   "compute ends (likely blocks placed two to an SM, which do not move); more of them launch into running compute in "
                   "the proper order. whatif's communication runs at the hardware's in-situ rate for DeepEP (0.199 x its "
                   "share beside compute), which does not describe this kernel. See traces/observed/sm-standin/README.md")
def test_improper_reordered_lands_within_5_percent_of_the_proper_run(monkeypatch):
    with_rule, at_share = _reorders(monkeypatch)
    assert abs(_err(with_rule)) <= 5.0, (with_rule, at_share)


def test_improper_reordered_is_no_further_from_the_proper_run_than_at_the_sm_share(monkeypatch):
    with_rule, at_share = _reorders(monkeypatch)
    assert abs(_err(with_rule)) <= abs(_err(at_share)) + 0.5, (with_rule, at_share)
