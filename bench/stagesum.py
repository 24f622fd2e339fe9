"""A published table's stages as sums of the cost model's ops of one DeepSeek-V3 MoE layer, and the
serving-stack figures several validation tables share (their sources beside them). Its own module so
that bench.validate, bench.ascend and bench.validate_deploy import it and not each other."""
from __future__ import annotations

from tracegen.catalog import load_model
from tracegen.cost import op_time
from tracegen.ops import layer_ops
from tracegen.plan import Plan
from tracegen.preset import load_preset
from tracegen.target import Target

DEFAULT = load_preset("default")
MODEL = load_model("deepseek-v3")

# LMSYS blog 2025-05-05 ("Deploying DeepSeek with PD Disaggregation and Large-scale Expert Parallelism on
# 96 H100 GPUs", Profile Results): prefill per node at 16,384 tokens per device and 4,096-token prompts,
# 50,302 with SGLang's default expert placement and 59,337 with simulated perfect EPLB
SGLANG_PREFILL_PERFECT = 59337.0
SGLANG_EPLB_DEFAULT = 50302.0 / 59337.0


def stage_sums(stages: dict[str, tuple[str, ...]], plan: Plan, hw) -> dict[str, float]:
    """A published table's stages as sums of the cost model's ops of one MoE layer (us)."""
    us = {w.name: op_time(w, plan, hw, DEFAULT).us for w in layer_ops(Target(MODEL, hw, DEFAULT, plan), dense=False)}
    missing = {o for ops in stages.values() for o in ops} - set(us)
    if missing:
        raise RuntimeError(f"bench: the layer has no op {sorted(missing)[0]!r}")
    return {st: sum(us[o] for o in ops) for st, ops in stages.items()}


__all__ = ["stage_sums", "SGLANG_EPLB_DEFAULT", "SGLANG_PREFILL_PERFECT", "DEFAULT", "MODEL"]
