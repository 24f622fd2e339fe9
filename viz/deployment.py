"""Bokeh views of a simulated deployment (`viz deploy`, and the dashboard's deployment page): the
latency-throughput curve of the decode pool as its batch grows (the serving trade-off: tokens/s per
GPU against TPOT, with the simulated operating point), utilisation of each pool over time, and the
TTFT / TPOT distributions (CDFs) with the SLO lines."""
from __future__ import annotations

import html
from typing import Any

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource, Div, HoverTool, Span
from bokeh.plotting import figure

from tracegen.serving.metrics import tpot_s
from tracegen.serving.simulate import COLOCATED, PD, Result

COLORS = {"prefill": "#4C78A8", "decode": "#F58518", COLOCATED: "#54A24B"}
BINS = 200


def tradeoff_figure(r: Result, summary: dict[str, Any]):
    """Decode pool: output tokens/s per GPU against TPOT, one point per batch on the step table, at
    the workload's mean context; the simulated mean batch marked."""
    fig = figure(title="decode: throughput vs TPOT as the batch grows", height=320, sizing_mode="stretch_width",
                 x_axis_label="TPOT, ms (step / tokens per request per step)", y_axis_label="output tokens/s per GPU",
                 name="tradeoff")
    w = r.workload
    ctx = float((w.input_len + w.output_len / 2).mean())
    drawn = False
    for k, pool in enumerate(r.pools):
        if pool.decode is None:
            continue
        top = pool.decode.load[-1]                 # up to the memory limit; a TPOT cap shows as its SLO line
        b = np.unique(np.concatenate([np.geomspace(1, max(1.0, top), 40), [top]]))
        step = np.array([pool.decode(x, ctx) for x in b])
        tpot = step / pool.tokens_per_step
        tps = b * pool.tokens_per_step / (step / 1e3) * pool.dp / pool.gpus
        src = ColumnDataSource({"tpot": tpot, "tps": tps, "batch": b, "step": step})
        fig.line("tpot", "tps", source=src, color=COLORS[pool.role], line_width=2, legend_label=f"{pool.role} pool")
        fig.scatter("tpot", "tps", source=src, color=COLORS[pool.role], size=4)
        mean_b = summary["pools"][k].get("mean_batch_per_dp")
        if mean_b:
            st = pool.decode(mean_b, ctx)
            fig.scatter([st / pool.tokens_per_step], [mean_b * pool.tokens_per_step / (st / 1e3) * pool.dp / pool.gpus],
                        marker="star", size=16, color="black", legend_label=f"simulated mean batch {mean_b:.1f}")
        drawn = True
    fig.add_tools(HoverTool(tooltips=[("batch / DP", "@batch{0.0}"), ("TPOT ms", "@tpot{0.0}"),
                                      ("tokens/s/GPU", "@tps{0,0}"), ("step ms", "@step{0.0}")]))
    slo = summary.get("slo") or {}
    if slo.get("tpot_ms"):
        fig.add_layout(Span(location=slo["tpot_ms"], dimension="height", line_dash="dashed", line_color="#B00020"))
    if not drawn:
        fig.title.text = "no decode pool in this mode"
    fig.legend.location = "bottom_right"
    return fig


def utilisation_figure(r: Result):
    """Busy share of each pool's instances per time bin."""
    s = r.steps
    t1 = float(s["end"].max()) if len(s["end"]) else 1.0
    edges = np.linspace(0.0, t1, BINS + 1)
    fig = figure(title="pool utilisation over time", height=260, sizing_mode="stretch_width",
                 x_axis_label="time, s", y_axis_label="busy share of instances", y_range=(0, 1.05), name="utilisation")
    for k, pool in enumerate(r.pools):
        mine = r.instance_pool[s["instance"]] == k
        a, b = s["start"][mine], s["end"][mine]
        # overlap of every step with every bin, summed: a cumulative busy-time function sampled at the edges
        busy = _busy_at(a, b, edges)
        share = np.diff(busy) / np.diff(edges) / pool.instances
        fig.step(edges[:-1], share, mode="after", color=COLORS[pool.role], line_width=2, legend_label=f"{pool.role}")
    fig.legend.location = "bottom_right"
    return fig


def _busy_at(start: np.ndarray, end: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Busy seconds before each time in t, summed over the intervals (vectorised over sorted ends)."""
    s, e = np.sort(start), np.sort(end)
    cs, ce = np.concatenate([[0.0], np.cumsum(s)]), np.concatenate([[0.0], np.cumsum(e)])
    ns, ne = np.searchsorted(s, t, side="right"), np.searchsorted(e, t, side="right")
    # sum over started intervals of (min(t, end) - start) = (ended ends - ended... ) written with prefix sums
    return (ce[ne] + t * (ns - ne)) - cs[ns]


def cdf_figure(r: Result, summary: dict[str, Any]):
    w = r.workload
    fig = figure(title="latency distributions", height=300, sizing_mode="stretch_width", x_axis_type="log",
                 x_axis_label="ms", y_axis_label="share of requests", y_range=(0, 1.02), name="cdf")
    series = [("TTFT", (r.first_token - w.arrival_s) * 1e3, "#4C78A8", (summary.get("slo") or {}).get("ttft_ms")),
              ("TPOT", tpot_s(r) * 1e3, "#F58518", (summary.get("slo") or {}).get("tpot_ms"))]
    for name, x, color, slo in series:
        x = np.sort(x[np.isfinite(x) & (x > 0)])
        if not len(x):
            continue
        y = np.arange(1, len(x) + 1) / len(x)
        if len(x) > 2000:                         # enough points to draw the curve
            idx = np.unique(np.linspace(0, len(x) - 1, 2000).astype(int))
            x, y = x[idx], y[idx]
        fig.line(x, y, color=color, line_width=2, legend_label=name)
        if slo:
            fig.add_layout(Span(location=slo, dimension="height", line_dash="dashed", line_color=color))
    fig.legend.location = "bottom_right"
    return fig


def summary_div(s: dict[str, Any]) -> Div:
    rows = "".join(
        f"<tr><td>{html.escape(p['role'])}</td><td>{p['instances']} x {p['gpus_per_instance']}</td>"
        f"<td>{p['nodes']:g}</td><td>{p['utilisation']:.0%}</td>"
        f"<td>{'-' if p.get('capacity_used') is None else format(p['capacity_used'], '.0%')}</td>"
        f"<td>{_n(p.get('input_tokens_per_s_per_node_steady'))}</td>"
        f"<td>{_n(p.get('output_tokens_per_s_per_node_steady'))}</td></tr>" for p in s["pools"])
    lat = "".join(f"<tr><td>{name}</td>" + "".join(f"<td>{_n(s[key].get(f'p{q}'), 1)}</td>" for q in (50, 90, 99))
                  + "</tr>" for key, name in (("ttft_ms", "TTFT ms"), ("tpot_ms", "TPOT ms"), ("e2e_ms", "end to end ms")))
    slo = s.get("slo")
    slo_line = f"<p>SLO met by {slo['attained']:.1%} of requests</p>" if slo else ""
    return Div(text=f"<h3>{html.escape(s.get('plan', ''))}</h3><p>{html.escape(s.get('workload', ''))}</p>"
                    "<table border=1 cellpadding=4 style='border-collapse:collapse'><tr><th>pool</th><th>instances</th>"
                    "<th>nodes</th><th>busy</th><th>capacity used</th><th>input tok/s/node (steady)</th><th>output tok/s/node (steady)</th></tr>"
                    f"{rows}</table><br><table border=1 cellpadding=4 style='border-collapse:collapse'>"
                    f"<tr><th></th><th>p50</th><th>p90</th><th>p99</th></tr>{lat}</table>{slo_line}",
               sizing_mode="stretch_width", name="deploy-summary")


def _n(x: Any, nd: int = 0) -> str:
    return "-" if x is None else f"{x:,.{nd}f}"


def deployment_layout(r: Result, summary: dict[str, Any]):
    return column(summary_div(summary), row(tradeoff_figure(r, summary), cdf_figure(r, summary),
                                            sizing_mode="stretch_width"),
                  utilisation_figure(r), sizing_mode="stretch_width")


__all__ = ["deployment_layout", "tradeoff_figure", "utilisation_figure", "cdf_figure"]


# ----------------------------------------------------------------------------- dashboard page
DEFAULTS = {"mode": PD, "hardware": "h800", "prefill_nodes": 4, "decode_nodes": 18, "decode_batch": 0, "mtp": 0,
            "mtp_accept": 0.85, "rate": 0.0, "requests": 2000, "input_len": 2000, "output_len": 500,
            "slo_ttft": 2000.0, "slo_tpot": 50.0}


def simulate_values(v: dict[str, Any]) -> tuple[Result, dict[str, Any]]:
    """One simulation for the dashboard's widget values (rate 0: all at t = 0)."""
    from tracegen.resolve import resolve_target
    from tracegen.serving.deployment import Deployment, PoolPlan, simulate_deployment
    from tracegen.serving.metrics import summary
    from tracegen.serving.workload import synthetic
    model, hw, preset = resolve_target(hardware=v["hardware"])
    mode = v["mode"]
    d = Deployment(mode, PoolPlan(int(v["prefill_nodes"])) if mode != "decode" else None,
                   PoolPlan(int(v["decode_nodes"])) if mode in (PD, "decode") else None,
                   max_batch=float(v["decode_batch"]), slo_tpot_ms=float(v["slo_tpot"]) or None,
                   plan_fields={"mtp": int(v["mtp"]), "mtp_accept": float(v["mtp_accept"])},
                   gpus_per_node=hw.gpus_per_node)
    w = synthetic(int(v["requests"]), float(v["rate"]) or None, int(v["input_len"]), int(v["output_len"]))
    r = simulate_deployment(model, hw, preset, d, w)
    s = summary(r, float(v["slo_ttft"]) or None, float(v["slo_tpot"]) or None)
    s.update(plan=d.label(), workload=w.source)
    return r, s


def make_deploy_doc(doc) -> None:
    """The dashboard's /deploy page: the plan's widgets redraw the deployment views."""
    from bokeh.models import Select, Spinner

    from tracegen.base.errors import UserError
    from tracegen.catalog import builtin_hardware
    w = {"mode": Select(title="mode", value=PD, options=[PD, COLOCATED, "prefill", "decode"], name="d-mode"),
         "hardware": Select(title="hardware", value="h800", options=sorted(builtin_hardware()), name="d-hardware")}
    for key, title, low, high, step in (("prefill_nodes", "prefill (or colocated) nodes", 1, 64, 1),
                                        ("decode_nodes", "decode nodes", 1, 64, 1),
                                        ("decode_batch", "decode batch / DP (0: memory)", 0, 4096, 8),
                                        ("mtp", "MTP draft tokens", 0, 4, 1), ("mtp_accept", "MTP acceptance", 0, 1, 0.05),
                                        ("rate", "requests/s (0: all at once)", 0, 1e5, 5),
                                        ("requests", "requests", 10, 20000, 500),
                                        ("input_len", "input tokens", 1, 131072, 500),
                                        ("output_len", "output tokens", 1, 32768, 100),
                                        ("slo_ttft", "SLO TTFT ms (0: none)", 0, 1e6, 100),
                                        ("slo_tpot", "SLO TPOT ms (0: none)", 0, 1e4, 5)):
        w[key] = Spinner(title=title, value=DEFAULTS[key], low=low, high=high, step=step, name=f"d-{key}")
    status = Div(text="", name="d-status", sizing_mode="stretch_width")
    body = column(Div(text="simulating..."), sizing_mode="stretch_width", name="d-body")

    def redraw() -> None:
        values = {k: x.value for k, x in w.items()}
        if any(v is None for v in values.values()):
            status.text = "<span style='color:#B00020'>every box needs a number</span>"
            return
        try:
            r, s = simulate_values(values)
        except UserError as exc:
            status.text = f"<span style='color:#B00020;font-weight:bold'>{html.escape(str(exc))}</span>"
            return
        body.children = list(deployment_layout(r, s).children)
        status.text = "ok"

    for x in w.values():
        x.on_change("value", lambda attr, old, new: redraw())
    doc.add_root(row(column(*w.values(), width=230),
                     column(Div(text="<h2>Deployment: pools, requests, SLOs</h2>"), status, body,
                            sizing_mode="stretch_width"), sizing_mode="stretch_width", name="deploy-root"))
    doc.title = "moe-timeline deployment"
    redraw()
