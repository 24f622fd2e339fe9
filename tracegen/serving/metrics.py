"""What a simulated deployment delivered: latency percentiles (TTFT, TPOT, end to end, queueing),
throughput per node of each pool (over the whole run and in the steady middle, 10 % to 90 % of
the tokens done, where ramp-up and drain are left out), utilisation per pool, SLO attainment."""
from __future__ import annotations

import numpy as np

from .simulate import COLOCATED, DECODE, PREFILL, Result

PCTS = (50, 90, 99)
STEADY = (0.10, 0.90)


def _pcts(x: np.ndarray) -> dict[str, float]:
    x = x[np.isfinite(x)]
    if not len(x):
        return {f"p{p}": float("nan") for p in PCTS} | {"mean": float("nan")}
    return {f"p{p}": float(np.percentile(x, p)) for p in PCTS} | {"mean": float(x.mean())}


def _pcts_ms(seconds: np.ndarray) -> dict[str, float]:
    return {k: 1e3 * v for k, v in _pcts(seconds).items()}


def _rates(t: np.ndarray, tokens: np.ndarray) -> tuple[float, float]:
    """(all the tokens, tokens per second between 10 % and 90 % of them done) for tokens completed
    at times t; the rate is NaN when that middle takes no time (everything at one instant)."""
    if not len(t) or tokens.sum() <= 0:
        return 0.0, 0.0
    order = np.argsort(t, kind="stable")
    t, cum = t[order], np.cumsum(tokens[order])
    total = cum[-1]
    i10, i90 = np.searchsorted(cum, STEADY[0] * total), np.searchsorted(cum, STEADY[1] * total)
    t10, t90 = t[i10], t[i90]
    return float(total), float((cum[i90] - cum[i10]) / (t90 - t10)) if t90 > t10 else float("nan")


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
    for k, pool in enumerate(r.pools):
        mine = r.instance_pool[s["instance"]] == k
        busy = float((s["end"][mine] - s["start"][mine]).sum())
        t0 = float(s["start"][mine].min()) if mine.any() else 0.0
        t1 = float(s["end"][mine].max()) if mine.any() else 0.0
        row = {"role": pool.role, "instances": pool.instances, "gpus_per_instance": pool.gpus, "dp": pool.dp,
               "nodes": int(pool.nodes) if float(pool.nodes).is_integer() else pool.nodes,   # 0.5: half a node
               "gpus": pool.instances * pool.gpus,
               "utilisation": busy / ((t1 - t0) * pool.instances) if t1 > t0 else 0.0,
               "steps": int(mine.sum()), "max_batch_per_dp": pool.max_batch or None,
               "kv_tokens_per_dp": pool.kv_tokens if np.isfinite(pool.kv_tokens) else None}
        if pool.role in ("prefill", COLOCATED) and r.mode != "decode":
            total, steady = _rates(r.prefill_end, w.input_len.astype(float))
            row["input_tokens"] = total
            row["input_tokens_per_s_per_node"] = total / (t1 - t0) / pool.nodes if t1 > t0 else 0.0
            row["input_tokens_per_s_per_node_steady"] = steady / pool.nodes
            row["new_tokens_per_s_per_node_steady"] = steady * (1 - w.hit_rate) / pool.nodes
        if pool.role in ("decode", COLOCATED) and r.mode != "prefill":
            dec = mine & (s["kind"] == DECODE)
            total, steady = _rates(s["end"][dec], s["tokens"][dec])
            row["output_tokens"] = total
            row["output_tokens_per_s_per_node"] = total / (t1 - t0) / pool.nodes if t1 > t0 else 0.0
            row["output_tokens_per_s_per_node_steady"] = steady / pool.nodes
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


__all__ = ["summary", "tpot_s", "PCTS"]
