"""Issue 28: no figure in the README or docs that `make validate` does not regenerate. A figure in prose
sits in a fact marker (bench/facts.py computes it; make validate writes it), in a generated section, in
a code example, or in a dated measurement log (the Benchmarks and Fuzzing sections: timings of one
`make bench` / `make fuzz` run, which no validation can recompute); anything else fails here, as does
a marker whose value is stale."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import facts

ROOT = Path(__file__).resolve().parents[1]
FIGURE = re.compile(r"(?<![\w.\-/])[-+]?\d[\d,]*(?:\.\d+)?\s?(?:%|ms\b|s\b|us\b|W\b|MHz\b|GB\b|MB\b|tokens/s\b|pts\b)"
                    r"|(?<![\w.])\d+(?:\.\d+)?x\b|(?<![\w.])x\d+(?:\.\d+)?\b")
GENERATED = [("<!-- validate:begin", "<!-- validate:end -->"), ("<!-- fact-block:", "<!-- /fact-block -->"),
             ("<!-- docs:begin", "<!-- docs:end -->")]       # a table make docs writes from data (tests check it)
MEASUREMENT_LOGS = ("## Benchmarks", "## Fuzzing")      # dated runs of make bench / make fuzz
# figures that are settings, limits or quoted inputs, not results (file, the text around them)
SETTINGS = {
    ("README.md", "80 % x 85 % of peak"),              # the seed's own efficiency convention
    ("README.md", "\"80 GB\""),                          # an example of a unit the catalogs accept
    ("README.md", "clocks 40 ms apart"),                 # a test case's input
    ("README.md", "shorter than 100 us are skipped"),    # the loader's threshold (events.KEEP_CPU_SPAN_US)
    ("README.md", "(\"hidden 0 %\" would say nothing)"),  # a quoted message
    ("README.md", "(at most 256 MB)"),                   # the dashboard's upload limit
    ("new-user-checklist.md", "'hidden 0 %' says nothing"),   # a quoted message
    ("new-user-checklist.md", "(past 2 % it adds"),     # the whatif report's threshold for that line
    ("diagnosis.md", "for at least 100 us"),            # the host rule's threshold
    ("diagnosis.md", "8 us of it"),                      # findings.KERNEL_SWITCH_US
    ("diagnosis.md", "path for 1 ms or more"),           # findings.LONG_OP_US
    ("diagnosis.md", "5.7 us at most"),                  # the CUDA-graph capture's measured switch, quoted by the rule
}


def prose_figures(path: Path) -> list[tuple[int, str, str]]:
    """(line, figure, line text) for every figure outside markers, generated sections, code and logs."""
    out, in_code, generated, in_log = [], False, False, False
    for i, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if line.startswith("```"):
            in_code = not in_code
            continue
        if line.startswith("## "):
            in_log = line.startswith(MEASUREMENT_LOGS)
        if any(line.startswith(b) for b, _ in GENERATED):
            generated = True
        if any(line.startswith(e) for _, e in GENERATED):
            generated = False
            continue
        if in_code or generated or in_log:
            continue
        bare = facts.MARKER.sub("", line)
        for m in FIGURE.finditer(bare):
            if not any(path.name == f and text in line for f, text in SETTINGS):
                out.append((i, m.group(0).strip(), line.strip()))
    return out


def test_no_figure_in_prose_that_make_validate_does_not_write():
    found = [f"{p.relative_to(ROOT)}:{i}: {fig!r} in: {text[:100]}" for p in facts.PROSE
             for i, fig, text in prose_figures(p)]
    assert not found, ("put these in a fact marker (bench/facts.py), a generated section or a code example, "
                       "or say why they are settings:\n" + "\n".join(found))


def test_the_scan_sees_a_figure_and_skips_markers_code_and_logs(tmp_path):
    p = tmp_path / "README.md"
    p.write_text("Within 4.2 % here.\n<!-- fact:x -->5.0<!-- /fact --> ms\n```sh\nrun 3 ms\n```\n"
                 "## Benchmarks\n1.2 s\n## Next\nx1.6 and 2.5x\n")
    assert [(i, f) for i, f, _ in prose_figures(p)] == [(1, "4.2 %"), (9, "x1.6"), (9, "2.5x")]


def test_readme_and_docs_hold_the_current_facts():
    if not facts.TRAIN.exists():
        pytest.skip(f"{facts.TRAIN} is absent: the train.json facts need ../shared")
    current = facts.values()
    assert not facts.stale(current=current), "run `make validate`:\n" + "\n".join(facts.stale(current=current))
    used = {name for p in facts.FILES for name, _ in facts._markers(p.read_text("utf-8"))}
    every = set(facts.FACTS) | set(facts.BLOCKS)
    assert used == every, f"facts nobody quotes: {sorted(every - used)}"


def test_a_stale_or_unknown_fact_is_reported(tmp_path):
    p = tmp_path / "doc.md"
    p.write_text("a <!-- fact:seed004.overlap_ms -->1.000<!-- /fact --> b <!-- fact:no.such -->2<!-- /fact -->\n")
    got = facts.stale([p], current={"seed004.overlap_ms": "167.802"})
    assert got == ["doc.md: fact seed004.overlap_ms says '1.000', now '167.802'",
                   "doc.md: fact no.such is not in bench/facts.py FACTS"]
    facts.write([p], current={"seed004.overlap_ms": "167.802"})
    assert "<!-- fact:seed004.overlap_ms -->167.802<!-- /fact -->" in p.read_text()


def test_a_table_fact_is_rewritten_whole_and_its_figures_are_not_prose(tmp_path):
    """A fact-block (a table make validate writes) is replaced row for row, reported when stale, and
    the prose scan skips it."""
    p = tmp_path / "README.md"
    p.write_text("before\n<!-- fact-block:t -->\n| a | 1.0 % |\n<!-- /fact-block -->\nafter\n")
    assert prose_figures(p) == []
    assert facts.stale([p], current={"t": "| a | 2.0 % |\n| b | 3.0 % |"}) == [
        "README.md: fact t says '| a | 1.0 % |', now '| a | 2.0 % |\\n| b | 3.0 % |'"]
    facts.write([p], current={"t": "| a | 2.0 % |\n| b | 3.0 % |"})
    assert p.read_text() == "before\n<!-- fact-block:t -->\n| a | 2.0 % |\n| b | 3.0 % |\n<!-- /fact-block -->\nafter\n"
    assert facts.stale([p], current={"t": "| a | 2.0 % |\n| b | 3.0 % |"}) == []
