"""Rank x layer heatmaps of a multi-rank analysis: compute, exposed communication and idle spent
waiting for a late peer, one cell per (rank, step-layer), so the slow rank of 4 or 256 stands out."""
from __future__ import annotations

import numpy as np
import pandas as pd
from bokeh.layouts import row
from bokeh.models import ColorBar, ColumnDataSource, FactorRange, HoverTool, LinearColorMapper
from bokeh.palettes import Viridis256
from bokeh.plotting import figure

from replay.analysis import Analysis

MAX_LABELLED_COLUMNS = 48     # beyond this many step:layer columns their labels overprint each other
PANELS = (("compute_us", "compute (ms)"), ("exposed_comm_us", "exposed communication (ms)"),
          ("peer_wait_us", "idle waiting for a peer (ms)"))


def cells(a: Analysis) -> pd.DataFrame:
    """One row per (rank, step, layer): compute, exposed communication, idle waiting for a peer (us)."""
    lay = a.layers
    if lay.empty:
        return lay
    f = a.finding_table
    peer = f[f["kind"] == "waiting_on_peer"].groupby(["rank", "step", "layer"])["lost_us"].sum() \
        if len(f) and "step" in f else pd.Series(dtype=float)
    key = pd.MultiIndex.from_arrays([lay["rank"], lay["step"], lay["layer"]])
    out = lay[["rank", "step", "layer", "compute_us", "exposed_comm_us"]].copy()
    out["peer_wait_us"] = peer.reindex(key).fillna(0.0).to_numpy() if len(peer) else 0.0
    out["col"] = [f"{s}:{L}" if s >= 0 else str(L) for s, L in zip(out["step"], out["layer"])]
    return out


def heatmaps(a: Analysis, height: int | None = None):
    """Three heatmaps side by side (None: one rank or no layer structure)."""
    c = cells(a)
    if c.empty or c["rank"].nunique() < 2:
        return None
    ranks = [str(r) for r in sorted(c["rank"].unique())]
    cols = list(dict.fromkeys(c.sort_values(["step", "layer"])["col"]))
    h = height or int(min(900, max(220, 14 * len(ranks) + 90)))
    src = ColumnDataSource({"rank": c["rank"].astype(str).tolist(), "col": c["col"].tolist(),
                            **{k: (c[k] / 1e3).round(3).tolist() for k, _ in PANELS}})
    figs = []
    for k, title in PANELS:
        v = c[k].to_numpy() / 1e3
        hi = float(np.nanmax(v)) if len(v) and np.nanmax(v) > 0 else 1.0
        cmap = LinearColorMapper(palette=Viridis256, low=0.0, high=hi)
        dense = len(cols) > MAX_LABELLED_COLUMNS
        p = figure(title=title, x_range=FactorRange(*cols), y_range=FactorRange(*reversed(ranks)), height=h,
                   tools="hover,save", x_axis_label=f"step:layer ({len(cols)} columns: hover a cell for its name)"
                   if dense else "step:layer", y_axis_label="rank", name=f"heatmap-{k}", sizing_mode="stretch_width")
        p.rect(x="col", y="rank", width=1, height=1, source=src, fill_color={"field": k, "transform": cmap},
               line_color=None)
        p.select_one(HoverTool).tooltips = [("rank", "@rank"), ("step:layer", "@col"), ("compute", "@compute_us ms"),
                                            ("exposed comm", "@exposed_comm_us ms"), ("peer wait", "@peer_wait_us ms")]
        p.add_layout(ColorBar(color_mapper=cmap, width=8), "right")
        p.xaxis.major_label_orientation = 1.2 if len(cols) > 12 else 0
        if dense:                  # too many to read side by side: the hover names each cell
            p.xaxis.major_label_text_font_size = "0px"
            p.xaxis.major_tick_line_color = None
        if len(ranks) > 64:
            p.yaxis.major_label_text_font_size = "6px"
        figs.append(p)
    return row(*figs, sizing_mode="stretch_width")
