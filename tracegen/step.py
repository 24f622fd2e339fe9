"""Per-step work outside the transformer layers: the LM head (final norm, logits GEMM, sampling) and,
in decode with multi-token prediction, the MTP module that drafts the next step's tokens. The
embedding lookup is a glue op of the first layer's neighbourhood and is counted here too. No timing
here (that is cost.py); the CPU's own per-step time (`Plan.sched_ms`) is a plain number.

Counting (DeepSeek-V3's MTP as SGLang and DeepSeek serve it): a decode step verifies 1 + `mtp`
tokens per request through all layers and the LM head, then the MTP module (one projection of
[embedding; hidden state], one MoE transformer layer, the shared LM head) runs `mtp` times on one
token per request to draft the next step's tokens. Prefill computes logits for the last position
of each sequence only."""
from __future__ import annotations

from dataclasses import replace

from .catalog import Model
from .ops import BF16, Tokens, Work, gemm_flops, tokens
from .plan import Plan
from .preset import Preset

HEAD, MTP_ROW = "Head", "MTP"
HEAD_STAGE = "HEAD"
SAMPLING_KERNELS = 3        # softmax / top-p-top-k filtering / sampling (or argmax) over the vocabulary


def head_ops(model: Model, plan: Plan, t: Tokens, row: str = HEAD, prefix: str = "") -> list[Work]:
    """Embedding lookup, final norm, logits and sampling for one step of `plan`'s tokens on one GPU.
    The LM head is vocabulary-parallel over the attention TP group."""
    H, vocab = model.hidden, model.vocab_size / plan.tp
    rows = t.seqs if plan.phase == "prefill" else t.q_len      # positions whose logits are needed
    lm = ((rows, vocab, H, 1.0),)
    return [
        Work(f"{prefix}embed", row, HEAD_STAGE, "elementwise", hbm_bytes=t.q_len * H * BF16 * 2),
        Work(f"{prefix}final_norm", row, HEAD_STAGE, "elementwise", hbm_bytes=rows * H * BF16 * 2),
        Work(f"{prefix}lm_head", row, HEAD_STAGE, "gemm", gemm_flops(lm), "bf16", rows,
             vocab * H * BF16 + rows * (H * BF16 + vocab * 4), gemms=lm),
        Work(f"{prefix}sampling", row, HEAD_STAGE, "elementwise", hbm_bytes=rows * vocab * 4 * 2,
             kernels=SAMPLING_KERNELS),
    ]


def mtp_plan(plan: Plan) -> Plan:
    """The plan the MTP module runs under: one token per request, no drafts of its own."""
    return replace(plan, mtp=0)


def mtp_proj_ops(model: Model, plan: Plan, preset: Preset) -> list[Work]:
    """The MTP module's entry: RMSNorm of the embedding and of the hidden state (2 kernels), then
    the projection of their concatenation (2H -> H) - in the first stage of its layer."""
    t = tokens(model, mtp_plan(plan), preset)
    H, rows = model.hidden, t.q_len
    stage = "ATTN-0" if plan.phase == "decode" else "ATTN"
    proj = ((rows, H, 2 * H, 1.0),)
    wb = plan.gemm_bytes_per_elem
    return [Work("mtp_norms", MTP_ROW, stage, "elementwise", hbm_bytes=rows * 2 * H * BF16 * 2, kernels=2),
            Work("mtp_proj", MTP_ROW, stage, "gemm", gemm_flops(proj), plan.precision, rows,
                 2 * H * H * wb + rows * 3 * H * BF16, gemms=proj)]


__all__ = ["head_ops", "mtp_proj_ops", "mtp_plan", "HEAD", "MTP_ROW", "HEAD_STAGE"]
