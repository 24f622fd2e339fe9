"""Timeline view: one row per (rank, stream) - the CPU thread optional - bars coloured by
micro-batch (or by class when the structure is unknown), stage names on bars wide enough to hold
them, hover with name, duration, layer, micro-batch and stage, dependency arrows, and the idle
findings of `replay analyze` marked on the compute rows.

Large traces stay responsive by level of detail: intervals are merged per row at a coarse and a
medium resolution, and the full detail (up to MAX_DETAIL bars) is drawn only once the view is
zoomed in far enough; a small JavaScript callback switches levels on zoom (`lod_callback`)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from bokeh.models import (
    ColumnDataSource,
    CustomJS,
    FactorRange,
    HoverTool,
    LabelSet,
    Range1d,
    Segment,
)
from bokeh.plotting import figure

from replay.events import text
from replay.intervals import union

MB_COLORS = {0: "#F2B134", 1: "#8DC63F", 2: "#4FA3D1", 3: "#C266A7"}
CLASS_COLORS = {"compute": "#4C78A8", "comm": "#E45756", "memory": "#B279A2", "other": "#9D9D9D",
                "cpu": "#BDBDBD", "launch": "#C7C7C7", "wait": "#D62728"}
FINDING_COLORS = {"cpu_blocked_launch": "#D62728", "launch_bound": "#FF9896", "waiting_on_peer": "#9467BD",
                  "waiting_on_comm": "#AEC7E8", "waiting_on_copy": "#C5B0D5", "kernel_switch": "#DBDB8D",
                  "step_boundary": "#8C564B", "unexplained": "#C7C7C7"}    # every cause of the contract
MAX_DETAIL = 200_000        # bars embedded at full detail in a static report
LEVELS = (1000, 20000)      # coarse and medium: merge gaps shorter than span / level


def rows_of(events: pd.DataFrame, show_cpu: bool) -> list[str]:
    ev = events if show_cpu else events[events["device"] == "gpu"]
    rows = ev[["rank", "device", "thread"]].drop_duplicates()
    rows = rows.assign(order=np.where(rows["device"] == "cpu", 0, 1)).sort_values(["rank", "order", "thread"])
    return [f"r{r} {t}" for r, t in zip(rows["rank"], rows["thread"].astype(str))]


def _bar_frame(events: pd.DataFrame, show_cpu: bool, t0: float) -> pd.DataFrame:
    ev = events if show_cpu else events[events["device"] == "gpu"]
    ev = ev[text(ev["klass"]) != "annotation"] if "klass" in ev else ev
    klass = text(ev["klass"]) if "klass" in ev else np.where(ev["device"] == "gpu", "compute", "cpu")
    cat = text(ev["cat"])
    klass = np.where(cat == "cpu_wait", "wait", np.where(cat == "cpu_launch", "launch", klass))
    mb = ev["microbatch"].to_numpy()
    color = np.array([MB_COLORS.get(int(m), "#777777") if m >= 0 and k in ("compute", "comm") else
                      CLASS_COLORS.get(k, "#9D9D9D") for m, k in zip(mb, klass)], dtype=object)
    return pd.DataFrame({
        "row": [f"r{r} {t}" for r, t in zip(ev["rank"], text(ev["thread"]))],
        "start": (ev["start_us"] - t0).to_numpy() / 1e3, "end": (ev["start_us"] + ev["dur_us"] - t0).to_numpy() / 1e3,
        "name": ev["name"].astype(str).str.slice(0, 80).to_numpy(), "dur_us": ev["dur_us"].to_numpy(),
        "layer": ev["layer"].to_numpy(), "microbatch": mb, "stage": text(ev["stage"]),
        "klass": klass, "color": color, "alpha": np.where(klass == "launch", 0.6, 0.9)})


def _merge(bars: pd.DataFrame, gap_ms: float) -> pd.DataFrame:
    """Per row and colour, merge bars separated by less than `gap_ms` (a coarser level of detail)."""
    out = []
    for (row, color), g in bars.groupby(["row", "color"], sort=False):
        s, e = union(g["start"].to_numpy(), g["end"].to_numpy() + gap_ms)
        e = e - gap_ms
        n = len(s)
        out.append(pd.DataFrame({"row": [row] * n, "start": s, "end": np.maximum(e, s), "color": [color] * n,
                                 "name": [f"{len(g)} merged slices"] * n, "dur_us": (np.maximum(e, s) - s) * 1e3,
                                 "layer": -1, "microbatch": -1, "stage": "", "klass": g["klass"].iloc[0],
                                 "alpha": 0.85}))
    return pd.concat(out, ignore_index=True) if out else bars.iloc[:0]


def _labels(bars: pd.DataFrame, span_ms: float, frac: float = 0.012) -> dict:
    """One stage label per (row, layer, micro-batch, stage), on its widest bar if that is wide enough."""
    named = bars[bars["stage"].astype(str).isin(["", "nan"]) == False]  # noqa: E712
    named = named.assign(w=named["end"] - named["start"])
    widest = named.sort_values("w").groupby(["row", "layer", "microbatch", "stage"], sort=False).tail(1)
    wide = widest[widest["w"] > frac * span_ms]
    return {"x": ((wide["start"] + wide["end"]) / 2).to_numpy(), "row": wide["row"].to_numpy(),
            "text": wide["stage"].astype(str).to_numpy()}


def build_levels(events: pd.DataFrame, show_cpu: bool, t0: float) -> tuple[list[pd.DataFrame], float]:
    bars = _bar_frame(events, show_cpu, t0)
    span = float(bars["end"].max() - bars["start"].min()) if len(bars) else 1.0
    if len(bars) <= 20_000:
        return [bars], span
    levels = [_merge(bars, span / lv) for lv in LEVELS]
    if len(bars) <= MAX_DETAIL:
        levels.append(bars)
    return levels, span


def timeline_figure(events: pd.DataFrame, title: str, show_cpu: bool = False, x_range=None,
                    findings: list[dict] | None = None, flows: pd.DataFrame | None = None,
                    t0: float | None = None, width: int = 1400, name: str = "timeline"):
    """A Bokeh figure of the trace; returns (figure, rows)."""
    t0 = float(events["start_us"].min()) if t0 is None else t0
    levels, span = build_levels(events, show_cpu, t0)
    rows = rows_of(events, show_cpu)
    height = max(160, 34 * len(rows) + 70)
    p = figure(title=title, y_range=FactorRange(*reversed(rows)), x_range=x_range or Range1d(
        float(levels[0]["start"].min()) if len(levels[0]) else 0.0, float(levels[0]["end"].max()) if len(levels[0]) else 1.0),
        width=width, height=height, tools="xpan,xwheel_zoom,box_zoom,reset,save", active_scroll="xwheel_zoom",
        x_axis_label="time (ms)", output_backend="webgl", name=name, sizing_mode="stretch_width")
    renderers = []
    for i, bars in enumerate(levels):
        src = ColumnDataSource(bars.to_dict(orient="list"))
        r = p.hbar(y="row", left="start", right="end", height=0.72, fill_color="color", line_color=None,
                   fill_alpha="alpha", source=src, visible=(i == 0))
        renderers.append(r)
    detailed = levels[-1]
    labels = ColumnDataSource(_labels(detailed, span))
    p.add_layout(LabelSet(x="x", y="row", text="text", source=labels, text_align="center", text_baseline="middle",
                          text_font_size="9px", text_color="#222222"))
    p.add_tools(HoverTool(renderers=renderers, tooltips=[("name", "@name"), ("dur", "@dur_us{0,0.0} us"),
                                                         ("layer", "@layer"), ("micro-batch", "@microbatch"),
                                                         ("stage", "@stage"), ("class", "@klass")]))
    if len(levels) > 1:
        p.x_range.js_on_change("start", lod_callback(renderers, span))
        p.x_range.js_on_change("end", lod_callback(renderers, span))
    if findings:
        _mark_findings(p, findings, events, t0)
    if flows is not None and len(flows):
        _arrows(p, flows, events, t0, rows)
    p.yaxis.major_label_text_font_size = "10px"
    p.ygrid.grid_line_color = None
    return p, rows


def lod_callback(renderers: list, span: float) -> CustomJS:
    """Show the level whose resolution fits the visible window: coarse when zoomed out."""
    return CustomJS(args={"rs": renderers, "span": span}, code="""
        const r = cb_obj;  // the x range
        const w = (r.end - r.start);
        const n = rs.length;
        let level = 0;
        if (n > 1 && w < span / 5) level = 1;
        if (n > 2 && w < span / 50) level = 2;
        for (let i = 0; i < n; i++) rs[i].visible = (i === level);
    """)


def _mark_findings(p, findings: list[dict], events: pd.DataFrame, t0: float) -> None:
    comp_rows = events[(events["device"] == "gpu") & (text(events["klass"]) == "compute")][["rank", "thread"]]
    row_of = {int(r): f"r{r} {t}" for r, t in comp_rows.drop_duplicates("rank").itertuples(index=False)}
    span = float((events["start_us"] + events["dur_us"]).max() - events["start_us"].min())
    f = [x for x in findings if x["rank"] in row_of and x["lost_us"] >= span / 2000]   # the visible ones
    if not f:
        return
    src = ColumnDataSource({
        "row": [row_of[x["rank"]] for x in f], "start": [(x["start_us"] - t0) / 1e3 for x in f],
        "end": [(x["start_us"] + x["lost_us"] - t0) / 1e3 for x in f], "kind": [x["kind"] for x in f],
        "lost": [x["lost_us"] for x in f], "message": [x["message"] for x in f],
        "color": [FINDING_COLORS.get(x["kind"], "#AEC7E8") for x in f]})
    r = p.hbar(y="row", left="start", right="end", height=0.95, fill_color="color", fill_alpha=0.35,
               line_color="color", line_dash="dashed", source=src)
    p.add_tools(HoverTool(renderers=[r], tooltips=[("idle", "@kind"), ("lost", "@lost{0.0} us"), ("", "@message")]))
    # a wait for a late peer points at the peer's compute row
    w = [x for x in f if x.get("peer") is not None and x["peer"] in row_of]
    if w:
        mid = [(x["start_us"] + x["lost_us"] / 2 - t0) / 1e3 for x in w]
        seg = ColumnDataSource({"x0": mid, "y0": [row_of[x["rank"]] for x in w], "x1": mid,
                                "y1": [row_of[x["peer"]] for x in w]})
        p.add_glyph(seg, Segment(x0="x0", y0="y0", x1="x1", y1="y1", line_color="#9467BD", line_width=2,
                                 line_alpha=0.7, line_dash="dotted"))


def _arrows(p, flows: pd.DataFrame, events: pd.DataFrame, t0: float, rows: list[str], limit: int = 4000) -> None:
    """Dependency arrows (tracegen's 'dependency' flows) from a producer's end to a consumer's start."""
    dep = flows[flows["cat"] == "dependency"]
    s, f = dep[dep["ph"] == "s"], dep[dep["ph"] == "f"]
    pairs = s.merge(f, on="id", suffixes=("_s", "_f")).head(limit)
    if pairs.empty:
        return
    names = {(str(pid), str(tid)): th for pid, tid, th in events[["pid", "tid", "thread"]].drop_duplicates()
             .astype(str).itertuples(index=False)}
    ranks = dict(zip(events["pid"].astype(str), events["rank"]))
    y0 = [f"r{ranks.get(str(a), 0)} {names.get((str(a), str(b)), '')}" for a, b in zip(pairs["pid_s"], pairs["tid_s"])]
    y1 = [f"r{ranks.get(str(a), 0)} {names.get((str(a), str(b)), '')}" for a, b in zip(pairs["pid_f"], pairs["tid_f"])]
    keep = [i for i, (a, b) in enumerate(zip(y0, y1)) if a in rows and b in rows]
    if not keep:
        return
    src = ColumnDataSource({"x0": (pairs["ts_s"].to_numpy()[keep] - t0) / 1e3, "y0": [y0[i] for i in keep],
                            "x1": (pairs["ts_f"].to_numpy()[keep] - t0) / 1e3, "y1": [y1[i] for i in keep]})
    p.add_glyph(src, Segment(x0="x0", y0="y0", x1="x1", y1="y1", line_color="#555555", line_alpha=0.45,
                             line_width=1))
