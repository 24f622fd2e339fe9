"""Under --preset seed004 every figure of ../shared/reference/seed004_*.csv comes out to its printed
precision (3 decimals for ms, 1 for tokens/s per node, 3 for decode throughputs, 0 for batch sizes).
Every row is checked, not a sample."""
from __future__ import annotations

from dataclasses import replace

import pytest

from tracegen.catalog import load_hardware, load_model
from tracegen.cost import op_time
from tracegen.estimate import estimate
from tracegen.memory import max_batch
from tracegen.ops import allreduce_op, attention_ops, tokens
from tracegen.plan import Plan
from tracegen.preset import load_preset
from tracegen.target import Target

from .conftest import reference_rows

MODEL = load_model("deepseek-v3")
SEED = load_preset("seed004")
GPU = {"H800": "h800", "H20": "h20", "H20_3e": "h20-3e", "H20-3.2T": "h20", "H20-1.6T": "h20",
       "H20-800G": "h20"}
PREFILL_ROW = {"MLA": "DenseMLA", "DenseMLP": "DenseMLP", "TP_MLA": "MLA", "SharedExpert": "SharedExpert",
               "RoutedExpert": "RoutedExpert", "Dispatch": "Dispatch", "Combine": "Combine"}


def printed(value: float, decimals: int) -> float:
    """The value as the source printed it (Python/pandas float formatting)."""
    return float(f"{value:.{decimals}f}")


def prefill(gpu: str, tp: int, dp: int, **hw_over: float):
    hw, preset = SEED.resolve(load_hardware(GPU[gpu]), **hw_over)
    plan = Plan(phase="prefill", batch=1, seq_len=4383, kv_hit=0.563, tp=tp, dp=dp, kv_dtype="fp8")
    return estimate(Target(MODEL, hw, preset, plan))


def decode(gpu: str, tp: int, batch: int, **hw_over: float):
    hw, preset = SEED.resolve(load_hardware(GPU[gpu]), **hw_over)
    plan = Plan(phase="decode", batch=batch, seq_len=4383, tp=tp, dp=1, comm="ibgda", kv_dtype="fp8")
    return estimate(Target(MODEL, hw, preset, plan))


def test_hardware_table_matches_preset_view():
    for row in reference_rows("hardware_seed004.csv"):
        hw = SEED.apply(load_hardware(GPU[row["gpu"]]))
        assert hw.sm_count == int(row["sm"])
        assert hw.backend("normal").sms == int(row["comm_sm_prefill"])
        assert hw.q8_tflops == float(row["fp8_tflops_dense"])
        assert hw.bf16_tflops == float(row["fp16_tflops_dense"])
        assert hw.q8_tflops * SEED.usable_peak == pytest.approx(float(row["fp8_tflops_used"]))
        assert hw.bf16_tflops * SEED.usable_peak == pytest.approx(float(row["fp16_tflops_used"]))
        assert hw.hbm_gb == float(row["mem_GB"])
        assert hw.hbm_gbps == float(row["mem_bw_GBps"])
        assert hw.scaleup_gbps == float(row["nvlink_GBps"])
        assert hw.scaleout_gbps == float(row["scaleout_GBps_per_gpu"])
        assert SEED.flat_discount == float(row["discount"])


def test_prefill_op_table_every_row():
    rows = reference_rows("seed004_prefill_ops.csv")
    assert len(rows) == 28
    for r in rows:
        est = prefill(r["gpu"], int(r["tp"]), int(r["dp"]))
        got = est.row(PREFILL_ROW[r["op"]])
        assert got.layers == int(r["layers"]), r
        assert printed(got.ms, 3) == float(r["ms"]), (r, got.ms)


def test_prefill_sums_and_throughput_every_row():
    rows = reference_rows("seed004_prefill_sum.csv")
    assert len(rows) == 4
    for r in rows:
        est = prefill(r["gpu"], int(r["tp"]), int(r["dp"]))
        d = est.to_dict()
        assert est.plan.nodes == int(r["nodes"])
        assert printed(est.sum_overlap_ms, 3) == float(r["sum_overlap_ms"]), r
        assert printed(est.sum_ms, 3) == float(r["sum_ms"]), r
        assert printed(d["tokens_per_s_per_node_overlap"], 1) == float(r["tokens_per_s_per_node_overlap"]), r
        assert printed(d["tokens_per_s_per_node"], 1) == float(r["tokens_per_s_per_node"]), r


def test_prefill_h20_network_variants_every_row():
    rows = reference_rows("seed004_prefill_h20_network.csv")
    assert len(rows) == 3
    for r in rows:
        est = prefill(r["gpu"], 4, 8, scaleout_gbps=float(r["rdma_GBps_per_gpu"]))
        assert printed(est.row("Dispatch").ms, 3) == float(r["dispatch_ms"]), r
        assert printed(est.row("Combine").ms, 3) == float(r["combine_ms"]), r
        assert printed(est.sum_overlap_ms, 3) == float(r["sum_overlap_ms"]), r
        assert printed(est.sum_ms, 3) == float(r["sum_ms"]), r


DECODE_COLS = {"DenseMLA": "DenseMLA", "DenseMLP": "DenseMLP", "SparseMLA": "MLA", "Combine": "Combine",
               "SharedExpert": "SharedExpert", "RoutedExpert": "RoutedExpert", "Dispatch": "Dispatch"}


def test_decode_all_twelve_rows():
    rows = reference_rows("seed004_decode.csv")
    assert len(rows) == 12
    for r in rows:
        est = decode(r["gpu"], int(r["mla_tp"][2:]), int(r["batch"]))
        d = est.to_dict()
        for col, name in DECODE_COLS.items():
            assert printed(est.row(name).ms, 3) == float(r[col]), (r["gpu"], r["batch"], col, est.row(name).ms)
        assert printed(d["tpot_overlap_ms"], 3) == float(r["TPOT_overlap_ms"]), r
        assert printed(d["tpot_ms"], 3) == float(r["TPOT_ms"]), r
        assert printed(d["tps_per_user_overlap"], 3) == float(r["TPS_per_user_overlap"]), r
        assert printed(d["tps_per_user"], 3) == float(r["TPS_per_user"]), r
        assert printed(d["tokens_per_s_per_gpu_overlap"], 3) == float(r["tokens_per_s_per_gpu_overlap"]), r
        assert printed(d["tokens_per_s_per_gpu"], 3) == float(r["tokens_per_s_per_gpu"]), r


def _mla_ms(gpu: str, batch: int, tp: int, form: str) -> tuple[float, float]:
    """The seed's decode MLA table: MLA time at a TP size (KV load apart), and the KV load."""
    hw = SEED.apply(load_hardware(GPU[gpu]))
    preset = replace(SEED, decode_mla_form=form)
    plan = Plan(phase="decode", batch=batch, seq_len=4383, tp=tp, dp=1, comm="ibgda", kv_dtype="fp8")
    t = tokens(MODEL, plan, preset)
    timed = [op_time(w, plan, hw, preset) for w in attention_ops(MODEL, plan, preset, t, dense=False)
             + allreduce_op(MODEL, plan, preset, t, dense=False)]
    kv = sum(x.terms.get("kv_load_ms", 0.0) for x in timed)
    return sum(x.ms for x in timed) - kv, kv


def test_decode_mla_tables_absorbed_and_not():
    rows = reference_rows("seed004_decode_mla.csv")
    assert len(rows) == 16
    for r in rows:
        form = "absorbed_merged" if r["mla_mode"] == "absorbed" else "standard"
        for tp, col in ((1, "tp1_ms"), (4, "tp4_ms"), (8, "tp8_ms")):
            ms, kv = _mla_ms(r["gpu"], int(r["batch"]), tp, form)
            assert printed(ms, 3) == float(r[col]), (r, col, ms)
            assert printed(kv, 3) == float(r["load_kv_fp8_ms"]), r
            assert printed(2 * kv, 3) == float(r["load_kv_fp16_ms"]), r


def test_decode_time_budgets_every_row():
    rows = reference_rows("seed004_decode_timebudget.csv")
    assert len(rows) == 12
    for r in rows:
        est = decode(r["gpu"], int(r["mla_tp"][2:]), int(r["batch"]), scaleout_gbps=float(r["rdma_GBps_per_gpu"]))
        assert printed(est.comm_slack_ms, 3) == float(r["time_budget_ms"]), (r, est.comm_slack_ms)


def test_ep_layouts():
    rows = reference_rows("seed004_ep_layouts.csv")
    for r in rows:
        ep = int(r["ep"][2:])
        plan = Plan(phase="decode", batch=1, seq_len=1, tp=1, dp=ep, redundant_experts=int(r["redundant_experts"]))
        assert plan.experts_per_gpu(MODEL) == int(r["experts_per_gpu"])


def test_decode_max_batch_every_row():
    rows = reference_rows("seed004_decode_max_batch.csv")
    layouts = {r["ep"]: int(r["redundant_experts"]) for r in reference_rows("seed004_ep_layouts.csv")}
    assert len(rows) == 144
    for r in rows:
        parts = r["gpu_kv_mla"].split("_")
        absorbed = parts[-1] == "Absorb"
        parts = parts[:-1] if absorbed else parts
        kv_dtype = "fp8" if parts[-1] == "FP8" else "bf16"
        gpu = "_".join(parts[:-1])
        ep = int(r["ep"][2:])
        plan = Plan(phase="decode", batch=1, seq_len=4383, decode_len=1210, tp=int(r["mla_tp"]), dp=ep, ep=ep,
                    redundant_experts=layouts[r["ep"]], kv_dtype=kv_dtype)
        got = max_batch(Target(MODEL, load_hardware(GPU[gpu]), SEED, plan),
                        mla_form="absorbed_merged" if absorbed else "standard")
        assert printed(got, 0) == float(r["max_batch_per_gpu"]), (r, got)
