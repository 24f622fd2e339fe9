"""Profiler steps: which step (one engine iteration) every event belongs to, so that per-layer rows
never straddle steps and the report can speak of "step 2, layer 5".

A step is a CPU range named `ProfilerStep#N` (torch.profiler with a schedule, or prof.step()); without
those, a step-like annotation from data/annotations.toml [steps] (forward_step, decode_step,
execute_model, run_batch, ...: the first pattern whose ranges never overlap); or a user annotation
matching --step-regex (its first group, or its order, is the step number).
Without either, the repetition of the layers marks them: a GPU kernel of the first layer after one
of the last layer starts a new step (numbered 0, 1, ... per rank; GPU work only, and only with
three layers or more, where two-batch overlap never runs the first layer after the last).
CPU events take the step whose range holds their start; GPU events take their launch's step
(through the correlation id: a kernel still running after its step's CPU range ended belongs to
the step that launched it), else the step whose range holds their start. -1: no step."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from tracegen.base.errors import UserError

from .events import text

from .stepnames import DEFAULT_STEP, phase_patterns, step_patterns  # noqa: E402,F401 (re-exported: steps.DEFAULT_STEP)


def step_spans(events: pd.DataFrame, regex: str = DEFAULT_STEP) -> pd.DataFrame:
    """One row per (rank, step): start_us, end_us, from the CPU ranges that name a step."""
    try:
        rx = re.compile(regex)
    except re.error as exc:
        raise UserError(f"--step-regex: bad regex {regex!r} ({exc})") from None
    cpu = events[events["device"] == "cpu"]
    names = pd.Series(cpu["name"].cat.categories if hasattr(cpu["name"], "cat") else cpu["name"].unique())
    hit = names[names.astype(str).str.match(rx)]
    if hit.empty:
        return pd.DataFrame(columns=["rank", "step", "start_us", "end_us"])
    sel = cpu[cpu["name"].isin(set(hit))]
    nums = text(sel["name"])
    num = []
    for i, n in enumerate(nums):
        m = rx.match(str(n))
        g = m.group(1) if m and m.groups() else None
        num.append(int(g) if g is not None and g.isdigit() else -1)
    out = pd.DataFrame({"rank": sel["rank"].to_numpy(), "step": num, "start_us": sel["start_us"].to_numpy(),
                        "end_us": (sel["start_us"] + sel["dur_us"]).to_numpy()})
    out = out.sort_values(["rank", "start_us"], kind="stable").reset_index(drop=True)
    unnumbered = out["step"] < 0
    if unnumbered.any():                 # a step annotation without a number: count them per rank
        out.loc[unnumbered, "step"] = out[unnumbered].groupby("rank").cumcount()
    dup = out[out.duplicated(["rank", "step"], keep=False)]
    if len(dup):
        r, n = int(dup["rank"].iloc[0]), int(dup["step"].iloc[0])
        raise UserError(f"step ranges: rank {r} has {int(((dup['rank'] == r) & (dup['step'] == n)).sum())} ranges "
                        f"numbered {n} by {regex!r}; a step regex must match one range per step (see --step-regex)")
    return out


def _sequential(spans: pd.DataFrame) -> bool:
    """Whether a rank's step ranges follow one another (steps never overlap or nest)."""
    for _, sp in spans.groupby("rank"):
        s0, s1 = sp["start_us"].to_numpy(), sp["end_us"].to_numpy()
        if len(s0) > 1 and np.any(s0[1:] < s1[:-1]):
            return False
    return True


def find_spans(events: pd.DataFrame, regex: str = DEFAULT_STEP) -> tuple[pd.DataFrame, str]:
    """The step spans and the regex that found them: --step-regex, or by default ProfilerStep#N and
    then the step-like annotations of data/annotations.toml, the first whose ranges are sequential."""
    spans = step_spans(events, regex)
    if len(spans) or regex != DEFAULT_STEP:
        return spans, regex
    for rx in step_patterns():
        try:
            got = step_spans(events, rx)
        except UserError:               # one number on two ranges: not steps
            continue
        if len(got) and _sequential(got):
            return got, rx
    return spans, regex


def assign(events: pd.DataFrame, regex: str = DEFAULT_STEP) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The events with a `step` column, and the step spans found (from ranges, else from the layers)."""
    spans, _ = find_spans(events, regex)
    if spans.empty:
        return _repetition(events)
    return with_spans(events, spans), spans


def with_spans(events: pd.DataFrame, spans: pd.DataFrame) -> pd.DataFrame:
    """The events with a `step` column from step ranges (-1 everywhere without any)."""
    step = np.full(len(events), -1, dtype=np.int32)
    if spans.empty:
        return events.assign(step=step)
    ranks = events["rank"].to_numpy()
    start = events["start_us"].to_numpy()
    for r, sp in spans.groupby("rank", sort=False):
        idx = np.flatnonzero(ranks == r)
        s0, s1, n = sp["start_us"].to_numpy(), sp["end_us"].to_numpy(), sp["step"].to_numpy()
        j = np.searchsorted(s0, start[idx], side="right") - 1
        ok = (j >= 0) & (start[idx] < s1[np.clip(j, 0, None)])
        step[idx[ok]] = n[j[ok]]
    out = events.assign(step=step)
    # GPU work inherits its launch's step
    launch = out[out["launch"] & (out["correlation"] >= 0) & (out["step"] >= 0)] if "launch" in out else out[:0]
    if len(launch):
        key = pd.Series(launch["step"].to_numpy(),
                        index=pd.MultiIndex.from_arrays([launch["rank"].to_numpy(), launch["correlation"].to_numpy()]))
        key = key[~key.index.duplicated()]
        gpu = np.flatnonzero((out["device"] == "gpu").to_numpy() & (out["correlation"].to_numpy() >= 0))
        got = key.reindex(pd.MultiIndex.from_arrays([ranks[gpu], out["correlation"].to_numpy()[gpu]])).to_numpy()
        have = np.isfinite(got)
        col = out["step"].to_numpy().copy()
        col[gpu[have]] = got[have].astype(np.int32)
        out["step"] = col
    return out


def with_gpu_spans(events: pd.DataFrame, spans: pd.DataFrame) -> pd.DataFrame:
    """The events with a `step` column from steps found on the GPU timeline: GPU work by its own start
    (a step runs from its first GPU work to the next step's first), a launch call by the kernel it launched, and
    any other CPU span by the next launch at or after its start (the CPU runs ahead of the GPU: a
    step's first launches happen while the previous step's kernels still run)."""
    step = np.full(len(events), -1, dtype=np.int32)
    ranks, start = events["rank"].to_numpy(), events["start_us"].to_numpy()
    gpu = (events["device"] == "gpu").to_numpy()
    for r, sp in spans.sort_values(["rank", "start_us"]).groupby("rank", sort=False):
        s0 = np.concatenate([[-np.inf], sp["start_us"].to_numpy()[1:]])      # a step from its first GPU work on
        idx = np.flatnonzero(gpu & (ranks == r))
        j = np.searchsorted(s0, start[idx], side="right") - 1
        step[idx] = sp["step"].to_numpy()[np.clip(j, 0, None)]
    corr = events["correlation"].to_numpy()
    by_corr = pd.Series(step[gpu & (corr >= 0)], index=pd.MultiIndex.from_arrays([ranks[gpu & (corr >= 0)],
                                                                                     corr[gpu & (corr >= 0)]]))
    by_corr = by_corr[~by_corr.index.duplicated()]
    launch = np.flatnonzero(~gpu & events["launch"].to_numpy() & (corr >= 0))
    got = by_corr.reindex(pd.MultiIndex.from_arrays([ranks[launch], corr[launch]])).to_numpy()
    have = np.isfinite(got)
    step[launch[have]] = got[have].astype(np.int32)
    for r in np.unique(ranks[~gpu]):
        lr = launch[have & (ranks[launch] == r)]
        if not len(lr):
            continue
        order = np.argsort(start[lr], kind="stable")
        ls, lstep = start[lr][order], step[lr][order]
        other = np.flatnonzero(~gpu & (ranks == r) & (step < 0))
        j = np.searchsorted(ls, start[other], side="left")
        ok = j < len(ls)
        step[other[ok]] = lstep[j[ok]]
    return events.assign(step=step)


def from_repetition(events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Steps of GPU work from the layer sequence, for traces without step ranges (see the docstring)."""
    return _repetition(events)


def _repetition(events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Steps of GPU work from the layer sequence (see the module's docstring); none if unclear."""
    step = np.full(len(events), -1, dtype=np.int32)
    rows = []
    gpu = (events["device"] == "gpu").to_numpy()
    layer, ranks, start = events["layer"].to_numpy(), events["rank"].to_numpy(), events["start_us"].to_numpy()
    end = start + events["dur_us"].to_numpy()
    for r in np.unique(ranks[gpu]):
        idx = np.flatnonzero(gpu & (ranks == r))
        idx = idx[np.argsort(start[idx], kind="stable")]
        known = idx[layer[idx] >= 0]
        if not len(known):
            continue
        lo, hi = layer[known].min(), layer[known].max()
        if hi < lo + 2:
            continue
        lk = layer[known]
        last_hi = np.maximum.accumulate(np.where(lk == hi, np.arange(len(lk)), -1))
        last_lo = np.maximum.accumulate(np.where(lk == lo, np.arange(len(lk)), -1))
        prev_hi = np.concatenate([[-1], last_hi[:-1]])
        prev_lo = np.concatenate([[-1], last_lo[:-1]])
        new = (lk == lo) & (prev_hi > prev_lo)      # the first layer again, after the last one
        n = np.cumsum(new)
        # every GPU event of the rank takes the step of the last known-layer event before it
        pos = np.searchsorted(start[known], start[idx], side="right") - 1
        step[idx] = np.where(pos >= 0, n[np.clip(pos, 0, None)], 0)
        for k in range(int(n.max()) + 1):
            sel = idx[step[idx] == k]
            if not len(sel):      # a step no event fell in (events at one timestamp): no span to give
                continue
            rows.append({"rank": int(r), "step": k, "start_us": float(start[sel].min()), "end_us": float(end[sel].max())})
    spans = pd.DataFrame(rows, columns=["rank", "step", "start_us", "end_us"])
    if spans.groupby("rank").size().max() <= 1 if len(spans) else True:   # one step: nothing was told apart
        return events.assign(step=np.full(len(events), -1, dtype=np.int32)), spans.iloc[0:0]
    return events.assign(step=step), spans


GAP_STEP_US = 1000.0     # steps from the timeline alone: the GPU idle at least this long between them,
GAP_STEP_RATIO = 3.0     # this many times longer than any other idle gap of the rank,
GAP_STEP_KERNELS = 0.05  # and the steps' kernel counts within this share of each other (the same work)


def gap_spans(events: pd.DataFrame) -> pd.DataFrame:
    """Steps of a trace with no step ranges, from its GPU timeline: the largest GPU-idle gaps of each
    rank split it into steps where they stand out (GAP_STEP_US, GAP_STEP_RATIO) and the parts launch
    the same number of kernels (GAP_STEP_KERNELS); none where that is not clear. A step runs from the
    previous step's last GPU work (so the launches in the gap belong to it) to its own last."""
    g = events[(events["device"] == "gpu") & events["klass"].isin(("compute", "comm", "memory"))]
    rows = []
    for r, df in g.groupby("rank", sort=True):
        s = df["start_us"].to_numpy()
        order = np.argsort(s, kind="stable")
        s, e = s[order], (df["start_us"] + df["dur_us"]).to_numpy()[order]
        run = np.maximum.accumulate(e)
        gap = s[1:] - run[:-1]                     # idle before kernel i+1
        if len(gap) < 4:
            continue
        by = np.argsort(gap)[::-1]
        for k in range(1, min(16, len(gap) // 2)):
            top, rest = gap[by[:k]], gap[by[k]]
            if top.min() < GAP_STEP_US or top.min() < GAP_STEP_RATIO * max(rest, 1e-9):
                continue
            cut = np.sort(by[:k]) + 1               # first kernel of each new step
            counts = np.diff(np.concatenate([[0], cut, [len(s)]]))
            if counts.min() < (1 - GAP_STEP_KERNELS) * counts.max():
                continue
            starts = np.concatenate([[s[0]], s[cut]])
            ends = np.concatenate([run[cut - 1], [run[-1]]])
            rows += [{"rank": int(r), "step": i, "start_us": float(a), "end_us": float(b)}
                     for i, (a, b) in enumerate(zip(starts, ends))]
            break
    return pd.DataFrame(rows, columns=["rank", "step", "start_us", "end_us"])     # per rank (peers.match copes
                                                                                    # with ranks that disagree)


def disagreements(spans: pd.DataFrame, ranks: list[int]) -> list[str]:
    """Warnings when the ranks' step lists differ (a rank without steps, different step numbers)."""
    if spans.empty:
        return []
    per = {int(r): tuple(sorted(g["step"].tolist())) for r, g in spans.groupby("rank")}
    out = []
    missing = [r for r in ranks if r not in per]
    if missing:
        out.append(f"rank(s) {', '.join(map(str, missing))} have no profiler steps while others do")
    if len(set(per.values())) > 1:
        desc = "; ".join(f"rank {r}: {len(v)} step(s) {v[0]}..{v[-1]}" for r, v in sorted(per.items()))
        out.append(f"ranks disagree on their profiler steps ({desc})")
    return out


PHASE_COUNTS = ("prefill_requests", "prefill_tokens", "decode_requests", "decode_tokens")


def step_phases(events: pd.DataFrame, file_phase: str | None = None) -> pd.DataFrame:
    """Per (rank, step) whose CPU ranges say what the iteration ran (data/annotations.toml [phases]):
    the request and token counts, and the phase - prefill, decode, mixed (both) or idle (neither).
    Where no range says it, `file_phase` (the files' profiled stage) is every step's phase, counts unknown."""
    cols = ["rank", "step", "phase", *PHASE_COUNTS]
    if "step" not in events:
        return pd.DataFrame(columns=cols)
    ranged = _ranged_phases(events, cols)
    if not ranged.empty or file_phase is None:
        return ranged
    step = events["step"].to_numpy()
    keys = np.unique(np.stack([events["rank"].to_numpy()[step >= 0], step[step >= 0]], axis=1), axis=0)
    return pd.DataFrame([{"rank": int(r), "step": int(s), "phase": file_phase, **dict.fromkeys(PHASE_COUNTS)}
                         for r, s in keys], columns=cols, dtype=object)


def _ranged_phases(events: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """step_phases from the step ranges' names alone."""
    mask = (events["device"] == "cpu").to_numpy() & (events["step"] >= 0).to_numpy()
    names = events["name"][mask]            # one column: a large trace's CPU rows are not copied
    rxs = [re.compile(p) for p in phase_patterns()]
    counts: dict[str, dict[str, int | None]] = {}
    for name in _used_names(names):
        m = next((m for m in (rx.fullmatch(name) for rx in rxs) if m), None)
        if m:
            counts[name] = {k: int(v) if v else None for k, v in m.groupdict().items() if k in PHASE_COUNTS}
    if not counts:
        return pd.DataFrame(columns=cols)
    hit = events.loc[mask & events["name"].isin(set(counts)).to_numpy(), ["rank", "step", "start_us", "name"]]
    hit = hit.sort_values(["rank", "step", "start_us"], kind="stable")
    hit = hit.drop_duplicates(["rank", "step"])          # a step's first such range says what it ran
    rows = []
    for rank, step, name in zip(hit["rank"], hit["step"], hit["name"].astype(str)):
        c = {k: counts[name].get(k) for k in PHASE_COUNTS}
        pre, dec = (c["prefill_requests"] or 0) > 0, (c["decode_requests"] or 0) > 0
        phase = "mixed" if pre and dec else "prefill" if pre else "decode" if dec else "idle"
        rows.append({"rank": int(rank), "step": int(step), "phase": phase, **c})
    return pd.DataFrame(rows, columns=cols, dtype=object)     # counts stay ints or None (not NaN floats)


def _used_names(col: pd.Series) -> list[str]:
    """The distinct names in a column, read off a categorical's used categories (not one string per row)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        codes = np.unique(col.cat.codes.to_numpy())
        return [str(x) for x in np.asarray(col.cat.categories, dtype=object)[codes[codes >= 0]]]
    return [str(x) for x in col.unique()]


def with_phases(steps: pd.DataFrame, phases: pd.DataFrame) -> pd.DataFrame:
    """The steps table with each step's phase and counts where its ranges gave them (None elsewhere);
    unchanged when no step's did."""
    if phases.empty or steps.empty:
        return steps
    got = {(r, s): x for r, s, x in zip(phases["rank"], phases["step"], phases.to_dict(orient="records"))}
    out = steps.copy()
    for col in ("phase", *PHASE_COUNTS):
        out[col] = pd.Series([got.get((r, s), {}).get(col) for r, s in zip(out["rank"], out["step"])],
                             index=out.index, dtype=object)
    return out
