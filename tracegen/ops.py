"""The op inventory of one transformer layer on one GPU: FLOPs, HBM bytes and link bytes per op,
from the model's shapes and the plan's per-GPU token counts. No timing here (that is cost.py).

Ops carry two labels: `row`, the line of the estimate table it adds to (the published
analysis's grouping), and `stage`, the two-batch-overlap stage it runs in (SGLang's naming:
prefill ATTN/SHARED/DISPATCH/MLP/COMBINE, decode ATTN-0/ATTN-1/...)."""
from __future__ import annotations

from dataclasses import dataclass

from .base.errors import UserError
from .catalog import Model
from .plan import Plan, elem_bytes
from .preset import Preset
from .target import Target
from .routing import fanout

BF16 = 2        # bytes per BF16 element
SCALE_GROUP = 128   # FP8 block scaling: one FP32 scale per 128 channels


Gemm = tuple[float, float, float, float]     # (M rows, N columns, K depth, how many such products)


def gemm_flops(gemms: tuple[Gemm, ...] | list[Gemm]) -> float:
    return sum(2 * m * n * k * c for m, n, k, c in gemms)


@dataclass(frozen=True)
class Work:
    """What one op asks of one GPU for one layer."""
    name: str                 # op id: mla_proj, attn_core, mla_out, tp_allreduce, gate, ...
    row: str                  # estimate-table row: DenseMLA, MLA, DenseMLP, Gate, SharedExpert, ...
    stage: str                # TBO stage: ATTN, ATTN-0, ATTN-1, SHARED, DISPATCH, MLP, COMBINE
    kind: str                 # efficiency kind: gemm, grouped_gemm, attention, allreduce, a2a
    flops: float = 0.0        # multiply-adds x 2
    rate: str = "fp8"         # compute class the FLOPs run at: "bf16" or an 8-bit format ("fp8", "int8")
    m: float = 0.0            # GEMM rows (tokens; tokens per expert for grouped GEMMs)
    hbm_bytes: float = 0.0    # weights + activations (+ KV for attention) moved through HBM
    kv_bytes: float = 0.0     # the KV-cache part of hbm_bytes (decode)
    scaleout_bytes: float = 0.0   # bytes leaving this GPU over RDMA
    scaleup_bytes: float = 0.0    # bytes leaving this GPU over NVLink / unified bus
    is_comm: bool = False
    kernels: int = 1          # matrix / attention kernels it launches (each costs at least a floor)
    gemms: tuple[Gemm, ...] = ()   # the matrix products behind `flops` (for shape-aware efficiency)

    @property
    def is_compute(self) -> bool:
        return not self.is_comm


@dataclass(frozen=True)
class Tokens:
    """Per-GPU token counts of one step (or one micro-batch) under a plan and preset."""
    q_len: float              # new query tokens per attention-DP group
    kv_len: float             # KV length they attend to (per sequence)
    seqs: float               # sequences per DP group
    attn_pairs: float         # (query, key) pairs per DP group for core attention
    moe_tokens: float         # tokens per GPU entering the MoE block (after attention)
    routed_tokens: float      # token-expert pairs per GPU for routed experts (slowest rank)
    kv_down_rate: float       # fraction of KV down-projection recomputed


def tokens(model: Model, plan: Plan, preset: Preset) -> Tokens:
    if plan.phase == "prefill":
        seqs, S = plan.batch, plan.seq_len
        hit = plan.kv_hit
        if preset.prefill_q_len == "seq_len":
            q_per_seq, kv_down_rate = S, (1 - hit if preset.kv_hit_applies_to == "kv_down_proj" else 1.0)
        else:
            q_per_seq, kv_down_rate = S * (1 - hit), 1.0
        if preset.attention_mask == "full":
            pairs = q_per_seq * S
        else:   # causal: new token at position i sees i+1 keys
            p = S - q_per_seq
            pairs = (S * (S + 1) - p * (p + 1)) / 2
        q_len = seqs * q_per_seq
        total = plan.dp * q_len
        moe_tokens = total / plan.num_gpus
        return Tokens(q_len=q_len, kv_len=S, seqs=seqs, attn_pairs=seqs * pairs, moe_tokens=moe_tokens,
                      routed_tokens=total * model.activated_experts / plan.ep_size * plan.imbalance,
                      kv_down_rate=kv_down_rate)
    seqs = plan.batch
    per_seq = plan.tokens_per_request      # 1, or 1 + draft tokens verified per step (MTP)
    if preset.decode_moe_tokens == "batch_per_gpu":
        moe_tokens = seqs * per_seq
        routed = moe_tokens * model.activated_experts
    else:
        moe_tokens = plan.dp * seqs * per_seq / plan.num_gpus
        routed = plan.dp * seqs * per_seq * model.activated_experts / plan.ep_size
    # the seed's mla_flops(1, seq_len, kv_cache_rate=1) skips even the new token's KV projection
    kv_down_rate = 0.0 if preset.kv_hit_applies_to == "kv_down_proj" else 1.0
    return Tokens(q_len=seqs * per_seq, kv_len=plan.seq_len, seqs=seqs, attn_pairs=seqs * per_seq * plan.seq_len,
                  moe_tokens=moe_tokens, routed_tokens=routed * plan.imbalance, kv_down_rate=kv_down_rate)


# ----------------------------------------------------------------------------- attention
def _gemm_bytes(m: float, k: float, n: float, weight_elem: float) -> float:
    """Weights once, input and output activations in BF16."""
    return k * n * weight_elem + m * (k + n) * BF16


def _gqa_ops(model: Model, plan: Plan, t: Tokens, tp: int, row: str, stages: tuple[str, str], kv_bytes: float,
             wo_rate: str) -> list[Work]:
    """Grouped-query attention: one QKV projection, the core (decode: memory-bound, its own curve), W_O."""
    pre, post = stages
    H, h, q, wb = model.hidden, model.heads, t.q_len, plan.gemm_bytes_per_elem
    attn_kind = "attention_decode_gqa" if plan.phase == "decode" else "attention"
    d, g = model.head_dim, model.kv_heads
    kv_split = min(tp, g)       # KV heads are split over TP ranks, replicated beyond g
    qkv = (h + 2 * g) * d
    proj = ((q, qkv / tp, H, 1),)
    out = ((q, H, h * d / tp, 1),)
    return [
        Work("attn_proj", row, pre, "gemm", gemm_flops(proj), plan.precision, q,
             _gemm_bytes(q, H, qkv, wb) / tp, kernels=1, gemms=proj),
        Work("attn_core", row, post, attn_kind, 2 * h * t.attn_pairs * 2 * d / tp, "bf16", q,
             kv_bytes / kv_split, kv_bytes=kv_bytes / kv_split),
        Work("attn_out", row, post, "gemm", gemm_flops(out), wo_rate, q,
             _gemm_bytes(q, h * d, H, wb) / tp, gemms=out),
    ]


def attention_ops(model: Model, plan: Plan, preset: Preset, t: Tokens, dense: bool) -> list[Work]:
    tp = plan.tp
    if dense and preset.dense_layer_attention_tp:
        tp = preset.dense_layer_attention_tp
    row = "DenseMLA" if dense else "MLA"
    decode = plan.phase == "decode"
    wb = plan.gemm_bytes_per_elem
    wo_rate = "bf16" if preset.wo_class == "attention" else plan.precision
    H, h = model.hidden, model.heads
    q, kv = t.q_len, t.kv_len
    kv_bytes = 0.0
    if decode:
        kv_elem = plan.kv_bytes_per_elem
        kv_bytes = t.seqs * kv * model.kv_cache_elems * kv_elem
    pre, post = ("ATTN-0", "ATTN-1") if decode else ("ATTN", "ATTN")
    # prefill attention (FlashAttention-style, long query tiles) and decode attention (FlashMLA-
    # style, one query per sequence against the cache) are different kernels with different curves
    attn_kind = "attention_decode" if decode else "attention"
    if model.attention == "gqa":
        return _gqa_ops(model, plan, t, tp, row, (pre, post), kv_bytes, wo_rate)
    # MLA: the products of each form as (M, N, K, count); with TP the heads split (N of the
    # up-projections, K of W_O, the per-head products) and the down-projections split by tokens
    r_q, r_kv, nope, rope, vd = (model.q_lora_rank, model.kv_lora_rank, model.qk_nope_head_dim,
                                 model.qk_rope_head_dim, model.v_head_dim)
    form = preset.decode_mla_form if decode else "standard"
    downs = [(q / tp, r_q, H, 1), (q * t.kv_down_rate / tp, r_kv + rope, H, 1)]
    if form == "standard":
        kv_rows = t.seqs * kv          # every KV position is up-projected, cached latents included
        proj = downs + [(q, h * (nope + rope) / tp, r_q, 1), (kv_rows, h * (nope + vd) / tp, r_kv, 1)]
        proj_w = H * r_q + r_q * h * (nope + rope) + H * (r_kv + rope) + r_kv * h * (nope + vd)
        core_macs = h * t.attn_pairs * (nope + rope + vd)
        out = [(q, H, h * vd / tp, 1)]
        out_w = h * vd * H
    elif form == "absorbed_merged":
        # seed004: W_UK folded into W_Q (q_absorb) and W_UV into W_O (o_absorb)
        proj = downs + [(q, h * rope / tp, r_q, 1), (q, h * r_kv / tp, r_q, 1)]
        proj_w = H * r_q + r_q * h * rope + h * r_q * r_kv + H * (r_kv + rope)
        core_macs = h * t.attn_pairs * (rope + 2 * r_kv)
        out = [(q, H, h * r_kv / tp, 1)]
        out_w = h * r_kv * H
    else:
        # absorbed with the original weights: q_up, then a per-head bmm with W_UK into the latent
        # space; attention over the latent cache (MQA); per-head W_UV bmm, then W_O. The two
        # per-head bmms run in BF16 (DeepSeek-V3's reference inference dequantises wkv_b for its
        # absorbed einsums): ops of their own
        proj = downs + [(q, h * (nope + rope) / tp, r_q, 1)]
        proj_w = H * r_q + H * (r_kv + rope) + r_q * h * (nope + rope)
        core_macs = h * t.attn_pairs * (rope + 2 * r_kv)
        out = [(q, H, h * vd / tp, 1)]
        out_w = h * vd * H
        q_bmm, o_bmm = ((q, r_kv, nope, h / tp),), ((q, vd, r_kv, h / tp),)
        absorb = (Work("q_absorb", row, pre, "gemm", gemm_flops(q_bmm), "bf16", q,
                       (h * nope * r_kv * BF16 + q * h * (nope + r_kv) * BF16) / tp, gemms=q_bmm),
                  Work("o_absorb", row, post, "gemm", gemm_flops(o_bmm), "bf16", q,
                       (h * r_kv * vd * BF16 + q * h * (r_kv + vd) * BF16) / tp, gemms=o_bmm))
    proj = tuple(g for g in proj if g[0] > 0)
    out = tuple(out)
    act = q * H * BF16
    ops = [
        Work("mla_proj", row, pre, "gemm", gemm_flops(proj), plan.precision, q,
             (proj_w * wb + 2 * act) / tp, kernels=len(proj), gemms=proj),
        Work("attn_core", row, post, attn_kind, 2 * core_macs / tp, "bf16", q,
             kv_bytes + q * h * (r_kv + rope) * BF16 / tp, kv_bytes=kv_bytes),
        Work("mla_out", row, post, "gemm", gemm_flops(out), wo_rate, q,
             (out_w * wb + 2 * act) / tp, kernels=len(out), gemms=out),
    ]
    if form == "absorbed":
        ops = ops[:1] + [absorb[0]] + ops[1:2] + [absorb[1]] + ops[2:]
    return ops


def allreduce_op(model: Model, plan: Plan, preset: Preset, t: Tokens, dense: bool) -> list[Work]:
    tp = plan.tp
    if dense and preset.dense_layer_attention_tp:
        tp = preset.dense_layer_attention_tp
    if tp <= 1:
        return []
    row = "DenseMLA" if dense else "MLA"
    stage = "ATTN-1" if plan.phase == "decode" else "ATTN"
    if preset.allreduce_tokens == "seq_len":
        size = plan.seq_len * model.hidden * BF16          # the seed's quirk, decode included
    else:
        size = t.q_len * model.hidden * BF16 * 2 * (tp - 1) / tp   # ring: reduce-scatter + all-gather
    return [Work("tp_allreduce", row, stage, "allreduce", scaleup_bytes=size, is_comm=True)]


# ----------------------------------------------------------------------------- FFN
def _ffn(name: str, row: str, stage: str, kind: str, rows: float, width: int, hidden: int,
         copies: float, precision: str, m: float) -> Work:
    """SwiGLU FFN of `copies` experts, `m` rows each: gate and up fused (hidden -> 2 x width),
    then down (width -> hidden); a grouped GEMM runs all experts in one kernel each."""
    gemms = ((m, 2 * width, hidden, rows / m if m else 0), (m, hidden, width, rows / m if m else 0))
    weights = copies * 3 * hidden * width * elem_bytes(precision)
    return Work(name, row, stage, kind, gemm_flops(gemms), precision, m,
                weights + rows * (2 * hidden + 3 * width) * BF16, kernels=2, gemms=gemms)


def _ffn_halves(name: str, row: str, stage: str, kind: str, rows: float, width: int, hidden: int,
                copies: float, precision: str, m: float) -> list[Work]:
    """The same FFN as two kernels, as grouped expert GEMMs run: `<name>_up` (gate and up fused,
    hidden -> 2 x width) and `<name>_down` (width -> hidden), each with its own weights and
    activations (the SwiGLU between them is a glue op)."""
    n = rows / m if m else 0
    rate, weight_elem = precision, elem_bytes(precision)
    if kind == "grouped_gemm_masked":
        # the masked kernel spreads (expert, row block, column block) tiles over the SMs: its
        # efficiency follows all its rows (InferSim's H800 masked measurements: median error 9 %
        # this way, 10.5 % by rows per expert); the contiguous kernel pads each expert's rows to
        # its block, so rows per expert decide (2 % vs 5 %)
        m, n = rows, 1.0 if rows else 0.0
    up, down = ((m, 2 * width, hidden, n),), ((m, hidden, width, n),)
    return [Work(f"{name}_up", row, stage, kind, gemm_flops(up), rate, m,
                 copies * 2 * hidden * width * weight_elem + rows * (hidden + 2 * width) * BF16, gemms=up),
            Work(f"{name}_down", row, stage, kind, gemm_flops(down), rate, m,
                 copies * hidden * width * weight_elem + rows * (width + hidden) * BF16, gemms=down)]


def dense_mlp_op(model: Model, plan: Plan, preset: Preset, t: Tokens) -> Work:
    # split: sequence-parallel, each GPU its own tokens with the full weights;
    # the seed: the whole DP group's tokens on one GPU
    rows = t.moe_tokens if preset.dense_mlp_split else t.q_len
    return _ffn("dense_mlp", "DenseMLP", "MLP", "gemm", rows, model.intermediate, model.hidden,
                1.0, plan.precision, rows)


def gate_op(model: Model, plan: Plan, t: Tokens) -> list[Work]:
    """The router: its GEMM (BF16, hidden -> experts), then the routing kernels (score function,
    group top-k, top-k, weight normalisation), each a small memory-bound kernel."""
    rows = t.moe_tokens
    stage = "ATTN-1" if plan.phase == "decode" else "ATTN"
    gemms = ((rows, model.routed_experts, model.hidden, 1),)
    scores = rows * model.routed_experts * 4            # FP32 scores, read and written per routing kernel
    groups = model.group_limited
    return [Work("gate", "Gate", stage, "gemm", gemm_flops(gemms), "bf16",
                 rows, model.hidden * model.routed_experts * BF16 + rows * model.hidden * BF16, gemms=gemms),
            Work("routing", "Gate", stage, "elementwise", hbm_bytes=2 * scores * ROUTING_KERNELS[groups],
                 kernels=ROUTING_KERNELS[groups])]


# routing kernels after the gate GEMM, as SGLang runs DeepSeek-V3's router: the score function (+ the
# load-balancing bias), one fused top-k (the group top-k first where the model limits groups, as
# moe_fused_gate does), the weight normalisation and scaling
ROUTING_KERNELS = {False: 2, True: 3}


def expert_ops(target: Target, t: Tokens) -> list[Work]:
    model, hw, _, plan = target
    out = []
    if model.shared_experts:
        out.append(_ffn("shared_expert", "SharedExpert", "SHARED", "gemm", t.moe_tokens * model.shared_experts,
                        model.moe_intermediate, model.hidden, model.shared_experts, plan.precision, t.moe_tokens))
    local = plan.experts_per_gpu(model)
    # low-latency dispatch hands the experts a masked [experts x max tokens] layout (masked grouped
    # GEMM); the normal dispatch a contiguous one
    kind = "grouped_gemm_masked" if hw.backend(plan.comm).expert_layout == "masked" else "grouped_gemm"
    out += _ffn_halves("routed", "RoutedExpert", "MLP", kind, t.routed_tokens, model.moe_intermediate, model.hidden,
                       local, plan.precision, t.routed_tokens / max(local, 1e-9))
    return out


# ----------------------------------------------------------------------------- all-to-all
def a2a_ops(target: Target, t: Tokens) -> list[Work]:
    """Dispatch (FP8 payload) and combine (BF16 payload) bytes leaving one GPU; how many copies of
    a token leave follows from the routing fan-out (routing.py) and the backend's deduplication."""
    model, hw, preset, plan = target
    H, k = model.hidden, model.activated_experts
    scale = (4 / SCALE_GROUP) if preset.quant_scale_bytes and plan.precision != "bf16" else 0.0
    elem = {"dispatch": plan.gemm_bytes_per_elem + scale, "combine": float(BF16)}
    tok = t.moe_tokens
    domain = hw.scaleup_domain
    ep = plan.ep_size
    backend = hw.backend(plan.comm)
    out = []
    for name, stage in (("dispatch", "DISPATCH"), ("combine", "COMBINE")):
        row = name.capitalize()
        if plan.phase == "decode" and preset.decode_dispatch == "all_remote_one_nic":
            out.append(Work(name, row, stage, "a2a", scaleout_bytes=tok * k * H * elem[name], is_comm=True))
            continue
        if backend.rank_dedup:
            # intranode normal kernels: each token once to every other rank holding one of its experts
            if ep > domain:
                raise UserError(f"the {backend.name} backend keeps the all-to-all inside one scale-up domain "
                                f"({domain} GPUs on {hw.name}); EP {ep} needs a backend that crosses it "
                                f"(normal, ibgda)")
            remote = fanout(model, ep, domain, plan.routing, preset.fanout).remote_ranks
            out.append(Work(name, row, stage, "a2a", scaleup_bytes=tok * remote * H * elem[name], is_comm=True))
            continue
        if backend.node_dedup and ep > domain:
            # normal kernels: one RDMA copy per remote node, then NVLink forwarding inside it
            fan = fanout(model, ep, domain, plan.routing, preset.fanout)
            rdma = tok * fan.remote_nodes * H * elem[name]
            nvl = tok * k * H * elem[name] * (domain - 1) / domain / fan.n_nodes
            out.append(Work(name, row, stage, "a2a", scaleout_bytes=rdma, scaleup_bytes=nvl, is_comm=True))
            continue
        # one copy per top-k expert: those inside the scale-up domain over NVLink / UB
        inside = min(ep, domain)
        up_frac = (inside - 1) / ep
        out_frac = max(0.0, 1 - inside / ep)
        copies = tok * k * H * elem[name]
        out.append(Work(name, row, stage, "a2a", scaleout_bytes=copies * out_frac,
                        scaleup_bytes=copies * up_frac, is_comm=True))
    return out


# ----------------------------------------------------------------------------- glue
def glue_ops(model: Model, plan: Plan, t: Tokens, dense: bool) -> list[Work]:
    """The memory-bound kernels between the matrix products: norms, residual adds, RoPE, SwiGLU
    activations and FP8 quantisation of GEMM inputs. Bytes read + written per token (BF16 in,
    FP8 + scales out), a few kernels each; in DeepSeek's train.json such kernels take a quarter
    of the compute stream."""
    H = model.hidden
    decode = plan.phase == "decode"
    q, tok = t.q_len / plan.tp, t.moe_tokens
    if model.attention == "mla":
        lat = model.q_lora_rank + model.kv_lora_rank
        rope = model.heads * model.qk_rope_head_dim / plan.tp
        o_in = model.heads * model.v_head_dim / plan.tp
    else:
        lat, rope, o_in = 0, model.heads * model.head_dim / plan.tp, model.heads * model.head_dim / plan.tp
    row = "DenseMLA" if dense else "MLA"
    pre, post = ("ATTN-0", "ATTN-1") if decode else ("ATTN", "ATTN")
    # input norm (4H) + FP8 quant (3H) + latent norms and quant (7 lat) + RoPE on q and k (4 rope) +
    # the KV-cache store; kernels: input norm, input quant, q-latent norm, kv-latent norm, q-latent
    # quant, RoPE, cache store
    attn_in = q * (7 * H + 7 * lat + 4 * rope)
    # quant before W_O (3 o_in), one kernel of the output-projection chain; then residual add and
    # post-attention norm (6H) + quant for the FFN (3H)
    ops = [Work("attn_glue", row, pre, "elementwise", hbm_bytes=attn_in, kernels=7),
           Work("o_quant", row, post, "elementwise", hbm_bytes=q * 3 * o_in),
           Work("post_attn_glue", row, post, "elementwise", hbm_bytes=q * 9 * H, kernels=3)]
    ffn = lambda name, row_, stage, rows, width: Work(  # noqa: E731 - SwiGLU (6 width) + quant (3 width)
        name, row_, stage, "elementwise", hbm_bytes=rows * 9 * width, kernels=2)
    if dense:
        return ops + [ffn("dense_glue", "DenseMLP", "MLP", tok, model.intermediate)]
    if model.shared_experts:
        ops.append(ffn("shared_glue", "SharedExpert", "SHARED", tok * model.shared_experts, model.moe_intermediate))
    ops.append(ffn("routed_glue", "RoutedExpert", "MLP", t.routed_tokens, model.moe_intermediate))
    return ops


def layer_ops(target: Target, dense: bool) -> list[Work]:
    """All ops of one layer (dense or MoE) on one GPU, in execution order."""
    model, _, preset, plan = target
    t = tokens(model, plan, preset)
    glue = {w.name: w for w in glue_ops(model, plan, t, dense)} if preset.glue else {}
    g = lambda *names: [glue[n] for n in names if n in glue]  # noqa: E731
    attn = attention_ops(model, plan, preset, t, dense)
    ops = (g("attn_glue") + attn[:-1] + g("o_quant") + attn[-1:] + g("post_attn_glue")
           + allreduce_op(model, plan, preset, t, dense))
    if dense:
        return ops + [dense_mlp_op(model, plan, preset, t)] + g("dense_glue")
    if preset.gate:
        ops += gate_op(model, plan, t)[:None if preset.glue else 1]     # the routing kernels are glue
    experts = expert_ops(target, t)
    dispatch, combine = a2a_ops(target, t)
    shared = [w for w in experts if w.name == "shared_expert"] + g("shared_glue")
    routed = [w for w in experts if w.name.startswith("routed_")] + g("routed_glue")
    return ops + shared + [dispatch] + routed + [combine]
