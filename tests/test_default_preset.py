"""The default preset is physically right where seed004 is not (DESIGN.md section 4)."""
from __future__ import annotations

from dataclasses import replace

import pytest

from tracegen.catalog import load_hardware, load_model
from tracegen.cost import op_time
from tracegen.estimate import estimate
from tracegen.ops import layer_ops
from tracegen.plan import Plan
from tracegen.preset import load_preset
from tracegen.target import Target

MODEL = load_model("deepseek-v3")
H800 = load_hardware("h800")
DEFAULT = load_preset("default")
SEED = load_preset("seed004")


def ops(plan, preset=DEFAULT, dense=False, hw=H800):
    return {w.name: w for w in layer_ops(Target(MODEL, hw, preset, plan), dense)}


def prefill(**kw):
    base = dict(phase="prefill", batch=1, seq_len=4096, tp=1, dp=32)
    return Plan(**{**base, **kw})


def test_cache_hits_are_not_recomputed():
    cold, warm = ops(prefill(kv_hit=0.0)), ops(prefill(kv_hit=0.5))
    for name in ("routed_up", "shared_expert", "gate"):
        assert warm[name].flops == pytest.approx(cold[name].flops * 0.5)
    # the seed saves only the KV down-projection: experts unchanged
    s_cold, s_warm = ops(prefill(kv_hit=0.0), SEED), ops(prefill(kv_hit=0.5), SEED)
    assert s_warm["routed_up"].flops == s_cold["routed_up"].flops
    kv_down = 2 * 4096 * MODEL.hidden * (MODEL.kv_lora_rank + MODEL.qk_rope_head_dim)
    assert s_cold["mla_proj"].flops - s_warm["mla_proj"].flops == pytest.approx(0.5 * kv_down)


def test_prefill_attention_is_causal():
    full = ops(prefill(), replace(DEFAULT, attention_mask="full"))["attn_core"].flops
    causal = ops(prefill())["attn_core"].flops
    assert causal / full == pytest.approx((4096 + 1) / (2 * 4096))


def test_allreduce_moves_the_real_activation():
    for phase, batch, q in (("prefill", 1, 4096), ("decode", 64, 64)):
        plan = Plan(phase=phase, batch=batch, seq_len=4096, tp=4, dp=8)
        ar = ops(plan)["tp_allreduce"]
        assert ar.scaleup_bytes == pytest.approx(q * MODEL.hidden * 2 * 2 * 3 / 4)
        seed_ar = ops(plan, SEED)["tp_allreduce"]
        assert seed_ar.scaleup_bytes == 4096 * MODEL.hidden * 2     # seq_len, whatever the phase


def test_every_compute_op_is_max_of_compute_memory_and_kernel_floor():
    for phase in ("prefill", "decode"):
        plan = Plan(phase=phase, batch=8 if phase == "decode" else 1, seq_len=4096, tp=1, dp=32)
        for w in layer_ops(Target(MODEL, H800, DEFAULT, plan), dense=False):
            t = op_time(w, plan, H800, DEFAULT)
            if w.is_compute:
                floor = H800.curve(w.kind).floor_us * w.kernels / 1e3
                assert t.terms.get("floor_ms", 0.0) == pytest.approx(floor)
                assert t.ms == pytest.approx(max(t.terms.get("compute_ms", 0.0), t.terms["memory_ms"], floor))


def test_gemm_efficiency_falls_at_small_m():
    assert H800.eff("gemm", 16) < H800.eff("gemm", 256) < H800.eff("gemm", 8192) <= H800.efficiency["gemm"].max
    # A 16-row decode expert GEMM reaches only a few percent of peak: it is weight-bound.
    plan = Plan(phase="decode", batch=2, seq_len=4096, tp=1, dp=128)
    w = ops(plan)["routed_up"]
    t = op_time(w, plan, H800, DEFAULT)
    achieved = w.flops / (t.ms * 1e-3) / 1e12
    assert w.m <= 16 and achieved / H800.q8_tflops < 0.05


def test_comm_sms_are_taken_only_while_communication_runs():
    plan = prefill(comm="normal")
    w = ops(plan)["routed_up"]
    alone, shared = op_time(w, plan, H800, DEFAULT), op_time(w, plan, H800, DEFAULT, overlapped=True)
    assert shared.terms["compute_ms"] == pytest.approx(alone.terms["compute_ms"] * 132 / 108)
    # the seed slows compute by the comm SMs even when nothing overlaps it
    s_alone = op_time(ops(plan, SEED)["routed_up"], plan, H800, SEED)
    s_ref = op_time(ops(plan, SEED)["routed_up"], replace(plan, comm_sms=0), H800, SEED)
    assert s_alone.ms == pytest.approx(s_ref.ms * 132 / 108)


def test_overlapped_sum_never_below_either_side_and_never_above_the_plain_sum():
    for phase in ("prefill", "decode"):
        for batch in (1, 4, 64):
            plan = Plan(phase=phase, batch=batch, seq_len=4096, tp=1, dp=32)
            est = estimate(Target(MODEL, H800, DEFAULT, plan))
            comm = sum(t.ms for t in est.moe_ops if t.work.kind == "a2a")
            assert est.sum_overlap_ms <= est.sum_ms + 1e-9
            assert est.sum_overlap_ms >= MODEL.moe_layers * comm - 1e-9


def test_imbalance_stretches_routed_experts():
    even, skew = ops(prefill()), ops(prefill(imbalance=1.5))
    assert skew["routed_up"].flops == pytest.approx(1.5 * even["routed_up"].flops)


@pytest.mark.parametrize("model", ["deepseek-v3", "kimi-k2", "qwen3-235b-a22b", "qwen3-30b-a3b"])
@pytest.mark.parametrize("hw", ["h800", "h20", "h100", "h200", "b200", "ascend-910c"])
@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_every_catalog_pair_estimates(model, hw, phase):
    m, h = load_model(model), load_hardware(hw)
    comm = "ascend-fused" if hw == "ascend-910c" else ("ibgda" if phase == "decode" else "normal")
    plan = Plan(phase=phase, batch=4 if phase == "prefill" else 64, seq_len=2048, tp=1, dp=16, comm=comm)
    est = estimate(Target(m, h, DEFAULT, plan))
    assert 0 < est.sum_overlap_ms <= est.sum_ms
    assert all(r.ms >= 0 for r in est.rows)
