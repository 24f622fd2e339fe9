"""A deployment plan: how one model is spread over GPUs for one phase, and the per-GPU token
counts that follow from it. Attention is data-parallel across `dp` groups of `tp` GPUs each;
the MoE FFN is expert-parallel across `ep` GPUs."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .base.backends import (  # noqa: F401 (re-exported: the plan's backends)
    ASCEND_FUSED, COMM_BACKENDS, CPU_PROXY, IBGDA, INTRANODE, NORMAL, PCIE_COPY)
from .base.errors import UserError
from .catalog import Hardware, Model
from .routing import ROUTINGS

PHASES = ("prefill", "decode")
MAX_TOKENS_PER_GROUP = 1e8      # tokens one attention-DP group processes in one step; DeepSeek's prefill: 16K
MIN_TOKENS_PER_GROUP = 1e-3     # below this, float arithmetic of the cost model underflows
PRECISIONS = ("fp8", "int8", "bf16")    # 8-bit GEMMs run at the hardware's 8-bit peak (FP8 or INT8)



def elem_bytes(fmt: str) -> int:
    """Bytes per element of a GEMM or KV format: BF16 2, the 8-bit formats 1."""
    return 2 if fmt == "bf16" else 1


@dataclass(frozen=True)
class Plan:
    phase: str                   # "prefill" or "decode"
    batch: float                 # sequences per attention-DP group (decode: requests in flight)
    seq_len: int                 # prefill: prompt length; decode: context (KV) length
    kv_hit: float = 0.0          # prefill: fraction of the prompt found in the KV cache
    tp: int = 1                  # attention tensor parallelism
    dp: int = 1                  # attention data-parallel groups
    ep: int = 0                  # expert parallelism (0: tp * dp)
    gpus_per_node: int = 8
    redundant_experts: int = 0   # extra expert replicas placed by EPLB
    microbatches: int = 2        # two-batch overlap splits the batch in two
    comm: str = NORMAL           # all-to-all backend
    comm_sms: int | None = None  # override the backend's SM count
    precision: str = "fp8"       # GEMM precision: the hardware's 8-bit format (fp8 or int8) or bf16
    kv_dtype: str = "bf16"       # KV-cache element type: fp8, int8 or bf16
    decode_len: int = 1210       # decode: output tokens per request (memory sizing)
    imbalance: float = 1.0       # max / mean expert load across EP ranks (1 = balanced)
    routing: str = "model"       # fan-out of a token's experts: the model's group limits, or uniform top-k
    comm_release: str = ""       # the all-to-all library release whose published figures apply ("": default)
    mtp: int = 0                 # decode: draft tokens per request per step (multi-token prediction), 0: off
    mtp_accept: float = 0.85     # ... probability each draft token is accepted (DeepSeek-V3 report: 85-90 %)
    sched_ms: float = 0.0        # CPU time per step outside the GPU timeline (scheduler, batching), ms

    # ------------------------------------------------------------------ derived counts
    @property
    def num_gpus(self) -> int:
        return self.tp * self.dp

    @property
    def ep_size(self) -> int:
        return self.ep or self.num_gpus

    @property
    def nodes(self) -> int:
        return max(1, math.ceil(self.num_gpus / self.gpus_per_node))

    @property
    def kv_bytes_per_elem(self) -> int:
        return elem_bytes(self.kv_dtype)

    @property
    def gemm_bytes_per_elem(self) -> int:
        return elem_bytes(self.precision)

    @property
    def tokens_per_request(self) -> int:
        """Decode: tokens each request runs through the model per step (1 + MTP draft tokens verified)."""
        return 1 + self.mtp if self.phase == "decode" else 1

    @property
    def accepted_per_request(self) -> float:
        """Decode: output tokens a request gains per step: 1 + the expected accepted drafts (each
        draft counts only if every draft before it was accepted)."""
        return 1.0 + sum(self.mtp_accept ** i for i in range(1, self.mtp + 1)) if self.phase == "decode" else 1.0

    def tokens_per_group(self) -> float:
        """Tokens one attention-DP group processes in this step (prompt tokens in prefill)."""
        return self.batch * (self.seq_len if self.phase == "prefill" else 1)

    def experts_per_gpu(self, model: Model) -> float:
        return (model.routed_experts + self.redundant_experts) / self.ep_size

    def split(self, parts: int) -> "Plan":
        """The plan of one micro-batch when the batch is split into `parts`."""
        return replace(self, batch=self.batch / parts)


def validate(plan: Plan, model: Model, hw: Hardware) -> Plan:
    """Check a plan against its model and hardware; one clear error for the first problem."""
    if plan.phase not in PHASES:
        raise UserError(f"phase must be one of {', '.join(PHASES)}, got {plan.phase!r}")
    hw.backend(plan.comm)            # the hardware's own backends (its `comm` tables), not a fixed list
    for name in ("tp", "dp", "gpus_per_node", "microbatches", "seq_len"):
        if getattr(plan, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(plan, name)}")
    for name in ("batch", "kv_hit", "imbalance"):
        if not math.isfinite(getattr(plan, name)):
            raise UserError(f"--{name.replace('_', '-')} must be a finite number, got {getattr(plan, name)}")
    if plan.batch <= 0:
        raise UserError(f"--batch must be positive, got {plan.batch}")
    if plan.tokens_per_group() < MIN_TOKENS_PER_GROUP:
        raise UserError(f"{plan.tokens_per_group():.3g} tokens per step per DP group (--batch x --seq-len): at "
                        f"least {MIN_TOKENS_PER_GROUP:g} is needed for a meaningful step")
    if plan.tokens_per_group() > MAX_TOKENS_PER_GROUP or plan.seq_len > MAX_TOKENS_PER_GROUP:
        raise UserError(f"{plan.tokens_per_group():.3g} tokens per step per DP group (--batch x --seq-len) is beyond "
                        f"any deployment this models (at most {MAX_TOKENS_PER_GROUP:.0e})")
    if not 0.0 <= plan.kv_hit < 1.0:
        raise UserError(f"--kv-hit must lie in [0, 1), got {plan.kv_hit}")
    if plan.ep < 0 or plan.redundant_experts < 0:
        raise UserError("--ep and --redundant-experts must not be negative")
    if plan.ep_size > plan.num_gpus:
        raise UserError(f"--ep {plan.ep_size} exceeds the {plan.num_gpus} GPUs of tp x dp")
    experts = model.routed_experts + plan.redundant_experts
    if plan.ep_size > experts:
        raise UserError(f"--ep {plan.ep_size} leaves GPUs without an expert: {model.name} has {model.routed_experts} "
                        f"routed experts + {plan.redundant_experts} redundant ones (--redundant-experts adds "
                        f"replicas, e.g. {plan.ep_size - model.routed_experts} for EP{plan.ep_size})")
    if plan.precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {plan.precision!r}")
    if plan.precision != "bf16" and plan.precision != hw.q8_format:
        raise UserError(f"{hw.name} has no {plan.precision.upper()} GEMMs (its 8-bit format is "
                        f"{hw.q8_format.upper()}): use --precision {hw.q8_format} or bf16")
    if plan.kv_dtype not in PRECISIONS:
        raise UserError(f"--kv-dtype must be one of {', '.join(PRECISIONS)}, got {plan.kv_dtype!r}")
    if not 1.0 <= plan.imbalance <= max(1, plan.ep_size):
        raise UserError(f"--imbalance is max/mean expert load across the EP{plan.ep_size} ranks: it lies in "
                        f"[1, {max(1, plan.ep_size)}] (all load on one rank), got {plan.imbalance}")
    if not 0 <= plan.mtp <= 8:
        raise UserError(f"--mtp is draft tokens per request per step, 0 to 8, got {plan.mtp}")
    if plan.mtp and plan.phase != "decode":
        raise UserError("--mtp is for decode (prefill computes no drafts to verify)")
    if not (math.isfinite(plan.mtp_accept) and 0.0 <= plan.mtp_accept <= 1.0):
        raise UserError(f"--mtp-accept is a probability in [0, 1], got {plan.mtp_accept}")
    if not (math.isfinite(plan.sched_ms) and 0.0 <= plan.sched_ms <= 1e5):
        raise UserError(f"--sched-ms is CPU time per step in [0, 1e5] ms, got {plan.sched_ms}")
    if plan.routing not in ROUTINGS:
        raise UserError(f"--routing must be one of {', '.join(ROUTINGS)}, got {plan.routing!r}")
    if plan.comm_release:
        hw.backend(plan.comm).pick(plan.comm_release)
    cores, what = hw.comm_cores
    if plan.comm_sms is not None and not 0 <= plan.comm_sms < cores:
        raise UserError(f"--comm-sms must lie in [0, {cores}) ({what} on {hw.name}), got {plan.comm_sms}")
    if model.heads % plan.tp:
        raise UserError(f"--tp {plan.tp} does not divide the {model.heads} attention heads of {model.name}")
    return plan
