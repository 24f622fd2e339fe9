"""`tracegen`: predict one layer of an MoE deployment (estimate), write it as a timeline (trace),
and list the catalogs. (Fitting the cost model to an observed trace is `replay calibrate`.)"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from .base.cliutil import add_command, entry_point, finite, new_parser, print_json
from .catalog import (
    builtin_hardware,
    builtin_models,
    load_hardware,
    load_model,
)
from .plan import COMM_BACKENDS, Plan
from .preset import PRESETS, Preset, load_preset
from .resolve import Target, resolve
from .routing import ROUTINGS
from .stack import DEFAULT_STACK, load_stack, stack_names
from .schemas import tag

EPILOG_ESTIMATE = """\
examples:
  tracegen estimate                                   DeepSeek-V3 prefill on H800, default preset
  tracegen estimate --phase decode --hardware h20 --batch 64
  tracegen estimate --preset seed004 --tp 4 --dp 8    the published analysis, exactly
  tracegen estimate --preset seed004 --hardware h20 --scaleout-gbps 25   a 1.6 Tb/s network
  tracegen estimate --model kimi-k2 --hardware h200 --phase decode --json

Flags left out take the preset's plan defaults for the phase (see `tracegen list presets`).
Times are per GPU; the MoE layer's all-to-all is hidden behind compute in the 'overlap' sums."""


EPILOG_TRACE = """\
examples:
  tracegen trace                                       DeepSeek-V3 prefill on H800, proper TBO order
  tracegen trace --tbo improper -o improper.json.gz    the CPU-blocking dispatch issued too early
  tracegen trace --phase decode --comm cpu-proxy --layers 8 --ranks 4 -o decode.pftrace
  tracegen trace --hardware ascend-910c --phase decode --comm ascend-fused
  tracegen trace --ranks 8 --imbalance 1.3 -o skew.json    ranks finish their experts at different times

Tracks per rank: "CPU launch", "compute stream", "comm stream" (and "CPU proxy" for cpu-proxy).
Each slice is a stage (ATTN, SHARED, DISPATCH, MLP, COMBINE; decode ATTN-0/ATTN-1) with args
layer, microbatch, stage, flops, bytes, and the cost terms behind its duration."""


# ----------------------------------------------------------------------------- shared options
def add_target_args(p: argparse.ArgumentParser, phase: bool = True) -> None:
    """--model/--hardware/--preset and the user-file variants (and --phase)."""
    g = p.add_argument_group("what to model")
    g.add_argument("--model", "-m", default=None,
                   help="model name from `tracegen list models` (default: deepseek-v3)")
    g.add_argument("--model-file", default=None, metavar="FILE",
                   help="your own model catalog (TOML or JSON, same fields as the built-in one)")
    g.add_argument("--hardware", "--gpu", "-g", dest="hardware", default=None,
                   help="hardware name from `tracegen list hardware` (default: h800)")
    g.add_argument("--hardware-file", default=None, metavar="FILE",
                   help="your own hardware file (TOML or JSON; `replay calibrate` writes one)")
    g.add_argument("--preset", default="default", choices=PRESETS,
                   help="cost-model conventions: 'default' (physical) or 'seed004' (the published analysis)")
    g.add_argument("--clock", default="limit", choices=("limit", "boost"),
                   help="'limit': where a step would draw more than the board's power limit, its compute-bound "
                        "kernels run at the lower clock that leaves (measured: tracegen/power.py); 'boost': "
                        "every kernel at the boost clock, as kernels timed one at a time run")
    g.add_argument("--stack", default=DEFAULT_STACK, choices=stack_names(), metavar="NAME",
                   help="serving stack whose conventions set what the plan leaves open: the all-to-all release, "
                        "the scheduler's CPU time per step (tracegen/data/stacks.toml; a flag given explicitly "
                        f"wins): {', '.join(stack_names())}")
    g.add_argument("--in-situ", default="on", choices=("on", "off"),
                   help="'on': communication kernels that hold SMs run slower beside compute (measured on "
                        "DeepEP, hardware.toml in_situ); 'off': at their unit-test speed throughout")
    if phase:
        g.add_argument("--phase", default="prefill", choices=("prefill", "decode"), help="inference phase")


def add_plan_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("deployment plan (unset: the preset's defaults for the phase)")
    g.add_argument("--batch", type=finite, default=None,
                   help="sequences per attention-DP group (decode: requests in flight per group)")
    g.add_argument("--tokens", type=finite, default=None,
                   help="prefill only: prompt tokens per GPU (sets --batch = tokens x tp / seq-len)")
    g.add_argument("--seq-len", type=int, default=None,
                   help="prefill: prompt length in tokens; decode: context (KV) length in tokens")
    g.add_argument("--kv-hit", type=finite, default=None,
                   help="prefill: fraction of the prompt already in the KV cache, 0 to <1")
    g.add_argument("--tp", type=int, default=None, help="attention tensor-parallel size (GPUs)")
    g.add_argument("--dp", type=int, default=None, help="attention data-parallel groups")
    g.add_argument("--ep", type=int, default=None, help="expert-parallel size in GPUs (default tp x dp)")
    g.add_argument("--comm", default=None, metavar="BACKEND",
                   help=f"all-to-all backend: a table under the hardware's `comm` (built in: {', '.join(COMM_BACKENDS)}; "
                        "a --hardware-file may add its own; default: the preset's, normal for prefill, ibgda "
                        "for decode)")
    g.add_argument("--comm-sms", type=int, default=None,
                   help="SMs the all-to-all holds while in flight (default: the backend's)")
    g.add_argument("--decode-len", type=int, default=None,
                   help="decode: output tokens per request, for the memory limit (tokens)")
    g.add_argument("--balancedness", type=finite, default=None,
                   help="EPLB balancedness = mean/max MoE compute, in (0, 1]; sets --imbalance = 1/x")
    add_shared_plan_args(p, "plan details (shared with tracegen deploy)")
    h = p.add_argument_group("hardware what-ifs")
    h.add_argument("--scaleout-gbps", type=finite, default=None, help="RDMA bandwidth per GPU, GB/s")
    h.add_argument("--scaleup-gbps", type=finite, default=None, help="NVLink / UB bandwidth per GPU, GB/s")
    h.add_argument("--hbm-gbps", type=finite, default=None, help="HBM bandwidth, GB/s")


def add_shared_plan_args(p: argparse.ArgumentParser, title: str = "plan details") -> None:
    """Plan flags that mean the same for one step (estimate, trace) and for a deployment's pools."""
    g = p.add_argument_group(title)
    g.add_argument("--gpus-per-node", type=int, default=None, help="GPUs per node (default: the hardware's)")
    g.add_argument("--redundant-experts", type=int, default=None,
                   help="extra expert replicas placed by EPLB, summed over all EP ranks")
    g.add_argument("--microbatches", type=int, default=None, help="micro-batches per step (2: two-batch overlap)")
    g.add_argument("--comm-release", default=None, metavar="NAME",
                   help="the all-to-all library release whose published figures time the dispatch and combine "
                        "(DeepEP: 'first' = Feb 2025, 'latest' = the README's current table; default: latest)")
    g.add_argument("--routing", default=None, choices=ROUTINGS,
                   help="fan-out of a token's experts over ranks and nodes: 'model' (its group limits, random "
                        "scores), 'uniform' (random top-k, no groups), 'spread' (one node per chosen group) "
                        "(default: model)")
    g.add_argument("--mtp", type=int, default=None,
                   help="decode: draft tokens per request per step (multi-token prediction; each step verifies "
                        "1 + MTP tokens per request and runs the MTP module MTP times) (default: 0)")
    g.add_argument("--mtp-accept", type=finite, default=None,
                   help="decode: probability a draft token is accepted (default: 0.85, DeepSeek-V3 report)")
    g.add_argument("--sched-ms", type=finite, default=None,
                   help="CPU time per step outside the GPU work (scheduler, batching), ms (default: 0)")
    g.add_argument("--precision", default=None, choices=("fp8", "int8", "bf16"),
                   help="GEMM precision (default: the hardware's 8-bit format, FP8 on NVIDIA, INT8 on Ascend)")
    g.add_argument("--kv-dtype", default=None, choices=("fp8", "int8", "bf16"), help="KV-cache element type")
    g.add_argument("--imbalance", type=finite, default=None,
                   help="expert load max/mean across EP ranks, >= 1 (1 / EPLB balancedness)")


def resolve_args(args: argparse.Namespace) -> Target:
    """The CLI's flags through the shared resolver (tracegen/resolve.py), with its note on stderr."""
    target = resolve(vars(args))
    note = target.held_note()
    if note:
        print(f"note: {note}", file=sys.stderr)
    return target


# ----------------------------------------------------------------------------- output
def _fmt(x: float, nd: int = 3) -> str:
    return f"{x:,.{nd}f}"


def _ranks(n: int, hw: Any) -> str:
    """Ranks as the hardware counts them, up to the node count: GPUs, or dies of multi-die packages."""
    if hw.dies_per_package > 1:
        return f"{n} dies ({n / hw.dies_per_package:g} packages, "
    return f"{n} GPUs ("


def row_label(name: str, model: Any) -> str:
    """An op row's name as printed: the attention rows say GQA for a model without MLA."""
    return name.replace("MLA", "GQA") if model.attention != "mla" else name


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


def assumptions(args: argparse.Namespace, hw: Any, preset: Preset, plan: Plan) -> dict[str, Any]:
    """What sets the figures beyond the plan (the stack's conventions, the in-situ term, the clock)."""
    out = load_stack(getattr(args, "stack", DEFAULT_STACK)).assumptions(plan, hw)
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
            f"clock {a['clock']}")


# ----------------------------------------------------------------------------- commands
def cmd_estimate(args: argparse.Namespace) -> int:
    from .estimate import estimate
    from .memory import max_batch
    model, hw, preset, plan = resolve_args(args)
    est = estimate(model, hw, plan, preset)
    if plan.phase == "decode":
        est.extra["max_batch"] = int(max_batch(model, hw, plan, preset))     # whole sequences
    if preset.step_terms:        # the step as `tracegen trace` schedules it (same plan, its default options)
        from .pipeline import TraceOptions, schedule
        sched = schedule(model, hw, plan, preset, TraceOptions(tbo="proper" if plan.microbatches == 2 else "off"))
        est.extra["scheduled_step_ms"] = sched.span_us / 1e3
        est.extra["tokens_per_s_per_gpu_scheduled"] = est.tokens_per_step_per_gpu * 1e6 / sched.span_us
    a = {**assumptions(args, hw, preset, plan), "in_situ_applied": False}    # estimate sums stages, no scheduler
    if args.json:
        print_json({**est.to_dict(), "assumptions": a}, tag("tracegen-estimate"))
    else:
        print(assumptions_line(a))
        print(render_estimate(est))
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    import os

    from .base.contract import IDLE_CAUSES
    from .pipeline import TraceOptions, schedule
    from .schedule import summary
    from .trace import output_format, write_trace
    output_format(args.output)
    if args.tbo == "off" and args.microbatches is None:
        args.microbatches = 1
    model, hw, preset, plan = resolve_args(args)
    if plan.phase == "decode":          # the same memory check as estimate's: said, not refused (a what-if)
        from .memory import max_batch
        for line in memory_lines(max_batch(model, hw, plan, preset), plan, "the timeline's figures"):
            if line.startswith("warning"):
                print(line, file=sys.stderr)
    opts = TraceOptions(tbo=args.tbo, order_file=args.order, layers=args.layers, skip_dense=args.skip_dense,
                        ranks=args.ranks, launch_us=args.launch_us)
    sched = schedule(model, hw, plan, preset, opts)
    graph = sched.graph
    tbo = opts.tbo_label
    path = write_trace(sched, args.output, {"tbo": tbo})
    summ = summary(sched)
    if args.json:
        ranks = [{**r, "layers": [{"layer": k, **v} for k, v in r["layers"].items()]} for r in summ]
        print_json({"output": str(path), "bytes": os.path.getsize(path), "tbo": tbo, "ranks": ranks,
                    "assumptions": assumptions(args, hw, preset, plan)}, tag("tracegen-trace"))
        return 0
    r0 = summ[0]
    moe = graph.moe_layers
    n_model = sum(1 for layer in graph.layers if graph.kind(layer) in ("dense", "moe"))
    tail = {k: sum(1 for layer in graph.layers if graph.kind(layer) == k) for k in ("head", "mtp")}
    extra = (" + LM head" if tail["head"] else "") + (f" + MTP module x {tail['mtp']}" if tail["mtp"] else "")
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.2f} MB): {model.name} {plan.phase} on {graph.hardware.name}, "
          f"{n_model} layers{extra} x {plan.microbatches} micro-batch{'es' if plan.microbatches > 1 else ''}, "
          f"{args.ranks} rank{'s' if args.ranks > 1 else ''}, TBO {tbo}, comm {plan.comm}")
    print(assumptions_line(assumptions(args, hw, preset, plan)))
    print(f"span {r0['span_us'] / 1e3:.3f} ms (rank 0)   compute busy {100 * r0['compute_us'] / r0['span_us']:.1f}%   "
          f"communication hidden {r0['hidden_comm_pct']:.1f}% ({r0['exposed_comm_us'] / 1e3:.3f} ms exposed)")
    if len(moe) > 1:
        times = [t for layer, t in zip(graph.layers, sched.layer_time_us(0)) if graph.kind(layer) == "moe"]
        print(f"per MoE layer {sum(times) / len(times) / 1e3:.3f} ms (mean of {len(times)})")
    if plan.sched_ms:
        print(f"the step starts with {plan.sched_ms:g} ms of CPU scheduling (the 'scheduler' slice, --sched-ms): "
              f"{sched.span_us / 1e3:.3f} ms from its start to the last kernel")
    print("compute idle: " + ", ".join(f"{c} {r0['idle_us'][c] / 1e3:.3f} ms" for c in IDLE_CAUSES))
    if sched.power:
        print(power_line(sched.power.demand_w, sched.power.throttle, graph.hardware))
    print("open it in https://ui.perfetto.dev (Open trace file) or chrome://tracing")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.what == "hardware":
        table = builtin_hardware() if not args.hardware_file else {
            "file": load_hardware(None, args.hardware_file)}
        rows = [{"name": k, "display": h.name, "aliases": list(h.aliases), "sms": h.sm_count,
                 "q8_tflops": h.q8_tflops, "q8_format": h.q8_format, "bf16_tflops": h.bf16_tflops,
                 "dies_per_package": h.dies_per_package, "hbm_gb": h.hbm_gb,
                 "hbm_gbps": h.hbm_gbps, "scaleup_gbps": h.scaleup_gbps, "scaleup_domain": h.scaleup_domain,
                 "scaleout_gbps": h.scaleout_gbps, "comm": sorted(h.comm)} for k, h in table.items()]
        if args.json:
            print_json({"hardware": rows}, tag("tracegen-list-hardware"))
            return 0
        print(f"{'name':<14}{'SMs':>5}{'8-bit TF':>14}{'BF16 TF':>9}{'HBM GB':>8}{'HBM GB/s':>10}"
              f"{'up GB/s':>9}{'domain':>8}{'out GB/s':>10}  backends")
        for r in rows:
            print(f"{r['name']:<14}{r['sms']:>5}{r['q8_format'].upper():>5}{r['q8_tflops']:>9.0f}{r['bf16_tflops']:>9.1f}{r['hbm_gb']:>8.0f}"
                  f"{r['hbm_gbps']:>10.0f}{r['scaleup_gbps']:>9.0f}{r['scaleup_domain']:>8}"
                  f"{r['scaleout_gbps']:>10.1f}  {', '.join(r['comm'])}")
        print("\nnames are case-insensitive; aliases: " + "; ".join(
            f"{r['name']}: {', '.join(r['aliases'])}" for r in rows if r["aliases"]))
        return 0
    if args.what == "models":
        from .memory import total_params
        rows = [{"name": k, "display": m.name, "aliases": list(m.aliases), "attention": m.attention,
                 "layers": m.layers, "dense_layers": m.dense_layers, "hidden": m.hidden, "heads": m.heads,
                 "routed_experts": m.routed_experts, "shared_experts": m.shared_experts,
                 "top_k": m.activated_experts, "params_b": total_params(m) / 1e9}
                for k, m in builtin_models().items()]
        if args.json:
            print_json({"models": rows}, tag("tracegen-list-models"))
            return 0
        print(f"{'name':<18}{'attn':>5}{'layers':>7}{'dense':>6}{'hidden':>7}{'heads':>6}{'experts':>9}{'top-k':>6}{'params':>9}")
        for r in rows:
            ex = f"{r['routed_experts']}+{r['shared_experts']}"
            print(f"{r['name']:<18}{r['attention']:>5}{r['layers']:>7}{r['dense_layers']:>6}{r['hidden']:>7}"
                  f"{r['heads']:>6}{ex:>9}{r['top_k']:>6}{r['params_b']:>8.1f}B")
        print("\nnames are case-insensitive; aliases: " + "; ".join(
            f"{r['name']}: {', '.join(r['aliases'])}" for r in rows if r["aliases"]))
        return 0
    rows = [{"name": n, "display": load_preset(n).display, "plan_defaults": load_preset(n).plan} for n in PRESETS]
    if args.json:
        print_json({"presets": rows}, tag("tracegen-list-presets"))
        return 0
    for r in rows:
        print(f"{r['name']:<9} {r['display']}")
        for phase, d in r["plan_defaults"].items():
            print(f"{'':<9}   {phase}: " + ", ".join(f"{k}={v}" for k, v in d.items()))
    return 0


def cmd_roofline(args: argparse.Namespace) -> int:
    from .roofline import moe_roofline
    model = load_model(args.model, args.model_file)
    hw = load_hardware(args.hardware, args.hardware_file)
    r = moe_roofline(hw, model, args.local_batch)
    if args.json:
        print_json(r.to_dict(), tag("tracegen-roofline"))
        return 0
    print(f"{model.name} experts on {hw.name} ({hw.q8_format.upper()} {hw.q8_tflops:g} TFLOPS, HBM {r.hbm_tbps:g} TB/s)")
    print(f"  ridge point             {r.ridge_flops_per_byte:8.1f} FLOP/byte")
    print(f"  tokens per expert >=    {r.min_tokens_per_expert:8.1f}  (~{r.tokens_per_expert_rounded})")
    print(f"  global batch >=         {r.global_batch_min:8d}  tokens per step "
          f"({model.routed_experts} experts / top-{model.activated_experts})")
    print(f"  EP >=                   {r.min_ep_needed:8d}  with at most {r.local_batch_max} tokens per GPU"
          + (f" (the source's table rounds down: {r.min_ep})" if r.min_ep != r.min_ep_needed else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p, sub = new_parser("tracegen", __doc__)

    e = add_command(sub, "estimate", cmd_estimate,
                    help="per-op time table and totals for one layer (no timeline)",
                    epilog=EPILOG_ESTIMATE,
                    description="Time every op of a dense and an MoE layer on one GPU and sum them "
                                "over the model's layers, with and without the all-to-all hidden.")
    add_target_args(e)
    add_plan_args(e)
    e.add_argument("--mla-form", default=None, choices=("standard", "absorbed", "absorbed_merged"),
                   help="decode MLA form (default: the preset's)")
    e.add_argument("--json", action="store_true", help="print one JSON object instead of the table")

    t = add_command(sub, "trace", cmd_trace,
                    help="write a per-layer, per-micro-batch timeline (Perfetto / Chrome trace)",
                    epilog=EPILOG_TRACE,
                    description="Schedule every layer's stages for two micro-batches on a CPU launch thread, "
                                "a compute stream and a communication stream per rank, and write the timeline.")
    add_target_args(t)
    t.add_argument("--tbo", default="proper", choices=("off", "proper", "improper"),
                   help="two-batch-overlap launch order: off (one micro-batch, stages in program order), "
                        "proper (compute submitted before each CPU-blocking dispatch), improper (dispatch first)")
    t.add_argument("--order", default=None, metavar="FILE",
                   help="your own launch order (TOML/JSON: phase and steps [microbatch, stage, layer_offset]); "
                        "see tracegen/data/orders/")
    t.add_argument("--layers", type=int, default=None, help="emit only the first N layers (default: all of the model's)")
    t.add_argument("--skip-dense", action="store_true", help="leave out the leading dense layers")
    t.add_argument("--ranks", type=int, default=1, help="ranks (processes) to emit; --imbalance spreads load across them")
    t.add_argument("--launch-us", type=finite, default=None,
                   help="CPU cost per kernel launch in microseconds (default: the hardware's; 0 ~ CUDA graphs)")
    t.add_argument("-o", "--output", default="trace.json.gz",
                   help="output file: .json, .json.gz (Chrome/Perfetto JSON) or .pftrace (Perfetto protobuf)")
    t.add_argument("--json", action="store_true", help="print the schedule summary as JSON")
    add_plan_args(t)

    from .serving.cli import add_deploy_command
    add_deploy_command(sub, add_target_args, add_shared_plan_args)

    lst = add_command(sub, "list", cmd_list, help="show the hardware, model or preset catalogs")
    lst.add_argument("what", choices=("hardware", "models", "presets"))
    lst.add_argument("--hardware-file", default=None, metavar="FILE", help="list this file's entry instead")
    lst.add_argument("--json", action="store_true", help="print JSON")

    r = add_command(sub, "roofline", cmd_roofline, help="MoE roofline: tokens per expert and minimum EP for decode")
    r.add_argument("--model", "-m", default=None, help="model name (default deepseek-v3)")
    r.add_argument("--model-file", default=None, metavar="FILE")
    r.add_argument("--hardware", "--gpu", "-g", dest="hardware", default=None, help="hardware name (default h800)")
    r.add_argument("--hardware-file", default=None, metavar="FILE")
    r.add_argument("--local-batch", type=int, default=30, help="largest decode batch per GPU (tokens)")
    r.add_argument("--json", action="store_true", help="print JSON")
    return p


main = entry_point("tracegen", build_parser)


if __name__ == "__main__":
    sys.exit(main())
