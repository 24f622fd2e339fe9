"""replay's ledger (replay/data/thresholds.toml): every numeric constant a replay module decides with is
listed, with the value the code uses, a kind and what it rests on; one chosen from data names its data."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

from replay.ledger import KINDS, load

REPLAY = Path(__file__).resolve().parents[1] / "replay"


def numeric_constants() -> dict[str, float]:
    """module.NAME -> value of every module-level UPPER_CASE int or float of replay/*.py."""
    out = {}
    for f in sorted(REPLAY.glob("*.py")):
        names = []
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    names += [e.id for e in (t.elts if isinstance(t, ast.Tuple) else [t]) if isinstance(e, ast.Name)]
        module = importlib.import_module(f"replay.{f.stem}")
        for n in names:
            v = getattr(module, n, None)
            if n.isupper() and isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"{f.stem}.{n}"] = v
    return out


def test_every_numeric_constant_is_in_the_ledger_with_its_value():
    code = numeric_constants()
    ledger = {r.name: r for r in load()}
    assert code, "no constants found: the scan is broken"
    assert not set(code) - set(ledger), f"not in replay/data/thresholds.toml: {sorted(set(code) - set(ledger))}"
    assert not set(ledger) - set(code), f"in the ledger, not in the code: {sorted(set(ledger) - set(code))}"
    for name, v in code.items():
        assert ledger[name].value == v, (name, ledger[name].value, v)


def test_each_entry_says_what_it_rests_on():
    for r in load():
        assert r.kind in KINDS and r.why.strip(), r
        if r.kind in ("chosen from data", "assumed"):
            assert r.basis.strip() not in ("", "-"), f"{r.name}: a {r.kind} number says what it rests on"
        if r.kind == "chosen from data":
            assert "traces/" in r.basis, f"{r.name}: names the captures it was chosen on (in-sample for it)"
