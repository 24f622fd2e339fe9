"""`tracegen deploy`: a serving deployment simulated request by request on the per-step model -
throughput per node, TTFT / TPOT percentiles, utilisation per pool; `--search` for the best
prefill/decode split under SLOs; `-o` for a request-level Perfetto trace."""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace
from typing import Any

from ..accuracy import accuracy, accuracy_line
from ..base.cliutil import add_command, finite, print_json, seed
from ..base.errors import UserError
from ..schemas import tag
from ..flags import add_shared_plan_args, add_target_args
from ..hfconfig import line_note, notes
from .deployment import CAPACITY_MIN_REQUESTS, DEFAULT_TOKEN_BUDGET, Deployment, PoolPlan
from .simulate import COLOCATED, PD

EPILOG = """\
examples:
  tracegen deploy                                       DeepSeek-V3 on H800: 4 prefill + 18 decode nodes, capacity
  tracegen deploy --hardware h100-deepgemm --prefill-nodes 4 --decode-nodes 9 --input-len 2000 --output-len 100
  tracegen deploy --rate 40 --requests 20000 --slo-ttft 1000 --slo-tpot 50 -o deploy.json.gz
  tracegen deploy --mode colocated --prefill-nodes 4 --rate 20      one pool doing both phases
  tracegen deploy --mode decode --decode-nodes 18 --mtp 1 --mtp-accept 0.85   the decode pool on its own
  tracegen deploy --search --nodes 13 --slo-ttft 2000 --slo-tpot 50     best PD split and EP per pool
  tracegen deploy --workload requests.csv --json        your own arrivals (arrival_s,input_len,output_len[,prefix_hit_len])

Modes: pd (prefill and decode pools, KV moved over the scale-out link), colocated (every instance runs
both; waiting prompts take the next step, so decoding requests stall), prefill / decode (one pool on
its own, as per-role benchmarks measure it). A pool of N nodes is cut into instances of --*-ep GPUs
(one expert-parallel group each, attention DP ep/tp); --rate max (default) sends every request at
t = 0 and measures capacity. Step times are scheduled steps of the per-layer model (tracegen trace's
timeline), interpolated between grid points. Throughput 'steady' leaves out ramp-up and drain: from
the first request finished to the last one entering the pool (arrival, or KV ready at decode); where
all enter at once, while work waited for the pool; '-' where the run has no steady state. --requests defaults to enough for a
capacity run to fill every pool (two full decode batches, eight full prefill steps; at least 2,000)."""


def add_deploy_command(sub: argparse._SubParsersAction) -> None:
    d = add_command(sub, "deploy", cmd_deploy, help="simulate a serving deployment: pools, requests, SLOs",
                    epilog=EPILOG,
                    description="Simulate requests through prefill and decode pools (or one colocated pool) "
                                "step by step, with step times from the per-layer model; report throughput "
                                "per node, TTFT / TPOT percentiles and utilisation, search plans under SLOs, "
                                "and write a request-level trace.")
    add_deploy_args(d)
    s = d.add_argument_group("search")
    s.add_argument("--search", action="store_true",
                   help="search the PD split of --nodes and the EP of each pool for the most goodput per GPU")
    s.add_argument("--nodes", type=int, default=None, help="--search: the node budget to split")
    o = d.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    o.add_argument("-o", "--output", default=None, metavar="FILE",
                   help="write a Perfetto trace (.json / .json.gz): pool instances' steps, counters, requests")
    o.add_argument("--trace-requests", type=int, default=5000,
                   help="requests drawn as async slices in the trace (evenly spaced; 0: none)")
    o.add_argument("--requests-out", default=None, metavar="FILE",
                   help="per-request times as .csv or .parquet (arrival, prefill, first token, finish)")


def add_deploy_args(d: argparse.ArgumentParser) -> None:
    """The flags that define a deployment and its workload (tracegen deploy, viz deploy)."""
    add_target_args(d, phase=False)
    g = d.add_argument_group("pools")
    g.add_argument("--mode", default=PD, choices=(PD, COLOCATED, "prefill", "decode"),
                   help="pd: disaggregated prefill and decode pools; colocated: one pool of --prefill-nodes does "
                        "both; prefill / decode: that pool alone")
    g.add_argument("--prefill-nodes", type=int, default=4, help="nodes of the prefill (or colocated) pool")
    g.add_argument("--prefill-tp", type=int, default=1, help="attention TP in the prefill pool")
    g.add_argument("--prefill-ep", type=int, default=0,
                   help="GPUs per prefill instance (its EP group); 0: the whole pool is one instance")
    g.add_argument("--decode-nodes", type=int, default=18, help="nodes of the decode pool")
    g.add_argument("--decode-tp", type=int, default=1, help="attention TP in the decode pool")
    g.add_argument("--decode-ep", type=int, default=0,
                   help="GPUs per decode instance (its EP group); 0: the whole pool is one instance")
    g.add_argument("--decode-expert-nodes", type=int, default=0,
                   help="attention-FFN disaggregation: this many of the decode nodes hold only routed experts, the "
                        "rest run attention and keep the KV cache (0: expert-parallel decode)")
    g.add_argument("--af-microbatches", type=int, default=3,
                   help="AF: micro-batches in the ping-pong pipeline between attention and expert GPUs")
    g.add_argument("--eager-decode", action="store_true",
                   help="decode launches every kernel from the CPU (default: decode steps replay a captured "
                        "CUDA/ACL graph, as SGLang and DeepSeek serve, so small batches are not launch-bound)")
    g.add_argument("--prefill-tokens", type=finite, default=DEFAULT_TOKEN_BUDGET,
                   help="prefill: new prompt tokens per DP group per step (longer prompts are chunked)")
    g.add_argument("--decode-batch", type=finite, default=0,
                   help="decode: most requests per DP group (0: as many as the KV cache holds)")
    wl = d.add_argument_group("workload")
    wl.add_argument("--workload", default=None, metavar="FILE",
                    help="CSV (header) or JSONL with arrival_s, input_len, output_len[, prefix_hit_len] per request")
    wl.add_argument("--requests", type=int, default=None,
                    help="synthetic: number of requests (default: with --rate max, enough to fill every pool - two "
                         "full decode batches, eight full prefill steps, at least 2,000; with a rate, 2,000)")
    wl.add_argument("--rate", default="max",
                    help="synthetic: Poisson arrivals per second, or 'max' (all at t = 0: the capacity)")
    wl.add_argument("--input-len", type=int, default=2000, help="synthetic: prompt tokens per request")
    wl.add_argument("--output-len", type=int, default=1000, help="synthetic: output tokens per request")
    wl.add_argument("--prefix-hit", type=finite, default=0.0,
                    help="synthetic: share of each prompt already in the KV cache (DeepSeek reports 0.563)")
    wl.add_argument("--seed", type=seed, default=0, help="random seed of the arrivals")
    s = d.add_argument_group("targets")
    s.add_argument("--slo-ttft", type=finite, default=None, help="time-to-first-token target, ms")
    s.add_argument("--slo-tpot", type=finite, default=None,
                   help="time-per-output-token target, ms (also caps the decode batch)")
    s.add_argument("--slo-attain", type=finite, default=0.9, help="share of requests that must meet the targets")
    add_shared_plan_args(d)


PLAN_KEYS = ("redundant_experts", "comm_release", "routing", "mtp", "mtp_accept", "sched_ms", "precision",
             "kv_dtype", "imbalance", "gpus_per_node", "microbatches")


def _deployment(args: argparse.Namespace, gpus_per_node: int) -> Deployment:
    fields = {k: getattr(args, k, None) for k in PLAN_KEYS if getattr(args, k, None) is not None}
    for name in ("prefill_nodes", "decode_nodes", "prefill_tp", "decode_tp"):
        if getattr(args, name) < (1 if "tp" in name else 0):
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("slo_ttft", "slo_tpot"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            raise UserError(f"--{name.replace('_', '-')} is a time in ms and must be positive, got {v:g}")
    if not 0 < args.slo_attain <= 1:
        raise UserError(f"--slo-attain is a share of requests in (0, 1], got {args.slo_attain:g}")
    pre = PoolPlan(args.prefill_nodes, args.prefill_tp, args.prefill_ep) if args.mode != "decode" else None
    dec = PoolPlan(args.decode_nodes, args.decode_tp, args.decode_ep) if args.mode in (PD, "decode") else None
    if args.decode_expert_nodes and args.mode not in (PD, "decode"):
        raise UserError("--decode-expert-nodes splits the decode pool: use it with --mode pd or decode")
    return Deployment(args.mode, pre, dec, args.prefill_tokens, args.decode_batch, args.slo_tpot, fields, gpus_per_node,
                      args.decode_expert_nodes, args.af_microbatches, not args.eager_decode,
                      getattr(args, "stack", "") or "")


def _workload(args: argparse.Namespace, model=None, hw=None, preset=None, d: Deployment | None = None,
              cache: dict | None = None):
    """The workload the flags describe; a capacity run without --requests is sized to fill every pool
    of `d` (deployment.capacity_requests)."""
    from .workload import load, synthetic
    if args.workload:
        return load(args.workload)
    if str(args.rate).lower() in ("max", "inf"):
        rate = None
    else:
        try:
            rate = float(args.rate)
        except ValueError:
            raise UserError(f"--rate must be requests per second or 'max', got {args.rate!r}") from None
        if not math.isfinite(rate) or rate <= 0:
            raise UserError(f"--rate must be a positive number of requests per second (or 'max'), got {args.rate}")
    n = args.requests
    if n is None:
        n = CAPACITY_MIN_REQUESTS
        if rate is None and d is not None and not getattr(args, "search", False) and args.input_len >= 1 and args.output_len >= 1 \
                and 0 <= args.prefix_hit < 1:
            from .deployment import capacity_requests
            n = capacity_requests(model, hw, preset, d, args.input_len, args.output_len, args.prefix_hit, cache)
    return synthetic(n, rate, args.input_len, args.output_len, args.prefix_hit, args.seed)


def target(args: argparse.Namespace, cache: dict | None = None):
    """(model, hardware, preset, deployment, workload) from the deploy flags; `cache` keeps the step
    tables built while sizing a capacity run for the simulation."""
    from ..resolve import resolve_target
    model, hw, preset = resolve_target(args.model, args.model_file, args.hardware, args.hardware_file, args.preset)
    if getattr(args, "clock", "limit") == "boost":
        preset = replace(preset, power_limit=False)
    if getattr(args, "in_situ", "on") == "off":
        preset = replace(preset, comm_in_situ=False)
    d = _deployment(args, hw.gpus_per_node)
    return model, hw, preset, d, _workload(args, model, hw, preset, d, cache)


def simulate_args(args: argparse.Namespace, parts=None, cache: dict | None = None):
    """Run the deployment the flags describe: (result, summary dict)."""
    from .deployment import simulate_deployment
    from .metrics import summary
    cache = {} if cache is None else cache
    model, hw, preset, d, w = parts or target(args, cache)
    t0 = time.perf_counter()
    r = simulate_deployment(model, hw, preset, d, w, cache)
    s = summary(r, args.slo_ttft, args.slo_tpot)
    s.update({"model": model.name, "hardware": hw.name, "preset": preset.name, "workload": w.source},
             plan=d.label(), simulated_s=time.perf_counter() - t0, assumptions=assumptions(hw, preset, d, model),
             accuracy=accuracy((d.mode,) if d.mode in ("prefill", "decode") else ("prefill", "decode"), ("deploy",)))
    return r, s


def assumptions(hw, preset, d, model=None) -> dict:
    """What sets the figures beyond the flags: the stack's conventions, the in-situ term, the clock, and
    what of the model's own config the cost model does not represent (hfconfig.py)."""
    from ..stack import load_stack
    st = load_stack(d.stack or "catalog")
    out = {"stack": st.key, "stack_display": st.display, "releases": st.releases, "sched_ms": st.sched_ms,
           "eplb": st.eplb, "in_situ_slowdown": hw.in_situ.slowdown if hw.in_situ and preset.comm_in_situ else 0.0,
           "clock": "power-limited (power.py)" if hw.power and preset.power_limit else "boost"}
    out.update(notes(model, hw))
    return out


def assumptions_line(a: dict) -> str:
    rel = ", ".join(f"{k} {v}" for k, v in a["releases"].items()) or "catalog defaults"
    return (f"assumptions: stack {a['stack']} (releases {rel}; scheduler {a['sched_ms']['prefill']:g} / "
            f"{a['sched_ms']['decode']:g} ms per prefill / decode step; default expert placement at "
            f"{a['eplb']['prefill']:g} / {a['eplb']['decode']:g} of balanced); in-situ comm slowdown "
            f"{a['in_situ_slowdown']:g}; clock {a['clock']}" + line_note(a))


def cmd_deploy(args: argparse.Namespace) -> int:
    if args.output is not None:
        from .deploytrace import check_path
        check_path(args.output)
    if args.trace_requests < 0:
        raise UserError(f"--trace-requests is a number of requests to draw, 0 or more, got {args.trace_requests}")
    if args.requests_out is not None:
        _requests_format(args.requests_out)
    cache: dict = {}
    model, hw, preset, d, w = target(args, cache)
    parts = (model, hw, preset, d, w)
    head = {"model": model.name, "hardware": hw.name, "preset": preset.name, "workload": w.source}
    if args.search:
        return _search(args, model, hw, preset, d, w, head)
    r, s = simulate_args(args, parts, cache)
    if args.output:
        from .deploytrace import write
        write(r, args.output, {**head, "plan": d.label(), "summary": s}, args.trace_requests)
        s["trace"] = args.output
    if args.requests_out:
        _write_requests(r, args.requests_out)
        s["requests_out"] = args.requests_out
    if args.json:
        print_json(s, tag("tracegen-deploy"))
    else:
        print(render(s))
    return 0


def _requests_format(path: str) -> str:
    """The per-request table's format from its name: csv or parquet (else refused before simulating)."""
    for fmt in ("csv", "parquet"):
        if str(path).endswith(f".{fmt}"):
            return fmt
    raise UserError(f"--requests-out {path}: name it *.csv or *.parquet")


def _write_requests(r, path: str) -> None:
    import pandas as pd

    from ..base.fileio import atomic_parquet, atomic_write
    w = r.workload
    df = pd.DataFrame({"arrival_s": w.arrival_s, "input_len": w.input_len, "output_len": w.output_len,
                       "prefix_hit_len": w.prefix_hit_len, "prefill_start_s": r.prefill_start,
                       "prefill_end_s": r.prefill_end, "first_token_s": r.first_token,
                       "decode_start_s": r.decode_start, "finish_s": r.finish})
    df["ttft_ms"] = 1e3 * (df.first_token_s - df.arrival_s)
    df["tpot_ms"] = 1e3 * (df.finish_s - df.first_token_s) / (df.output_len - 1).where(df.output_len > 1)
    if _requests_format(path) == "parquet":
        atomic_parquet(path, df)
    else:
        atomic_write(path, df.to_csv(index=False))


def _search(args, model, hw, preset, d: Deployment, w, head: dict) -> int:
    from .search import search
    if args.nodes is None:
        raise UserError("--search needs --nodes (the node budget to split into prefill and decode pools)")
    if args.slo_ttft is None or args.slo_tpot is None:
        raise UserError("--search needs --slo-ttft and --slo-tpot (ms): the plan is the one with the most goodput "
                        "under them")
    best, cands = search(model, hw, preset, d, w, args.nodes, args.slo_ttft, args.slo_tpot, args.slo_attain,
                         min(len(w), args.requests or len(w)) if args.workload else len(w), args.seed)
    out = {**head, "nodes": args.nodes, "slo": {"ttft_ms": args.slo_ttft, "tpot_ms": args.slo_tpot,
                                                 "attain": args.slo_attain},
           "assumptions": assumptions(hw, preset, d, model), "accuracy": accuracy(("prefill", "decode"), ("deploy",)),
           "best": best.row() | {"metrics": best.metrics} if best else None,
           "candidates": [c.row() for c in cands]}
    if args.json:
        print_json(out, tag("tracegen-deploy-search"))
    else:
        print(render_search(out))
    if best is None:
        tried = [c for c in cands if c.metrics]
        c = max(tried, key=lambda c: c.metrics["slo"]["attained"])
        m = c.metrics
        raise UserError(f"no plan of {args.nodes} nodes meets TTFT < {args.slo_ttft:g} ms and TPOT < {args.slo_tpot:g} ms "
                        f"for {args.slo_attain:.0%} of requests; best: {c.deployment.label()} at {c.load:.0%} of its "
                        f"capacity: {m['slo']['attained']:.1%} attained (TTFT p90 {m['ttft_ms']['p90']:.0f} ms, "
                        f"TPOT p90 {m['tpot_ms']['p90']:.1f} ms)")
    return 0


def _n(x: Any, nd: int = 0) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:,.{nd}f}"


def _rests_on(s: dict) -> list[str]:
    """The lines under a deploy output's title: the assumptions its figures rest on and the rows' errors."""
    lines = [assumptions_line(s["assumptions"])] if s.get("assumptions") else []
    if s.get("accuracy"):
        lines.append(accuracy_line(s["accuracy"], lead="accuracy: "))
    return lines + [""]


def render(s: dict) -> str:
    lines = [f"{s['model']} on {s['hardware']} · {s['plan']} · preset {s['preset']}",
             f"workload: {s['workload']}; simulated in {s['simulated_s']:.2f} s, span {s['span_s']:.1f} s"]
    lines += _rests_on(s)
    head = (f"{'pool':<10}{'instances':>12}{'nodes':>7}{'busy':>7}{'cap used':>10}{'in tok/s/node':>15}{'steady':>10}"
            f"{'out tok/s/node':>16}{'steady':>10}{'batch/DP':>10}")
    lines += [head, "-" * len(head)]
    notes = []
    for p in s["pools"]:
        inst = f"{p['instances']} x {p['gpus_per_instance']}"
        cap = "-" if p.get("capacity_used") is None else f"{p['capacity_used']:.0%}"
        lines.append(f"{p['role']:<10}{inst:>12}{p['nodes']:>7g}{p['utilisation']:>7.0%}{cap:>10}"
                     f"{_n(p.get('input_tokens_per_s_per_node')):>15}{_n(p.get('input_tokens_per_s_per_node_steady')):>10}"
                     f"{_n(p.get('output_tokens_per_s_per_node')):>16}{_n(p.get('output_tokens_per_s_per_node_steady')):>10}"
                     f"{_n(p.get('mean_batch_per_dp'), 1):>10}")
        notes.append(f"{p['role']}: " + _steady_note(p))
    lines += ["", "busy: share of the run its instances ran a step; cap used: share of the token budget (prefill) "
                  "or batch limit (decode) those steps filled; steady: " + "; ".join(notes)]
    lines += ["", f"{'latency':<22}{'p50':>10}{'p90':>10}{'p99':>10}"]
    for key, label, div in (("ttft_ms", "TTFT ms", 1), ("tpot_ms", "TPOT ms", 1), ("e2e_ms", "end to end s", 1e3),
                            ("queue_ms", "queue before prefill ms", 1),
                            ("decode_wait_ms", "wait for decode slot ms", 1), ("tokens_per_s_per_user", "tokens/s per user", 1)):
        v = s[key]
        if all(v[f"p{q}"] is None for q in (50, 90, 99)):
            continue
        lines.append(f"{label:<22}" + "".join(
            f"{_n(None if v[f'p{q}'] is None else v[f'p{q}'] / div, 1 if div == 1 else 2):>10}" for q in (50, 90, 99)))
    if "slo" in s:
        slo = s["slo"]
        what = " and ".join(x for x in (f"TTFT < {slo['ttft_ms']:g} ms" if slo["ttft_ms"] else "",
                                        f"TPOT < {slo['tpot_ms']:g} ms" if slo["tpot_ms"] else "") if x)
        lines += ["", f"SLO {what}: met by {slo['attained']:.1%} of requests"]
    if "trace" in s:
        lines += ["", f"wrote {s['trace']}: open it in https://ui.perfetto.dev"]
    return "\n".join(lines)


def _steady_note(p: dict) -> str:
    w = p.get("steady_window_s")
    if not w:
        return "none (no request finished before the last entered the pool, and it never ran with work waiting)"
    why = ("from the first request finished to the last one entering the pool" if p["steady_basis"] == "arrivals"
           else "while work waited for the pool (it ran full)")
    return f"{w[0]:.1f}-{w[1]:.1f} s, {why}"


def render_search(out: dict) -> str:
    lines = [f"{out['model']} on {out['hardware']} · {out['nodes']} nodes · TTFT < {out['slo']['ttft_ms']:g} ms, "
             f"TPOT < {out['slo']['tpot_ms']:g} ms for {out['slo']['attain']:.0%} of requests"]
    lines += _rests_on(out)
    head = f"{'plan':<62}{'capacity req/s':>15}{'bound':>9}{'goodput req/s':>15}{'per GPU':>9}"
    lines += [head, "-" * len(head)]
    for c in out["candidates"][:10]:
        lines.append(f"{c['plan']:<62}{c['capacity_rps']:>15.2f}{c['bottleneck']:>9}"
                     f"{_n(c['goodput_rps'] or None, 2):>15}{_n(c['goodput_rps_per_gpu'] or None, 3):>9}")
    if out["best"]:
        b = out["best"]
        m = b["metrics"]
        lines += ["", f"best: {b['plan']}: {b['goodput_rps']:.2f} req/s within the SLO at {b['load']:.0%} of capacity "
                      f"(TTFT p90 {m['ttft_ms']['p90']:.0f} ms, TPOT p90 {m['tpot_ms']['p90']:.1f} ms)"]
    return "\n".join(lines)


__all__ = ["add_deploy_command", "add_deploy_args", "cmd_deploy", "simulate_args", "render", "render_search"]
