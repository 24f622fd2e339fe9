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
