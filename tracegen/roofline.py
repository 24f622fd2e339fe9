"""The MoE roofline: how many tokens each expert must see for its 8-bit GEMMs to be compute-bound,
and the expert parallelism that follows for decode (the serving lecture's argument)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .catalog import Hardware, Model


@dataclass(frozen=True)
class MoeRoofline:
    hardware: str
    q8_tflops: float                # the 8-bit dense peak (FP8, or INT8 where the chip has no FP8)
    q8_format: str
    hbm_tbps: float
    ridge_flops_per_byte: float     # peak FLOPs / HBM bytes
    min_tokens_per_expert: float    # M where 2MNK / (NK bytes of 8-bit weights) reaches the ridge
    tokens_per_expert_rounded: int  # rounded up to the next ten, as the lecture does
    global_batch_min: int           # tokens per step so every expert sees that many
    local_batch_max: int            # decode batch per GPU that keeps latency acceptable
    min_ep: int                     # global batch / local batch rounded down, as the source's table prints it
    min_ep_needed: int              # the same rounded up: the GPUs it really takes (H20: 1,280 / 30 -> 43, not 42)

    def to_dict(self) -> dict:
        return asdict(self)


def moe_roofline(hw: Hardware, model: Model, local_batch_max: int = 30) -> MoeRoofline:
    """For small M the expert GEMM's intensity is 2MNK / NK = 2M FLOP per weight byte (8-bit weights)."""
    hbm_tbps = hw.hbm_gbps / 1e3
    ridge = hw.q8_tflops / hbm_tbps
    m_min = ridge / 2
    m_round = int(math.ceil(m_min / 10) * 10)
    global_min = m_round * model.routed_experts // model.activated_experts
    return MoeRoofline(hw.name, hw.q8_tflops, hw.q8_format, hbm_tbps, ridge, m_min, m_round, global_min,
                       local_batch_max, global_min // local_batch_max, -(-global_min // local_batch_max))
