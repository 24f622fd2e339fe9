"""Imports point down only: tracegen/base (the contract and shared plumbing) < tracegen < replay <
viz. A module may import its own layer or lower ones, never a higher one; the bottom layer imports
nothing else of the project; replay's file-format module builds no table (no pandas)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("tracegen.base", "tracegen", "replay", "viz")     # bottom to top
PACKAGES = ("tracegen", "replay", "viz")


def layer(module: str) -> int | None:
    """The layer of a project module (None: not the project's)."""
    for i in range(len(LAYERS) - 1, -1, -1):
        name = LAYERS[i]
        if module == name or module.startswith(name + "."):
            # tracegen.base is inside tracegen: test the more specific name first
            if name == "tracegen" and (module == "tracegen.base" or module.startswith("tracegen.base.")):
                return 0
            return i
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file, function-level ones included."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:           # from . import x: x may be a module
                    out += [(node.lineno, f"{target}.{a.name}") for a in node.names]
                    continue
            else:
                target = node.module or ""
            out.append((node.lineno, target))
    return out


def project_files() -> list[Path]:
    return [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]


def test_the_walker_sees_relative_and_absolute_imports():
    assert layer("tracegen.base.contract") == 0 and layer("tracegen.cost") == 1
    assert layer("replay.kineto") == 2 and layer("viz.app") == 3 and layer("numpy") is None
    found = dict((m, n) for n, m in imports(ROOT / "replay" / "whatif.py"))
    assert "tracegen.base.contract" in found and "replay.stagegraph" in found


def test_no_import_points_up():
    bad = []
    files = project_files()
    assert len(files) > 30
    for path in files:
        here = layer(module_name(path))
        for line, target in imports(path):
            there = layer(target)
            if there is not None and here is not None and there > here:
                bad.append(f"{path.relative_to(ROOT)}:{line} ({LAYERS[here]}) imports {target} ({LAYERS[there]})")
    assert not bad, "imports that point up:\n" + "\n".join(bad)


def test_bottom_layer_imports_nothing_else_of_the_project():
    for path in sorted((ROOT / "tracegen" / "base").glob("*.py")):
        for line, target in imports(path):
            assert layer(target) in (None, 0), f"{path.relative_to(ROOT)}:{line} imports {target}"


def test_the_file_format_builds_no_table():
    for line, target in imports(ROOT / "replay" / "kineto.py"):
        assert target.split(".")[0] not in ("pandas", "pyarrow"), f"replay/kineto.py:{line} imports {target}"
