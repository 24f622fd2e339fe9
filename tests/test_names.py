"""Names are derived, never retyped (issue 31): an all-to-all backend's name or a deployment mode's is
written once - tracegen/base/backends.py, the simulator's MODES (tracegen/serving/simulate.py), the
trace contract - and a literal of one anywhere else in tracegen/, replay/ or viz/ fails here."""
from __future__ import annotations

import ast
from pathlib import Path

from tracegen.base.backends import COMM_BACKENDS
from tracegen.catalog import builtin_hardware
from tracegen.serving.simulate import COLOCATED, MODES, PD

ROOT = Path(__file__).resolve().parents[1]
HOMES = {"tracegen/base/backends.py", "tracegen/serving/simulate.py", "tracegen/base/contract.py"}
NAMES = set(COMM_BACKENDS) | {PD, COLOCATED}      # "prefill" / "decode" are the phases' names too


def literals(path: Path) -> list[tuple[int, str]]:
    return [(n.lineno, n.value) for n in ast.walk(ast.parse(path.read_text("utf-8")))
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in NAMES]


def test_no_backend_or_mode_name_is_written_outside_its_home():
    found = []
    for d in ("tracegen", "replay", "viz"):
        for p in sorted((ROOT / d).rglob("*.py")):
            rel = p.relative_to(ROOT).as_posix()
            if rel not in HOMES:
                found += [f"{rel}:{line}: {v!r}" for line, v in literals(p)]
    assert not found, "write these through tracegen.base.backends / the simulator's constants:\n" + "\n".join(found)


def test_the_check_finds_a_literal(tmp_path):
    p = tmp_path / "x.py"
    p.write_text('comm = "ibgda" if fast else NORMAL\nmode = "colocated"\n')
    assert sorted(v for _, v in literals(p)) == ["colocated", "ibgda"]


def test_the_names_are_the_catalogs_and_the_simulators():
    seen = {b for hw in builtin_hardware().values() for b in hw.comm}
    assert seen <= set(COMM_BACKENDS)
    assert set(MODES) == {PD, COLOCATED, "prefill", "decode"}
