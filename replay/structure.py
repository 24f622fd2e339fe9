"""Structure recovery: which layer, micro-batch and stage each GPU event belongs to.

In order of trust: tracegen's own args; profiler annotations (CPU ranges such as `attn(F)` in
DeepSeek's train.json, inherited by the kernels launched inside them through the correlation id);
else the repeating all-to-all sequence (the k-th dispatch of M micro-batches is layer k // M)."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from .events import text

DEFAULT_ANNOTATION = r"^(?:L(?P<layer>\d+)[:/])?(?P<stage>[A-Za-z][\w\-]*)\((?P<pass>[A-Za-z0-9]+)\)$"
TRAINING_PASSES = ("B", "W")        # DualPipe's backward chunks (input and weight gradients): a training trace
PASS_MICROBATCH = {"F": 0, **{p: 1 for p in TRAINING_PASSES}}     # forward chunk 0, backward chunk 1


def recover(events: pd.DataFrame, annotation_regex: str = DEFAULT_ANNOTATION,
            microbatches: int | None = None) -> tuple[pd.DataFrame, str]:
    """Fill layer/microbatch/stage for GPU rows; returns the table and how it was recovered."""
    gpu = events["device"] == "gpu"
    if (events.loc[gpu, "layer"] >= 0).any():
        return events, "args"
    out, ok = _from_annotations(events, annotation_regex)
    if ok:
        return out, "annotations"
    out, ok = _from_comm_sequence(events, microbatches)
    return (out, "comm-sequence") if ok else (events, "none")


def _from_annotations(events: pd.DataFrame, regex: str) -> tuple[pd.DataFrame, bool]:
    rx = re.compile(regex)
    ann = events[(events["cat"] == "user_annotation") & (events["device"] == "cpu")]
    if ann.empty:
        return events, False
    names = ann["name"].astype(str)
    m = names.str.extract(rx)
    if "stage" not in m or m["stage"].isna().all():
        return events, False
    ann = ann.assign(a_stage=m["stage"], a_pass=m.get("pass"), a_layer_given=m.get("layer"))
    ann = ann.dropna(subset=["a_stage"]).sort_values(["rank", "start_us"])
    layers = np.empty(len(ann), dtype=np.int32)
    labels = (ann["a_stage"] + "(" + ann["a_pass"].fillna("") + ")").to_numpy()
    ranks = ann["rank"].to_numpy()
    given = ann["a_layer_given"]
    if given.notna().all():              # "L3:ATTN(0)": the layer is in the name
        layers[:] = given.astype(int).to_numpy()
    else:
        for r in np.unique(ranks):       # a new layer each time the first annotation of the cycle recurs
            idx = np.flatnonzero(ranks == r)
            first = labels[idx[0]]
            layers[idx] = np.cumsum(labels[idx] == first) - 1
    passes = ann["a_pass"].fillna("").to_numpy()
    order = {p: (int(p) if p.isdigit() else PASS_MICROBATCH.get(p, i)) for i, p in enumerate(dict.fromkeys(passes))}
    ann = ann.assign(a_layer=layers, a_mb=[order[p] for p in passes], a_label=labels)
    # each launch call takes the innermost annotation around it on its rank
    launches = events[events["launch"] & (events["correlation"] >= 0)]
    hits = []
    for r, a in ann.groupby("rank", sort=False):
        lr = launches[launches["rank"] == r]
        if lr.empty:
            continue
        st, en = a["start_us"].to_numpy(), (a["start_us"] + a["dur_us"]).to_numpy()
        t = lr["start_us"].to_numpy()
        j = np.searchsorted(st, t, side="right") - 1
        inside = (j >= 0) & (t <= en[np.clip(j, 0, None)])
        hits.append(pd.DataFrame({"rank": r, "correlation": lr["correlation"].to_numpy()[inside],
                                  "layer": a["a_layer"].to_numpy()[j[inside]],
                                  "microbatch": a["a_mb"].to_numpy()[j[inside]],
                                  "stage": a["a_label"].to_numpy()[j[inside]]}))
    if not hits:
        return events, False
    key = pd.concat(hits).drop_duplicates(["rank", "correlation"])
    out = _assign(events, key)
    return out, bool((out.loc[out["device"] == "gpu", "layer"] >= 0).any())


def _assign(events: pd.DataFrame, key: pd.DataFrame) -> pd.DataFrame:
    """Copy layer/microbatch/stage onto GPU rows matched by (rank, correlation)."""
    gpu = (events["device"] == "gpu") & (events["correlation"] >= 0)
    left = events.loc[gpu, ["rank", "correlation"]].reset_index()
    merged = left.merge(key, on=["rank", "correlation"], how="left").set_index("index")
    out = events.copy()
    found = merged["layer"].notna()
    idx = merged.index[found]
    out.loc[idx, "layer"] = merged.loc[found, "layer"].astype(np.int32).to_numpy()
    out.loc[idx, "microbatch"] = merged.loc[found, "microbatch"].astype(np.int32).to_numpy()
    stage = text(out["stage"])
    stage[out.index.get_indexer(idx)] = text(merged.loc[found, "stage"])
    out["stage"] = pd.Categorical(stage)
    return out


def _from_comm_sequence(events: pd.DataFrame, microbatches: int | None) -> tuple[pd.DataFrame, bool]:
    sub = pd.Series(text(events["subclass"]), index=events.index)
    is_disp = (events["device"] == "gpu") & sub.str.contains("dispatch")
    is_comb = (events["device"] == "gpu") & sub.str.contains("combine")
    if not is_disp.any():
        return events, False
    out = events.copy()
    layer = out["layer"].to_numpy().copy()
    mb = out["microbatch"].to_numpy().copy()
    stage = text(out["stage"])
    for r in out["rank"].unique():
        on_rank = (out["rank"] == r).to_numpy()
        d = out.index[is_disp.to_numpy() & on_rank]
        c = out.index[is_comb.to_numpy() & on_rank]
        d = d[np.argsort(out.loc[d, "start_us"].to_numpy(), kind="stable")]
        c = c[np.argsort(out.loc[c, "start_us"].to_numpy(), kind="stable")]
        m = microbatches or _guess_microbatches(out.loc[d, "start_us"].to_numpy(), out.loc[c, "start_us"].to_numpy())
        for seq, label in ((d, "DISPATCH"), (c, "COMBINE")):
            pos = out.index.get_indexer(seq)
            k = np.arange(len(seq))
            layer[pos], mb[pos], stage[pos] = k // m, k % m, label
        # compute between one layer's first dispatch and the next layer's belongs to that layer
        firsts = out.loc[d, "start_us"].to_numpy()[::m]
        comp = on_rank & (out["klass"] == "compute").to_numpy()
        pos = np.flatnonzero(comp)
        layer[pos] = np.maximum(np.searchsorted(firsts, out["start_us"].to_numpy()[pos], side="right") - 1, 0)
    out["layer"] = layer.astype(np.int32)
    out["microbatch"] = mb.astype(np.int32)
    out["stage"] = pd.Categorical(stage)
    return out, True


def _guess_microbatches(dispatch_starts: np.ndarray, combine_starts: np.ndarray) -> int:
    """Dispatches issued back to back before a combine: 2 with two-batch overlap, 1 without."""
    if len(dispatch_starts) < 2 or not len(combine_starts):
        return 1
    between = np.searchsorted(combine_starts, dispatch_starts[1:]) - np.searchsorted(combine_starts, dispatch_starts[:-1])
    runs, run = [], 1
    for b in between:
        if b == 0:
            run += 1
        else:
            runs.append(run)
            run = 1
    runs.append(run)
    return max(1, int(np.median(runs)))
