"""An MoE training step captured on one H100 (bench/capture/capture_hf_moe_train.py: forward, backward
on autograd's thread, AdamW; with nn.Module ranges, with them plus record_shapes / profile_memory, and
with none). Written before the capture ran and before replay saw it: what replay must recover on a
kind of trace users bring that the inference corpus lacks. The backward has no module ranges and the
same layers run again in reverse, so the rules here are the ones that keep layers honest: never more
layers in a step than the model has, never numbered across steps, none without compute."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from replay.analyze import analyze

DIR = Path(__file__).resolve().parents[1] / "traces" / "observed" / "hf-moe-train"
CAPTURE = json.loads((DIR / "hf-moe-train-capture.json").read_text()) if (DIR / "hf-moe-train-capture.json").exists() \
    else {"runs": {}}
pytestmark = pytest.mark.skipif(not CAPTURE["runs"], reason="the training capture is not committed yet")


def _analysis(variant: str):
    return analyze(DIR / f"hf-moe-train-{variant}.json.gz", use_cache=False, progress=False)


@pytest.mark.parametrize("variant", sorted(CAPTURE["runs"]))
def test_steps_and_layers_are_honest(variant):
    run = CAPTURE["runs"][variant]
    a = _analysis(variant)
    assert a.steps["step"].nunique() == run["steps"], a.steps
    if a.layers.empty:          # no layers: the structure line says why, rank figures only
        assert "rank-level figures only" in a.structure, a.structure
        return
    per = a.layers.groupby("step")["layer"].agg(["nunique", "min", "max"])
    assert len(per) == run["steps"], per
    # never more layers in a step than the model has, numbered from 0 in every step (not across steps)
    assert (per["nunique"] <= run["forward_layers_per_step"]).all(), per
    assert (per["min"] == 0).all() and (per["max"] < run["forward_layers_per_step"]).all(), per
    assert (a.layers["compute_us"] > 0).all(), a.layers


@pytest.mark.parametrize("variant", [v for v in ("module", "memory") if v in CAPTURE["runs"]])
def test_forward_layers_from_module_ranges(variant):
    """The forward's nn.Module ranges give the model's layers, every step; the experts' GEMMs under the
    MoE block are expert compute."""
    run = CAPTURE["runs"][variant]
    a = _analysis(variant)
    per = a.layers.groupby("step")["layer"].nunique()
    assert len(per) == run["steps"] and set(per) == {run["forward_layers_per_step"]}, (a.structure, per)
    assert a.structure.startswith("annotations (nn.Module)"), a.structure
    assert all(r["moe_compute_us"] > 0 for r in a.ranks), a.ranks


def test_memory_events_change_nothing_but_the_run():
    """record_shapes and profile_memory add [memory] instant events and shapes to every op: the same
    structure, and the GPU's compute within run-to-run spread (5 %) of the capture without them."""
    if not {"module", "memory"} <= set(CAPTURE["runs"]):
        pytest.skip("both module captures are needed")
    m, mem = _analysis("module"), _analysis("memory")
    assert m.structure == mem.structure
    assert len(m.layers) == len(mem.layers)
    c0, c1 = m.ranks[0]["compute_us"], mem.ranks[0]["compute_us"]
    assert abs(c1 - c0) <= 0.05 * c0, (c0, c1)
