"""An MoE training step captured on one H100 (bench/capture/capture_hf_moe_train.py: forward, backward
on autograd's thread, AdamW; with nn.Module ranges, with them plus record_shapes / profile_memory, and
with none). Written before the capture ran and before replay saw it: what replay must recover on a
kind of trace users bring that the inference corpus lacks. The backward has no module ranges and the
same layers run again in reverse, so the rules here are the ones that keep layers honest: never more
layers in a step than the model has, never numbered across steps, none without compute."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import pytest

from replay.analyze import analyze

DIR = Path(__file__).resolve().parents[1] / "traces" / "observed" / "hf-moe-train"
CAPTURE = json.loads((DIR / "hf-moe-train-capture.json").read_text()) if (DIR / "hf-moe-train-capture.json").exists() \
    else {"runs": {}}
pytestmark = pytest.mark.skipif(not CAPTURE["runs"], reason="the training capture is not committed yet")


@lru_cache(maxsize=None)
def _analysis(variant: str):
    """One analysis per capture for the whole module (the tests only read it)."""
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


@pytest.mark.parametrize("variant", sorted(CAPTURE["runs"]))
def test_whatif_and_compare_refuse_a_training_step_in_one_line(capsys, tmp_path, variant):
    """With module ranges the forward's stages re-timed with the backward's kernels (in no stage) dropped:
    -69 % of the span with no change, exit 0. A backward pass now refuses the what-if, and the comparison
    against a prediction, in one line (exit 2, no output file)."""
    from replay.cli import main
    path = DIR / f"hf-moe-train-{variant}.json.gz"
    out = tmp_path / "w.json"
    assert main(["whatif", str(path), "-o", str(out), "--no-cache"]) == 2 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a training step: autograd ran" in err[0], err
    pred = tmp_path / "p.json.gz"
    from tracegen.cli import main as tracegen
    assert tracegen(["trace", "-o", str(pred)]) == 0
    capsys.readouterr()
    assert main(["compare", str(pred), str(path), "--no-cache"]) == 2
    err = capsys.readouterr().err.strip().splitlines()      # (after the line naming the step it compares)
    errors = [e for e in err if e.startswith("replay: error")]
    assert errors == err[-1:] and "the observed trace is a training step" in err[-1], err


def test_an_inference_trace_runs_no_backward_op():
    """The rule's other side, on the inference captures of the same model and of a decode: no backward op."""
    from replay.suspicious import backward_op_count
    root = DIR.parent
    for f in (root / "hf-moe-h100" / "hf-moe-module.json.gz", root / "hf-decode" / "hf-decode-hf.json.gz"):
        assert backward_op_count(analyze(f, use_cache=False, progress=False).events) == 0, f


def test_the_report_says_how_much_compute_ran_outside_the_layers():
    """The per-layer table of a training step holds its forward only: the report says the layers hold
    22 % of the compute; on the same model's inference capture (every kernel in a layer) it says nothing."""
    from replay.report import render
    text = render(_analysis("module"))
    line = next(x for x in text.splitlines() if "the layers hold" in x)
    held = float(line.split("the layers hold ")[1].split(" of ")[0])
    assert held == pytest.approx(_analysis("module").layers["compute_us"].sum() / 1e3, abs=1e-3) and "(22 %)" in line
    inference = analyze(DIR.parent / "hf-moe-h100" / "hf-moe-module.json.gz", use_cache=False, progress=False)
    assert "the layers hold" not in render(inference)


@pytest.mark.parametrize("variant", sorted(CAPTURE["runs"]))
def test_the_report_says_it_is_a_training_step(variant):
    """One suspicious-input entry says what kind of trace it is (the layers are the forward's)."""
    a = _analysis(variant)
    got = [s for s in a.suspicious if s["what"] == "training_step"]
    assert len(got) == 1 and got[0]["count"] == 1390 and "forward and backward" in got[0]["message"], got


def test_pytorch_1_8_backward_ops_are_named_by_their_node():
    """PyTorch 1.8-1.10 recorded each autograd node by its name alone (CudnnConvolutionBackward, ReluBackward1):
    Kineto's own ResNet-50 training sample (traces/outside/kineto) is a training step too."""
    a = analyze(DIR.parents[1] / "outside" / "kineto" / "worker0.1623212756351.pt.trace.json.gz",
                use_cache=False, progress=False)
    got = [s for s in a.suspicious if s["what"] == "training_step"]
    assert len(got) == 1 and got[0]["count"] > 1000, got
