"""Weights and KV cache per GPU, and the largest decode batch that fits in HBM."""
from __future__ import annotations

from .catalog import Model
from .plan import Plan
from .target import Target


def attention_params(model: Model, mla_form: str = "standard") -> float:
    """Attention weights of one layer (the merged absorbed form stores W_Q.W_UK and W_UV.W_O)."""
    H, h = model.hidden, model.heads
    if model.attention == "gqa":
        return H * (h + 2 * model.kv_heads) * model.head_dim + h * model.head_dim * H
    r_q, r_kv, nope, rope, vd = (model.q_lora_rank, model.kv_lora_rank, model.qk_nope_head_dim,
                                 model.qk_rope_head_dim, model.v_head_dim)
    if mla_form == "absorbed_merged":
        return H * r_q + r_q * h * rope + h * r_q * r_kv + H * (r_kv + rope) + h * r_kv * H
    return H * r_q + r_q * h * (nope + rope) + H * (r_kv + rope) + r_kv * h * (nope + vd) + h * vd * H


def expert_params(model: Model) -> float:
    return 3 * model.hidden * model.moe_intermediate


def total_params(model: Model) -> float:
    """All weights of the model (embedding and head included, MTP module excluded)."""
    per_dense = 3 * model.hidden * model.intermediate
    per_moe = (model.routed_experts + model.shared_experts) * expert_params(model) + model.hidden * model.routed_experts
    return (model.layers * attention_params(model) + model.dense_layers * per_dense
            + model.moe_layers * per_moe + 2 * model.vocab_size * model.hidden)


def weight_bytes_per_gpu(model: Model, plan: Plan, mla_form: str) -> float:
    wb = plan.gemm_bytes_per_elem
    local = plan.experts_per_gpu(model) + model.shared_experts
    return (model.layers * attention_params(model, mla_form) * wb / plan.tp
            + model.dense_layers * 3 * model.hidden * model.intermediate * wb
            + model.moe_layers * (local * expert_params(model) * wb + model.hidden * model.routed_experts * 2)
            + 2 * model.vocab_size * model.hidden * 2)


def kv_bytes_per_seq(model: Model, plan: Plan, context: int) -> float:
    per_token = model.kv_cache_elems * model.layers * plan.kv_bytes_per_elem
    if model.attention == "gqa":
        per_token /= min(plan.tp, model.kv_heads)
    return context * per_token


def max_batch(target: Target, mla_form: str | None = None) -> float:
    """Largest number of sequences of `seq_len + decode_len` tokens one DP group's GPU can hold."""
    model, hw, preset, plan = target
    hw = preset.apply(hw)
    form = mla_form or preset.decode_mla_form
    mem = preset.memory
    context = plan.seq_len + plan.decode_len
    if "others_gb" in mem:
        # the seed's arithmetic: parameter counts in millions over 1024 read as GB, GB x 2^30 bytes
        mla_m = mem["mla_absorbed_params_m"] if form == "absorbed_merged" else mem["mla_params_m"]
        experts = plan.experts_per_gpu(model) + model.shared_experts
        free_gb = (hw.hbm_gb * mem["util"] - mem["others_gb"] - mla_m * model.layers / plan.tp / 1024
                   - mem["expert_params_m"] * model.moe_layers * experts / 1024)
        kv = context * model.kv_cache_elems * model.layers * plan.kv_bytes_per_elem
        if mem.get("kv_times_tp"):
            kv *= plan.tp
        return free_gb * 2 ** 30 / kv
    free = hw.hbm_gb * 1e9 * mem["util"] - weight_bytes_per_gpu(model, plan, form)
    return max(0.0, free / kv_bytes_per_seq(model, plan, context))
