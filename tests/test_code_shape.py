"""Functions short enough to read in one screen (issue 31): no function or method in the shipped
packages longer than 80 lines, counted from its `def` to its last line (docstring included). A longer
one is several ideas; split it where the ideas part (see replay/findings.py's _add_edges/_add_gaps)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tracegen", "replay", "viz")
MAX_LINES = 80


def long_functions(limit: int = MAX_LINES) -> list[str]:
    out = []
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > limit:
                        out.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_no_function_over_80_lines():
    assert not long_functions(), "functions over 80 lines: " + "; ".join(long_functions())


def test_the_check_sees_long_functions():
    """The rule bites: at a lower limit it names real functions (so a parse that found none would fail)."""
    assert any("_add_gaps" in s for s in long_functions(limit=40))


QUARTET = {"Model", "Hardware", "Preset", "Plan"}


def loose_quartets() -> list[str]:
    """Functions whose parameters are typed as all four of model, hardware, preset and plan: they
    should take one tracegen.target.Target instead (the four used to travel in four orders)."""
    out = []
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    args = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
                    types = {ast.unparse(a.annotation) for a in args if a.annotation is not None}
                    if QUARTET <= types:
                        out.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.name}")
    return out


def test_the_quartet_travels_as_a_target():
    assert not loose_quartets(), "take a Target instead of the four: " + "; ".join(loose_quartets())


def test_the_quartet_check_sees_annotations():
    """The rule reads real annotations: the Target's own users name it (so a parse that saw none would fail)."""
    uses = [n for f in (ROOT / "tracegen").rglob("*.py") for n in ast.walk(ast.parse(f.read_text()))
            if isinstance(n, ast.arg) and n.annotation is not None and ast.unparse(n.annotation) == "Target"]
    assert len(uses) >= 10
