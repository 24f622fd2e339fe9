"""`viz html`: one self-contained HTML report (Bokeh resources inline) - the overlap summary table
at the top, the timeline of one trace, or predicted above observed on one linked time axis with
the per-layer breakdown and the per-stage error chart of `replay compare`."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from bokeh.embed import file_html
from bokeh.layouts import column
from bokeh.models import ColumnDataSource, Div, FactorRange, HoverTool, Span
from bokeh.plotting import figure
from bokeh.resources import INLINE

from replay.analysis import Analysis
from replay.compare import compare
from replay.stagerules import load_stage_rules
from tracegen.base.contract import OBSERVED_IDLE_CAUSES, UNEXPLAINED
from tracegen.base.errors import UserError

from .heatmap import heatmaps
from .timeline import timeline_figure

BREAKDOWN = ("compute", "hidden comm", "exposed comm", "idle")
STACKED = ("compute", "exposed comm", "idle")          # disjoint in time: they add up to the layer's span
STACKED_COLORS = ("#4C78A8", "#E45756", "#D3D3D3")
HIDDEN_COLOR = "#72B7B2"


def summary_table(analyses: list[tuple[str, Analysis]]) -> Div:
    """Per trace and rank: the overlap figures and every idle cause of the contract (a column each, in
    the contract's order), with each cause's groups (what blocked: sync, dispatch, host, ...) under it."""
    causes = (*OBSERVED_IDLE_CAUSES, UNEXPLAINED)
    rows = []
    for label, a in analyses:
        for r in a.ranks:
            idle = a.idle_totals.get(r["rank"], {})
            groups = a.idle_groups.get(r["rank"], {})
            cells = "".join(f"<td>{idle.get(c, 0) / 1e3:.3f}{_groups_note(groups.get(c, {}))}</td>" for c in causes)
            rows.append(f"<tr><td>{html.escape(label)}</td><td>{r['rank']}</td><td>{r['span_us'] / 1e3:.3f}</td>"
                        f"<td>{r['compute_us'] / 1e3:.3f}</td><td>{r['comm_us'] / 1e3:.3f}</td>"
                        f"<td>{r['overlap_us'] / 1e3:.3f}</td><td>{r['exposed_comm_us'] / 1e3:.3f}</td>"
                        f"<td>{r['hidden_comm_pct']:.1f}%</td>{cells}</tr>")
    head = ("<tr><th>trace</th><th>rank</th><th>span ms</th><th>compute ms</th><th>comm ms</th><th>overlap ms</th>"
            "<th>exposed ms</th><th>hidden</th>"
            + "".join(f"<th>idle: {c.replace('_', ' ')} ms</th>" for c in causes) + "</tr>")
    style = ("<style>table.ov{border-collapse:collapse;font:13px sans-serif}table.ov td,table.ov th{border:1px solid "
             "#ccc;padding:3px 8px;text-align:right}table.ov th{background:#f3f3f3}</style>")
    return Div(text=f"{style}<table class='ov' id='overlap-summary'>{head}{''.join(rows)}</table>",
               name="summary")


def _groups_note(groups: dict[str, float]) -> str:
    """A cause's groups under its figure, where it has several and any time: what held the launch back."""
    parts = [f"{g} {v / 1e3:.3f}" for g, v in groups.items() if v > 0]
    if len(groups) < 2 or not parts:
        return ""
    return f"<br><span style='font-size:11px;color:#666'>{html.escape(', '.join(parts))}</span>"


CATEGORICAL_MAX_BARS = 48  # beyond this many bars, layer labels no longer fit: use a numeric axis


def layer_breakdown(analyses: list[tuple[str, Analysis]], layer_offsets: list[int], rank: int = 0):
    """Per layer, side by side per trace: compute, exposed communication and idle stacked, and the hidden
    communication as a narrower bar over them (it overlaps compute, so stacking it would overstate the
    time). Idle is each compute gap charged once, to the layer of the kernel that waited: with two
    micro-batches layers overlap in time, so span - compute would count a gap in two layers."""
    data: dict[str, list] = {k: [] for k in ("layer", "trace", *BREAKDOWN)}
    shown_ranks: list[str] = []
    for (label, a), off in zip(analyses, layer_offsets):
        if a.layers.empty:
            continue
        ranks = set(a.layers["rank"])
        shown = rank if rank in ranks else min(ranks)
        shown_ranks.append(f"{label}: rank {shown}")
        lay = a.layers[a.layers["rank"] == shown]
        idle = _layer_idle(a, shown, lay)
        data["layer"] += [int(v) + off for v in lay["layer"]]
        data["trace"] += [label] * len(lay)
        for k, col in zip(BREAKDOWN, (lay["compute_us"], lay["overlap_us"], lay["exposed_comm_us"], idle)):
            data[k] += list(np.asarray(col, dtype=float) / 1e3)
    if not data["layer"]:
        return None
    labels = [label for label, _ in analyses]
    title = (f"per layer (ms), {'; '.join(shown_ranks)}: compute, exposed communication and the idle charged to "
             "the layer (each gap once, to the layer whose kernel waited); narrow bar: communication hidden")
    tools = "save,reset,xpan,xwheel_zoom"
    if len(data["layer"]) <= CATEGORICAL_MAX_BARS:
        if len(labels) == 1:  # one trace: the layer alone names a bar
            data["x"] = [str(lay) for lay in data["layer"]]
            factors = [str(lay) for lay in sorted(set(data["layer"]))]
        else:      # trace labels can be long: a letter per trace under each layer, the key in the title
            short = {lab: chr(65 + i) for i, lab in enumerate(labels)}
            title += " - " + ", ".join(f"{short[lab]}: {lab}" for lab in labels)
            data["x"] = [(str(lay), short[lab]) for lay, lab in zip(data["layer"], data["trace"])]
            present = set(data["x"])
            factors = [(str(lay), short[lab]) for lay in sorted(set(data["layer"])) for lab in labels
                       if (str(lay), short[lab]) in present]
        p = figure(x_range=FactorRange(*factors), height=300, title=title, tools=tools,
                   sizing_mode="stretch_width", name="layers", x_axis_label="layer")
        width = 0.8
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


def _layer_idle(a: Analysis, rank: int, lay: pd.DataFrame) -> np.ndarray:
    """Per row of `lay` (rank, step, layer): the compute idle charged to that layer by the findings."""
    f = a.finding_table
    if f.empty:
        return np.zeros(len(lay))
    f = f[f["rank"] == rank]
    per = f.groupby(["step", "layer"])["lost_us"].sum() if len(f) else pd.Series(dtype=float)
    steps = lay["step"].to_numpy() if "step" in lay else np.full(len(lay), -1)
    return np.array([float(per.get((int(s), int(x)), 0.0)) for s, x in zip(steps, lay["layer"])])


def roles(a: Analysis, b: Analysis) -> tuple[str, str]:
    """What the two traces of a comparison are: predicted (tracegen wrote it) and observed (a
    profiler did), or first / second when both are of one kind."""
    kind = lambda x: "predicted" if x.trace.generated else "observed"  # noqa: E731
    ka, kb = kind(a), kind(b)
    return (ka, kb) if ka != kb else (f"first ({ka})", f"second ({kb})")


def stage_errors(result: dict[str, Any], first: str = "predicted", second: str = "observed"):
    st = result["stages"].dropna(subset=["error_pct"])
    if st.empty:
        return None
    many = st["rank"].nunique() > 1
    st = st.assign(x=[(f"r{int(r)} " if many else "") + f"L{int(layer)} mb{int(mb)} {s}"
                      for r, layer, mb, s in zip(st["rank"], st["layer"], st["microbatch"], st["stage"])])
    color = np.where(st["error_pct"] >= 0, "#E45756", "#4C78A8")
    p = figure(x_range=list(st["x"]), height=300, sizing_mode="stretch_width", name="errors",
               title=f"per stage: ({second} - {first}) / {first}, %", tools="save,reset,xpan,xwheel_zoom")
    src = ColumnDataSource({"x": st["x"], "err": st["error_pct"], "pred": st["pred_us"], "obs": st["obs_us"],
                            "color": color})
    r = p.vbar(x="x", top="err", width=0.8, color="color", source=src)
    p.add_layout(Span(location=0, dimension="width", line_color="#333333"))
    p.add_tools(HoverTool(renderers=[r], tooltips=[("stage", "@x"), ("error", "@err{+0.0}%"),
                                                   (first, "@pred{0.0} us"), (second, "@obs{0.0} us")]))
    p.xaxis.major_label_orientation = 1.2
    p.xaxis.major_label_text_font_size = "8px" if len(st) > 60 else "10px"
    return p


def alignment_shift(pred: Analysis, obs: Analysis, layer: int | None, offset: int) -> tuple[float, float, int | None]:
    """Time origins that put the chosen layer's start at the same place in both timelines."""
    tp = float(pred.events["start_us"].min())
    to = float(obs.events["start_us"].min())
    if pred.layers.empty or obs.layers.empty:
        return tp, to, None
    # a layer's start in its first step (a trace of several steps holds each layer once per step)
    lp = pred.layers[pred.layers["rank"] == pred.layers["rank"].min()].groupby("layer")[["start_us"]].min()
    lo = obs.layers[obs.layers["rank"] == obs.layers["rank"].min()].groupby("layer")[["start_us"]].min()
    common = sorted(set(lp.index) & {i + offset for i in lo.index})
    if layer is not None and layer not in common:
        have = f"layers {common[0]}-{common[-1]}" if common else "no layer (check --layer-offset)"
        raise UserError(f"--align-layer {layer}: the two traces have {have} in common")
    if not common:
        return tp, to, None
    if layer is None:
        layer = common[0]
    return float(lp.loc[layer, "start_us"]), float(lo.loc[layer - offset, "start_us"]), layer


TIMELINE_ALL_RANKS = 16    # up to this many ranks the timeline shows them all
TIMELINE_DEFAULT_RANKS = 8  # beyond, this many by default: the stragglers, then the ranks that waited most


def parse_ranks(spec: str) -> list[int]:
    """'0-7,12' -> [0, 1, ..., 7, 12]; a bad spec is one UserError line."""
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        try:
            lo, _, hi = part.partition("-")
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise UserError(f"--timeline-ranks takes ranks and ranges like 0-7,12, got {part!r}") from None
        if a < 0 or b < a:
            raise UserError(f"--timeline-ranks: {part!r} is not a range of ranks")
        out.update(range(a, b + 1))
    return sorted(out)


def timeline_ranks(a: Analysis, spec: str | None = None) -> list[int]:
    """The ranks the timeline draws: `spec`, else all of a small run, else the stragglers and the
    ranks that waited most for peers (the heatmaps and the straggler list keep every rank)."""
    have = sorted(int(r["rank"]) for r in a.ranks)
    if spec:
        chosen = [r for r in parse_ranks(spec) if r in set(have)]
        if not chosen:
            raise UserError(f"--timeline-ranks {spec}: none of these ranks is in the trace (it has "
                            f"{have[0]}-{have[-1]})")
        return chosen
    if len(have) <= TIMELINE_ALL_RANKS:
        return have
    picked = [s["rank"] for s in a.peers.stragglers]
    picked += sorted(a.peers.wait_by_rank, key=lambda r: -a.peers.wait_by_rank[r])
    picked += have
    return sorted(list(dict.fromkeys(r for r in picked if r in have))[:TIMELINE_DEFAULT_RANKS])


def straggler_table(a: Analysis, top: int = 20) -> Div | None:
    """The ranks that made others wait, most first (None: no peer waits measured)."""
    rows = [s for s in a.peers.stragglers if s["caused_us"] > 0][:top]
    if not rows:
        return None
    body = "".join(f"<tr><td>{s['rank']}</td><td>{s['caused_us'] / 1e3:,.3f}</td><td>{s['collectives']}</td>"
                   f"<td>{html.escape(s['reason'])}</td></tr>" for s in rows)
    more = len([s for s in a.peers.stragglers if s["caused_us"] > 0]) - len(rows)
    return Div(text="<h3>stragglers: the ranks others waited for</h3><table><tr><th>rank</th><th>caused ms</th>"
                    f"<th>collectives</th><th>main reason</th></tr>{body}</table>"
                    + (f"<p>... {more} more</p>" if more > 0 else ""), name="stragglers")


def _only(a: Analysis, ranks: list[int]) -> tuple[pd.DataFrame, list[dict[str, Any]], pd.DataFrame]:
    """The events, findings and flows of the chosen ranks."""
    keep = set(ranks)
    ev = a.events[a.events["rank"].isin(keep)]
    flows = a.trace.flows
    if "rank" in flows:
        flows = flows[flows["rank"].isin(keep)]
    return ev, [f for f in a.findings if f.get("rank") in keep], flows


def build(analyses: list[tuple[str, Analysis]], show_cpu: bool = False, align_layer: int | None = None,
          layer_offset: int = 0, stages_file: str | None = None, ranks_spec: str | None = None):
    parts: list[Any] = [Div(text=f"<h2>{' vs '.join(html.escape(label) for label, _ in analyses)}</h2>"),
                        summary_table(analyses)]
    if len(analyses) == 1:
        label, a = analyses[0]
        shown = timeline_ranks(a, ranks_spec)
        ev, findings, flows = _only(a, shown)
        n_all = a.events["rank"].nunique()
        title = label if len(shown) == n_all else f"{label} - timeline of ranks {_spans(shown)} ({len(shown)} of {n_all}; " \
                                                     "--timeline-ranks picks others)"
        fig, _ = timeline_figure(ev, title, show_cpu, findings=findings, flows=flows)
        parts.append(fig)
        st = straggler_table(a)
        if st is not None:
            parts.append(st)
        hm = heatmaps(a)
        if hm is not None:
            parts.append(hm)
        lb = layer_breakdown(analyses, [0])
        if lb is not None:
            parts.append(lb)
        return column(*parts, sizing_mode="stretch_width")
    (lp, pred), (lo, obs) = analyses
    first, second = roles(pred, obs)
    tp, to, layer = alignment_shift(pred, obs, align_layer, layer_offset)
    top, _ = timeline_figure(pred.events, f"{first}: {lp}", show_cpu, findings=pred.findings,
                             flows=pred.trace.flows, t0=tp, name="predicted")
    bottom, _ = timeline_figure(obs.events, f"{second}: {lo}" + (f" (aligned at layer {layer})" if layer is not None
                                                                  else ""),
                                show_cpu, x_range=top.x_range, findings=obs.findings, flows=obs.trace.flows, t0=to,
                                name="observed")
    parts += [top, bottom]
    lb = layer_breakdown(analyses, [0, layer_offset])
    if lb is not None:
        parts.append(lb)
    try:
        result = compare(pred, obs, load_stage_rules(stages_file), layer_offset=layer_offset)
        err = stage_errors(result, first, second)
        if err is not None:
            parts.append(err)
    except Exception as exc:   # noqa: BLE001 - the timelines are still worth showing
        parts.append(Div(text=f"<p><i>no per-stage comparison: {html.escape(str(exc))}</i></p>"))
    return column(*parts, sizing_mode="stretch_width")


def _spans(ranks: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    out, start = [], None
    for i, r in enumerate(ranks):
        if start is None:
            start = r
        if i + 1 == len(ranks) or ranks[i + 1] != r + 1:
            out.append(f"{start}-{r}" if r != start else f"{r}")
            start = None
    return ",".join(out)


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
