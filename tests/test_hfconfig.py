"""A Hugging Face config.json given to --model-file as users have it (tracegen/hfconfig.py): the published
configs of the catalog's models give the catalog's shapes and the same estimate; what the cost model does
not represent is said in the entry's source; a dense model or a broken config is one error line."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tracegen.base.errors import UserError
from tracegen.catalog import load_model
from tracegen.cli import main

# the published config.json values of each model (the keys each family's config uses)
DEEPSEEK_V3 = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "vocab_size": 129280,
               "hidden_size": 7168, "intermediate_size": 18432, "moe_intermediate_size": 2048,
               "num_hidden_layers": 61, "num_attention_heads": 128, "num_key_value_heads": 128, "q_lora_rank": 1536,
               "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
               "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 8, "n_group": 8,
               "topk_group": 4, "first_k_dense_replace": 3, "scoring_func": "sigmoid", "norm_topk_prob": True}
KIMI_K2 = {**DEEPSEEK_V3, "vocab_size": 163840, "num_attention_heads": 64, "num_key_value_heads": 64,
           "n_routed_experts": 384, "n_group": 1, "topk_group": 1, "first_k_dense_replace": 1}
QWEN3_30B = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": 151936,
             "hidden_size": 2048, "intermediate_size": 6144, "moe_intermediate_size": 768, "num_hidden_layers": 48,
             "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128,
             "num_experts_per_tok": 8, "decoder_sparse_step": 1, "mlp_only_layers": [], "sliding_window": None,
             "use_sliding_window": False}
SHAPE = [f.name for f in dataclasses.fields(load_model("deepseek-v3")) if f.name not in ("key", "name", "source", "aliases")]


def write(tmp_path: Path, name: str, cfg: dict) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    return d / "config.json"


@pytest.mark.parametrize("name,cfg,builtin", [("DeepSeek-V3", DEEPSEEK_V3, "deepseek-v3"),
                                              ("Kimi-K2-Instruct", KIMI_K2, "kimi-k2"),
                                              ("Qwen3-30B-A3B", QWEN3_30B, "qwen3-30b-a3b")])
def test_a_published_config_gives_the_catalog_shape(tmp_path, name, cfg, builtin):
    m, ref = load_model(None, write(tmp_path, name, cfg)), load_model(builtin)
    assert {f: getattr(m, f) for f in SHAPE} == {f: getattr(ref, f) for f in SHAPE}
    assert m.key == name and name in m.name and "not modelled" not in m.source


def test_a_model_folder_reads_its_config(tmp_path):
    """--model-file may name the model's folder (a downloaded repo): its config.json is read."""
    path = write(tmp_path, "Qwen3-30B-A3B", QWEN3_30B)
    assert load_model(None, path.parent) == load_model(None, path)
    with pytest.raises(UserError, match="cannot read"):
        load_model(None, tmp_path)                      # a folder with no config.json


def test_the_estimate_from_a_config_is_the_catalog_models(tmp_path, capsys):
    path = write(tmp_path, "DeepSeek-V3", DEEPSEEK_V3)
    flags = ["--hardware", "h100", "--phase", "decode", "--batch", "64", "--dp", "16", "--json"]
    assert main(["estimate", "--model", "deepseek-v3", *flags]) == 0
    ref = json.loads(capsys.readouterr().out)
    assert main(["estimate", "--model-file", str(path), *flags]) == 0
    got = json.loads(capsys.readouterr().out)
    step = [k for k in ref if "step" in k and isinstance(ref[k], (int, float))]
    assert step and all(got[k] == ref[k] for k in step)


def test_mixtral_and_qwen2_moe_read_their_own_keys(tmp_path):
    mixtral = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "vocab_size": 32000,
               "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
               "num_key_value_heads": 8, "num_local_experts": 8, "num_experts_per_tok": 2, "sliding_window": None}
    m = load_model(None, write(tmp_path, "Mixtral-8x7B", mixtral))
    assert (m.moe_intermediate, m.routed_experts, m.activated_experts, m.shared_experts) == (14336, 8, 2, 0)
    assert (m.attention, m.kv_heads, m.head_dim, m.dense_layers) == ("gqa", 8, 128, 0)
    qwen2 = {"architectures": ["Qwen2MoeForCausalLM"], "vocab_size": 151936, "hidden_size": 2048,
             "intermediate_size": 5632, "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632,
             "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 16, "num_experts": 60,
             "num_experts_per_tok": 4, "decoder_sparse_step": 1, "mlp_only_layers": []}
    m = load_model(None, write(tmp_path, "Qwen1.5-MoE-A2.7B", qwen2))
    assert (m.shared_experts, m.routed_experts, m.head_dim) == (4, 60, 128)     # one 5,632-wide = 4 of 1,408


def test_what_the_model_does_not_represent_is_said(tmp_path):
    maverick = {"architectures": ["Llama4ForConditionalGeneration"], "text_config": {
        "vocab_size": 202048, "hidden_size": 5120, "intermediate_size": 8192, "intermediate_size_mlp": 16384,
        "num_hidden_layers": 48, "num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128,
        "num_local_experts": 128, "num_experts_per_tok": 1, "interleave_moe_layer_step": 2}}
    m = load_model(None, write(tmp_path, "Llama-4-Maverick", maverick))
    assert m.layers == 48 and m.dense_layers == 24 and "interleaved" in m.source
    oss = {"architectures": ["GptOssForCausalLM"], "vocab_size": 201088, "hidden_size": 2880,
           "intermediate_size": 2880, "num_hidden_layers": 24, "num_attention_heads": 64, "num_key_value_heads": 8,
           "head_dim": 64, "num_local_experts": 32, "experts_per_token": 4, "sliding_window": 128,
           "layer_types": ["sliding_attention", "full_attention"] * 12}
    m = load_model(None, write(tmp_path, "gpt-oss-20b", oss))
    assert (m.routed_experts, m.activated_experts, m.head_dim) == (32, 4, 64)
    assert "sliding-window attention (128 tokens) costed as full attention" in m.source
    m = load_model(None, write(tmp_path, "DeepSeek-V3.2-Exp", {**DEEPSEEK_V3, "index_topk": 2048}))
    assert "sparse attention (DSA, 2048 keys per query) costed as dense attention" in m.source
    assert "linear attention" not in m.source and "linear attention" not in load_model(
        None, write(tmp_path, "gpt-oss-sliding", oss)).source      # sliding layers are attention layers


@pytest.mark.parametrize("extra,linear", [
    ({"full_attention_interval": 4}, 36),                                                     # Qwen3-Next
    ({"layer_types": (["linear_attention"] * 3 + ["full_attention"]) * 12}, 36),              # its layer_types
    ({"attn_type_list": [0] * 7 + [1] + [0] * 7 + [1] + [0] * 32}, 46),                       # MiniMax (0: lightning)
    ({"linear_attn_config": {"kda_layers": list(range(1, 37)), "full_attn_layers": [0]}}, 36),  # Kimi Linear
    ({"hybrid_override_pattern": "M-M*" * 12}, 24),                                          # Nemotron-H (M: Mamba)
    ({"attn_layer_period": 8, "attn_layer_offset": 4}, 42),                                  # Jamba
])
def test_a_hybrid_models_linear_layers_are_said_not_modelled(tmp_path, extra, linear):
    """A hybrid model's layers that mix tokens without softmax attention (linear attention, Gated DeltaNet, Mamba)
    are costed as full attention: the entry says how many, from the key its family uses (before: nothing said)."""
    m = load_model(None, write(tmp_path, "hybrid", {**QWEN3_30B, **extra}))
    assert f"{linear} of its 48 layers mix tokens with linear attention or a state-space layer" in m.source


def test_a_dense_or_broken_config_is_one_error_line(tmp_path, capsys):
    dense = {"architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 4096,
             "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32}
    assert main(["estimate", "--model-file", str(write(tmp_path, "Llama", dense))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a dense model" in err[0]
    with pytest.raises(UserError, match="must be a whole number"):
        load_model(None, write(tmp_path, "bad", {**QWEN3_30B, "num_hidden_layers": "48"}))
    with pytest.raises(UserError, match="MLA attention"):
        load_model(None, write(tmp_path, "mla", {**DEEPSEEK_V3, "v_head_dim": None}))


def test_the_estimate_says_what_of_the_config_it_does_not_model(tmp_path, capsys):
    oss = {"architectures": ["GptOssForCausalLM"], "vocab_size": 201088, "hidden_size": 2880,
           "intermediate_size": 2880, "num_hidden_layers": 24, "num_attention_heads": 64, "num_key_value_heads": 8,
           "head_dim": 64, "num_local_experts": 32, "experts_per_token": 4, "sliding_window": 128,
           "layer_types": ["sliding_attention", "full_attention"] * 12}
    path = write(tmp_path, "gpt-oss-20b", oss)
    assert main(["estimate", "--model-file", str(path), "--hardware", "h100", "--phase", "prefill"]) == 0
    assert "model: not modelled: sliding-window attention" in capsys.readouterr().out.splitlines()[0]
    assert main(["estimate", "--model-file", str(path), "--hardware", "h100", "--phase", "prefill", "--json"]) == 0
    assert "sliding-window" in json.loads(capsys.readouterr().out)["assumptions"]["model_not_modelled"]
    assert main(["estimate", "--model", "deepseek-v3", "--json"]) == 0
    assert "model_not_modelled" not in json.loads(capsys.readouterr().out)["assumptions"]


def test_deploy_says_it_too(tmp_path, capsys):
    """tracegen deploy on a config.json carries the same note in its assumptions line."""
    cfg = {**QWEN3_30B, "sliding_window": 4096, "use_sliding_window": True}
    path = write(tmp_path, "Qwen3-sw", cfg)
    assert main(["deploy", "--model-file", str(path), "--hardware", "h100", "--mode", "prefill",
                 "--prefill-nodes", "1", "--requests", "50"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("assumptions"))
    assert line.endswith("model: not modelled: sliding-window attention (4096 tokens) costed as full attention")


@pytest.mark.parametrize("change", [{"text_config": "x"}, {"mlp_only_layers": "48"}, {"mlp_only_layers": [3, "a"]},
                                    {"decoder_sparse_step": 2.5}, {"architectures": 2.5}, {"num_attention_heads": 0},
                                    {"shared_expert_intermediate_size": "wide"}, {"sliding_window": "big"},
                                    {"first_k_dense_replace": True}, {"head_dim": []}])
def test_a_malformed_value_is_a_user_error(tmp_path, change):
    """Values of the wrong type or range anywhere the reader looks give UserError (one line at the CLI),
    never a traceback (a fuzz of 4,000 mutated configs found 448 before these checks)."""
    try:
        load_model(None, write(tmp_path, "m", {**QWEN3_30B, "use_sliding_window": True, **change}))
    except UserError:
        pass


def test_list_models_shows_a_configs_reading_and_its_parameter_count(tmp_path, capsys):
    """`tracegen list models --model-file` shows what tracegen read from a config, and the parameter count
    it implies matches the model cards' totals (an independent check of the reading): Mixtral-8x7B 46.7B,
    Qwen3-30B-A3B 30.5B, gpt-oss-20b 20.9B (its card: 21B)."""
    mixtral = {"architectures": ["MixtralForCausalLM"], "vocab_size": 32000, "hidden_size": 4096,
               "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
               "num_key_value_heads": 8, "num_local_experts": 8, "num_experts_per_tok": 2}
    oss = {"architectures": ["GptOssForCausalLM"], "vocab_size": 201088, "hidden_size": 2880,
           "intermediate_size": 2880, "num_hidden_layers": 24, "num_attention_heads": 64, "num_key_value_heads": 8,
           "head_dim": 64, "num_local_experts": 32, "experts_per_token": 4}
    for name, cfg, card_b in (("Mixtral-8x7B", mixtral, 46.7), ("Qwen3-30B-A3B", QWEN3_30B, 30.5),
                              ("gpt-oss-20b", oss, 20.9)):
        path = write(tmp_path, name, cfg)
        assert main(["list", "models", "--model-file", str(path.parent), "--json"]) == 0
        (row,) = json.loads(capsys.readouterr().out)["models"]
        assert row["name"] == name and row["params_b"] == pytest.approx(card_b, rel=0.01), row
    assert main(["list", "models", "--model-file", str(tmp_path / "gpt-oss-20b")]) == 0
    out = capsys.readouterr().out
    assert "gpt-oss-20b" in out and f"config.json [{tmp_path / 'gpt-oss-20b' / 'config.json'}]" in out


def test_ernie_and_dbrx_configs_read_as_their_families_write_them(tmp_path):
    """ERNIE 4.5 names its top-k moe_k, its shared experts moe_num_shared_experts and its MoE layers by
    moe_layer_start_index / end_index / interval; DBRX keeps its experts in ffn_config and its KV heads in
    attn_config. Before, ERNIE was refused (no top-k key) and DBRX called 'a dense model'."""
    ernie = {"architectures": ["Ernie4_5_MoeForCausalLM"], "model_type": "ernie4_5_moe", "hidden_size": 2560,
             "intermediate_size": 12288, "num_hidden_layers": 28, "num_attention_heads": 20, "num_key_value_heads": 4,
             "vocab_size": 103424, "head_dim": 128, "moe_num_experts": 64, "moe_k": 6, "moe_intermediate_size": 1536,
             "moe_num_shared_experts": 2, "moe_layer_start_index": 1, "moe_layer_end_index": 27, "moe_layer_interval": 1}
    m = load_model(None, write(tmp_path, "ERNIE-4.5-21B-A3B", ernie))
    assert (m.routed_experts, m.activated_experts, m.shared_experts, m.dense_layers, m.layers) == (64, 6, 2, 1, 28)
    assert "interleaved" not in m.source
    dbrx = {"architectures": ["DbrxForCausalLM"], "model_type": "dbrx", "d_model": 6144, "n_heads": 48, "n_layers": 40,
            "vocab_size": 100352, "attn_config": {"kv_n_heads": 8},
            "ffn_config": {"ffn_hidden_size": 10752, "moe_num_experts": 16, "moe_top_k": 4}}
    m = load_model(None, write(tmp_path, "dbrx-instruct", dbrx))
    assert (m.routed_experts, m.activated_experts, m.kv_heads, m.moe_intermediate, m.hidden) == (16, 4, 8, 10752, 6144)


def test_values_given_per_layer_read_when_every_layer_has_the_same(tmp_path, capsys):
    """Hunyuan-A13B gives moe_topk, num_shared_expert and moe_intermediate_size as one value per layer: a list whose
    values are all one is that value; one that varies is refused in one line (tracegen models one MoE layer shape).
    Before, every such config was refused ('must be a whole number')."""
    hunyuan = {"architectures": ["HunYuanMoEV1ForCausalLM"], "model_type": "hunyuan_v1_moe", "hidden_size": 4096,
               "intermediate_size": 3072, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
               "head_dim": 128, "vocab_size": 128167, "num_experts": 64, "moe_topk": [8] * 32,
               "num_shared_expert": [1] * 32, "moe_intermediate_size": [3072] * 32}
    m = load_model(None, write(tmp_path, "Hunyuan-A13B", hunyuan))
    assert (m.routed_experts, m.activated_experts, m.shared_experts, m.moe_intermediate) == (64, 8, 1, 3072)
    path = write(tmp_path, "Hunyuan-varied", {**hunyuan, "moe_topk": [8] * 16 + [4] * 16})
    assert main(["estimate", "--model-file", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "moe_topk differs by layer" in err[0]


def test_longcat_flash_reads_its_expert_width_and_says_what_it_leaves_out(tmp_path):
    """LongCat-Flash names its expert width expert_ffn_hidden_size (its ffn_hidden_size is the dense blocks'), puts
    zero-computation experts in the same top-k (zero_expert_num) and runs two attention / dense-FFN blocks beside one
    shortcut-connected MoE per layer: the width is read, and the other two are said on the assumptions line."""
    longcat = {"architectures": ["LongcatFlashForCausalLM"], "model_type": "longcat_flash", "hidden_size": 6144,
               "ffn_hidden_size": 12288, "expert_ffn_hidden_size": 2048, "num_layers": 28, "num_attention_heads": 64,
               "vocab_size": 131072, "n_routed_experts": 512, "zero_expert_num": 256, "moe_topk": 12,
               "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128,
               "v_head_dim": 128}
    m = load_model(None, write(tmp_path, "LongCat-Flash-Chat", longcat))
    assert (m.routed_experts, m.activated_experts, m.moe_intermediate, m.layers) == (512, 12, 2048, 28)
    assert "256 zero-computation experts share the top-k" in m.source and "ScMoE" in m.source


def test_arctic_and_jamba_say_which_layers_are_moe(tmp_path):
    """Arctic's moe_layer_frequency and Jamba's expert_layer_period / offset place the MoE layers (the others are
    dense, and interleaved: said so); Arctic's dense residual MLP beside each MoE is said as not modelled."""
    arctic = {"architectures": ["ArcticForCausalLM"], "model_type": "arctic", "hidden_size": 7168,
              "intermediate_size": 4864, "num_hidden_layers": 35, "num_attention_heads": 56, "num_key_value_heads": 8,
              "vocab_size": 32000, "num_local_experts": 128, "num_experts_per_tok": 2, "moe_layer_frequency": 1,
              "parallel_attn_mlp_res": True}
    m = load_model(None, write(tmp_path, "snowflake-arctic-instruct", arctic))
    assert m.dense_layers == 0 and "dense residual MLP beside each MoE layer" in m.source
    m = load_model(None, write(tmp_path, "arctic-2", {**arctic, "moe_layer_frequency": 2}))
    assert m.dense_layers == 18 and "interleaved" in m.source
    jamba = {"architectures": ["JambaForCausalLM"], "model_type": "jamba", "hidden_size": 4096, "intermediate_size": 14336,
             "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 65536,
             "num_experts": 16, "num_experts_per_tok": 2, "expert_layer_period": 2, "expert_layer_offset": 1,
             "attn_layer_period": 8, "attn_layer_offset": 4}
    m = load_model(None, write(tmp_path, "Jamba-v0.1", jamba))
    assert m.dense_layers == 16 and "interleaved" in m.source and "28 of its 32 layers mix tokens" in m.source


@pytest.mark.parametrize("extra,dense", [
    ({"moe_layers_enum": ",".join(str(i) for i in range(3, 48))}, 3),        # StepFun: the MoE layers listed
    ({"moe_layers_enum": list(range(4, 48))}, 4),
    ({"mlp_layer_types": ["dense"] * 2 + ["sparse"] * 46}, 2),               # per layer, by name
    ({"n_dense_first_layers": 1}, 1),                                        # Motif
])
def test_which_layers_are_moe_from_the_keys_families_use(tmp_path, extra, dense):
    m = load_model(None, write(tmp_path, "listed", {**QWEN3_30B, **extra}))
    assert m.dense_layers == dense and "interleaved" not in m.source


def test_sparse_attention_layer_types_are_attention_not_linear(tmp_path):
    """layer_types naming deepseek_sparse_attention, sliding or chunked attention are attention layers: only entries
    naming linear attention or a state-space layer count as the hybrid's (Granite 4's mamba among them)."""
    kinds = ["deepseek_sparse_attention", "sliding_attention", "chunked_attention", "full_attention"] * 12
    assert "mix tokens" not in load_model(None, write(tmp_path, "dsa", {**QWEN3_30B, "layer_types": kinds})).source
    granite = ["mamba"] * 36 + ["attention"] * 12
    assert "36 of its 48 layers mix tokens" in load_model(
        None, write(tmp_path, "granite", {**QWEN3_30B, "layer_types": granite})).source


def test_stepfuns_shared_expert_width_reads_as_one_shared_expert(tmp_path):
    """StepFun names its shared expert's width share_expert_dim (Qwen2-MoE: shared_expert_intermediate_size): one
    shared expert of that width, counted in moe_intermediate widths."""
    step = {**QWEN3_30B, "moe_num_experts": 48, "moe_top_k": 3, "moe_intermediate_size": 5120, "share_expert_dim": 5120}
    step.pop("num_experts")
    step.pop("num_experts_per_tok")
    m = load_model(None, write(tmp_path, "step3", step))
    assert (m.routed_experts, m.activated_experts, m.shared_experts) == (48, 3, 1)


@pytest.mark.parametrize("extra,says", [
    ({"moe_layers_enum": "3,4,x"}, "moe_layers_enum must list layer numbers"),
    ({"moe_layers_enum": [3, 48]}, "moe_layers_enum must list layer numbers below 48"),
    ({"mlp_layer_types": ["dense"] * 47}, "mlp_layer_types must name each of the 48 layers"),
    ({"mlp_layer_types": ["dense"] + ["moe"] * 47}, "mlp_layer_types must name each of the 48 layers"),
])
def test_a_layer_list_that_does_not_fit_the_model_is_refused(tmp_path, extra, says):
    """A list of MoE layers with a bad entry or an index past the last layer, or per-layer MLP kinds that are not
    one known name per layer, is refused in one line, not read as some other count of dense layers."""
    with pytest.raises(UserError, match=says):
        load_model(None, write(tmp_path, "bad-list", {**QWEN3_30B, **extra}))
