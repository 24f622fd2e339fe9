"""Overlap metrics over the event table: per rank, per layer and per micro-batch.

compute / comm = union of the GPU intervals of that class; overlap = |compute ∩ comm|;
exposed = comm - overlap; hidden share = overlap / comm; compute idle = span - compute.
For a layer (or micro-batch), overlap is the part of *its* communication hidden by any compute
on the rank, which is what "how much of this layer's all-to-all is hidden" means."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .events import text
from .intervals import intersection, length, union
from .stagerules import canonical_stage, load_stage_rules

GPU_WORK = ("compute", "comm", "memory", "other")


def _iv(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    s = df["start_us"].to_numpy()
    return union(s, s + df["dur_us"].to_numpy())


def _stats(comp: tuple, comm: tuple, span: float) -> dict[str, float]:
    c, m = length(*comp), length(*comm)
    ov = length(*intersection(comp, comm))
    return {"span_us": span, "compute_us": c, "comm_us": m, "overlap_us": ov, "exposed_comm_us": m - ov,
            "compute_idle_us": span - c, "hidden_comm_pct": 100.0 * ov / m if m > 0 else 0.0}


def gpu_work(events: pd.DataFrame) -> pd.DataFrame:
    """The GPU work rows (kernels, copies, fills); a table of GPU work only is returned as it is, uncopied
    (per_rank hands the metrics its GPU rows once)."""
    keep = ((events["device"] == "gpu") & events["klass"].isin(GPU_WORK)).to_numpy()
    return events if keep.all() else events[keep]


def stream_layout(events: pd.DataFrame) -> pd.DataFrame:
    """Per rank and stream: busy time by class, and the role the stream plays."""
    g = gpu_work(events)
    rows = []
    for (rank, stream), df in g.groupby(["rank", "stream"], sort=True, observed=True):
        busy = {k: length(*_iv(df[df["klass"] == k])) for k in ("compute", "comm", "memory")}
        total = length(*_iv(df))
        role = max(busy, key=busy.get) if total else "idle"
        if busy["compute"] and busy["comm"] and min(busy["compute"], busy["comm"]) > 0.2 * total:
            role = "mixed"
        rows.append({"rank": int(rank), "stream": int(stream), "thread": str(df["thread"].iloc[0]), "role": role,
                     "busy_us": total, "compute_us": busy["compute"], "comm_us": busy["comm"],
                     "memory_us": busy["memory"], "kernels": len(df),
                     "top_comm": df.loc[df["klass"] == "comm", "subclass"].astype(str).value_counts().head(3).to_dict()})
    return pd.DataFrame(rows)


def rank_metrics(events: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    g = gpu_work(events)
    for rank, df in g.groupby("rank", sort=True):
        span = float((df["start_us"] + df["dur_us"]).max() - df["start_us"].min())
        comp, comm = _iv(df[df["klass"] == "compute"]), _iv(df[df["klass"] == "comm"])
        row = {"rank": int(rank), **_stats(comp, comm, span)}
        row["streams"] = {int(s): length(*_iv(x)) for s, x in df.groupby("stream", observed=True)}
        row["moe_compute_us"] = length(*_iv(df[_is_moe(df)]))
        out.append(row)
    return out


def _is_moe(df: pd.DataFrame) -> pd.Series:
    """Routed-expert compute: tracegen's MLP stage in MoE layers; in a profiler trace, grouped GEMMs
    (DeepGEMM, CUTLASS grouped, Triton fused MoE: taxonomy subclass grouped_gemm) and the compute of a
    stage labelled MLP / experts (stagerules) in a layer with an all-to-all - or, in a layer with
    neither (one GPU running its experts as a loop of dense GEMMs, as Hugging Face's eager MoE blocks
    do), in a layer whose MLP stage runs the router's top-k (stages.toml [moe])."""
    stage = text(df["stage"])
    gen = text(df["stage_stream"]) == "compute"
    mlp_label = {lab: canonical_stage(lab, load_stage_rules()) == "MLP" for lab in set(stage)}
    mlp = pd.Series([mlp_label[x] for x in stage], index=df.index, dtype=bool)
    compute = df["klass"] == "compute"
    grouped = text(df["subclass"]) == "grouped_gemm"
    a2a = _layers_with(df, (df["klass"] == "comm").to_numpy())
    looped = _router_layers(df, mlp.to_numpy()) - _layers_with(df, grouped) - a2a
    return (gen & (stage == "MLP") & df["flops"].notna() & df["layer"].isin(a2a)) | \
        (~gen & (grouped | (mlp & compute & df["layer"].isin(a2a | looped))))


def _layers_with(df: pd.DataFrame, rows: np.ndarray) -> set[int]:
    """The known layers (-1 is no layer) in which any of these rows runs."""
    return set(df.loc[rows & (df["layer"] >= 0).to_numpy(), "layer"].unique())


def _router_layers(df: pd.DataFrame, mlp: np.ndarray) -> set[int]:
    """The layers whose MLP stage runs a kernel named as the router's expert choice (stages.toml [moe])."""
    router = load_stage_rules().router
    rows = mlp & (df["layer"] >= 0).to_numpy()
    if router is None or not rows.any():
        return set()
    names = text(df["name"], np.flatnonzero(rows))      # categories turned to text once, not a string per row
    hit = {n: bool(router.search(n)) for n in set(names)}
    return set(df["layer"].to_numpy()[rows][np.fromiter((hit[n] for n in names), bool, len(names))])


def layer_metrics(events: pd.DataFrame, by_microbatch: bool = False) -> pd.DataFrame:
    """One row per (rank, step, layer) - or (rank, step, layer, microbatch) - with known structure
    (step -1: the trace has no profiler steps). A layer's overlap is its communication intersected
    with the rank's compute within the layer's window; a layer never straddles steps."""
    g = gpu_work(events)
    if "step" not in g:
        g = g.assign(step=-1)
    keys = ["step", "layer", "microbatch"] if by_microbatch else ["step", "layer"]
    rows = []
    for rank, df in g.groupby("rank", sort=True):
        comp = df["klass"].to_numpy() == "compute"
        comm = df["klass"].to_numpy() == "comm"
        s_all, e_all = df["start_us"].to_numpy(), (df["start_us"] + df["dur_us"]).to_numpy()
        cu0, cu1 = union(s_all[comp], e_all[comp])
        known = df["layer"].to_numpy() >= 0
        if not known.any():
            continue
        stage = text(df["stage"])
        group_cols = [df[k].to_numpy() for k in keys]
        idx = np.flatnonzero(known)
        order = np.lexsort([s_all[idx]] + [c[idx] for c in reversed(group_cols)])
        idx = idx[order]
        gk = np.stack([c[idx] for c in group_cols], axis=1)
        bounds = np.flatnonzero(np.any(gk[1:] != gk[:-1], axis=1)) + 1
        for part in np.split(idx, bounds):
            ps, pe = s_all[part], e_all[part]
            pc, pm = comp[part], comm[part]
            c_iv, m_iv = union(ps[pc], pe[pc]), union(ps[pm], pe[pm])
            c, m = length(*c_iv), length(*m_iv)
            if len(m_iv[0]):        # only the compute that can meet this layer's communication
                lo = np.searchsorted(cu1, m_iv[0][0], side="right")
                hi = np.searchsorted(cu0, m_iv[1][-1], side="left")
                ov = length(*intersection(m_iv, (cu0[lo:hi], cu1[lo:hi])))
            else:
                ov = 0.0
            row = {"rank": int(rank), **{k: int(col[part[0]]) for k, col in zip(keys, group_cols)},
                   "start_us": float(ps.min()), "span_us": float(pe.max() - ps.min()), "compute_us": c,
                   "comm_us": m, "overlap_us": ov, "exposed_comm_us": m - ov,
                   "hidden_comm_pct": 100.0 * ov / m if m > 0 else 0.0,
                   "stages": ",".join(s for s in dict.fromkeys(stage[part]) if s and s != "nan")}
            rows.append(row)
    return pd.DataFrame(rows)


def step_metrics(events: pd.DataFrame) -> pd.DataFrame:
    """One row per (rank, profiler step): span, compute, communication, their overlap."""
    g = gpu_work(events)
    if "step" not in g or not (g["step"] >= 0).any():
        return pd.DataFrame(columns=["rank", "step", "start_us", "span_us", "compute_us", "comm_us", "overlap_us",
                                     "exposed_comm_us"])
    g = g[g["step"] >= 0]
    rank_a, step_a = g["rank"].to_numpy(), g["step"].to_numpy()
    s_all = g["start_us"].to_numpy()
    e_all = s_all + g["dur_us"].to_numpy()
    klass = g["klass"].to_numpy()
    comp_a, comm_a = klass == "compute", klass == "comm"
    # one (rank, step) = a run of rows sorted by rank, step (start order kept inside, as groupby keeps it)
    order = np.lexsort((step_a, rank_a))
    bounds = np.flatnonzero((np.diff(rank_a[order]) != 0) | (np.diff(step_a[order]) != 0)) + 1
    rows = []
    for part in np.split(order, bounds):
        ps, pe = s_all[part], e_all[part]
        pc, pm = comp_a[part], comm_a[part]
        c_iv, m_iv = union(ps[pc], pe[pc]), union(ps[pm], pe[pm])
        m, ov = length(*m_iv), length(*intersection(c_iv, m_iv))
        s, e = float(ps.min()), float(pe.max())
        rows.append({"rank": int(rank_a[part[0]]), "step": int(step_a[part[0]]), "start_us": s, "span_us": e - s,
                     "compute_us": length(*c_iv), "comm_us": m, "overlap_us": ov, "exposed_comm_us": m - ov})
    return pd.DataFrame(rows)


def balancedness(ranks: list[dict[str, Any]]) -> float | None:
    """Mean over max of per-rank MoE compute (EPLB's balancedness); None without MoE compute."""
    moe = np.array([r["moe_compute_us"] for r in ranks], dtype=float)
    if not len(moe) or moe.max() <= 0:
        return None
    return float(moe.mean() / moe.max())
