"""What a simulated deployment delivered: latency percentiles (TTFT, TPOT, end to end, queueing),
throughput per node of each pool (over the whole run, and in its steady state: ramp-up and drain left
out, or none where the run has none), how busy each pool was and how much of its token capacity its
steps used, SLO attainment.

The steady window of a pool: from the first request finished (every pool has seen work) to the last
request entering the pool (its arrival; at a decode pool, its KV cache ready), after which the pool
drains; where every request entered at once (a capacity run of one pool), from the first to the last
step the pool began with work still waiting for it (its queue or a decode slot: it ran full). A pool
with neither has no steady state, and none is printed."""
from __future__ import annotations

import numpy as np

from .simulate import COLOCATED, DECODE, PD, PREFILL, Pool, Result

PCTS = (50, 90, 99)


def _pcts(x: np.ndarray) -> dict[str, float]:
    x = x[np.isfinite(x)]
    if not len(x):
        return {f"p{p}": float("nan") for p in PCTS} | {"mean": float("nan")}
    return {f"p{p}": float(np.percentile(x, p)) for p in PCTS} | {"mean": float(x.mean())}


def _pcts_ms(seconds: np.ndarray) -> dict[str, float]:
    return {k: 1e3 * v for k, v in _pcts(seconds).items()}


def steady_window(r: Result, pool: Pool, mine: np.ndarray) -> tuple[float, float, str] | None:
    """(start, end, basis) of the steady state of `pool`, whose steps are `mine`; None where the run
    has none (see the module's docstring)."""
    w, s = r.workload, r.steps
    entry = r.first_token if pool.role == "decode" and r.mode == PD else w.arrival_s
    a0, a1 = float(np.nanmin(entry)), float(np.nanmax(entry))
    first_done = float(np.nanmin(r.finish))
    if a1 > a0:
        return (first_done, a1, "arrivals") if a1 > first_done else None
    full = mine & (s["queue"] > 0)
    if not full.any():
        return None
    t0, t1 = float(s["start"][full].min()), float(s["end"][full].max())
    return (t0, t1, "saturated") if t1 > t0 else None


def _in(t: np.ndarray, win: tuple[float, float, str] | None) -> np.ndarray:
    return np.zeros(len(t), bool) if win is None else (t > win[0]) & (t <= win[1])


def _finite(x: float) -> float | None:
    return x if np.isfinite(x) else None


def _rate(tokens: float, win, nodes: float) -> float | None:
    """Tokens per second per node over the window (None without one)."""
    return None if win is None else tokens / (win[1] - win[0]) / nodes


def capacity_used(r: Result, pool: Pool, mine: np.ndarray) -> float | None:
    """Share of the pool's token capacity its steps used, weighted by step time: a prefill step's new
    tokens over the token budget of every DP group, a decode step's requests over the batch limit of
    every DP group (--decode-batch, the TPOT cap, or what the KV cache holds at the mean request)."""
    s, w = r.steps, r.workload
    if not mine.any():
        return None
    dur = s["end"][mine] - s["start"][mine]
    dp = max(1, pool.dp)
    limit = np.where(s["kind"][mine] == PREFILL, pool.token_budget * dp,
                     dp * pool.batch_limit(float((w.input_len + w.output_len).mean())))
    used = np.minimum(s["load"][mine] / limit, 1.0)
    return float((used * dur).sum() / dur.sum()) if dur.sum() > 0 else None


def tpot_s(r: Result) -> np.ndarray:
    """Per request: time per output token after the first (NaN for one-token outputs)."""
    n = r.workload.output_len.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 1, (r.finish - r.first_token) / (n - 1), np.nan)


def summary(r: Result, slo_ttft_ms: float | None = None, slo_tpot_ms: float | None = None) -> dict:
    w = r.workload
    s = r.steps
    ttft = (r.first_token - w.arrival_s) if r.mode != "decode" else np.full(len(w), np.nan)
    tpot = tpot_s(r) if r.mode != "prefill" else np.full(len(w), np.nan)
    out = {
        "requests": len(w), "workload": w.source, "mode": r.mode,
        "span_s": float(np.nanmax(r.finish) - w.arrival_s.min()),
        "ttft_ms": _pcts_ms(ttft),
        "tpot_ms": _pcts_ms(tpot),
        "e2e_ms": _pcts_ms(r.finish - w.arrival_s),
        "queue_ms": _pcts_ms(r.prefill_start - w.arrival_s),
        "decode_wait_ms": _pcts_ms(r.decode_start - r.first_token),
        "tokens_per_s_per_user": {k: (1.0 / v if v > 0 else float("nan")) for k, v in _pcts(tpot).items()},
        # (tokens/s per user: p50 is 1 / TPOT p50; p90 is 1 / TPOT p90, i.e. the slow tail)
        "pools": [],
    }
    span = float(np.nanmax(r.finish) - w.arrival_s.min())
    for k, pool in enumerate(r.pools):
        mine = r.instance_pool[s["instance"]] == k
        busy = float((s["end"][mine] - s["start"][mine]).sum())
        t0 = float(s["start"][mine].min()) if mine.any() else 0.0
        t1 = float(s["end"][mine].max()) if mine.any() else 0.0
        win = steady_window(r, pool, mine)
        row = {"role": pool.role, "instances": pool.instances, "gpus_per_instance": pool.gpus, "dp": pool.dp,
               "nodes": int(pool.nodes) if float(pool.nodes).is_integer() else pool.nodes,   # 0.5: half a node
               "gpus": pool.instances * pool.gpus,
               # busy: the share of the run (first arrival to last finish) its instances ran a step
               "utilisation": busy / (span * pool.instances) if span > 0 else 0.0,
               "capacity_used": capacity_used(r, pool, mine),
               "steady_window_s": [win[0], win[1]] if win else None, "steady_basis": win[2] if win else None,
               "steps": int(mine.sum()),
               "max_batch_per_dp": _finite(pool.batch_limit(float((w.input_len + w.output_len).mean())))
                                   if pool.role != "prefill" else None,
               "kv_tokens_per_dp": pool.kv_tokens if np.isfinite(pool.kv_tokens) else None}
        if pool.role in ("prefill", COLOCATED) and r.mode != "decode":
            # new prompt tokens the pool's prefill steps computed in the window; input tokens count the
            # cached prefix too, at the workload's ratio of all prompt tokens to computed ones
            pre = mine & (s["kind"] == PREFILL) & _in(s["end"], win)
            total, new = float(w.input_len.sum()), float((w.input_len - w.prefix_hit_len).sum())
            row["input_tokens"] = total
            row["input_tokens_per_s_per_node"] = total / (t1 - t0) / pool.nodes if t1 > t0 else 0.0
            row["new_tokens_per_s_per_node_steady"] = _rate(float(s["load"][pre].sum()), win, pool.nodes)
            row["input_tokens_per_s_per_node_steady"] = _rate(float(s["load"][pre].sum()) * total / new, win,
                                                              pool.nodes)
        if pool.role in ("decode", COLOCATED) and r.mode != "prefill":
            dec = mine & (s["kind"] == DECODE)
            total = float(s["tokens"][dec].sum())
            row["output_tokens"] = total
            row["output_tokens_per_s_per_node"] = total / (t1 - t0) / pool.nodes if t1 > t0 else 0.0
            row["output_tokens_per_s_per_node_steady"] = _rate(float(s["tokens"][dec & _in(s["end"], win)].sum()),
                                                               win, pool.nodes)
            row["mean_batch_per_dp"] = float((s["requests"][dec] / pool.dp).mean()) if dec.any() else 0.0
            # the decode steps' own time per output token (TPOT less any wait for a slot or a prompt)
            row["step_tpot_ms"] = (float(1e3 * (s["end"][dec] - s["start"][dec]).mean() / pool.tokens_per_step)
                                   if dec.any() else None)
            row["prefill_steps"] = int((mine & (s["kind"] == PREFILL)).sum())
        out["pools"].append(row)
    if slo_ttft_ms is not None or slo_tpot_ms is not None:
        ok = np.ones(len(w), bool)
        if slo_ttft_ms is not None and r.mode != "decode":
            ok &= ttft * 1e3 <= slo_ttft_ms
        if slo_tpot_ms is not None and r.mode != "prefill":
            ok &= ~(tpot * 1e3 > slo_tpot_ms)
        out["slo"] = {"ttft_ms": slo_ttft_ms, "tpot_ms": slo_tpot_ms, "attained": float(ok.mean())}
    return _no_nan(out)


def _no_nan(x):
    """NaN (a latency no request has, e.g. TTFT of a decode-only run) as None: JSON has no NaN."""
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_no_nan(v) for v in x]
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


__all__ = ["summary", "tpot_s", "steady_window", "capacity_used", "PCTS"]
