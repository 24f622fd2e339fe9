"""`viz html`: one self-contained HTML report (Bokeh resources inline) - the overlap summary table
at the top, the timeline of one trace, or predicted above observed on one linked time axis with
the per-layer breakdown and the per-stage error chart of `replay compare`."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
from bokeh.embed import file_html
from bokeh.layouts import column
from bokeh.models import ColumnDataSource, Div, FactorRange, HoverTool, Span
from bokeh.plotting import figure
from bokeh.resources import INLINE

from replay.analyze import Analysis
from replay.compare import compare, load_stage_rules
from tracegen.base.errors import UserError

from .heatmap import heatmaps
from .timeline import timeline_figure

BREAKDOWN = ("compute", "hidden comm", "exposed comm", "idle")
STACKED = ("compute", "exposed comm", "idle")          # disjoint in time: they add up to the layer's span
STACKED_COLORS = ("#4C78A8", "#E45756", "#D3D3D3")
HIDDEN_COLOR = "#72B7B2"


def summary_table(analyses: list[tuple[str, Analysis]]) -> Div:
    rows = []
    for label, a in analyses:
        for r in a.ranks:
            idle = a.idle_totals.get(r["rank"], {})
            rows.append(f"<tr><td>{html.escape(label)}</td><td>{r['rank']}</td><td>{r['span_us'] / 1e3:.3f}</td>"
                        f"<td>{r['compute_us'] / 1e3:.3f}</td><td>{r['comm_us'] / 1e3:.3f}</td>"
                        f"<td>{r['overlap_us'] / 1e3:.3f}</td><td>{r['exposed_comm_us'] / 1e3:.3f}</td>"
                        f"<td>{r['hidden_comm_pct']:.1f}%</td>"
                        f"<td>{idle.get('cpu_blocked_launch', 0) / 1e3:.3f}</td>"
                        f"<td>{idle.get('launch_bound', 0) / 1e3:.3f}</td>"
                        f"<td>{idle.get('waiting_on_comm', 0) / 1e3:.3f}</td></tr>")
    head = ("<tr><th>trace</th><th>rank</th><th>span ms</th><th>compute ms</th><th>comm ms</th><th>overlap ms</th>"
            "<th>exposed ms</th><th>hidden</th><th>idle: CPU blocked</th><th>launch-bound</th>"
            "<th>waiting on comm</th></tr>")
    style = ("<style>table.ov{border-collapse:collapse;font:13px sans-serif}table.ov td,table.ov th{border:1px solid "
             "#ccc;padding:3px 8px;text-align:right}table.ov th{background:#f3f3f3}</style>")
    return Div(text=f"{style}<table class='ov' id='overlap-summary'>{head}{''.join(rows)}</table>",
               name="summary")


CATEGORICAL_MAX_BARS = 48  # beyond this many bars, layer labels no longer fit: use a numeric axis


def layer_breakdown(analyses: list[tuple[str, Analysis]], layer_offsets: list[int], rank: int = 0):
    """Per layer, side by side per trace: compute, exposed communication and idle stacked (they add up
    to the layer's span), and the hidden communication as a narrower bar over them (it overlaps
    compute, so stacking it would overstate the span)."""
    data: dict[str, list] = {k: [] for k in ("layer", "trace", *BREAKDOWN)}
    for (label, a), off in zip(analyses, layer_offsets):
        if a.layers.empty:
            continue
        ranks = set(a.layers["rank"])
        lay = a.layers[a.layers["rank"] == (rank if rank in ranks else min(ranks))]
        idle = np.maximum(0.0, lay["span_us"] - lay["compute_us"] - lay["exposed_comm_us"])
        data["layer"] += [int(v) + off for v in lay["layer"]]
        data["trace"] += [label] * len(lay)
        for k, col in zip(BREAKDOWN, (lay["compute_us"], lay["overlap_us"], lay["exposed_comm_us"], idle)):
            data[k] += list(np.asarray(col, dtype=float) / 1e3)
    if not data["layer"]:
        return None
    labels = [label for label, _ in analyses]
    title = "per layer (ms): compute + exposed communication + idle = span; narrow bar: communication hidden"
    tools = "save,reset,xpan,xwheel_zoom"
    if len(data["layer"]) <= CATEGORICAL_MAX_BARS:
        if len(labels) == 1:  # one trace: the layer alone names a bar
            data["x"] = [str(lay) for lay in data["layer"]]
            factors = [str(lay) for lay in sorted(set(data["layer"]))]
        else:
            data["x"] = [(str(lay), lab) for lay, lab in zip(data["layer"], data["trace"])]
            present = set(data["x"])
            factors = [(str(lay), lab) for lay in sorted(set(data["layer"])) for lab in labels
                       if (str(lay), lab) in present]
        p = figure(x_range=FactorRange(*factors), height=300, title=title, tools=tools,
                   sizing_mode="stretch_width", name="layers", x_axis_label="layer")
        width = 0.8
        if len(labels) > 1:
            p.xaxis.major_label_orientation = 1.0
    else:
        # many layers: a numeric layer axis with the traces dodged side by side; labels follow the zoom
        slot = {lab: i for i, lab in enumerate(labels)}
        width = 0.8 / len(labels)
        data["x"] = [lay + (slot[lab] - (len(labels) - 1) / 2) * width for lay, lab in zip(data["layer"], data["trace"])]
        p = figure(height=300, title=title, tools=tools, sizing_mode="stretch_width", name="layers",
                   x_axis_label="layer" + (f" (bars left to right: {', '.join(labels)})" if len(labels) > 1 else ""))
    src = ColumnDataSource(data)
    r = p.vbar_stack(list(STACKED), x="x", width=width, color=list(STACKED_COLORS), source=src,
                     legend_label=list(STACKED))
    r.append(p.vbar(x="x", top="hidden comm", width=width * 0.35, color=HIDDEN_COLOR, alpha=0.9, source=src,
                    legend_label="hidden comm (overlaps compute)"))
    p.add_tools(HoverTool(renderers=r, tooltips=[("layer", "@layer"), ("trace", "@trace"),
                                                 ("compute", "@compute{0.000}"), ("hidden", "@{hidden comm}{0.000}"),
                                                 ("exposed", "@{exposed comm}{0.000}"), ("idle", "@idle{0.000}")]))
    p.legend.orientation = "horizontal"
    p.add_layout(p.legend[0], "above")
    return p


def stage_errors(result: dict[str, Any]):
    st = result["stages"].dropna(subset=["error_pct"])
    if st.empty:
        return None
    many = st["rank"].nunique() > 1
    st = st.assign(x=[(f"r{int(r)} " if many else "") + f"L{int(layer)} mb{int(mb)} {s}"
                      for r, layer, mb, s in zip(st["rank"], st["layer"], st["microbatch"], st["stage"])])
    color = np.where(st["error_pct"] >= 0, "#E45756", "#4C78A8")
    p = figure(x_range=list(st["x"]), height=300, sizing_mode="stretch_width", name="errors",
               title="per stage: (observed - predicted) / predicted, %", tools="save,reset,xpan,xwheel_zoom")
    src = ColumnDataSource({"x": st["x"], "err": st["error_pct"], "pred": st["pred_us"], "obs": st["obs_us"],
                            "color": color})
    r = p.vbar(x="x", top="err", width=0.8, color="color", source=src)
    p.add_layout(Span(location=0, dimension="width", line_color="#333333"))
    p.add_tools(HoverTool(renderers=[r], tooltips=[("stage", "@x"), ("error", "@err{+0.0}%"),
                                                   ("predicted", "@pred{0.0} us"), ("observed", "@obs{0.0} us")]))
    p.xaxis.major_label_orientation = 1.2
    p.xaxis.major_label_text_font_size = "8px" if len(st) > 60 else "10px"
    return p


def alignment_shift(pred: Analysis, obs: Analysis, layer: int | None, offset: int) -> tuple[float, float, int | None]:
    """Time origins that put the chosen layer's start at the same place in both timelines."""
    tp = float(pred.events["start_us"].min())
    to = float(obs.events["start_us"].min())
    if pred.layers.empty or obs.layers.empty:
        return tp, to, None
    lp = pred.layers[pred.layers["rank"] == pred.layers["rank"].min()].set_index("layer")
    lo = obs.layers[obs.layers["rank"] == obs.layers["rank"].min()].set_index("layer")
    common = sorted(set(lp.index) & {i + offset for i in lo.index})
    if layer is not None and layer not in common:
        have = f"layers {common[0]}-{common[-1]}" if common else "no layer (check --layer-offset)"
        raise UserError(f"--align-layer {layer}: the two traces have {have} in common")
    if not common:
        return tp, to, None
    if layer is None:
        layer = common[0]
    return float(lp.loc[layer, "start_us"]), float(lo.loc[layer - offset, "start_us"]), layer


def build(analyses: list[tuple[str, Analysis]], show_cpu: bool = False, align_layer: int | None = None,
          layer_offset: int = 0, stages_file: str | None = None):
    parts: list[Any] = [Div(text=f"<h2>{' vs '.join(html.escape(label) for label, _ in analyses)}</h2>"),
                        summary_table(analyses)]
    if len(analyses) == 1:
        label, a = analyses[0]
        fig, _ = timeline_figure(a.events, label, show_cpu, findings=a.findings, flows=a.trace.flows)
        parts.append(fig)
        hm = heatmaps(a)
        if hm is not None:
            parts.append(hm)
        lb = layer_breakdown(analyses, [0])
        if lb is not None:
            parts.append(lb)
        return column(*parts, sizing_mode="stretch_width")
    (lp, pred), (lo, obs) = analyses
    tp, to, layer = alignment_shift(pred, obs, align_layer, layer_offset)
    top, _ = timeline_figure(pred.events, f"predicted: {lp}", show_cpu, findings=pred.findings,
                             flows=pred.trace.flows, t0=tp, name="predicted")
    bottom, _ = timeline_figure(obs.events, f"observed: {lo}" + (f" (aligned at layer {layer})" if layer is not None
                                                                  else ""),
                                show_cpu, x_range=top.x_range, findings=obs.findings, flows=obs.trace.flows, t0=to,
                                name="observed")
    parts += [top, bottom]
    lb = layer_breakdown(analyses, [0, layer_offset])
    if lb is not None:
        parts.append(lb)
    try:
        result = compare(pred, obs, load_stage_rules(stages_file), layer_offset=layer_offset)
        err = stage_errors(result)
        if err is not None:
            parts.append(err)
    except Exception as exc:   # noqa: BLE001 - the timelines are still worth showing
        parts.append(Div(text=f"<p><i>no per-stage comparison: {html.escape(str(exc))}</i></p>"))
    return column(*parts, sizing_mode="stretch_width")


def check(layout) -> None:
    """Refuse a layout that Bokeh's own validation rejects (such a page renders blank)."""
    from bokeh.core.validation import check_integrity
    from bokeh.document import Document
    doc = Document()
    doc.add_root(layout)
    issues = check_integrity(doc.models)
    doc.remove_root(layout)
    if issues.error:
        first = issues.error[0]
        raise UserError(f"the report would render blank: Bokeh rejects it ({first.name}: {first.text}); "
                        "this is a bug in viz, please report it with the command line")


def write_html(layout, path: str | Path, title: str) -> Path:
    from tracegen.base.fileio import atomic_write
    check(layout)
    return atomic_write(path, file_html(layout, INLINE, title))


__all__ = ["build", "write_html", "summary_table"]
