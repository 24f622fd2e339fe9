"""viz on a folder of real ranks: the rank x layer heatmaps and the waits that point at the late peer."""
from __future__ import annotations

from pathlib import Path

from bokeh.models import ColumnDataSource, GlyphRenderer, Segment

from replay.analyze import analyze
from viz.heatmap import cells
from viz.report import build, check

CAP = Path(__file__).resolve().parents[1] / "traces" / "observed" / "deepep-h100x4"


def test_heatmaps_show_where_ranks_waited_for_the_late_rank():
    a = analyze(CAP / "prefill-late", use_cache=False, progress=False)
    c = cells(a)
    assert len(c) == 4 * 3 * 4 and set(c["rank"]) == {0, 1, 2, 3}
    first = c[c["layer"] == 3].groupby("rank")["peer_wait_us"].sum()   # the first layer of every step
    assert first[[0, 1, 2]].min() > 20 * max(first[3], 1.0)              # the others waited, rank 3 did not
    layout = build([("late", a)])
    check(layout)
    heat = [m for m in layout.references() if getattr(m, "name", "") and str(m.name).startswith("heatmap-")]
    assert {m.name for m in heat} >= {"heatmap-compute_us", "heatmap-exposed_comm_us", "heatmap-peer_wait_us"}
    segs = [r for r in layout.select({"type": GlyphRenderer}) if isinstance(r.glyph, Segment)
            and isinstance(r.data_source, ColumnDataSource) and "y1" in r.data_source.data]
    targets = {y for r in segs for y in r.data_source.data["y1"]}
    assert any(t.startswith("r3 ") for t in targets), targets            # waits point at rank 3's row
