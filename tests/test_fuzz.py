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
    timestamp (and 50 CPU ops moved 1e9 us on) made step recovery from the layer sequence take the min of
    an empty step (a traceback in `replay diff`). Now it answers or refuses in one line."""
    import gzip
    import json
    from pathlib import Path

    from replay.cli import main
    src = Path(__file__).resolve().parents[1] / "traces" / "observed" / "h200" / "style-slash.json.gz"
    d = json.load(gzip.open(src, "rt"))
    moved = {91, 100, 126, 750, 960, 996, 1031, 1585, 1772, 1797, 2397, 2499, 2505, 2531, 2564, 2673, 2678, 2886,
             2898, 2986, 3027, 3037, 3234, 3281, 3720, 3731, 4211, 4484, 4763, 4953, 5180, 5213, 5293, 5931, 6445,
             6504, 6624, 6729, 6744, 7705, 7729, 7747, 8043, 8136, 8356, 8501, 8715, 8922, 9000, 9075}
    for i, e in enumerate(d["traceEvents"]):     # the campaign's two mutations: one clock, then 50 events shifted
        if "ts" in e:
            e["ts"] = 1000.0 + (1e9 if i in moved else 0.0)
    f = tmp_path / "one-ts.json"
    f.write_text(json.dumps(d))
    assert main(["diff", str(f), str(src), "--no-cache"]) in (0, 1, 2)
    assert main(["analyze", str(f), "--no-cache"]) in (0, 2)
