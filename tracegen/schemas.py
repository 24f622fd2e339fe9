"""The `--json` outputs of tracegen, one versioned schema each (msgspec structs; `make docs` writes
them as JSON Schema to docs/schemas/). Every output object carries `schema`: "<name>/<version>".
Conventions: times in the unit their key names (`_us`, `_ms`), counts as integers, lists as lists."""
from __future__ import annotations

from typing import Any

import msgspec

from .base.contract import IDLE_CAUSES


class Strict(msgspec.Struct, forbid_unknown_fields=True):
    """Base of every output struct: a key the schema does not name is an error."""


_S = Strict


class EstimateRow(_S):
    op: str                 # the row's id (the attention rows are MLA / DenseMLA for every model)
    label: str              # as printed: GQA / DenseGQA for a model without MLA
    ms_per_layer: float
    layers: int
    total_ms: float
    terms_ms: dict[str, float]


class Estimate(_S):
    """tracegen estimate --json: per-op rows and totals for one GPU."""
    schema: str
    model: str
    hardware: str
    preset: str
    plan: dict[str, Any]
    gpus: int
    nodes: int
    ep: int
    rows: list[EstimateRow]
    sum_overlap_ms: float
    sum_ms: float
    tokens_per_s_per_gpu_overlap: float
    tokens_per_s_per_gpu: float
    tokens_per_s_per_node_overlap: float
    tokens_per_s_per_node: float
    prefill_latency_overlap_ms: float | None = None     # prefill only
    prefill_latency_ms: float | None = None
    tpot_overlap_ms: float | None = None                # decode only
    tpot_ms: float | None = None
    tps_per_user_overlap: float | None = None
    tps_per_user: float | None = None
    comm_slack_ms: float | None = None
    step_overlap_ms: float | None = None                # decode: one step (TPOT x tokens per request per step)
    step_ms: float | None = None
    tokens_per_request_per_step: float | None = None    # decode: 1 + accepted MTP drafts
    max_batch: int | None = None
    dies_per_package: int | None = None                 # multi-die packages (Ascend 910C): a GPU is a die
    tokens_per_s_per_package_overlap: float | None = None
    tokens_per_s_per_package: float | None = None
    power_demand_w: float | None = None                 # hardware with a power model (tracegen/power.py):
    power_throttle: float | None = None                 # mean draw at boost, the clock drop it sets (0-1)
    power_compute_bound_share: float | None = None      # and the share of the step in compute-bound kernels
    assumptions: dict[str, Any] | None = None           # the stack's conventions etc. (tracegen/cli.assumptions)
    accuracy: dict[str, Any] | None = None              # the validation rows of the phase, the held-out kernel rows of
                                                        # the plan's backend and its tokens per rank per dispatch,
                                                        # a2a_tokens (tracegen/accuracy.py)
    scheduled_step_ms: float | None = None              # the step as tracegen trace schedules it
    tokens_per_s_per_gpu_scheduled: float | None = None


IdleCauses = msgspec.defstruct("IdleCauses", [(c, float) for c in IDLE_CAUSES], bases=(_S,))   # the contract's

class TraceLayer(_S):
    layer: int
    compute_us: float
    comm_us: float
    overlap_us: float


class RankOverlap(_S):
    """One rank's overlap, as both tracegen (scheduled) and replay (measured) report it."""
    rank: int
    span_us: float
    compute_us: float
    comm_us: float
    overlap_us: float
    exposed_comm_us: float
    compute_idle_us: float            # = the sum of idle_us
    hidden_comm_pct: float


class TraceRank(RankOverlap):
    idle_us: IdleCauses
    layers: list[TraceLayer]


class Trace(_S):
    """tracegen trace --json: the schedule's summary per rank (times from the first slice)."""
    schema: str
    output: str
    bytes: int
    tbo: str
    step_ms: float                      # the step from its start (the CPU's scheduling, --sched-ms, included) to its
                                        # last kernel: what `tracegen estimate` reports as scheduled_step_ms
    ranks: list[TraceRank]
    assumptions: dict[str, Any] | None = None
    accuracy: dict[str, Any] | None = None        # the validation rows of the phase, the held-out kernel rows of
                                                  # the plan's backend and its tokens per rank per dispatch,
                                                  # a2a_tokens (tracegen/accuracy.py)


class HardwareRow(_S):
    name: str
    display: str
    aliases: list[str]
    sms: int
    q8_tflops: float
    q8_format: str
    bf16_tflops: float
    dies_per_package: int
    hbm_gb: float
    hbm_gbps: float
    scaleup_gbps: float
    scaleup_domain: int
    scaleout_gbps: float
    comm: list[str]
    caveat: str | None = None      # what of the entry was not measured on the chip itself


class ModelRow(_S):
    name: str
    display: str
    aliases: list[str]
    attention: str
    layers: int
    dense_layers: int
    hidden: int
    heads: int
    routed_experts: int
    shared_experts: int
    top_k: int
    params_b: float
    source: str             # where the shapes came from (a config.json says what it does not model)


class PresetRow(_S):
    name: str
    display: str
    plan_defaults: dict[str, dict[str, Any]]


class ListHardware(_S):
    """tracegen list hardware --json"""
    schema: str
    hardware: list[HardwareRow]


class ListModels(_S):
    """tracegen list models --json"""
    schema: str
    models: list[ModelRow]


class ListPresets(_S):
    """tracegen list presets --json"""
    schema: str
    presets: list[PresetRow]


class Roofline(_S):
    """tracegen roofline --json"""
    schema: str
    hardware: str
    q8_tflops: float
    q8_format: str
    hbm_tbps: float
    ridge_flops_per_byte: float
    min_tokens_per_expert: float
    tokens_per_expert_rounded: int
    global_batch_min: int
    local_batch_max: int
    min_ep: int                     # rounded down, as the source's table prints it
    min_ep_needed: int              # rounded up: what the batch really needs


class Percentiles(_S):
    p50: float | None
    p90: float | None
    p99: float | None
    mean: float | None


class DeployPool(_S):
    role: str
    instances: int
    gpus_per_instance: int
    dp: int
    nodes: float
    gpus: int
    utilisation: float              # busy share of the run (first arrival to last finish), per instance
    capacity_used: float | None     # step-time-weighted share of the token budget / batch limit its steps used
    steady_window_s: list[float] | None   # [start, end] of the steady state, or None where there is none
    steady_basis: str | None        # "arrivals" (first finish to last arrival) | "saturated" (work waiting)
    steps: int
    max_batch_per_dp: float | None
    kv_tokens_per_dp: float | None
    input_tokens: float | None = None
    input_tokens_per_s_per_node: float | None = None
    input_tokens_per_s_per_node_steady: float | None = None
    new_tokens_per_s_per_node_steady: float | None = None
    output_tokens: float | None = None
    output_tokens_per_s_per_node: float | None = None
    output_tokens_per_s_per_node_steady: float | None = None
    mean_batch_per_dp: float | None = None
    step_tpot_ms: float | None = None
    prefill_steps: int | None = None


class Slo(_S):
    ttft_ms: float | None
    tpot_ms: float | None
    attained: float | None = None
    attain: float | None = None


class Deploy(_S):
    """tracegen deploy --json: one simulated deployment (times in ms unless the key says s)."""
    schema: str
    model: str
    hardware: str
    preset: str
    workload: str
    plan: str
    mode: str
    requests: int
    span_s: float
    simulated_s: float
    ttft_ms: Percentiles
    tpot_ms: Percentiles
    e2e_ms: Percentiles
    queue_ms: Percentiles
    decode_wait_ms: Percentiles
    tokens_per_s_per_user: Percentiles
    pools: list[DeployPool]
    slo: Slo | None = None
    trace: str | None = None
    assumptions: dict[str, Any] | None = None     # the stack's conventions, in-situ term, clock
    accuracy: dict[str, Any] | None = None        # the validation rows of the pools' phases (tracegen/accuracy.py)
    requests_out: str | None = None


class SearchRow(_S):
    plan: str
    prefill_nodes: int
    prefill_ep: int
    decode_nodes: int
    decode_ep: int
    gpus: int
    capacity_rps: float
    bottleneck: str
    goodput_rps: float
    goodput_rps_per_gpu: float
    load: float
    metrics: dict[str, Any] | None = None


class DeploySearch(_S):
    """tracegen deploy --search --json: every candidate plan ranked by capacity, the best by goodput."""
    schema: str
    model: str
    hardware: str
    preset: str
    workload: str
    nodes: int
    slo: Slo
    best: SearchRow | None
    candidates: list[SearchRow]
    assumptions: dict[str, Any] | None = None     # the stack's conventions every candidate runs on
    accuracy: dict[str, Any] | None = None        # the deployment rows of prefill and decode (tracegen/accuracy.py)


SCHEMAS: dict[str, tuple[type, int]] = {      # name -> (struct, version)
    "tracegen-estimate": (Estimate, 3), "tracegen-trace": (Trace, 2), "tracegen-list-hardware": (ListHardware, 3),
    "tracegen-list-models": (ListModels, 2), "tracegen-list-presets": (ListPresets, 1),
    "tracegen-roofline": (Roofline, 2), "tracegen-deploy": (Deploy, 3), "tracegen-deploy-search": (DeploySearch, 2),
}


def tag(name: str, schemas: dict[str, tuple[type, int]] | None = None) -> str:
    """The `schema` value of an output: "<name>/<version>"."""
    return f"{name}/{(schemas or SCHEMAS)[name][1]}"


__all__ = ["SCHEMAS", "tag", "Strict", "RankOverlap"]
