"""The fuzz campaign (tests/fuzz.py) at a fixed, small budget with a fixed seed: generated and mutated
traces against the loader and analyze, random plans against tracegen; zero tracebacks and zero
broken invariants. `make fuzz` runs the same with a budget of over 100,000 inputs."""
from __future__ import annotations

import pytest

from .fuzz import run


@pytest.mark.parametrize("target,budget", [("loader", 300), ("analyze", 80), ("commands", 40), ("tracegen", 400), ("roundtrip", 15), ("agree", 8)])
def test_fuzz_budget_finds_nothing(target, budget):
    r = run(target, budget, seed=20261126)
    assert r["inputs"] == budget
    assert r.get("failed", 0) == 0, r["failures"]
    assert r.get("answered", 0) > 0 and r.get("refused", 0) > 0      # both sides of the oracle exercised


def test_a_trace_at_one_timestamp_is_answered_or_refused(tmp_path):
    """Found by the commands campaign (seed 91): a real annotated capture with every event at one
    timestamp made step recovery from the layer sequence take the min of an empty step (a traceback in
    `replay diff`). Now it answers or refuses in one line."""
    import gzip
    import json
    from pathlib import Path

    from replay.cli import main
    src = Path(__file__).resolve().parents[1] / "traces" / "observed" / "h200" / "style-slash.json.gz"
    d = json.load(gzip.open(src, "rt"))
    for e in d["traceEvents"]:
        if "ts" in e:
            e["ts"] = 1000.0
    f = tmp_path / "one-ts.json"
    f.write_text(json.dumps(d))
    assert main(["diff", str(f), str(src), "--no-cache"]) in (0, 1, 2)
    assert main(["analyze", str(f), "--no-cache"]) in (0, 2)
