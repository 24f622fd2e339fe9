"""Structure recovery: which layer, micro-batch and stage each GPU event belongs to.

In order of trust: tracegen's own args; replay's own annotations (`L3:ATTN(0)`, and `attn(F)` in
DeepSeek's train.json; --annotation-regex replaces them), inherited by the kernels launched inside
them through the correlation id; the annotation styles of data/annotations.toml (`layer0/mb1/
DISPATCH`, `mb0_attn`, SGLang's operations ranges, nn.Module ranges, ...); else the repeating
all-to-all sequence (the k-th dispatch of M micro-batches is layer k // M), else the repeating
sequence of compute kernels (a layer is the period of the kernel names). Layers recovered by
counting restart at every step (the `step` column, when the trace has step ranges): a layer is
never numbered across steps. Where the result is not consistent (steps with different layer
counts, layers with no compute) the layers are dropped and `recover` says why: rank-level figures
only, never made-up layers."""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np
import pandas as pd

from .events import category_text, text
from .stagerules import stage_of

DEFAULT_ANNOTATION = r"^(?:L(?P<layer>\d+)[:/])?(?P<stage>[A-Za-z][\w\-]*)\((?P<pass>[A-Za-z0-9]+)\)$"
TRAINING_PASSES = ("B", "W")        # DualPipe's backward chunks (input and weight gradients): a training trace
PASS_MICROBATCH = {"F": 0, **{p: 1 for p in TRAINING_PASSES}}     # forward chunk 0, backward chunk 1
GEMM_SUBCLASSES = ["gemm", "grouped_gemm"]    # taxonomy.toml's GEMM kernels (one symbol in _gemms_as_one)
PERIOD_SAMPLE, PERIOD_SAMPLE_SLACK = 4096, 0.05   # the period search's first look (see _period_layers)
PERIOD_MATCH = 0.9        # kernel names repeating with a period this often (share of positions) make layers
MIN_PERIOD_LAYERS = 2     # a period must repeat at least this often in a step to be layers
MIN_PERIOD_UNSTEPPED = 3  # ... and this often where the trace has no steps: a whole model run twice (two
                          # iterations of a benchmark) repeats twice too, so two repeats are not layers
EMPTY_LAYER_SHARE = 0.1   # more than this share of recovered layers with no compute: not confident


@dataclass(frozen=True)
class Style:
    name: str
    ranges: tuple[re.Pattern[str], ...]
    cats: tuple[str, ...]
    layer_starts: str | None
    mb_map: dict[str, int]
    stage_map: dict[str, str]


@lru_cache(maxsize=1)
def styles() -> tuple[Style, ...]:
    """The annotation styles of data/annotations.toml, in order."""
    raw = tomllib.loads((resources.files("replay") / "data" / "annotations.toml").read_text("utf-8"))
    return tuple(Style(s["name"], tuple(re.compile(r) for r in s["ranges"]),
                       tuple(s.get("cats", ["user_annotation"])), s.get("layer_starts"),
                       {str(k): int(v) for k, v in s.get("mb_map", {}).items()},
                       {str(k).lower(): str(v) for k, v in s.get("stage_map", {}).items()})
                 for s in raw.get("style", []))


def recover(events: pd.DataFrame, annotation_regex: str = DEFAULT_ANNOTATION,
            microbatches: int | None = None) -> tuple[pd.DataFrame, str]:
    """Fill layer/microbatch/stage for GPU rows; returns the table and how it was recovered (with
    ', not confident: ...' where layers were found but dropped)."""
    gpu = events["device"] == "gpu"
    if (events.loc[gpu, "layer"] >= 0).any():
        return events, "args"
    out, ok = _from_annotations(events, annotation_regex)
    if ok:
        return _checked(events, out, "annotations")
    for style in styles():
        out, ok = _from_style(events, style)
        if ok:
            return _checked(events, out, f"annotations ({style.name})")
    out, ok = _from_comm_sequence(events, microbatches)
    if ok:
        return _checked(events, out, "comm-sequence")
    out, ok = _from_period(events)
    if ok:
        return _checked(events, out, "kernel-period")
    return events, ("none (no annotation style names layers and no block of compute kernels repeats name for "
                    "name: rank-level figures only)")


def _checked(before: pd.DataFrame, out: pd.DataFrame, how: str) -> tuple[pd.DataFrame, str]:
    """The recovered table if its layers are consistent, else the table without them and why."""
    why = _not_confident(out) or (_twice_unstepped(out) or _two_threads(out) if how == "kernel-period" else "")
    if not why:
        return out, how
    return before, f"none ({how} found layers, not kept: {why})"


def _not_confident(events: pd.DataFrame) -> str:
    g = events[(events["device"] == "gpu") & (events["layer"] >= 0)]
    if g.empty:
        return ""
    step = g["step"].to_numpy() if "step" in g else np.full(len(g), -1)
    per = pd.DataFrame({"rank": g["rank"].to_numpy(), "step": step, "layer": g["layer"].to_numpy(),
                        "compute": (g["klass"] == "compute").to_numpy()})
    counts = per.groupby(["rank", "step"])["layer"].nunique()
    stepped = counts[counts.index.get_level_values("step") >= 0]
    uneven = stepped.groupby(level="rank").nunique()          # per rank: its steps run the same layers
    if (uneven > 1).any():
        r = int(uneven[uneven > 1].index[0])
        return (f"rank {r}'s steps hold different numbers of layers "
                f"({', '.join(map(str, sorted(set(stepped.loc[r]))))})")
    layer_compute = per.groupby(["rank", "step", "layer"])["compute"].any()
    empty = float((~layer_compute).mean())
    if empty > EMPTY_LAYER_SHARE:
        return f"{empty:.0%} of the layers have no compute kernel"
    return ""


def _twice_unstepped(events: pd.DataFrame) -> str:
    """Why layers found from the kernel sequence alone are not layers: on a rank without steps, the
    sequence repeats fewer than MIN_PERIOD_UNSTEPPED times (two layers or two whole steps?)."""
    g = events[(events["device"] == "gpu") & (events["layer"] >= 0)]
    step = g["step"].to_numpy() if "step" in g else np.full(len(g), -1)
    g = g[step < 0]
    if g.empty:
        return ""
    n = g.groupby("rank")["layer"].nunique()
    if n.min() >= MIN_PERIOD_UNSTEPPED:
        return ""
    return (f"rank {int(n.idxmin())}'s kernel sequence repeats only {int(n.min())} times and the trace has "
            "no steps: two layers or two steps cannot be told apart")


def _two_threads(events: pd.DataFrame) -> str:
    """Why layers found from the kernel sequence alone are not layers: every repeat holds compute
    kernels launched by two or more threads. A model's layer is launched by one thread; a repeat that
    spans two is a training step's forward and backward (the autograd engine launches from its own)."""
    if "launch" not in events:
        return ""
    g = events[(events["device"] == "gpu").to_numpy() & (events["layer"] >= 0).to_numpy()
               & (events["klass"] == "compute").to_numpy() & (events["correlation"] >= 0).to_numpy()]
    cpu = events[(events["device"] == "cpu").to_numpy() & events["launch"].to_numpy(dtype=bool)
                 & (events["correlation"] >= 0).to_numpy()]
    if g.empty or cpu.empty:
        return ""
    tid = pd.DataFrame({"rank": cpu["rank"].to_numpy(), "correlation": cpu["correlation"].to_numpy(),
                        "tid": cpu["tid"].cat.codes.to_numpy() if hasattr(cpu["tid"], "cat") else
                        pd.factorize(cpu["tid"])[0]}).drop_duplicates(["rank", "correlation"])
    k = pd.DataFrame({"rank": g["rank"].to_numpy(), "step": g["step"].to_numpy() if "step" in g else -1,
                      "layer": g["layer"].to_numpy(), "correlation": g["correlation"].to_numpy()})
    k = k.merge(tid, on=["rank", "correlation"], how="inner")
    if k.empty:
        return ""
    threads = k.groupby(["rank", "step", "layer"])["tid"].nunique()
    if threads.min() < 2:
        return ""
    return (f"each repeat of the kernel sequence holds compute kernels launched by {int(threads.min())} or more "
            "threads (a training step's forward and backward?): steps, not layers")


def _from_annotations(events: pd.DataFrame, regex: str) -> tuple[pd.DataFrame, bool]:
    rx = re.compile(regex)
    ann = events[(events["cat"] == "user_annotation") & (events["device"] == "cpu")]
    if ann.empty:
        return events, False
    m = _extract(ann["name"], rx)
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
    else:                                # a new layer each time the first annotation of the cycle recurs,
        steps = ann["step"].to_numpy() if "step" in ann else np.full(len(ann), -1)     # counted per step
        for r in np.unique(ranks):
            for s_ in np.unique(steps[ranks == r]):
                idx = np.flatnonzero((ranks == r) & (steps == s_))
                first = labels[idx[0]]
                layers[idx] = np.cumsum(labels[idx] == first) - 1
    passes = ann["a_pass"].fillna("").to_numpy()
    order = {p: (int(p) if p.isdigit() else PASS_MICROBATCH.get(p, i)) for i, p in enumerate(dict.fromkeys(passes))}
    ann = ann.assign(a_layer=layers, a_mb=[order[p] for p in passes], a_label=labels)
    # each launch call takes the innermost annotation around it on its rank
    launches = events.loc[events["launch"] & (events["correlation"] >= 0), ["rank", "start_us", "correlation"]]
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


def _extract(col: pd.Series, rx: re.Pattern[str]) -> pd.DataFrame:
    """col.astype(str).str.extract(rx), the regex run once per distinct name of a categorical column
    (a trace repeats a few hundred annotation names thousands of times)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        codes = col.cat.codes.to_numpy()
        if not (codes < 0).any():
            used = np.unique(codes)
            per_name = pd.Series(category_text(col)[used]).str.extract(rx)
            at = np.zeros(len(col.cat.categories), dtype=np.int64)
            at[used] = np.arange(len(used))
            return per_name.iloc[at[codes]].set_axis(col.index)
    return col.astype(str).str.extract(rx)


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
    out["stage"] = _replaced(out["stage"], out.index.get_indexer(idx), text(merged.loc[found, "stage"]))
    return out


def _replaced(col: pd.Series, pos: np.ndarray, labels: np.ndarray) -> pd.Categorical:
    """A categorical column as text with the rows at `pos` given `labels`, as pd.Categorical of that
    text would build it (the strings used, sorted; a missing value reads "nan" as text() has it),
    worked out on the few categories and labels instead of factorizing every row's string."""
    cats = category_text(col)
    codes = col.cat.codes.to_numpy().astype(np.int64)
    codes[codes < 0] = len(cats) - 1
    keep = np.ones(len(codes), dtype=bool)
    keep[pos] = False
    used = np.zeros(len(cats), dtype=bool)
    used[codes[keep]] = True
    lab_codes, lab_uniq = pd.factorize(np.asarray(labels, dtype=object))    # a few distinct labels
    lab_uniq = [str(x) for x in lab_uniq]
    final = sorted(set(cats[used].tolist()) | set(lab_uniq))
    where = {t: i for i, t in enumerate(final)}
    out = np.fromiter((where.get(t, -1) for t in cats), dtype=np.int64, count=len(cats))[codes]
    out[pos] = np.asarray([where[t] for t in lab_uniq], dtype=np.int64)[lab_codes]
    return pd.Categorical.from_codes(out, categories=final, validate=False)


def _from_style(events: pd.DataFrame, style: Style) -> tuple[pd.DataFrame, bool]:
    """Layer, micro-batch and stage of each launch from a style's ranges: each field from the innermost
    range around the launch that gives it; without a layer group, layers counted from layer_starts."""
    cpu = events[(events["device"] == "cpu") & events["cat"].isin(style.cats)]
    if cpu.empty:
        return events, False
    names = pd.Series(text(cpu["name"]), index=cpu.index)
    fields: dict[str, pd.Series] = {}
    for rx in style.ranges:
        m = names.str.extract(rx.pattern if not rx.flags & re.I else f"(?i){rx.pattern}")
        full = names.str.fullmatch(rx.pattern, case=not bool(rx.flags & re.I))
        for f in ("layer", "mb", "stage"):
            if f in m:
                v = m[f].where(full)
                fields[f] = v if f not in fields else fields[f].fillna(v)
    if not fields or all(v.isna().all() for v in fields.values()):
        return events, False
    launches = events[events["launch"] & (events["correlation"] >= 0)]
    if launches.empty:
        return events, False
    cpu_step = cpu["step"].to_numpy() if "step" in cpu else np.full(len(cpu), -1)
    parts = []
    for r, lr in launches.groupby("rank", sort=False):
        t = lr["start_us"].to_numpy()
        mine = (cpu["rank"] == r).to_numpy()
        got = {f: _innermost_value(cpu[mine & v.notna().to_numpy()], v[mine & v.notna().to_numpy()].to_numpy(), t)
               for f, v in fields.items()}
        n = len(t)
        mb = np.array([_mb(x, style) for x in got.get("mb", np.full(n, None, dtype=object))], dtype=np.int64)
        stage = np.array([_stage(x, style) for x in got.get("stage", np.full(n, None, dtype=object))], dtype=object)
        if "layer" in got:
            layer = np.array([int(x) if x is not None else -1 for x in got["layer"]], dtype=np.int64)
        elif style.layer_starts and "stage" in fields:
            # a new layer at each range of the marker stage, per step and micro-batch
            st = fields["stage"]
            is_marker = (st.str.lower() == style.layer_starts.lower()).fillna(False).to_numpy() & mine
            m_start = cpu["start_us"].to_numpy()[is_marker]
            mb_of = np.full(len(m_start), -1, dtype=np.int64)        # no micro-batch field: -1, as the launches
            if "mb" in fields:
                v = fields["mb"]
                have = mine & v.notna().to_numpy()
                mb_of = np.array([_mb(x, style) for x in _innermost_value(cpu[have], v[have].to_numpy(), m_start)],
                                 dtype=np.int64)
            m_mb = mb_of
            step_l = lr["step"].to_numpy() if "step" in lr else np.full(n, -1)
            layer = _count_layers(t, step_l, mb, m_start, cpu_step[is_marker], m_mb)
        else:
            layer = np.full(n, -1, dtype=np.int64)
        labels = np.array([f"{s_}({m})" if s_ and m >= 0 else (s_ or "") for s_, m in zip(stage, mb)], dtype=object)
        ok = layer >= 0
        parts.append(pd.DataFrame({"rank": r, "correlation": lr["correlation"].to_numpy()[ok], "layer": layer[ok],
                                   "microbatch": np.where(mb[ok] >= 0, mb[ok], 0), "stage": labels[ok]}))
    key_df = pd.concat(parts) if parts else pd.DataFrame()
    if key_df.empty:
        return events, False
    out = _assign(events, key_df.drop_duplicates(["rank", "correlation"]))
    return out, bool((out.loc[out["device"] == "gpu", "layer"] >= 0).any())


def _innermost_value(rows: pd.DataFrame, values: np.ndarray, t: np.ndarray) -> np.ndarray:
    """For each time, the value of the innermost (latest-starting) range holding it (None: none)."""
    out = np.full(len(t), None, dtype=object)
    if rows.empty:
        return out
    st = rows["start_us"].to_numpy()
    order = np.argsort(st, kind="stable")
    st, en, vals = st[order], (st + rows["dur_us"].to_numpy())[order], values[order]
    j = np.searchsorted(st, t, side="right") - 1
    for i in np.flatnonzero(j >= 0):
        for k in range(j[i], max(j[i] - 64, -1), -1):
            if en[k] >= t[i]:
                out[i] = vals[k]
                break
    return out


def _mb(x: object, style: Style) -> int:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return -1
    s = str(x)
    return style.mb_map[s] if s in style.mb_map else (int(s) if s.isdigit() else -1)


def _stage(x: object, style: Style) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return ""
    s = str(x)
    return style.stage_map.get(s.lower()) or stage_of(s) or s


def _count_layers(t: np.ndarray, step: np.ndarray, mb: np.ndarray, m_start: np.ndarray, m_step: np.ndarray,
                  m_mb: np.ndarray) -> np.ndarray:
    """Layer of each launch (time t): how many marker ranges of its step and micro-batch began at or
    before it, less one (the first marker of a step begins layer 0; before it: no layer)."""
    out = np.full(len(t), -1, dtype=np.int64)
    for key in set(zip(step.tolist(), mb.tolist())):
        sel = (step == key[0]) & (mb == key[1])
        ms = np.sort(m_start[(m_step == key[0]) & (m_mb == key[1])])
        if len(ms):
            out[sel] = np.searchsorted(ms, t[sel], side="right") - 1
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
    steps = out["step"].to_numpy() if "step" in out else np.full(len(out), -1)
    for r in out["rank"].unique():
        for s_ in np.unique(steps[(out["rank"] == r).to_numpy()]):
            on = ((out["rank"] == r).to_numpy()) & (steps == s_)        # layers restart at every step
            d = out.index[is_disp.to_numpy() & on]
            c = out.index[is_comb.to_numpy() & on]
            if not len(d):
                continue
            d = d[np.argsort(out.loc[d, "start_us"].to_numpy(), kind="stable")]
            c = c[np.argsort(out.loc[c, "start_us"].to_numpy(), kind="stable")]
            m = microbatches or _guess_microbatches(out.loc[d, "start_us"].to_numpy(),
                                                    out.loc[c, "start_us"].to_numpy())
            for seq, label in ((d, "DISPATCH"), (c, "COMBINE")):
                pos = out.index.get_indexer(seq)
                k = np.arange(len(seq))
                layer[pos], mb[pos], stage[pos] = k // m, k % m, label
            # compute between one layer's first dispatch and the next layer's belongs to that layer
            firsts = out.loc[d, "start_us"].to_numpy()[::m]
            comp = on & (out["klass"] == "compute").to_numpy()
            pos = np.flatnonzero(comp)
            layer[pos] = np.maximum(np.searchsorted(firsts, out["start_us"].to_numpy()[pos], side="right") - 1, 0)
    out["layer"] = layer.astype(np.int32)
    out["microbatch"] = mb.astype(np.int32)
    out["stage"] = pd.Categorical(stage)
    return out, True


def _from_period(events: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """Layers from the repeating sequence of compute kernel names, per rank and step: the shortest
    period P (>= 2 kernels) at which at least PERIOD_MATCH of the names repeat, repeating at least
    MIN_PERIOD_LAYERS times. Micro-batches are not told apart (0)."""
    g = events[(events["device"] == "gpu") & (events["klass"] == "compute")]
    if len(g) < 2 * MIN_PERIOD_LAYERS:
        return events, False
    out = events.copy()
    layer = out["layer"].to_numpy().copy()
    ranks = g["rank"].to_numpy()
    steps = g["step"].to_numpy() if "step" in g else np.full(len(g), -1)
    order = np.lexsort((g["start_us"].to_numpy(), steps, ranks))     # per rank and step, in start order (stable)
    names = (g["name"].cat.codes.to_numpy() if hasattr(g["name"], "cat") else pd.factorize(g["name"])[0])[order]
    gemm = np.isin(text(g["subclass"]), GEMM_SUBCLASSES)[order] if "subclass" in g else None
    pos = out.index.get_indexer(g.index)[order]
    r_, s_ = ranks[order], steps[order]
    cut = np.flatnonzero((r_[1:] != r_[:-1]) | (s_[1:] != s_[:-1])) + 1
    found = False
    for a, b in zip(np.concatenate([[0], cut]), np.concatenate([cut, [len(order)]])):
        lay = _period_layers(names[a:b])
        if lay is None and gemm is not None:
            lay = _period_layers(_gemms_as_one(gemm[a:b], names[a:b]))
        if lay is None:
            continue
        found = True
        layer[pos[a:b]] = lay
    if not found:
        return events, False
    out["layer"] = layer.astype(np.int32)
    out["microbatch"] = np.where(layer >= 0, 0, out["microbatch"].to_numpy()).astype(np.int32)
    return out, True


def _gemms_as_one(gemm: np.ndarray, names: np.ndarray) -> np.ndarray:
    """The name codes with every GEMM kernel as one symbol: a GEMM library picks its kernel (tile, cluster,
    layout) from the shape, so the same op of two layers gets different kernel names where its rows
    differ - an MoE's per-expert GEMMs, whose rows are the tokens routed to each expert. Used only where
    the names themselves repeat with no period."""
    return np.where(gemm, -2, names)


def _period_layers(names: np.ndarray) -> np.ndarray | None:
    """Layer of each kernel from the shortest period of the name sequence (see _from_period): layers
    start where a block of P names first repeats exactly; kernels before it or after the last full
    block get none (a model's head and tail)."""
    n = len(names)
    # a long sequence with no short period would cost n operations per candidate period: each is first
    # judged on a fixed sample of positions, and only one within PERIOD_SAMPLE_SLACK of PERIOD_MATCH is
    # judged on all of them (the sample's error is < 0.01 at 4,096 positions: the same periods are found)
    sample = np.sort(np.random.default_rng(0).choice(n, PERIOD_SAMPLE, replace=False)) if n > 2 * PERIOD_SAMPLE else None
    for p in range(2, n // MIN_PERIOD_LAYERS + 1):
        if sample is not None:
            j = sample[:np.searchsorted(sample, n - p)]
            if np.mean(names[j + p] == names[j]) < PERIOD_MATCH - PERIOD_SAMPLE_SLACK:
                continue
        eq = names[p:] == names[:-p]              # eq[i]: the name p kernels on repeats the one at i
        if np.mean(eq) < PERIOD_MATCH:
            continue
        # the first block of p names repeated right after it: p consecutive repeats starting at i <= n - 2p
        run = np.concatenate([[0], np.cumsum(eq)])
        whole = np.flatnonzero(run[p:n - p + 1] - run[:n - 2 * p + 1] == p)
        if not len(whole):
            continue
        o = int(whole[0])
        if len(np.unique(names[o:o + p])) < 2:
            continue            # one kernel (or, GEMMs as one, one GEMM) repeated is no evidence of layers
        full = (n - o) // p
        if full < MIN_PERIOD_LAYERS:
            continue
        idx = np.arange(n)
        lay = (idx - o) // p
        return np.where((idx >= o) & (lay < full), lay, -1).astype(np.int64)
    return None


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
