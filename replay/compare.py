"""`replay compare PREDICTED OBSERVED`: align two traces stage by stage - (rank, layer,
micro-batch, stage) - and say where and why they disagree.

A stage's time on each side is the busy time of its GPU work (union of its kernels). The error of
a stage is (observed - predicted) / predicted: +20 % means the real stage took 20 % longer."""
from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from tracegen.base.contract import COMM, COMPUTE, LAUNCH_BOUND, STAGE_STREAM
from tracegen.base.errors import UserError

from .analysis import Analysis
from .events import text
from .intervals import intersection, length, union
from .overlap import gpu_work
from .stagerules import StageRules, canonical_stage
from .structure import TRAINING_PASSES
from .suspicious import OVERLAP_REFUSE_SHARE, overlapping_kernels
from .taxonomy import Taxonomy, load_taxonomy


def label_stages(a: Analysis, rules: StageRules) -> pd.DataFrame:
    """The GPU work of known layers, with tracegen's stage name in `cstage` (None: unknown)."""
    g = gpu_work(a.events)
    g = g[g["layer"] >= 0]
    labels = pd.Series(text(g["stage"]), index=g.index)
    mapping = {lab: canonical_stage(lab, rules) for lab in labels.unique()}
    stage = _off_comm_streams(g, labels.map(mapping))
    unlabeled = stage.isna()
    if unlabeled.any():        # kernels without a usable stage label: by kernel class
        sub = pd.Series(text(g.loc[unlabeled, "subclass"]), index=g.index[unlabeled])
        by_kernel = pd.Series(None, index=sub.index, dtype=object)
        for rx, st in rules.kernel:
            hit = by_kernel.isna() & sub.str.fullmatch(rx.pattern, case=False)
            by_kernel[hit] = st
        compute = text(g.loc[unlabeled, "klass"]) == "compute"
        around = _annotated_around(g, stage)[unlabeled]
        by_kernel[by_kernel.isna() & compute] = around
        by_kernel[by_kernel.isna() & compute] = "ATTN"
        stage[unlabeled] = by_kernel
    return g.assign(cstage=stage.to_numpy()).dropna(subset=["cstage"])


def _on_stream(stage: pd.Series, stream: str) -> np.ndarray:
    """Which labels name a stage of that stream (None: none)."""
    return stage.map(lambda s: isinstance(s, str) and STAGE_STREAM.get(s) == stream).to_numpy(dtype=bool)


def _off_comm_streams(g: pd.DataFrame, stage: pd.Series) -> pd.Series:
    """The stage labels with compute kernels taken out of communication stages where they ran on none of
    the communication's streams (SGLang's `output` add under combine_b runs on the compute stream): a
    communication stage lasts what its stream did, not until a compute kernel launched under its range
    ran (they then get the compute stage around them). Its own kernels on its stream (DeepEP's layout and
    fill kernels) stay. The communication's streams: where its communication kernels ran, else (stand-ins
    such as host copies) where its non-compute kernels ran."""
    on_comm = _on_stream(stage, COMM)
    if not on_comm.any():
        return stage
    klass = text(g["klass"])
    anchor = on_comm & (klass == "comm")
    if not anchor.any():
        anchor = on_comm & (klass != "compute")
    if not anchor.any():
        return stage
    where = pd.MultiIndex.from_arrays([g["rank"].to_numpy(), g["stream"].to_numpy()])
    stray = on_comm & (klass == "compute") & ~where.isin(where[anchor])
    return stage.mask(stray) if stray.any() else stage


def _annotated_around(g: pd.DataFrame, stage: pd.Series) -> pd.Series:
    """For each kernel, the compute stage annotated before it in its (rank, step, layer, micro-batch), in
    time order, else the one after it (None where the group has none): a norm or residual add outside
    any stage range belongs to the stage it runs beside, not to the default ATTN, which would stretch
    ATTN's span over the stages between (a layer's closing add would make ATTN span the whole layer)."""
    computed = stage.where(_on_stream(stage, COMPUTE))
    keys = ["rank", "step", "layer", "microbatch"] if "step" in g else ["rank", "layer", "microbatch"]   # never across steps
    order = g.sort_values(keys + ["start_us"], kind="stable").index
    seq = computed.loc[order]
    groups = [g.loc[order, k].to_numpy() for k in keys]
    filled = seq.groupby(groups).ffill().fillna(seq.groupby(groups).bfill())
    return filled.reindex(g.index)


TRAINING_PASS = re.compile(rf"\((?:{'|'.join(TRAINING_PASSES)})\)$")     # attn(B), mlp(W): see structure.py


def refuse_training(a: Analysis, what: str = "the trace") -> None:
    """A training trace's forward and backward chunks are not the micro-batches of an inference step:
    re-timing or comparing them as such gives confident nonsense, so say so instead."""
    stages = text(a.events.loc[a.events["layer"] >= 0, "stage"])
    if any(TRAINING_PASS.search(s) for s in set(stages)):
        raise UserError(f"{what} is a training trace (forward/backward chunks such as attn(F) / attn(B), e.g. "
                        "DualPipe): the stages of an inference step cannot be rebuilt from it; `replay analyze` "
                        "measures its overlap")
    # the analysis counted the backward ops already (suspicious.facts, on every path: a folder's staged
    # analysis keeps no event table to count them again)
    n = sum(s["count"] for s in a.suspicious if s["what"] == "training_step")
    if n:
        raise UserError(f"{what} is a training step: autograd ran {n} backward ops (such as "
                        "MmBackward0), whose kernels belong to no stage of an inference step, so it cannot "
                        "be re-timed or compared as one; `replay analyze` measures it")


def refuse_overlapping(a: Analysis, rank: int) -> None:
    """A re-time rebuilds stages from their kernels' busy time on one stream at a time; a rank whose
    kernels overlap on their streams (more than suspicious.OVERLAP_REFUSE_SHARE of them) has timestamps
    or stream ids that cannot carry it."""
    g = gpu_work(a.events[a.events["rank"] == rank])
    n = overlapping_kernels(g).get(rank, 0)
    if n > OVERLAP_REFUSE_SHARE * len(g):
        raise UserError(f"rank {rank}: {n} of its {len(g)} kernels start before the previous kernel on their "
                        "stream ended, so its timestamps (or stream ids) are wrong and its stages cannot be "
                        "re-timed; `replay analyze` lists it under suspicious input")


def stage_table(g: pd.DataFrame) -> pd.DataFrame:
    """Busy time per (rank, layer, micro-batch, stage) of a trace's labelled GPU work (label_stages)."""
    rows = []
    for (rank, layer, mb, st), part in g.groupby(["rank", "layer", "microbatch", "cstage"], sort=True):
        s0 = part["start_us"].to_numpy()
        u = union(s0, s0 + part["dur_us"].to_numpy())
        rows.append({"rank": int(rank), "layer": int(layer), "microbatch": int(mb), "stage": st,
                     "stream": STAGE_STREAM[st], "busy_us": length(*u), "start_us": float(s0.min()),
                     "end_us": float((s0 + part["dur_us"].to_numpy()).max()), "kernels": len(part)})
    return pd.DataFrame(rows, columns=["rank", "layer", "microbatch", "stage", "stream", "busy_us", "start_us",
                                       "end_us", "kernels"])


def common_stages(pred: pd.DataFrame, obs: pd.DataFrame, rules: StageRules
                  ) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """The two sides' labelled work at the stages both name: a stage only one side has is counted in its
    parent (stages.toml [parents]) where the other side has the parent; with what was moved, said."""
    have = {side: set(g["cstage"].dropna()) for side, g in (("predicted", pred), ("observed", obs))}
    out, said = [], []
    for side, g, other in (("predicted", pred, "observed"), ("observed", obs, "predicted")):
        move = {c: up for c, up in rules.parent if c in have[side] and c not in have[other] and up in have[other]}
        out.append(g.assign(cstage=g["cstage"].map(lambda x: move.get(x, x))) if move else g)
        said += [f"{side} {c} counted in {up} (the {other} trace names no {c})" for c, up in sorted(move.items())]
    return out[0], out[1], said


def _stage_rows(labelled: pd.DataFrame, row: pd.Series) -> pd.DataFrame:
    """The labelled work of one (rank, layer, micro-batch, stage) row of the comparison."""
    return labelled[(labelled["rank"] == row["rank"]) & (labelled["layer"] == row["layer"])
                    & (labelled["microbatch"] == row["microbatch"]) & (labelled["cstage"] == row["stage"])]


def _comm_overlap_share(labelled: pd.DataFrame, row: pd.Series) -> float:
    """Share of an observed compute stage's busy time spent while communication ran."""
    comm = labelled[(labelled["rank"] == row["rank"]) & (labelled["klass"] == "comm")]
    cu = union(comm["start_us"].to_numpy(), (comm["start_us"] + comm["dur_us"]).to_numpy())
    st = _stage_rows(labelled, row)
    su = union(st["start_us"].to_numpy(), (st["start_us"] + st["dur_us"]).to_numpy())
    busy = length(*su)
    return length(*intersection(su, cu)) / busy if busy else 0.0


def _cause(row: pd.Series, obs: Analysis, labelled: pd.DataFrame, layer_offset: int, rules: StageRules,
           tax: Taxonomy) -> str:
    if pd.isna(row["pred_us"]):
        return "stage missing in the prediction"
    if pd.isna(row["obs_us"]):
        return "stage missing in the observed trace"
    faster = row["obs_us"] < row["pred_us"]
    if row["stream"] == COMM:
        return ("communication faster than modelled (link efficiency or bytes overestimated)" if faster else
                "communication slower than modelled: bandwidth, latency, or waiting for the slowest rank")
    if faster:
        return "computation faster than predicted: the efficiency curve is pessimistic here"
    layer = row["layer"] - layer_offset
    lost = sum(f["lost_us"] for f in obs.findings if f["rank"] == row["rank"] and f.get("layer") == layer
               and f.get("microbatch") == row["microbatch"] and f["kind"] == LAUNCH_BOUND
               and canonical_stage(f.get("stage") or "", rules) == row["stage"])
    if lost > 0.1 * (row["obs_us"] - row["pred_us"]):
        return "gaps while the CPU launched the stage's kernels: launch-bound"
    in_obs = row.copy()
    in_obs["layer"] = layer                      # the observed trace's own layer index
    if _comm_overlap_share(labelled, in_obs) > 0.3:
        return "compute slowed while communication ran: SM or memory-bandwidth contention"
    slow = "kernels slower than the cost model's efficiency for these shapes"
    priced, glue, top = _priced_split(labelled, in_obs, tax)
    if not priced:                 # no kernel of the stage recognised as a GEMM or attention: nothing to split
        return slow
    if priced <= row["pred_us"] * (1 + PRICED_SLACK) and glue >= GLUE_SHARE * (row["obs_us"] - row["pred_us"]):
        names = ", ".join(f"{k} {v:,.0f} us" for k, v in top)
        return (f"kernels the cost model has no op for: {glue:,.0f} us outside the stage's GEMMs and attention "
                f"({names}), while those take {priced:,.0f} us: unfused glue (an engine's fused kernels run "
                "little of it)")
    return f"{slow} (the stage's GEMMs and attention alone take {priced:,.0f} us)"


PRICED_SLACK = 0.10     # a stage's priced kernels within 10 % of its whole prediction are not what is slow
GLUE_SHARE = 0.5        # ... and its glue kernels make up at least half of the excess


def _priced_split(labelled: pd.DataFrame, row: pd.Series, tax: Taxonomy
                  ) -> tuple[float, float, list[tuple[str, float]]]:
    """An observed compute stage's busy time in the kernel classes the cost model prices (the taxonomy's
    `costed = true` subclasses) and in those it has no op for (`costed = false`), each as one union, with
    the glue's three largest classes; a subclass marked neither way (unrecognised, perhaps a GEMM) counts on
    neither side."""
    ev = _stage_rows(labelled, row)
    ev = ev[ev["klass"] == "compute"]
    sub = text(ev["subclass"])
    start, end = ev["start_us"].to_numpy(), (ev["start_us"] + ev["dur_us"]).to_numpy()
    priced = np.isin(sub, list(tax.costed_subclasses(True)))
    glue = np.isin(sub, list(tax.costed_subclasses(False)))
    busy = {k: length(*union(start[sub == k], end[sub == k])) for k in set(sub[glue])}
    top = sorted(busy.items(), key=lambda kv: -kv[1])[:3]
    return length(*union(start[priced], end[priced])), length(*union(start[glue], end[glue])), top


def has_stage_labels(a: Analysis) -> bool:
    """Whether some GPU work of a known layer carries a stage label (args, annotations, the dispatch
    sequence): layers found from the kernel sequence alone name none, and label_stages would put all their
    kernels in its default stage."""
    ev = a.events
    if ev.empty:
        return False
    g = ev[(ev["layer"] >= 0) & (ev["device"] == "gpu")]
    return bool(len(g)) and bool((text(g["stage"]) != "").any())


def compare(pred: Analysis, obs: Analysis, rules: StageRules, rank_map: dict[int, int] | None = None,
            layer_offset: int = 0, top: int = 10, taxonomy: str | None = None) -> dict[str, Any]:
    """The two traces stage by stage; `taxonomy`: the user's extra kernel rules (which subclasses are costed)."""
    tax = load_taxonomy(taxonomy)
    refuse_training(pred, "the predicted trace")
    refuse_training(obs, "the observed trace")
    for side, a in (("predicted", pred), ("observed", obs)):
        if (a.events["layer"] >= 0).any() and not has_stage_labels(a):
            raise UserError(f"the {side} trace's layers name no stages (structure: {a.structure}): a per-stage "
                            "comparison needs stage ranges (e.g. attention / MoE module ranges, L3:ATTN(0)) or "
                            "tracegen's args; `replay diff` compares two runs step by step")
    lp, labelled, merged = common_stages(label_stages(pred, rules), label_stages(obs, rules), rules)
    p, o = stage_table(lp), stage_table(labelled)
    if p.empty or o.empty:
        side = "predicted" if p.empty else "observed"
        raise UserError(f"the {side} trace has no stages with known layers to compare "
                        "(structure from args, annotations, or the dispatch sequence is needed)")
    o = o.assign(layer=o["layer"] + layer_offset)
    if rank_map:
        o = o.assign(rank=o["rank"].map(lambda r: rank_map.get(r, r)))
    common_ranks = sorted(set(p["rank"]) & set(o["rank"]))
    if not common_ranks:          # e.g. a 1-rank capture against a prediction for rank 0 only
        raise UserError(f"no rank in common (predicted {sorted(set(p['rank']))}, observed {sorted(set(o['rank']))}); "
                        "use --rank-map OBS:PRED")
    p, o = p[p["rank"].isin(common_ranks)], o[o["rank"].isin(common_ranks)]
    key = ["rank", "layer", "microbatch", "stage"]
    m = p[key + ["stream", "busy_us"]].merge(o[key + ["stream", "busy_us"]], on=key, how="outer",
                                           suffixes=("_pred", "_obs"))
    m["stream"] = m["stream_pred"].fillna(m["stream_obs"])
    m = m.drop(columns=["stream_pred", "stream_obs"]).rename(columns={"busy_us_pred": "pred_us",
                                                                       "busy_us_obs": "obs_us"})
    m["diff_us"] = m["obs_us"] - m["pred_us"]
    m["error_pct"] = 100 * m["diff_us"] / m["pred_us"]
    layers_p = {int(r): v for r, v in pred.layers.groupby("rank")} if not pred.layers.empty else {}
    layers_o = {int(r): v for r, v in obs.layers.groupby("rank")} if not obs.layers.empty else {}
    per_layer = []
    for r in common_ranks:
        lp, lo = layers_p.get(r), layers_o.get(r)
        if lp is None or lo is None:
            continue
        lo = lo.assign(layer=lo["layer"] + layer_offset)
        j = lp[["layer", "overlap_us", "exposed_comm_us", "comm_us", "span_us"]].merge(
            lo[["layer", "overlap_us", "exposed_comm_us", "comm_us", "span_us"]], on="layer", suffixes=("_pred", "_obs"))
        per_layer.append(j.assign(rank=r))
    per_layer_df = pd.concat(per_layer) if per_layer else pd.DataFrame()
    both = m.dropna(subset=["pred_us", "obs_us"])
    summary = []
    for stage, g in both.groupby("stage"):
        e = g["error_pct"].abs()
        summary.append({"stage": stage, "stream": STAGE_STREAM[stage], "n": len(g),
                        "median_abs_error_pct": float(e.median()),
                        "p90_abs_error_pct": float(e.quantile(0.9)), "mean_error_pct": float(g["error_pct"].mean())})
    order = m.assign(size=m["diff_us"].abs().fillna(m["pred_us"].fillna(0) + m["obs_us"].fillna(0)))
    worst = order.sort_values("size", ascending=False).head(top)
    discrepancies = [{**{k: (None if pd.isna(v) else (int(v) if k in ("rank", "layer", "microbatch") else v))
                         for k, v in row[key + ["stream", "pred_us", "obs_us", "diff_us", "error_pct"]].items()},
                      "cause": _cause(row, obs, labelled, layer_offset, rules, tax)}
                     for _, row in worst.iterrows() if row["size"] > 0]
    pred_span = {x["rank"]: x["span_us"] for x in pred.ranks}
    obs_span = {(rank_map or {}).get(x["rank"], x["rank"]): x["span_us"] for x in obs.ranks}
    spans = [{"rank": int(r), "pred_us": pred_span[r], "obs_us": obs_span[r],
              "error_pct": 100 * (obs_span[r] - pred_span[r]) / pred_span[r]}
             for r in common_ranks if r in pred_span and r in obs_span]
    return {"spans": spans, "stages": m.sort_values(key).reset_index(drop=True), "per_layer": per_layer_df,
            "summary": pd.DataFrame(summary), "discrepancies": discrepancies,
            "matched": int(len(both)), "missing_predicted": int(m["pred_us"].isna().sum()),
            "missing_observed": int(m["obs_us"].isna().sum()), "ranks": common_ranks, "merged": merged}


def render(result: dict[str, Any], pred_name: str, obs_name: str, max_rows: int = 24) -> str:
    out = [f"predicted {pred_name}  vs  observed {obs_name}: {result['matched']} stages matched, "
           f"{result['missing_predicted']} only observed, {result['missing_observed']} only predicted "
           f"(ranks {', '.join(map(str, result['ranks']))})"]
    if result.get("merged"):
        out.append("stages compared where both traces name them: " + "; ".join(result["merged"]))
    for s in result["spans"]:
        out.append(f"whole span, rank {s['rank']}: predicted {s['pred_us'] / 1e3:.3f} ms, observed "
                   f"{s['obs_us'] / 1e3:.3f} ms ({s['error_pct']:+.1f} %)")
    out.append("")
    out.append("error per stage ((observed - predicted) / predicted)")
    out.append(f"  {'stage':<10}{'stream':<9}{'n':>5}{'median |err|':>14}{'p90 |err|':>11}{'mean err':>10}")
    for _, s in result["summary"].iterrows():
        out.append(f"  {s['stage']:<10}{s['stream']:<9}{int(s['n']):>5}{s['median_abs_error_pct']:>13.1f}%"
                   f"{s['p90_abs_error_pct']:>10.1f}%{s['mean_error_pct']:>9.1f}%")
    pl = result["per_layer"]
    if not pl.empty:
        out.append("")
        out.append("per layer (ms): overlap and exposed communication, predicted vs observed")
        out.append(f"  {'rank':>4}{'layer':>6}{'overlap pred':>14}{'obs':>8}{'exposed pred':>14}{'obs':>8}")
        rows = pl if len(pl) <= max_rows else pd.concat([pl.head(max_rows // 2), pl.tail(max_rows // 2)])
        for _, r in rows.iterrows():
            out.append(f"  {int(r['rank']):>4}{int(r['layer']):>6}{r['overlap_us_pred'] / 1e3:>14.3f}"
                       f"{r['overlap_us_obs'] / 1e3:>8.3f}{r['exposed_comm_us_pred'] / 1e3:>14.3f}"
                       f"{r['exposed_comm_us_obs'] / 1e3:>8.3f}")
    out.append("")
    out.append("largest discrepancies")
    for d in result["discrepancies"]:
        err = "" if d["error_pct"] is None or np.isnan(d["error_pct"]) else f"{d['error_pct']:+.1f}%"
        pv = "-" if d["pred_us"] is None else f"{d['pred_us']:.1f}"
        ov = "-" if d["obs_us"] is None else f"{d['obs_us']:.1f}"
        out.append(f"  rank {d['rank']} layer {d['layer']} mb {d['microbatch']} {d['stage']:<9} predicted {pv:>9} us  "
                   f"observed {ov:>9} us  {err:>8}  {d['cause']}")
    return "\n".join(out)


def to_json(result: dict[str, Any], predicted: str, observed: str) -> dict[str, Any]:
    """The comparison as --json prints it (schema replay-compare): sources, whole spans, stages, ..."""
    return {"sources": {"predicted": predicted, "observed": observed}, "spans": result["spans"],
            "stages": result["stages"].replace({np.nan: None}).to_dict(orient="records"),
            "per_layer": result["per_layer"].to_dict(orient="records") if not result["per_layer"].empty else [],
            "summary": result["summary"].to_dict(orient="records"), "discrepancies": result["discrepancies"],
            "matched": result["matched"], "missing_predicted": result["missing_predicted"],
            "missing_observed": result["missing_observed"], "ranks": result["ranks"], "merged": result["merged"]}
