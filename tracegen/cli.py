"""`tracegen`: predict one layer of an MoE deployment (estimate), write it as a timeline (trace),
and list the catalogs. (Fitting the cost model to an observed trace is `replay calibrate`.)"""
from __future__ import annotations

import argparse
import sys

from .accuracy import accuracy, accuracy_line
from .base.cliutil import add_command, command, entry_point, finite, new_parser, print_json
from .catalog import (
    builtin_hardware,
    builtin_models,
    load_hardware,
    load_model,
)
from .estimate_view import assumptions, assumptions_line, memory_lines, power_line, render_estimate
from .flags import add_plan_args, add_target_args, resolve_args
from .preset import PRESETS, load_preset
from .schemas import tag
from .target import Target

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


# ----------------------------------------------------------------------------- commands
STEP_ROWS = ("step", "held-out")     # the validation rows an estimate or a trace is compared with (accuracy.py)


def plan_accuracy(target: Target) -> dict | None:
    """The validation rows beside a plan's figures: its phase's, and its all-to-all backend's held-out kernel
    rows with those nearest its payload (tokens per rank per dispatch: the MoE block's per micro-batch)."""
    from .ops import tokens
    model, _, preset, plan = target
    per_dispatch = tokens(model, plan.split(plan.microbatches), preset).moe_tokens    # one micro-batch, as opgraph.build
    return accuracy((plan.phase,), STEP_ROWS, plan.comm, per_dispatch)


def cmd_estimate(args: argparse.Namespace) -> int:
    from .estimate import estimate
    from .memory import max_batch
    target = resolve_args(args)
    _, hw, preset, plan = target
    est = estimate(target)
    if plan.phase == "decode":
        est.extra["max_batch"] = int(max_batch(target))     # whole sequences
    if preset.step_terms:        # the step as `tracegen trace` schedules it (same plan, its default options)
        from .pipeline import TraceOptions, schedule
        sched = schedule(target, TraceOptions(tbo="proper" if plan.microbatches == 2 else "off"))
        est.extra["scheduled_step_ms"] = sched.span_us / 1e3
        est.extra["tokens_per_s_per_gpu_scheduled"] = est.tokens_per_step_per_gpu * 1e6 / sched.span_us
    a = {**assumptions(args, hw, preset, plan, target.model), "in_situ_applied": False}    # estimate sums stages, no scheduler
    acc = plan_accuracy(target)
    if args.json:
        print_json({**est.to_dict(), "assumptions": a, "accuracy": acc}, tag("tracegen-estimate"))
    else:
        print(assumptions_line(a))
        if acc:
            print(accuracy_line(acc))
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
    target = resolve_args(args)
    model, hw, preset, plan = target
    if plan.phase == "decode":          # the same memory check as estimate's: said, not refused (a what-if)
        from .memory import max_batch
        for line in memory_lines(max_batch(target), plan, "the timeline's figures"):
            if line.startswith("warning"):
                print(line, file=sys.stderr)
    opts = TraceOptions(tbo=args.tbo, order_file=args.order, layers=args.layers, skip_dense=args.skip_dense,
                        ranks=args.ranks, launch_us=args.launch_us)
    sched = schedule(target, opts)
    graph = sched.graph
    tbo = opts.tbo_label
    path = write_trace(sched, args.output, {"tbo": tbo})
    summ = summary(sched)
    if args.json:
        ranks = [{**r, "layers": [{"layer": k, **v} for k, v in r["layers"].items()]} for r in summ]
        print_json({"output": str(path), "bytes": os.path.getsize(path), "tbo": tbo, "step_ms": sched.span_us / 1e3,
                    "ranks": ranks, "assumptions": assumptions(args, hw, preset, plan, model),
                    "accuracy": plan_accuracy(target)}, tag("tracegen-trace"))
        return 0
    r0 = summ[0]
    moe = graph.moe_layers
    n_model = sum(1 for layer in graph.layers if graph.layer_kind(layer) in ("dense", "moe"))
    tail = {k: sum(1 for layer in graph.layers if graph.layer_kind(layer) == k) for k in ("head", "mtp")}
    extra = (" + LM head" if tail["head"] else "") + (f" + MTP module x {tail['mtp']}" if tail["mtp"] else "")
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.2f} MB): {model.name} {plan.phase} on {graph.hardware.name}, "
          f"{n_model} layers{extra} x {plan.microbatches} micro-batch{'es' if plan.microbatches > 1 else ''}, "
          f"{args.ranks} rank{'s' if args.ranks > 1 else ''}, TBO {tbo}, comm {plan.comm}")
    print(assumptions_line(assumptions(args, hw, preset, plan, model)))
    if acc := plan_accuracy(target):
        print(accuracy_line(acc))
    print(f"span {r0['span_us'] / 1e3:.3f} ms (rank 0)   compute busy {100 * r0['compute_us'] / r0['span_us']:.1f}%   "
          f"communication hidden {r0['hidden_comm_pct']:.1f}% ({r0['exposed_comm_us'] / 1e3:.3f} ms exposed)")
    if len(moe) > 1:
        times = [t for layer, t in zip(graph.layers, sched.layer_time_us(0)) if graph.layer_kind(layer) == "moe"]
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
                 "scaleout_gbps": h.scaleout_gbps, "comm": sorted(h.comm), "caveat": h.caveat or None}
                for k, h in table.items()]
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
        caveats = [f"  {r['name']}: {r['caveat']}" for r in rows if r["caveat"]]
        if caveats:
            print("\nnot measured on the chip itself (estimate, trace and deploy print it in their assumptions):")
            print("\n".join(caveats))
        return 0
    if args.what == "models":
        from .memory import total_params
        models = builtin_models()
        if args.model_file:
            one = load_model(None, args.model_file)
            models = {one.key: one}
        rows = [{"name": k, "display": m.name, "aliases": list(m.aliases), "attention": m.attention,
                 "layers": m.layers, "dense_layers": m.dense_layers, "hidden": m.hidden, "heads": m.heads,
                 "routed_experts": m.routed_experts, "shared_experts": m.shared_experts,
                 "top_k": m.activated_experts, "params_b": total_params(m) / 1e9, "source": m.source}
                for k, m in models.items()]
        if args.json:
            print_json({"models": rows}, tag("tracegen-list-models"))
            return 0
        print(f"{'name':<18}{'attn':>5}{'layers':>7}{'dense':>6}{'hidden':>7}{'heads':>6}{'experts':>9}{'top-k':>6}{'params':>9}")
        for r in rows:
            ex = f"{r['routed_experts']}+{r['shared_experts']}"
            print(f"{r['name']:<18}{r['attention']:>5}{r['layers']:>7}{r['dense_layers']:>6}{r['hidden']:>7}"
                  f"{r['heads']:>6}{ex:>9}{r['top_k']:>6}{r['params_b']:>8.1f}B")
        if args.model_file:             # a user's file: where each shape came from, and what is not modelled
            print("\n" + "\n".join(f"{r['name']}: {r['source']}" for r in rows))
            return 0
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
    add_deploy_command(sub)

    lst = add_command(sub, "list", cmd_list, help="show the hardware, model or preset catalogs")
    lst.add_argument("what", choices=("hardware", "models", "presets"))
    lst.add_argument("--hardware-file", default=None, metavar="FILE", help="list this file's entry instead")
    lst.add_argument("--model-file", default=None, metavar="FILE",
                     help="list this model file's entry instead (a catalog file, or a Hugging Face config.json or "
                          "its folder: check what tracegen reads from it, parameter count included)")
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
console = command(main)          # the `tracegen` command (pyproject's console script)


if __name__ == "__main__":
    console()
