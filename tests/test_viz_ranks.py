"""viz for many ranks (issue 12): the timeline draws a chosen subset of ranks - by default, past 16
ranks, the stragglers and the ranks that waited most - while the heatmaps and the straggler list
keep every rank."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from tracegen.base.errors import UserError
from viz.cli import main as viz
from viz.report import parse_ranks, timeline_ranks

CAP = Path(__file__).resolve().parents[1] / "traces" / "observed" / "deepep-h100x4"


def _fake(n: int, stragglers: list[int], waits: dict[int, float]):
    layers = pd.DataFrame({"rank": list(range(n))})
    peers = SimpleNamespace(stragglers=[{"rank": r, "caused_us": 1.0} for r in stragglers], wait_by_rank=waits)
    return SimpleNamespace(layers=layers, peers=peers, ranks=[{"rank": r} for r in range(n)])


def test_parse_ranks():
    assert parse_ranks("0-3,7, 9-9") == [0, 1, 2, 3, 7, 9]
    for bad in ("a", "3-1", "-2", "1,,2"):
        with pytest.raises(UserError):
            parse_ranks(bad)


def test_default_subset_past_16_ranks_starts_with_the_stragglers():
    assert timeline_ranks(_fake(16, [], {})) == list(range(16))
    a = _fake(256, [200, 17], {5: 10.0, 200: 0.0, 9: 30.0, 17: 1.0})
    shown = timeline_ranks(a)
    assert len(shown) == 8 and {200, 17, 9, 5} <= set(shown) and shown == sorted(shown)
    assert timeline_ranks(a, "0-2,250") == [0, 1, 2, 250]
    with pytest.raises(UserError, match="none of these ranks"):
        timeline_ranks(a, "300-310")


def test_html_has_the_straggler_list_and_the_chosen_ranks(tmp_path, capsys):
    out = tmp_path / "late.html"
    assert viz(["html", str(CAP / "prefill-late"), "--timeline-ranks", "2-3", "-o", str(out)]) == 0
    page = out.read_text()
    assert "stragglers: the ranks others waited for" in page and "ranks 2-3 (2 of 4" in page
    assert viz(["html", str(CAP / "prefill-late"), "--timeline-ranks", "x", "-o", str(tmp_path / "b.html")]) == 2
    assert "--timeline-ranks takes ranks" in capsys.readouterr().err and not (tmp_path / "b.html").exists()
