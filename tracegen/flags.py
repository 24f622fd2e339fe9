"""The command-line flags tracegen's commands share (estimate, trace, deploy): what to model, the plan,
and the plan details deploy shares - and their resolution into a Target (tracegen/resolve.py), with
its note on stderr. The commands' own modules only parse and call."""
from __future__ import annotations

import argparse
import sys

from .base.cliutil import finite
from .plan import COMM_BACKENDS
from .preset import PRESETS
from .resolve import Target, resolve
from .routing import ROUTINGS
from .stack import DEFAULT_STACK, stack_names


def add_target_args(p: argparse.ArgumentParser, phase: bool = True) -> None:
    """--model/--hardware/--preset and the user-file variants (and --phase)."""
    g = p.add_argument_group("what to model")
    g.add_argument("--model", "-m", default=None,
                   help="model name from `tracegen list models` (default: deepseek-v3)")
    g.add_argument("--model-file", default=None, metavar="FILE",
                   help="your own model catalog (TOML or JSON, same fields as the built-in one), or a "
                        "model's Hugging Face config.json as it is")
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


__all__ = ["add_target_args", "add_plan_args", "add_shared_plan_args", "resolve_args"]
