"""Per-kernel evidence from DeepSeek's public training profile (`../shared/traces/deepseek-profile-data/
train.json`: EP64 over 8 H800 nodes, 4,096 tokens per rank per chunk, 20 SMs for communication):
the forward chunk's grouped expert GEMMs and internode dispatch / combine kernels, beside the cost
model's times for the same work.

    python -m bench.trainjson       # the table, and the DeepEP figures the 'profile' release holds

The forward chunk's ranges (user annotations mlp(F), dispatch(F), combine(F)) hold the kernels: in
mlp(F) the two m_grouped_fp8 GEMMs of each layer (up, then down); in dispatch(F) the internode
dispatch kernel; in combine(F) the internode combine. Medians over the four layers.

The dispatch and combine times are one rank's kernel durations: they include any wait for peers
that reached the collective later (a single-rank trace cannot separate it). They define the
`profile` release of the `normal` backend (DeepEP as DeepSeek's own profiles of Feb 2025 show it),
bytes counted the way DeepEP's benchmark counts them, so checking them against that release is a
consistency check, not an independent one; the GEMM rows are independent (their curves come from
InferSim's H800 measurements)."""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from replay import intervals
from tracegen.catalog import load_hardware, load_model
from tracegen.cost import op_time
from tracegen.ops import layer_ops
from tracegen.plan import Plan
from tracegen.power import Draw, draw
from tracegen.preset import load_preset
from tracegen.routing import fanout
from tracegen.target import Target

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT.parent / "shared" / "traces" / "deepseek-profile-data" / "train.json"
TOKENS = 4096           # per rank per chunk (DeepSeek-V3 pre-training: 4K sequences)
EP, NODES = 64, 8
COMM_SMS = 20           # DeepSeek-V3 report: 20 of 132 SMs run the all-to-all
MODEL = load_model("deepseek-v3")
PRESET = load_preset("default")
FP8_BYTES = 1 + 4 / 128     # per channel: FP8 value + one FP32 scale per 128


@lru_cache(maxsize=2)
def _events(path: Path) -> list[dict]:
    """train.json's events, parsed once for every table read from it."""
    return json.loads(path.read_bytes())["traceEvents"]


@lru_cache(maxsize=2)
def forward_kernels(path: Path = TRAIN) -> dict[str, list[float]]:
    """Kernel durations (us) of the forward chunk, per op: routed_up, routed_down, dispatch, combine."""
    ev = _events(path)
    kernels = {e["args"].get("correlation"): e for e in ev if e.get("ph") == "X" and e.get("cat") == "kernel"}
    runtime = [e for e in ev if e.get("ph") == "X" and e.get("cat") == "cuda_runtime"]
    out: dict[str, list[float]] = {"routed_up": [], "routed_down": [], "dispatch": [], "combine": []}
    for a in (e for e in ev if e.get("ph") == "X" and e.get("cat") == "user_annotation"
              and e["name"] in ("mlp(F)", "dispatch(F)", "combine(F)")):
        launched = [kernels[r["args"]["correlation"]] for r in runtime
                    if r["tid"] == a["tid"] and a["ts"] <= r["ts"] < a["ts"] + a["dur"]
                    and r["args"].get("correlation") in kernels]
        if a["name"] == "mlp(F)":
            grouped = [k["dur"] for k in launched if "m_grouped_fp8" in k["name"]]
            out["routed_up"] += grouped[0::2]
            out["routed_down"] += grouped[1::2]
        else:
            op = a["name"][:-3]
            out[op] += [k["dur"] for k in launched if f"internode::{op}<" in k["name"]]
    return out


def counted_bytes(op: str) -> float:
    """One rank's payload as DeepEP's benchmark counts it: every distinct destination node of a
    token (its own included) gets a copy; FP8 dispatch, BF16 combine."""
    nodes = fanout(MODEL, EP, EP // NODES).nodes
    return TOKENS * nodes * MODEL.hidden * (FP8_BYTES if op == "dispatch" else 2.0)


def profile_gbps(path: Path = TRAIN) -> dict[str, float]:
    """DeepEP-counted GB/s of the forward dispatch and combine (medians)."""
    k = forward_kernels(path)
    return {op: counted_bytes(op) / (float(np.median(k[op])) * 1e3) for op in ("dispatch", "combine")}


def plan() -> Plan:
    """The training forward chunk as an inference-shaped plan: 4,096 tokens per rank, EP64, 20 comm SMs."""
    return Plan(phase="prefill", batch=1, seq_len=TOKENS, tp=1, dp=EP, comm="normal", comm_release="profile",
                comm_sms=COMM_SMS, microbatches=1)


# kernels that run compute-bound (power.py: they set the draw): DeepSeek's FP8 GEMMs, cuBLAS GEMMs
# and FlashAttention's forward and backward main loops
HOT = ("GemmKernel", "xmma_gemm", "FlashAttnBwd<", "compute_attn")
COMM_KERNELS = ("internode::", "intranode::")


def _covered_us(kernels: list[dict]) -> float:
    """Time at least one of the kernels runs (their union)."""
    ts = np.array([k["ts"] for k in kernels], dtype=float)
    return intervals.length(*intervals.union(ts, ts + np.array([k["dur"] for k in kernels], dtype=float)))


@lru_cache(maxsize=2)
def train_draw(path: Path = TRAIN) -> Draw:
    """The training step's draw as its own kernels show it: the share of the profiled span the GPU
    spends in compute-bound kernels and in any compute kernel (the all-to-all's kernels left out,
    as the power model leaves them), under the H800's power model (700 W, as the H100's)."""
    every = [e for e in _events(path) if e.get("ph") == "X" and e.get("cat") == "kernel"]
    compute = [e for e in every if not any(c in e["name"] for c in COMM_KERNELS)]
    hot = [e for e in compute if any(h in e["name"] for h in HOT)]
    span = max(e["ts"] + e["dur"] for e in every) - min(e["ts"] for e in every)
    return draw(_covered_us(hot), _covered_us(compute), span, load_hardware("h800").power)


def predicted() -> dict[str, float]:
    """The cost model's us for the same work: expert GEMMs on the SMs left while the all-to-all
    runs (as in DualPipe's overlap), at the clock the training step's draw leaves (power.py),
    dispatch and combine from the `profile` release."""
    hw = replace(load_hardware("h800"), throttle=train_draw().throttle)
    p = plan()
    out = {}
    for w in layer_ops(Target(MODEL, hw, PRESET, p), dense=False):
        if w.name in ("routed_up", "routed_down"):
            out[w.name] = op_time(w, p, hw, PRESET, overlapped=True).us
        elif w.name in ("dispatch", "combine"):
            out[w.name] = op_time(w, p, hw, PRESET).us
    return out


def rows(path: Path = TRAIN) -> list[tuple[str, float, float]]:
    """(op, observed us, predicted us) per op."""
    k, pred = forward_kernels(path), predicted()
    return [(op, float(np.median(k[op])), pred[op]) for op in ("routed_up", "routed_down", "dispatch", "combine")]


def table(path: Path = TRAIN) -> str:
    lines = ["DeepSeek train.json, forward chunk (EP64, 4,096 tokens per rank, 20 comm SMs; medians of 4 layers)",
             f"  {'op':<12}{'observed us':>12}{'predicted us':>14}{'error':>8}  note"]
    notes = {"routed_up": "independent: DeepGEMM curve from InferSim's H800 data",
             "routed_down": "independent",
             "dispatch": "consistency: defines the 'profile' release (one rank: includes peer waits)",
             "combine": "consistency: defines the 'profile' release"}
    for op, obs, pred in rows(path):
        lines.append(f"  {op:<12}{obs:>12.1f}{pred:>14.1f}{100 * (pred / obs - 1):>7.1f}%  {notes[op]}")
    return "\n".join(lines)


def main() -> int:
    if not TRAIN.exists():
        print(f"no {TRAIN}: DeepSeek's train.json sits in ../shared/traces", file=sys.stderr)
        return 2
    g = profile_gbps()
    print(f"'profile' release (DeepEP-counted, EP{EP}): dispatch {g['dispatch']:.2f} GB/s, combine {g['combine']:.2f} GB/s")
    print(table())
    return 0


__all__ = ["forward_kernels", "profile_gbps", "predicted", "rows", "table", "replace"]

if __name__ == "__main__":
    sys.exit(main())
