"""Held-out checks on a Qwen3-30B-A3B-shaped prefill on one H100 (bench/capture/capture_qwen3_prefill.py),
written and committed before the capture was taken and before replay ran on it: a model family and an
expert kernel (PyTorch's CUTLASS grouped GEMM, torch._grouped_mm) the corpus did not hold. Truths are
computed here from the raw JSON with plain loops, never by the code under test.

The checks are defined once a capture is committed (a skip would fail CI's strict mode, and before
the capture there is nothing to check)."""
from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

import pytest

from replay.analyze import analyze

from .helpers import idle_total, kernel_gaps, launched_inside, merged

HERE = Path(__file__).resolve().parents[1] / "traces" / "observed" / "qwen3-prefill"
# the lent GPU may be an H100 or an H200: each capture taken has its truth file (its trace named in it)
CAPTURES = [n for n in ("qwen3-prefill-capture.json", "qwen3-prefill-capture-h200.json") if (HERE / n).exists()]


@lru_cache(maxsize=None)
def truth(name: str) -> dict:
    return json.loads((HERE / name).read_text())


@lru_cache(maxsize=None)
def raw(name: str) -> list[dict]:
    with gzip.open(HERE / truth(name)["trace"]["file"], "rt") as f:
        return json.load(f)["traceEvents"]


@lru_cache(maxsize=None)
def result(name: str):
    return analyze(HERE / truth(name)["trace"]["file"], use_cache=False, progress=False)


def grouped_mm_kernels(name: str) -> list[dict]:
    """The kernels launched inside aten::_grouped_mm: the routed experts' GEMMs, by plain loops (a launch
    call inside an op's CPU span on its thread; its kernel by correlation id)."""
    return launched_inside(raw(name), lambda e: e.get("name") == "aten::_grouped_mm")


def _layers_and_steps_from_module_ranges(name):
    """2 profiled steps of 4 Qwen3MoeDecoderLayer ranges: layers restart at each step, one micro-batch."""
    a = result(name)
    per = a.layers.groupby("step")["layer"].nunique().to_dict()
    t = truth(name)["trace"]
    assert len(per) == t["steps"] and set(per.values()) == {t["layers_per_step"]}, per
    gpu = a.events[(a.events["device"] == "gpu") & (a.events["layer"] >= 0)]
    assert set(gpu["microbatch"].unique()) <= {0, -1}
    assert (a.layers["compute_us"] > 0).all()           # a layer never straddles steps, and every layer computes


def _grouped_gemm_experts_are_expert_compute(name):
    """PyTorch's grouped GEMM (CUTLASS, launched by aten::_grouped_mm) is routed-expert compute: the rank's
    MoE compute is exactly the union of those kernels, and more than zero. Each aten::_grouped_mm call (2 per
    layer per step) launches a setup kernel (prepare_grouped_gemm_data) and the CUTLASS GEMM: as pinned, this
    check counted 2 kernels per layer per step, one per call; the capture showed the setup kernel, and the
    count was corrected after (the union, replay's figure, was checked as pinned and matched)."""
    ks = grouped_mm_kernels(name)
    t = truth(name)["trace"]
    calls = 2 * t["layers_per_step"] * t["steps"]
    assert sum("prepare_grouped_gemm_data" in e["name"] for e in ks) == calls and len(ks) == 2 * calls, len(ks)
    union = sum(b - x for x, b in merged((e["ts"], e["ts"] + e["dur"]) for e in ks))
    assert union > 0
    assert result(name).ranks[0]["moe_compute_us"] == pytest.approx(union, rel=1e-3)


def _idle_is_the_gaps_between_kernels_and_nothing_is_suspicious(name):
    """Idle by every cause sums to the gaps of the merged kernels; nothing flagged but the absent
    communication."""
    a = result(name)
    assert idle_total(a) == pytest.approx(sum(b - x for x, b in kernel_gaps(raw(name))), rel=1e-6)
    assert {s["what"] for s in a.suspicious} <= {"no_communication"}, a.suspicious


def _whatif_with_no_change_reproduces_the_prefill(name):
    """Issue 27's bar: `replay whatif` with no change re-times the observed run within 5 % of its span
    and 2 points of hidden share (bench.whatif_fidelity's no-change rows)."""
    from bench.whatif_fidelity import HIDDEN_BAR_PTS, SPAN_BAR_PCT, no_change_rows
    (r,) = no_change_rows({"qwen3-prefill": (HERE / truth(name)["trace"]["file"], None)})
    assert abs(r["span_error_pct"]) <= SPAN_BAR_PCT and abs(r["hidden_error_pts"]) <= HIDDEN_BAR_PTS, r


if CAPTURES:
    each = pytest.mark.parametrize("name", CAPTURES)
    test_layers_and_steps_from_module_ranges = each(_layers_and_steps_from_module_ranges)
    test_grouped_gemm_experts_are_expert_compute = each(_grouped_gemm_experts_are_expert_compute)
    test_idle_is_the_gaps_between_kernels_and_nothing_is_suspicious = \
        each(_idle_is_the_gaps_between_kernels_and_nothing_is_suspicious)
    test_whatif_with_no_change_reproduces_the_prefill = each(_whatif_with_no_change_reproduces_the_prefill)


# The compiled capture (--compile): pinned as a held-out tracegen row before it ran (bench/data/heldout.toml
# qwen3-30b-4l-*-prefill-compiled) with one expectation; replay's checks below were written after it was seen.
COMPILED = [n for n in ("qwen3-prefill-capture-compiled.json", "qwen3-prefill-capture-compiled-h200.json")
            if (HERE / n).exists()]


def _compiled_step_lies_between_eager_and_prediction(name):
    """The expectation pinned with the compiled row (163ffbf): the step lands between the eager capture's and
    tracegen's prediction, since compiling fuses the elementwise glue but not the scatter, sort or GEMMs."""
    from bench.labels import pinned
    card = "h200" if name.endswith("-h200.json") else "h100"
    eager = HERE / ("qwen3-prefill-capture-h200.json" if card == "h200" else "qwen3-prefill-capture.json")
    if not eager.exists():
        pytest.skip(f"no eager capture on {card} to compare with")
    predicted_us = 8192 / pinned()[f"qwen3-30b-4l-{card}-prefill-compiled"]["predicted_at_pin"] * 1e6
    got = truth(name)
    assert got["compiled"] and predicted_us < got["step_us"] < json.loads(eager.read_text())["step_us"]


def _compiled_structure_and_idle(name):
    """The compiled layers keep their module ranges (2 steps x 4 layers) and idle is the kernels' gaps."""
    _layers_and_steps_from_module_ranges(name)
    _idle_is_the_gaps_between_kernels_and_nothing_is_suspicious(name)


if COMPILED:
    each_compiled = pytest.mark.parametrize("name", COMPILED)
    test_compiled_step_lies_between_eager_and_prediction = each_compiled(_compiled_step_lies_between_eager_and_prediction)
    test_compiled_structure_and_idle = each_compiled(_compiled_structure_and_idle)
