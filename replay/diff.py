"""`replay diff BEFORE AFTER`: what changed between two observed runs (files or folders) - per step,
per idle cause and group, per rank and per stage - and a verdict.

How runs are matched: ranks by rank number (ranks only one side has are listed, not compared; two
runs of one rank each are paired whatever their rank numbers);
figures are per step - each side's totals divided by its number of profiler steps (a trace without
steps counts as one) - so runs of different lengths compare; stages by tracegen's stage names
(stagerules: ATTN, DISPATCH, MLP, ...) summed over layers and micro-batches; where both runs' step ranges
say what each iteration ran (vLLM's), steps by phase too. The verdict reads the mean step span of the
ranks both sides have: AFTER is slower by (after - before) / before."""
from __future__ import annotations

from typing import Any

from tracegen.base.contract import IDLE_GROUPS, OBSERVED_IDLE_CAUSES, UNEXPLAINED

from .analysis import Analysis
from .compare import has_stage_labels, label_stages, stage_table
from .stagerules import StageRules

FIGURES = ("span_us", "compute_us", "comm_us", "overlap_us", "exposed_comm_us", "compute_idle_us")
MIX_SAME_SHARE = 0.05    # two runs' step mixes are the same where each phase's share of steps differs by less


def steps_of(a: Analysis) -> int:
    """How many profiler steps the analysis covers (1 without steps)."""
    if a.steps is None or a.steps.empty:
        return 1
    return max(1, int(a.steps.groupby("rank")["step"].nunique().max()))


def summary(a: Analysis, rules: StageRules) -> dict[str, Any]:
    """Per-step figures of one run: per rank, per cause and group, per stage."""
    n = steps_of(a)
    ranks = {}
    for r in a.ranks:
        rank = r["rank"]
        row = {k: r[k] / n for k in FIGURES}
        if a.steps is not None and not a.steps.empty:       # a step's span, not the trace's (gaps between steps)
            sr = a.steps[a.steps["rank"] == rank]
            if len(sr):
                row["span_us"] = float(sr["span_us"].mean())
        row["peer_wait_us"] = a.peers.wait_by_rank.get(rank, 0.0) / n
        row["idle"] = {c: a.idle_totals.get(rank, {}).get(c, 0.0) / n for c in (*OBSERVED_IDLE_CAUSES, UNEXPLAINED)}
        row["groups"] = {c: {g: v / n for g, v in gs.items()} for c, gs in a.idle_groups.get(rank, {}).items()}
        ranks[rank] = row
    stages: dict[str, float] = {}
    labelled = has_stage_labels(a)
    if labelled:
        t = stage_table(label_stages(a, rules))
        for st, v in t.groupby("stage")["busy_us"].sum().items():
            stages[str(st)] = float(v) / n / max(1, len(ranks))
    return {"steps": n, "ranks": ranks, "stages": stages, "structure": a.structure, "labelled": labelled,
            "phases": _phases(a)}


def _phases(a: Analysis) -> dict[str, dict[str, float]]:
    """Per phase (where the steps' ranges name it: vLLM's iteration ranges), its steps and their mean span
    over every rank's steps of that phase; empty where no step has a phase."""
    st = a.steps
    if st is None or st.empty or "phase" not in st or not st["phase"].notna().any():
        return {}
    st = st[st["phase"].notna()]
    per = st.groupby("rank")["phase"].value_counts().groupby("phase").max()      # steps a rank ran of each
    return {str(ph): {"steps": int(per[ph]), "span_us": float(g["span_us"].mean())}
            for ph, g in st.groupby("phase")}


def diff(before: Analysis, after: Analysis, rules: StageRules, fail_if_slower: float | None = None) -> dict[str, Any]:
    b, a = summary(before, rules), summary(after, rules)
    both = sorted(set(b["ranks"]) & set(a["ranks"]))
    paired = ""
    if not both and len(b["ranks"]) == 1 and len(a["ranks"]) == 1:
        # one rank a side (two single-GPU runs, or one rank file of each): they are the runs to compare,
        # whatever rank number each file gives itself
        rb, (ra, row_a) = next(iter(b["ranks"])), next(iter(a["ranks"].items()))
        a = {**a, "ranks": {rb: row_a}}
        both, paired = [rb], f"the one rank of each side paired (before rank {rb}, after rank {ra})"
    if not both:
        from tracegen.base.errors import UserError
        raise UserError(f"the runs share no rank (before: {sorted(b['ranks'])}, after: {sorted(a['ranks'])})")

    def mean(side: dict, key: str) -> float:
        return sum(side["ranks"][r][key] for r in both) / len(both)

    def cause(side: dict, c: str) -> float:
        return sum(side["ranks"][r]["idle"][c] for r in both) / len(both)

    def group(side: dict, c: str, g: str) -> float:
        return sum(side["ranks"][r]["groups"].get(c, {}).get(g, 0.0) for r in both) / len(both)

    overall = [_row(k, mean(b, k), mean(a, k)) for k in (*FIGURES, "peer_wait_us")]
    causes = [_row(c, cause(b, c), cause(a, c)) for c in (*OBSERVED_IDLE_CAUSES, UNEXPLAINED)]
    groups = [_row(f"{c}/{g}", group(b, c, g), group(a, c, g)) for c, gs in IDLE_GROUPS.items() if len(gs) > 1
              for g in gs]
    ranks = [{"rank": r, **{k: v for k, v in _row("span_us", b["ranks"][r]["span_us"], a["ranks"][r]["span_us"]).items()
                            if k != "what"},
              "peer_wait_before_us": b["ranks"][r]["peer_wait_us"], "peer_wait_after_us": a["ranks"][r]["peer_wait_us"]}
             for r in both]
    # stages only where both runs name them: a run whose layers came from the kernel sequence has no stage
    # labels, and its kernels would all fall in the default stage (ATTN +800 %, MLP -100 %, meaning nothing)
    stages = [_row(s, b["stages"].get(s, 0.0), a["stages"].get(s, 0.0))
              for s in sorted(set(b["stages"]) | set(a["stages"]))] if b["labelled"] and a["labelled"] else []
    unstaged = [side for side, x in (("before", b), ("after", a)) if not x["labelled"]]
    stage_how = ("stages by tracegen's stage names summed over layers and micro-batches" if not unstaged else
                 f"stages not compared: {' and '.join(unstaged)} {'has' if len(unstaged) == 1 else 'have'} no stage "
                 "labels")
    span = overall[0]
    slower = span["change_pct"] if span["change_pct"] is not None else 0.0
    changes = sorted([x for x in groups + [c for c in causes if len(IDLE_GROUPS.get(c["what"], ())) < 2]
                      if abs(x["delta_us"]) > 0], key=lambda x: -abs(x["delta_us"]))      # idle, finest grain
    verdict = (f"after is {abs(slower):.1f} % {'slower' if slower > 0 else 'faster'} per step "
               f"({span['before_us'] / 1e3:.3f} -> {span['after_us'] / 1e3:.3f} ms)" if span["before_us"] else
               "no step span to compare")
    failed = fail_if_slower is not None and slower > fail_if_slower
    phases, mix = _phase_rows(b["phases"], a["phases"])
    return {"matched": {"ranks": both, "only_before": sorted(set(b["ranks"]) - set(both)),
                        "only_after": sorted(set(a["ranks"]) - set(both)),
                        "steps_before": b["steps"], "steps_after": a["steps"],
                        "how": f"{paired or 'ranks ' + ', '.join(map(str, both)) + ' by number'}; figures per "
                               f"profiler step (totals / steps); {stage_how}{mix}"},
            "overall": overall, "causes": causes, "groups": groups, "ranks": ranks, "stages": stages,
            "phases": phases,
            "largest_changes": changes[:8], "verdict": verdict, "slower_pct": slower,
            "fail_if_slower_pct": fail_if_slower, "failed": failed,
            "structure_before": b["structure"], "structure_after": a["structure"]}


def _phase_rows(b: dict[str, dict[str, float]], a: dict[str, dict[str, float]]) -> tuple[list[dict[str, Any]], str]:
    """The mean step span per phase both runs name, and how the runs' step mixes compare (a run with more
    prefill steps is slower per step for that alone: its per-phase rows are the like-for-like comparison)."""
    if not b or not a:
        return [], ""
    rows = [_row(f"{ph} step span", b[ph]["span_us"], a[ph]["span_us"]) for ph in sorted(set(b) & set(a))]

    def mix(x: dict[str, dict[str, float]]) -> str:
        return ", ".join(f"{ph} {int(v['steps'])}" for ph, v in sorted(x.items()))
    total_b, total_a = sum(v["steps"] for v in b.values()), sum(v["steps"] for v in a.values())
    same = set(b) == set(a) and all(abs(b[p]["steps"] / total_b - a[p]["steps"] / total_a) < MIX_SAME_SHARE
                                   for p in b)
    return rows, (f"; steps by phase from the iteration ranges or the files' profiled stage (before: {mix(b)}; after: {mix(a)})"
                  + ("" if same else ": the mixes differ, so the per-step figures compare different work; the "
                     "per-phase rows compare like with like"))


def _row(what: str, before: float, after: float) -> dict[str, Any]:
    return {"what": what, "before_us": before, "after_us": after, "delta_us": after - before,
            "change_pct": 100.0 * (after - before) / before if before else None}


def render(d: dict[str, Any], before: str, after: str) -> str:
    m = d["matched"]
    out = [f"before: {before} ({m['steps_before']} step(s), structure {d['structure_before']})",
           f"after:  {after} ({m['steps_after']} step(s), structure {d['structure_after']})",
           f"matched: {m['how']}"]
    if m["only_before"] or m["only_after"]:
        out.append(f"  not compared: only before {m['only_before']}, only after {m['only_after']}")
    out += ["", f"  {'per step, mean of ranks (ms)':<34}{'before':>11}{'after':>11}{'change':>11}"]
    out += [_line(x) for x in d["overall"] if x["before_us"] or x["after_us"]]
    out += ["", "  idle by cause (and what held the launch back)"]
    for x in d["causes"]:
        if x["before_us"] or x["after_us"]:
            out.append(_line(x))
            out += [_line({**g, "what": "  " + g["what"].split("/", 1)[1]}) for g in d["groups"]
                    if g["what"].startswith(x["what"] + "/") and (g["before_us"] or g["after_us"])]
    if d["stages"]:
        out += ["", "  stages (busy per step, mean of ranks)"] + [_line(x) for x in d["stages"]]
    if d.get("phases"):
        out += ["", "  by phase (mean step span of its steps)"] + [_line(x) for x in d["phases"]]
    if d["largest_changes"]:
        out += ["", "largest changes in idle time (per step):"] + [
            f"  {x['what']:<34}{x['delta_us'] / 1e3:+11.3f} ms" for x in d["largest_changes"]]
    out += ["", f"verdict: {d['verdict']}" + (f" - fails --fail-if-slower {d['fail_if_slower_pct']:g}" if d["failed"]
                                              else "")]
    return "\n".join(out)


def _line(x: dict[str, Any]) -> str:
    pct = f"{x['change_pct']:+.1f}%" if x["change_pct"] is not None else "new"
    what = x["what"].removesuffix("_us")          # the table is in ms: the JSON keeps the field names
    return f"  {what:<34}{x['before_us'] / 1e3:11.3f}{x['after_us'] / 1e3:11.3f}{pct:>11}"


def figure(d: dict[str, Any], before: str, after: str):
    """Bokeh view: per-step span and every idle cause before and after, side by side."""
    from bokeh.models import ColumnDataSource, FactorRange
    from bokeh.plotting import figure as bfig
    rows = [x for x in d["overall"][:1] + d["causes"] if x["before_us"] or x["after_us"]] + d["stages"]
    factors = [(x["what"], side) for x in rows for side in ("before", "after")]
    src = ColumnDataSource({"x": factors, "ms": [v / 1e3 for x in rows for v in (x["before_us"], x["after_us"])],
                            "color": ["#9ecae1", "#3182bd"] * len(rows)})
    p = bfig(x_range=FactorRange(*factors), height=420, sizing_mode="stretch_width",
             title=f"per step: {before} vs {after} ({d['verdict']})", tools="hover,save,reset",
             tooltips=[("", "@x"), ("ms", "@ms{0.000}")])
    p.vbar(x="x", top="ms", width=0.9, color="color", source=src)
    p.xaxis.major_label_orientation = 1.1
    p.yaxis.axis_label = "ms per step"
    return p


__all__ = ["diff", "summary", "render", "figure", "steps_of"]
