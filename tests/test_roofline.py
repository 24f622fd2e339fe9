"""The MoE roofline of ../shared/reference/seed002_moe_roofline.csv."""
from __future__ import annotations

from tracegen.catalog import load_hardware, load_model
from tracegen.roofline import moe_roofline

from .conftest import reference_rows

GPU = {"H100/H800": ["h100", "h800"], "H20": ["h20"]}


def test_every_row():
    rows = reference_rows("seed002_moe_roofline.csv")
    assert len(rows) == 2
    model = load_model("deepseek-v3")
    for r in rows:
        for name in GPU[r["gpu"]]:
            hw = load_hardware(name)
            assert hw.q8_tflops == float(r["fp8_tflops"])
            assert hw.hbm_gbps / 1e3 == float(r["hbm_TBps"])
            rl = moe_roofline(hw, model, local_batch_max=int(r["local_batch_max"]))
            assert round(rl.ridge_flops_per_byte) == int(r["ridge_flops_per_byte"])
            assert int(rl.min_tokens_per_expert) == int(r["min_tokens_per_expert_M"])
            assert rl.global_batch_min == int(r["global_batch_min"])
            assert rl.min_ep == int(r["min_ep"])


def test_h800_needs_about_300_tokens_per_expert_and_ep_320():
    rl = moe_roofline(load_hardware("h800"), load_model("deepseek-v3"))
    assert 290 <= rl.min_tokens_per_expert <= 300
    assert rl.min_ep >= 320
