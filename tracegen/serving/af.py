"""Attention-FFN (AF) disaggregated decode: attention GPUs (MLA, gate, shared expert, KV cache) and
expert GPUs (routed experts only) exchange each layer's tokens over the scale-out link, with m
micro-batches in a ping-pong pipeline (MegaScale-Infer; the serving lecture's figure 4) so that
each side works on one micro-batch while the other's tokens travel.

Per MoE layer and micro-batch: t_a (attention side), t_s (send the token copies, FP8 + scales),
t_f (routed experts on the expert side, every attention GPU's tokens spread over the expert GPUs),
t_r (return, BF16). A layer's cycle is max(m t_a, m t_f, t_a + t_s + t_f + t_r): the busier side
runs back to back unless one micro-batch's round trip is longer than m turns of it. The op times
are cost.py's for the same ops, so AF and EP decode are timed by one cost model."""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..base.errors import UserError
from ..catalog import Hardware
from ..cost import link_rate, op_time
from ..memory import attention_params, expert_params
from ..ops import layer_ops, tokens
from ..plan import IBGDA, Plan, validate
from ..preset import Preset
from ..target import Target
from ..step import head_ops

ATTENTION_ROWS = ("MLA", "Gate", "SharedExpert")     # rows of an MoE layer that stay with the KV cache
EXPERT_ROWS = ("RoutedExpert",)
SCALE_BYTES = 4 / 128                                  # one FP32 scale per 128 FP8 channels


@dataclass(frozen=True)
class AFShape:
    attention_gpus: int
    expert_gpus: int
    microbatches: int = 3


def _ms(ops, plan: Plan, hw: Hardware, preset: Preset) -> float:
    return sum(op_time(w, plan, hw, preset).ms for w in ops)


def _layer_ms(at: Target, dense: bool, rows: tuple[str, ...] | None = None) -> float:
    """Serial time (ms) of one layer's ops on `at` (its hardware as the preset sees it), or of those in `rows`."""
    _, hw, preset, plan = at
    return _ms([w for w in layer_ops(at, dense) if rows is None or w.row in rows], plan, hw, preset)


def distinct_ranks(k: int, ranks: int) -> float:
    """Expected distinct expert GPUs among a token's k experts, spread uniformly over `ranks`."""
    return ranks * (1 - (1 - 1 / ranks) ** k)


def layer_terms(target: Target, shape: AFShape) -> dict[str, float]:
    """t_a, t_s, t_f, t_r (ms) of one MoE layer for one micro-batch of `plan.batch / m` requests per
    attention GPU; the target's plan is the attention side's decode plan (dp = attention GPUs)."""
    model, hw, preset, plan = target
    m, A, F = shape.microbatches, shape.attention_gpus, shape.expert_gpus
    hw = preset.apply(hw)
    on = target.with_hardware(hw)
    mb = validate(replace(plan, batch=plan.batch / m, microbatches=1), model, hw)
    t_a = _layer_ms(on.with_plan(mb), False, ATTENTION_ROWS)
    # the expert side as its own EP group of F GPUs, fed by all A attention GPUs' tokens
    per_expert_gpu = A * mb.batch / F
    fp = validate(replace(mb, tp=1, dp=F, ep=F, batch=per_expert_gpu), model, hw)
    t_f = _layer_ms(on.with_plan(fp), False, EXPERT_ROWS)
    q = tokens(model, mb, preset).q_len                       # tokens per attention GPU per micro-batch
    copies = q * distinct_ranks(model.activated_experts, F)   # token copies one attention GPU sends
    # the busier end of the link: an attention GPU sends `copies`, an expert GPU receives A x copies / F
    busiest = copies * max(1.0, A / F)
    rate = link_rate(hw, preset, "scaleout") * 1e9 / 1e3      # bytes per ms
    lat = hw.backend(IBGDA).latency_us / 1e3 if IBGDA in hw.comm else 0.01
    H = model.hidden
    t_s = lat + busiest * H * (1 + SCALE_BYTES) / rate
    t_r = lat + busiest * H * 2 / rate
    return {"attention": t_a, "send": t_s, "experts": t_f, "return": t_r}


def step_ms(target: Target, shape: AFShape) -> float:
    """One decode step of an AF instance: the MoE layers' pipelined cycles, dense layers and the LM
    head on the attention GPUs, and the scheduler's CPU time."""
    model, hw, preset, plan = target
    if plan.mtp:
        raise UserError("AF decode does not model MTP drafting yet: use --mtp 0 with --decode-expert-nodes")
    m = shape.microbatches
    t = layer_terms(target, shape)
    cycle = max(m * t["attention"], m * t["experts"], sum(t.values()))
    hwp = preset.apply(hw)
    dense = 0.0
    if model.dense_layers:
        mb = validate(replace(plan, batch=plan.batch / m, microbatches=1), model, hw)
        dense = m * _layer_ms(Target(model, hwp, preset, mb), True)
    head = _ms(head_ops(model, plan, tokens(model, plan, preset)), plan, hwp, preset) if preset.step_terms else 0.0
    return model.moe_layers * cycle + model.dense_layers * dense + head + plan.sched_ms


def attention_kv_tokens(target: Target) -> float:
    """KV tokens one attention GPU holds: HBM x the usable share less attention, dense-layer and
    shared-expert weights and the embeddings (its routed experts live on the expert GPUs)."""
    model, hw, preset, plan = target
    hw = preset.apply(hw)
    wb = plan.gemm_bytes_per_elem
    weights = (model.layers * attention_params(model, preset.decode_mla_form) * wb / plan.tp
               + model.dense_layers * 3 * model.hidden * model.intermediate * wb
               + model.moe_layers * (model.shared_experts * expert_params(model) * wb + model.hidden * model.routed_experts * 2)
               + 2 * model.vocab_size * model.hidden * 2)
    per_token = model.kv_cache_elems * model.layers * plan.kv_bytes_per_elem
    return max(0.0, (hw.hbm_gb * 1e9 * preset.memory["util"] - weights) / per_token)


def check_expert_memory(target: Target, expert_gpus: int) -> None:
    """The routed experts' weights fit the expert GPUs' usable memory (else a clear error)."""
    model, hw, preset, plan = target
    hw = preset.apply(hw)
    need = (model.routed_experts + plan.redundant_experts) / expert_gpus * expert_params(model) \
        * plan.gemm_bytes_per_elem * model.moe_layers
    have = hw.hbm_gb * 1e9 * preset.memory["util"]
    if need > have:
        raise UserError(f"the routed experts need {need / 1e9:.0f} GB per expert GPU on {expert_gpus} GPUs, more than "
                        f"{have / 1e9:.0f} GB usable: give the expert side more nodes")


__all__ = ["AFShape", "layer_terms", "step_ms", "attention_kv_tokens", "check_expert_memory", "distinct_ranks"]
