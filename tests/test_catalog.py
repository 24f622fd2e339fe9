"""Catalog loading: names and aliases, and one clear error for each kind of bad entry."""
from __future__ import annotations

import json

import pytest

from tracegen.base.errors import UserError
from tracegen.base.units import parse_quantity
from tracegen.catalog import (
    builtin_hardware,
    builtin_models,
    hardware_to_dict,
    load_hardware,
    load_model,
)

from .conftest import reference_rows


@pytest.mark.parametrize("name,key", [
    ("h800", "h800"), ("H800", "h800"), ("h20", "h20"), ("h20-3e", "h20-3e"), ("H20_3e", "h20-3e"),
    ("h100", "h100"), ("H100 SXM", "h100"), ("h200", "h200"), ("b200", "b200"),
    ("ascend-910c", "ascend-910c"), ("Ascend910C", "ascend-910c")])
def test_hardware_names(name, key):
    assert load_hardware(name).key == key


@pytest.mark.parametrize("name,key", [
    ("deepseek-v3", "deepseek-v3"), ("DeepSeek-R1", "deepseek-v3"), ("kimi-k2", "kimi-k2"),
    ("Kimi-K2", "kimi-k2"), ("qwen3-235b-a22b", "qwen3-235b-a22b"), ("Qwen3-235B-A22B", "qwen3-235b-a22b")])
def test_model_names(name, key):
    assert load_model(name).key == key


def test_unknown_names_list_the_known_ones():
    with pytest.raises(UserError, match=r"unknown hardware 'h900'; known: .*h800.*--hardware-file"):
        load_hardware("h900")
    with pytest.raises(UserError, match=r"unknown model 'llama'; known: .*deepseek-v3"):
        load_model("llama")


def test_deepseek_shapes_match_the_seed_model_args():
    m = load_model("deepseek-v3")
    assert (m.vocab_size, m.hidden, m.intermediate, m.moe_intermediate, m.layers, m.dense_layers, m.heads) == \
        (129280, 7168, 18432, 2048, 61, 3, 128)
    assert (m.routed_experts, m.shared_experts, m.activated_experts, m.expert_groups, m.limited_groups) == \
        (256, 1, 8, 8, 4)
    assert (m.q_lora_rank, m.kv_lora_rank, m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim) == \
        (1536, 512, 128, 64, 128)
    assert m.kv_cache_elems == 576


def test_every_builtin_entry_is_complete():
    assert {"h800", "h20", "h20-3e", "h100", "h200", "b200", "ascend-910c"} <= set(builtin_hardware())
    assert {"deepseek-v3", "kimi-k2", "qwen3-235b-a22b"} <= set(builtin_models())
    for hw in builtin_hardware().values():
        assert hw.sm_count > 0 and hw.q8_tflops >= hw.bf16_tflops > 0 and hw.hbm_gbps > 0
        assert "normal" in hw.comm


def test_ascend_matches_cloudmatrix_figures():
    """A rank is a die; the package (the sources' "NPU" / "chip" in the supernode table) is two of them."""
    hw = load_hardware("ascend-910c")
    pkg = hw.dies_per_package
    assert pkg == 2
    rows = {r["system"]: r for r in reference_rows("seed003_supernode.csv")}
    cm = rows["CloudMatrix384"]
    assert hw.hbm_gbps * pkg / 1e3 == float(cm["mem_bw_TBps_per_chip"])
    assert hw.scaleup_domain == int(cm["npus_or_gpus"]) * pkg
    paper = {r["item"]: r for r in reference_rows("cloudmatrix384_paper.csv")}
    assert hw.bf16_tflops * pkg == float(paper["910c_bf16_dense"]["value"])
    assert hw.hbm_gb * pkg == float(paper["910c_hbm"]["value"])
    assert hw.scaleup_gbps * pkg == float(paper["ub_bw_per_npu"]["value"])
    # INT8, no FP8: the paper's 1.29 decode tokens/s per TFLOPS at 1,943 tokens/s per NPU is the package's INT8 peak
    assert hw.q8_format == "int8" and hw.q8_tflops == 2 * hw.bf16_tflops
    per_tflops = float(paper["decode_efficiency"]["value"])
    assert float(paper["decode_throughput"]["value"]) / per_tflops == pytest.approx(hw.q8_tflops * pkg, rel=0.01)
    assert "ascend-fused" in hw.comm and hw.comm["ascend-fused"].fused


def test_eight_bit_format_is_the_hardwares_own(tmp_path):
    """Ascend plans default to INT8; FP8 on it is refused in one line; an entry names exactly one 8-bit peak."""
    from tracegen.resolve import resolve_plan, resolve_target
    m, hw, p = resolve_target("deepseek-v3", hardware="ascend-910c")
    assert resolve_plan("decode", m, hw, p).precision == "int8"
    m8, h800, p8 = resolve_target("deepseek-v3", hardware="h800")
    assert resolve_plan("decode", m8, h800, p8).precision == "fp8"
    with pytest.raises(UserError, match="has no FP8 GEMMs .* use --precision int8 or bf16"):
        resolve_plan("decode", m, hw, p, precision="fp8")
    assert resolve_plan("decode", m, hw, p, precision="bf16").gemm_bytes_per_elem == 2
    both = tmp_path / "both.toml"
    both.write_text('[x]\nbase = "h800"\nint8_tflops = "100 TFLOPS"\n')
    with pytest.raises(UserError, match="exactly one of 'fp8_tflops' or 'int8_tflops'"):
        load_hardware(path=both)


def test_units():
    assert parse_quantity("3.35 TB/s", "bandwidth", "x") == pytest.approx(3350)
    assert parse_quantity("400 Gb/s", "bandwidth", "x") == pytest.approx(50)
    assert parse_quantity("80 GB", "size", "x") == 80
    assert parse_quantity(1979, "flops", "x") == 1979
    assert parse_quantity("2 ms", "time", "x") == 2000
    with pytest.raises(UserError, match=r"fp8: unit 'GB/s' is not a flops unit"):
        parse_quantity("989 GB/s", "flops", "fp8")


def _write(tmp_path, text, name="hw.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_user_hardware_file_round_trips_as_json(tmp_path):
    hw = load_hardware("h800")
    p = tmp_path / "mine.json"
    p.write_text(json.dumps(hardware_to_dict(hw)))
    again = load_hardware(path=p)
    assert again == hw


MINIMAL = """
[mygpu]
display = "My GPU"
source = "test"
sm_count = 100
fp8_tflops = "1000 TFLOPS"
bf16_tflops = 500
hbm_gb = 64
hbm_gbps = "2 TB/s"
scaleup_gbps = 300
scaleup_domain = 8
scaleout_gbps = "200 Gb/s"
pcie_gbps = 32
gpus_per_node = 8
cpu_launch_us = 5
efficiency = { gemm = 0.7, grouped_gemm = 0.6, attention = 0.5, attention_decode = 0.6, hbm = 0.8, scaleup = 0.8, scaleout = 0.8 }
[mygpu.comm.normal]
link = "scaleout"
sms = 20
bw_eff = 0.8
latency_us = 20
cpu_block_us = 10
per_message_us = 0
fused = false
source = "test"
"""


def test_user_hardware_toml(tmp_path):
    hw = load_hardware(path=_write(tmp_path, MINIMAL))
    assert hw.name == "My GPU" and hw.scaleout_gbps == 25 and hw.hbm_gbps == 2000


@pytest.mark.parametrize("edit,message", [
    (("sm_count = 100", "sm_count = 100\ncolour = 'red'"), r"unknown key 'colour'"),
    (("hbm_gb = 64\n", ""), r"missing field 'hbm_gb'"),
    (('fp8_tflops = "1000 TFLOPS"', 'fp8_tflops = "1000 GB/s"'), r"fp8_tflops: unit 'GB/s' is not a flops unit"),
    (("sm_count = 100", "sm_count = -3"), r"sm_count: expected a whole number"),
    (("sm_count = 100", "sm_count = 1180591620717411303424"), r"sm_count: expected a whole number from 0 to 1,000,000"),
    (('link = "scaleout"', 'link = "smoke"'), r"link: expected one of"),
    (("sms = 20", "sms = 200"), r"sms: 200 exceed the 100 SMs on the chip"),
    (("bw_eff = 0.8", "bw_eff = 1.8"), r"bw_eff: a fraction must lie in \[0, 1\]"),
    (("bw_eff = 0.8", "bw_eff = 0"), r"bw_eff: must be above 0"),
    (("grouped_gemm = 0.6", "grouped_gemm = 0"), r"efficiency.grouped_gemm.max: must be above 0"),
])
def test_bad_hardware_files_give_one_clear_error(tmp_path, edit, message):
    text = MINIMAL.replace(*edit)
    with pytest.raises(UserError, match=message):
        load_hardware(path=_write(tmp_path, text))


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_hardware(path=tmp_path / "nope.toml")
    with pytest.raises(UserError, match="not valid TOML"):
        load_hardware(path=_write(tmp_path, "[x\n"))
    with pytest.raises(UserError, match="not valid JSON"):
        load_hardware(path=_write(tmp_path, "{", "x.json"))


def test_user_model_file_with_base(tmp_path):
    p = _write(tmp_path, """
[base]
abstract = true
display = "x"
source = "t"
attention = "gqa"
vocab_size = 1000
hidden = 1024
intermediate = 4096
moe_intermediate = 512
layers = 4
dense_layers = 0
heads = 8
kv_heads = 2
head_dim = 128
routed_experts = 16
shared_experts = 0
activated_experts = 2
expert_groups = 1
limited_groups = 1
[tiny]
base = "base"
display = "Tiny MoE"
""", "m.toml")
    m = load_model(path=p)
    assert m.name == "Tiny MoE" and m.kv_cache_elems == 2 * 2 * 128
    bad = _write(tmp_path, p.read_text().replace("kv_heads = 2\n", ""), "bad.toml")
    with pytest.raises(UserError, match="missing field 'kv_heads'"):
        load_model(path=bad)


@pytest.mark.parametrize("field,value,message", [
    ("routed_experts", 2**70, "routed_experts: expected a whole number from 0 to 1,000,000"),
    ("expert_groups", 1_000_000, "limited_groups <= expert_groups <= routed_experts"),
    ("limited_groups", 16, "limited_groups <= expert_groups <= routed_experts"),
])
def test_model_counts_past_any_model_are_refused(tmp_path, field, value, message):
    """Found by fuzzing model files: counts that overflowed the routing arithmetic (or would allocate
    terabytes) are refused in one line; a million experts still loads and routes."""
    from tracegen.catalog import model_to_dict
    from tracegen.routing import fanout
    d = model_to_dict(load_model("deepseek-v3"))
    d[next(iter(d))][field] = value
    with pytest.raises(UserError, match=message):
        load_model(path=_write(tmp_path, json.dumps(d), "m.json"))
    d = model_to_dict(load_model("deepseek-v3"))
    d[next(iter(d))]["routed_experts"] = 1_000_000
    f = fanout(load_model(path=_write(tmp_path, json.dumps(d), "m.json")), 32, 8)
    assert 1 <= f.ranks <= 8 and 1 <= f.nodes <= 4
