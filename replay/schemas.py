"""The `--json` outputs of replay, one versioned schema each (msgspec structs; `make docs` writes
them as JSON Schema to docs/schemas/). Every output object carries `schema`: "<name>/<version>".
Conventions: every `start_us` counts from the trace's first event (`t0_us`, absolute, is given),
counts are integers, lists are lists."""
from __future__ import annotations

from typing import Any

import msgspec

from tracegen.base.contract import IDLE_GROUPS, OBSERVED_IDLE_CAUSES, UNEXPLAINED
from tracegen.schemas import RankOverlap
from tracegen.schemas import Strict as _S

# compute idle per cause, and per cause and group: their fields are the contract's causes and groups
# (tracegen/base/contract.py OBSERVED_IDLE_CAUSES, IDLE_GROUPS), never a list typed here
Idle = msgspec.defstruct("Idle", [(c, float) for c in (*OBSERVED_IDLE_CAUSES, UNEXPLAINED)], bases=(_S,))
IdleByGroup = msgspec.defstruct(
    "IdleByGroup", [(c, msgspec.defstruct(f"Idle_{c}", [(g, float) for g in gs], bases=(_S,)))
                    for c, gs in IDLE_GROUPS.items()], bases=(_S,))


class _Window(_S):
    """A stretch of one rank's timeline: its overlap figures."""
    step: int                       # profiler step (-1: the trace has none)
    start_us: float                 # from t0_us
    span_us: float
    compute_us: float
    comm_us: float
    overlap_us: float
    exposed_comm_us: float


class Layer(_Window):
    layer: int                      # a layer never straddles steps
    hidden_comm_pct: float
    stages: list[str]


class Step(_Window):
    peer_wait_us: float
    # where the step's range says what the iteration ran (replay/data/annotations.toml [phases], e.g. vLLM V1's
    # execute_context_<reqs>(<tokens>)_generation_<reqs>(<tokens>)): prefill, decode, mixed or idle, and its counts
    phase: str | None = None
    prefill_requests: int | None = None
    prefill_tokens: int | None = None
    decode_requests: int | None = None
    decode_tokens: int | None = None


class Straggler(_S):
    rank: int
    caused_us: float                # waiting its peers' communication spent on it
    reason: str                     # the reason behind most of it
    collectives: int                # collectives it arrived last at
    reasons_us: dict[str, float]


class Rank(RankOverlap):
    moe_compute_us: float
    streams_busy_us: dict[str, float]
    idle_us: Idle
    idle_by_group_us: IdleByGroup   # per cause, what held the launch back (or the reason seen)
    peer_wait_us: float             # time its communication kernels waited for the last-arriving peer
    layers: list[Layer] = []
    steps: list[Step] = []


class Stream(_S):
    rank: int
    stream: int
    thread: str
    role: str
    busy_us: float
    compute_us: float
    comm_us: float
    memory_us: float
    kernels: int
    top_comm: dict[str, int]


class Finding(_S):
    kind: str
    blocked_by: str | None          # the cause's group (IDLE_GROUPS): what held the launch back
    rank: int
    step: int | None
    layer: int | None
    microbatch: int | None
    stage: str | None
    start_us: float                 # from t0_us
    lost_us: float
    blocking_call: str | None       # cpu_blocked_launch: the call that waited (aten::item, a dispatch range),
                                    # or the host work outside ops with the ops before and after it
    peer: int | None                # waiting_on_peer: the rank waited for
    message: str


class Suspicious(_S):
    kind: str
    what: str
    count: int
    ranks: list[int]
    message: str


class Analyze(_S):
    """replay analyze --json"""
    schema: str
    sources: list[str]
    generated: bool
    structure: str
    window_us: list[float] | None
    cached: bool
    t0_us: float
    ranks: list[Rank]
    balancedness: float | None
    streams: list[Stream]
    idle_totals_us: Idle
    idle_by_group_us: IdleByGroup
    findings: list[Finding]         # the largest of each kind on each rank (--all-findings: every one)
    findings_total: int
    findings_included: int
    findings_by_kind: dict[str, dict[str, float]]   # kind -> {n, lost_us}: every finding counted
    clock: str                      # how the ranks were put on one clock
    stragglers: list[Straggler]
    suspicious_input: list[Suspicious]
    # the per-rank analyses registered in replay/pipeline.py ANALYSES: name -> rows (each with `rank`);
    # top_kernels: rank, name, klass, count, total_us, mean_us, share_pct (largest 10 per rank)
    analyses: dict[str, list[dict[str, Any]]] = {}


class StageRow(_S):
    rank: int
    layer: int
    microbatch: int
    stage: str
    stream: str                     # the stream the stage runs on: compute or comm
    pred_us: float | None
    obs_us: float | None
    diff_us: float | None
    error_pct: float | None


class LayerPair(_S):
    rank: int
    layer: int
    overlap_us_pred: float
    exposed_comm_us_pred: float
    comm_us_pred: float
    span_us_pred: float
    overlap_us_obs: float
    exposed_comm_us_obs: float
    comm_us_obs: float
    span_us_obs: float


class StageSummary(_S):
    stage: str
    stream: str
    n: int
    median_abs_error_pct: float
    p90_abs_error_pct: float
    mean_error_pct: float


class Discrepancy(StageRow):
    cause: str


class SpanPair(_S):
    rank: int
    pred_us: float
    obs_us: float
    error_pct: float


class Sources(_S):
    predicted: str
    observed: str


class Compare(_S):
    """replay compare --json"""
    schema: str
    sources: Sources
    spans: list[SpanPair]
    stages: list[StageRow]
    per_layer: list[LayerPair]
    summary: list[StageSummary]
    discrepancies: list[Discrepancy]
    matched: int
    missing_predicted: int
    missing_observed: int
    ranks: list[int]
    merged: list[str] | None = None     # stages one side names counted in their parent (stages.toml [parents])


class WhatifRank(_S):
    rank: int
    span_us: float
    overlap_us: float
    hidden_comm_pct: float
    exposed_comm_us: float
    observed_span_us: float | None
    observed_overlap_us: float | None
    no_change_span_us: float
    no_change_error_pct: float | None
    observed_hidden_comm_pct: float | None = None
    no_change_hidden_comm_pct: float | None = None


class Whatif(_S):
    """replay whatif --json"""
    schema: str
    output: str
    changes: dict[str, Any]
    assumptions: list[str]
    ranks: list[WhatifRank]


class ErrorRow(_S):
    kind: str
    set: str
    n: int
    median_abs_err_pct: float
    p90_abs_err_pct: float
    model: str


class Calibrate(_S):
    """replay calibrate --json"""
    schema: str
    output: str
    sources: list[str]
    hardware: dict[str, Any]
    errors: list[ErrorRow]


class Sql(_S):
    """replay sql --json: the result's columns and rows (values as DuckDB returns them)"""
    schema: str
    columns: list[str]
    rows: list[list[Any]]


class DiffRow(_S):
    what: str                       # a figure, a cause, cause/group, or a stage
    before_us: float                # per step (mean of the matched ranks)
    after_us: float
    delta_us: float
    change_pct: float | None        # None where before is 0


class DiffMatched(_S):
    ranks: list[int]
    only_before: list[int]
    only_after: list[int]
    steps_before: int
    steps_after: int
    how: str


class DiffRank(_S):
    rank: int
    before_us: float                # the rank's step span
    after_us: float
    delta_us: float
    change_pct: float | None
    peer_wait_before_us: float
    peer_wait_after_us: float


class Diff(_S):
    """replay diff --json"""
    schema: str
    matched: DiffMatched
    overall: list[DiffRow]
    causes: list[DiffRow]
    groups: list[DiffRow]
    ranks: list[DiffRank]
    stages: list[DiffRow]
    phases: list[DiffRow]           # mean step span per phase both runs' iteration ranges name ([] elsewhere)
    largest_changes: list[DiffRow]
    verdict: str
    slower_pct: float               # after's step span over before's, in percent (negative: faster)
    fail_if_slower_pct: float | None
    failed: bool                    # the exit status is 1
    structure_before: str
    structure_after: str


SCHEMAS: dict[str, tuple[type, int]] = {
    "replay-analyze": (Analyze, 6), "replay-compare": (Compare, 3), "replay-whatif": (Whatif, 1),
    "replay-calibrate": (Calibrate, 1), "replay-sql": (Sql, 1), "replay-diff": (Diff, 2),
}

__all__ = ["SCHEMAS"]
