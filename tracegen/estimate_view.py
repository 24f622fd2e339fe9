"""`tracegen estimate` and `tracegen trace` as text: the per-op table and totals, the memory limit,
the power line and the assumptions line (the JSON is the Estimate's own fields, tracegen/schemas.py)."""
from __future__ import annotations

import argparse
from typing import Any

from .estimate import row_label
from .hfconfig import line_note, notes
from .plan import Plan
from .preset import Preset
from .stack import DEFAULT_STACK, load_stack


def _fmt(x: float, nd: int = 3) -> str:
    return f"{x:,.{nd}f}"


def _ranks(n: int, hw: Any) -> str:
    """Ranks as the hardware counts them, up to the node count: GPUs, or dies of multi-die packages."""
    if hw.dies_per_package > 1:
        return f"{n} dies ({n / hw.dies_per_package:g} packages, "
    return f"{n} GPUs ("


def memory_lines(max_batch: float, p: Any, what: str = "the figures above") -> list[str]:
    """What fits in HBM, and a warning where the plan's batch does not."""
    ctx = f"(context {p.seq_len}+{p.decode_len} tokens)"
    if max_batch < 1:
        return [f"max batch in HBM    {'none':>10}  {ctx}: the weights and one sequence's KV cache do not fit",
                f"warning: batch {p.batch:g} per DP group cannot run here; {what} assume it could"]
    out = [f"max batch in HBM    {max_batch:>10.0f}  {ctx}"]
    if p.batch > max_batch:
        out.append(f"warning: batch {p.batch:g} per DP group exceeds the {max_batch:.0f} that fit in HBM; "
                   f"{what} assume it fits")
    return out


def render_estimate(est: Any) -> str:
    from .cost import comm_sms
    p, m, hw = est.plan, est.model, est.hardware
    lines = [f"{m.name} on {hw.name} · {p.phase} · preset {est.preset.name}",
             f"plan: TP{p.tp} x DP{p.dp} = {_ranks(p.num_gpus, hw)}{p.nodes} node{'s' if p.nodes > 1 else ''}), "
             f"EP{p.ep_size}, {p.experts_per_gpu(m):.2f} routed experts/GPU, comm {p.comm} "
             f"({comm_sms(p, hw, est.preset)} {hw.comm_cores[1]})"]
    if p.phase == "prefill":
        lines.append(f"      {p.batch:g} x {p.seq_len}-token prompts per DP group "
                     f"({p.dp * p.batch * p.seq_len / p.num_gpus:,.0f} tokens/GPU), KV hit {p.kv_hit:.1%}")
    else:
        lines.append(f"      batch {p.batch:g} per DP group, context {p.seq_len} tokens, KV {p.kv_dtype}")
    lines.append("")
    head = f"{'op':<14}{'ms/layer':>10}{'layers':>8}{'total ms':>11}  terms (ms per layer)"
    lines += [head, "-" * len(head)]
    for r in est.rows:
        terms = ", ".join(f"{k.removesuffix('_ms')} {v:.3f}" for k, v in r.terms.items())
        lines.append(f"{row_label(r.name, m):<14}{r.ms:>10.3f}{r.layers:>8d}{r.total_ms:>11.3f}  {terms}")
    d = est.to_dict()
    lines.append("")
    if p.phase == "decode" and p.mtp:
        lines.append(f"step with overlap {est.sum_overlap_ms:>10.3f} ms    without {est.sum_ms:>10.3f} ms  "
                     f"({d['tokens_per_request_per_step']:.3f} tokens per request per step)")
        lines.append(f"TPOT with overlap {d['tpot_overlap_ms']:>10.3f} ms    without {d['tpot_ms']:>10.3f} ms")
    else:
        what = "TPOT" if p.phase == "decode" else "sum"
        lines.append(f"{what} with overlap {est.sum_overlap_ms:>10.3f} ms    without {est.sum_ms:>10.3f} ms")
    lines.append(f"tokens/s per GPU    {_fmt(d['tokens_per_s_per_gpu_overlap'], 1):>10}       "
                 f"without {_fmt(d['tokens_per_s_per_gpu'], 1):>10}")
    if "tokens_per_s_per_package" in d:
        lines.append(f"tokens/s per package{_fmt(d['tokens_per_s_per_package_overlap'], 1):>10}       "
                     f"without {_fmt(d['tokens_per_s_per_package'], 1):>10}  ({d['dies_per_package']} dies; "
                     "a 'GPU' above is one die)")
    lines.append(f"tokens/s per node   {_fmt(d['tokens_per_s_per_node_overlap'], 1):>10}       "
                 f"without {_fmt(d['tokens_per_s_per_node'], 1):>10}")
    if "scheduled_step_ms" in d:
        lines.append(f"scheduled step      {d['scheduled_step_ms']:>10.3f} ms    {_fmt(d['tokens_per_s_per_gpu_scheduled'], 1)} "
                     "tokens/s per GPU (the timeline `tracegen trace` writes for this plan: two-batch overlap, "
                     "in-situ communication, the CPU's launches; 'with overlap' above is the per-layer bound)")
    if p.phase == "decode":
        lines.append(f"tokens/s per user   {d['tps_per_user_overlap']:>10.3f}       without {d['tps_per_user']:>10.3f}")
    if "max_batch" in d:
        lines += memory_lines(d["max_batch"], p)
    if "power_demand_w" in d:
        lines.append(power_line(d["power_demand_w"], d["power_throttle"], hw))
    return "\n".join(lines)


def power_line(demand_w: float, throttle: float, hw: Any) -> str:
    """What the power limit did to the step (tracegen/power.py)."""
    p = hw.power
    slow = max(p.slowdown.values(), default=1.0) - 1.0
    what = (f"SM clock lowered: compute-bound kernels up to {100 * slow * throttle:.1f} % slower than at boost"
            if throttle > 0 else "boost clock held")
    return f"power               {demand_w:>10.0f} W drawn at boost against a {p.limit_w:g} W limit: {what}"


def assumptions(args: argparse.Namespace, hw: Any, preset: Preset, plan: Plan, model: Any = None) -> dict[str, Any]:
    """What sets the figures beyond the plan (the stack's conventions, the in-situ term, the clock, and
    what of the model's own config the cost model does not represent: hfconfig.py)."""
    out = load_stack(getattr(args, "stack", DEFAULT_STACK)).assumptions(plan, hw)
    out.update(notes(model, hw))
    if not preset.comm_in_situ:
        out["in_situ_slowdown"] = 0.0
    if not preset.power_limit:
        out["clock"] = "boost"
    return out


def assumptions_line(a: dict[str, Any]) -> str:
    eplb = f"EPLB {a['eplb']:g} (default placement / balanced; not applied to one step)" if a["eplb"] != 1 else \
        "balanced experts"
    return (f"assumptions         stack {a['stack']}: {a['comm']} release {a['release']}, scheduler {a['sched_ms']:g} "
            f"ms/step, {eplb}; in-situ comm slowdown {a['in_situ_slowdown']:g}"
            f"{'' if a.get('in_situ_applied', True) else ' (scheduled by tracegen trace, not in this overlap sum)'}; "
            f"clock {a['clock']}" + line_note(a))


__all__ = ["render_estimate", "memory_lines", "power_line", "assumptions", "assumptions_line", "row_label"]
