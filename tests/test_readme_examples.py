"""Every `tracegen`, `replay` and `viz` command in a fenced block of README.md and docs/*.md runs, in
order, the way a user would paste it: in a scratch folder whose `traces/` is the repository's and whose
`../shared` is the one beside the checkout, so a command's output feeds the later ones (a trace written
by `tracegen trace -o x` is the `x` a later `replay` reads). Shell variables set in a block (`P="..."`)
are expanded; a line that ends in `\\` continues on the next. Not run: servers (`viz serve`), `make`
targets (CI runs those), and commands that need a Dask cluster (`--cluster`). Where a command's
comment states figures, the test checks them (EP for the roofline)."""
from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

from replay.cli import main as replay
from tracegen.cli import main as tracegen
from viz.cli import main as viz

from .conftest import SHARED

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MAINS = {"tracegen": tracegen, "replay": replay, "viz": viz}
NOT_RUN = (re.compile(r"^viz serve\b"), re.compile(r"--cluster\b"))


def commands(path: Path) -> list[tuple[int, list[str], str]]:
    """(line, argv, comment) of every runnable command in the file's fenced shell blocks."""
    out = []
    text = path.read_text()
    for block in re.finditer(r"```(?:sh|bash|console)?\n(.*?)```", text, re.S):
        start = text.count("\n", 0, block.start()) + 2
        env: dict[str, str] = {}
        lines = block.group(1).splitlines()
        i = 0
        while i < len(lines):
            line, n = lines[i], start + i
            while i + 1 < len(lines) and (line.rstrip().endswith("\\") or _open_quote(line)):
                i += 1
                line = (line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line + "\n") + lines[i].strip()
            i += 1
            m = re.match(r"^\s*([A-Z_]+)=(.*)$", line)
            if m:
                env[m.group(1)] = shlex.split(m.group(2))[0] if m.group(2).strip() else ""
                continue
            code = line.strip()
            if not re.match(r"^(tracegen|replay|viz)\s", code) or any(rx.search(code) for rx in NOT_RUN):
                continue
            for k, v in env.items():
                code = code.replace(f"${k}", v)
            c = re.search(r"\s#\s(.*)$", code)
            out.append((n, shlex.split(code, comments=True), c.group(1) if c else ""))
    return out


def _open_quote(line: str) -> bool:
    """A quoted argument that goes on to the next line (a multi-line SQL query)."""
    try:
        shlex.split(line, comments=True)
        return False
    except ValueError:
        return True


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("readme")
    work = base / "work"
    work.mkdir()
    (work / "traces").symlink_to(ROOT / "traces")
    if SHARED.exists():
        (base / "shared").symlink_to(SHARED)
    return work


CASES = [(p, n, argv, c) for p in DOCS for n, argv, c in commands(p)]


def test_the_docs_hold_commands():
    assert len(CASES) >= 30


@pytest.mark.parametrize("path,line,argv,comment", CASES,
                         ids=[f"{c[0].name}:{c[1]}" for c in CASES])
def test_example_runs(scratch, capsys, monkeypatch, path, line, argv, comment):
    if any("../shared" in a for a in argv) and not SHARED.exists():
        pytest.skip(f"{SHARED} is absent: the example reads ../shared")
    monkeypatch.chdir(scratch)
    monkeypatch.setenv("MOE_TIMELINE_CACHE", str(scratch / ".cache"))
    rc = MAINS[argv[0]](argv[1:])
    out = capsys.readouterr()
    assert rc == 0, f"{path.name}:{line}: {' '.join(argv)} -> exit {rc}\n{out.err[-2000:]}"
    m = re.search(r"EP >= (\d+)", comment)
    if m:
        assert re.search(rf"EP >=\s+{m.group(1)}\b", out.out), out.out
    os.sync() if hasattr(os, "sync") else None
