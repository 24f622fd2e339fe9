"""A Hugging Face config.json read as a model entry: the file users already have for any MoE model
(DeepSeek-V3/R1, Kimi-K2, Qwen2/3-MoE, Mixtral, GLM-4.5, gpt-oss, ERNIE 4.5, DBRX, Hunyuan, LongCat-Flash,
Arctic, Jamba, StepFun and the hybrids), given to --model-file as it is.

Each catalog field comes from the config key the model families use for it (KEYS, first match wins);
what the cost model does not represent (sliding-window attention, a hybrid's linear-attention or state-space
layers, interleaved dense layers placed elsewhere than first) is written into the entry's source, so the shape
it runs on is never silent."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tracegen.base.errors import UserError

# catalog field -> the config keys that hold it, in the order tried
KEYS: dict[str, tuple[str, ...]] = {
    "hidden": ("hidden_size", "d_model", "dim"),
    "layers": ("num_hidden_layers", "num_layers", "n_layers"),
    "heads": ("num_attention_heads", "n_heads", "n_head"),
    "vocab_size": ("vocab_size",),
    "routed_experts": ("n_routed_experts", "num_experts", "num_local_experts", "moe_num_experts", "n_experts"),
    "activated_experts": ("num_experts_per_tok", "experts_per_token", "moe_topk", "top_k", "num_selected_experts",
                          "moe_k", "moe_top_k"),
    "moe_intermediate": ("moe_intermediate_size", "expert_intermediate_size", "moe_ffn_hidden_size",
                         "expert_ffn_hidden_size"),
    "intermediate": ("intermediate_size", "ffn_hidden_size"),
    "kv_heads": ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "kv_n_heads"),
    "head_dim": ("head_dim",),
    "expert_groups": ("n_group", "num_expert_group"),
    "limited_groups": ("topk_group",),
}
MLA_KEYS = ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")


NOT_MODELLED = "; not modelled: "        # in a model's source: what of its config the cost model leaves out


def not_modelled(model: Any) -> str:
    """What of a model's config the cost model does not represent ("" for a catalog entry)."""
    return model.source.split(NOT_MODELLED, 1)[1] if NOT_MODELLED in model.source else ""


def notes(model: Any, hw: Any) -> dict[str, str]:
    """The assumptions' notes the figures carry beside the stack's: what of the model's config is not modelled
    and what of the hardware was not measured on it (line_note prints them)."""
    out = {"model_not_modelled": not_modelled(model) if model is not None else "", "hardware_caveat": hw.caveat}
    return {k: v for k, v in out.items() if v}


def line_note(assumptions: dict) -> str:
    """The end of an assumptions line: what of the model is not modelled and what of the hardware was not
    measured on it, where something is."""
    x, hw = assumptions.get("model_not_modelled"), assumptions.get("hardware_caveat")
    return (f"; model: not modelled: {x}" if x else "") + (f"; hardware: {hw}" if hw else "")


NESTED = ("text_config", "ffn_config", "attn_config", "moe_config")   # sub-configs read as the config's own keys


def _language_model(cfg: dict) -> dict:
    """The config's decoder: multimodal wrappers keep it in text_config; DBRX its experts in ffn_config and its
    KV heads in attn_config."""
    out = dict(cfg)
    for k in NESTED:
        if isinstance(cfg.get(k), dict):
            out.update(cfg[k])
    return out


def is_hf_config(data: Any) -> bool:
    """A parsed JSON document that is a transformers config (not a catalog of entries)."""
    if not isinstance(data, dict) or not ("model_type" in data or "architectures" in data):
        return False
    return any(k in _language_model(data) for k in KEYS["hidden"])


def _first(cfg: dict, field: str, where: str) -> Any:
    for k in KEYS[field]:
        if cfg.get(k) is not None:
            return _per_layer(cfg[k], k, where)
    return None


def _per_layer(value: Any, key: str, where: str) -> Any:
    """A value some families give per layer (Hunyuan's moe_topk, num_shared_expert: a list): the value, where every
    layer has the same one; a list that varies is refused, as one line (the model has one shape per layer kind)."""
    if not isinstance(value, list) or not value:
        return value
    if len(set(map(repr, value))) > 1:
        raise UserError(f"{where}: {key} differs by layer ({value[:4]}...): tracegen models one MoE layer "
                        "shape; write a catalog entry (tracegen/data/models.toml's format) with the one to use")
    return value[0]


def _whole(value: Any, name: str, where: str, least: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise UserError(f"{where}: {name} must be a whole number{' >= 1' if least else ''}, got {value!r}")
    return value


def model_entry(cfg: dict, path: Path) -> dict[str, dict]:
    """{key: catalog entry} for the config at `path` (its folder's name is the key, as a model repo's)."""
    where = f"model file {path} (a Hugging Face config.json)"
    cfg = _language_model(cfg)
    get = {f: _first(cfg, f, where) for f in KEYS}
    for need in ("hidden", "layers", "heads", "vocab_size"):
        if get[need] is None:
            raise UserError(f"{where}: no {' / '.join(KEYS[need])}: not a decoder language model's config")
    if not get["routed_experts"]:
        raise UserError(f"{where}: no {' / '.join(KEYS['routed_experts'])}: a dense model (or one that names its "
                        "expert count otherwise: write a catalog entry, tracegen/data/models.toml's format); "
                        "moe-timeline models Mixture-of-Experts layers")
    if not get["activated_experts"]:
        raise UserError(f"{where}: no {' / '.join(KEYS['activated_experts'])}: how many experts a token uses")
    n = {f: _whole(get[f], " / ".join(KEYS[f][:2]), where, least=1) for f in
         ("hidden", "layers", "heads", "vocab_size", "routed_experts", "activated_experts")}
    n.update({f: _whole(get[f], " / ".join(KEYS[f][:2]), where) for f in
              ("moe_intermediate", "intermediate", "kv_heads", "head_dim", "expert_groups", "limited_groups")
              if get[f] is not None})
    moe_ff = n.get("moe_intermediate") or n.get("intermediate")   # Mixtral, gpt-oss: intermediate_size is the expert's
    if not moe_ff:
        raise UserError(f"{where}: no expert width ({' / '.join(KEYS['moe_intermediate'] + KEYS['intermediate'])})")
    notes: list[str] = []
    layers, hidden, heads = n["layers"], n["hidden"], n["heads"]
    dense = _dense_layers(cfg, layers, notes, where)
    named = (cfg.get("n_shared_experts") or cfg.get("num_shared_experts") or cfg.get("moe_num_shared_experts")
             or cfg.get("num_shared_expert") or 0)
    shared = _whole(_per_layer(named, "n_shared_experts", where), "n_shared_experts", where)
    wide = cfg.get("shared_expert_intermediate_size") or cfg.get("share_expert_dim")    # Qwen2-MoE; StepFun
    if not shared and wide:                                     # Qwen2-MoE: one wide shared expert
        shared = max(1, round(_whole(wide, "shared_expert_intermediate_size", where) / moe_ff))
    key = path.parent.name if path.name == "config.json" and path.parent.name else path.stem
    archs = cfg.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else \
        (cfg["model_type"] if isinstance(cfg.get("model_type"), str) else "model")
    entry: dict[str, Any] = {
        "display": f"{key} ({arch})" if key != arch else arch,
        "source": f"config.json [{path}]",
        "vocab_size": n["vocab_size"], "hidden": hidden, "intermediate": n.get("intermediate") or moe_ff,
        "moe_intermediate": moe_ff, "layers": layers, "dense_layers": dense, "heads": heads,
        "routed_experts": n["routed_experts"], "shared_experts": shared,
        "activated_experts": n["activated_experts"],
        "expert_groups": n.get("expert_groups") or 1, "limited_groups": n.get("limited_groups") or 1,
    }
    if cfg.get("kv_lora_rank"):
        missing = [k for k in MLA_KEYS if not cfg.get(k)]
        if missing and missing != ["q_lora_rank"]:
            raise UserError(f"{where}: MLA attention (kv_lora_rank) without {', '.join(missing)}")
        entry.update({"attention": "mla", **{k: _whole(cfg.get(k) or 0, k, where) for k in MLA_KEYS}})
    else:
        entry.update({"attention": "gqa", "kv_heads": n.get("kv_heads") or heads,
                      "head_dim": n.get("head_dim") or max(1, hidden // heads)})
    window = cfg.get("sliding_window")
    if window and (cfg.get("use_sliding_window", True) or cfg.get("layer_types")):
        notes.append(f"sliding-window attention ({_whole(window, 'sliding_window', where)} tokens) costed as "
                     "full attention")
    linear = _linear_layers(cfg, layers)
    if linear:
        notes.append(f"{linear} of its {layers} layers mix tokens with linear attention or a state-space layer "
                     "(a hybrid model) and are costed as full attention")
    if cfg.get("parallel_attn_mlp_res"):       # Snowflake Arctic: a dense MLP beside each MoE, on its own residual
        notes.append("the dense residual MLP beside each MoE layer (parallel_attn_mlp_res)")
    zero = cfg.get("zero_expert_num")      # LongCat-Flash: identity experts beside the routed ones, in the same top-k
    if isinstance(zero, int) and zero > 0:
        notes.append(f"{zero} zero-computation experts share the top-k with the routed ones (a token's picks of them "
                     "cost nothing); every pick costed as a routed expert")
    if cfg.get("model_type") == "longcat_flash":
        notes.append("each layer's two attention and dense-FFN blocks beside one shortcut-connected MoE (ScMoE) "
                     "modelled as one attention block and the MoE")
    if cfg.get("index_topk"):               # DeepSeek-V3.2's sparse attention (DSA): each query reads index_topk keys
        notes.append(f"sparse attention (DSA, {cfg['index_topk']} keys per query) costed as dense attention")
    if notes:
        entry["source"] += NOT_MODELLED + "; ".join(notes)
    return {key or "model": entry}


def _linear_layers(cfg: dict, layers: int) -> int:
    """How many layers of a hybrid model are not softmax attention, as its config says: `layer_types` entries that
    name linear attention or a state-space layer (Qwen3-Next: linear_attention; Granite 4: mamba), else
    Qwen3-Next's full_attention_interval, MiniMax's attn_type_list (0: lightning attention), Kimi Linear's
    linear_attn_config.kda_layers, Nemotron-H's hybrid_override_pattern (M: Mamba), Jamba's attn_layer_period
    (one attention layer a period)."""
    types = cfg.get("layer_types")
    if isinstance(types, list) and types:   # attention kinds (full, sliding, chunked, deepseek_sparse) are not counted
        return sum(1 for t in types if re.search(r"linear|mamba|ssm|delta|lightning|recurrent|rwkv|retention|kda",
                                                 str(t), re.I))
    every = cfg.get("full_attention_interval")
    if isinstance(every, int) and every > 1:
        return layers - layers // every
    kinds = cfg.get("attn_type_list")
    if isinstance(kinds, list):
        return sum(1 for k in kinds if k == 0)
    kda = (cfg.get("linear_attn_config") or {}).get("kda_layers") if isinstance(cfg.get("linear_attn_config"), dict) \
        else None
    if isinstance(kda, list):
        return len(kda)
    pattern = cfg.get("hybrid_override_pattern")
    if isinstance(pattern, str):
        return pattern.count("M")
    period = cfg.get("attn_layer_period")
    if isinstance(period, int) and period > 1:
        return layers - layers // period
    return 0


def _dense_layers(cfg: dict, layers: int, notes: list[str], where: str) -> int:
    """How many layers have a dense MLP: DeepSeek's first_k_dense_replace, Qwen's mlp_only_layers and
    decoder_sparse_step, Llama-4's interleave step, ERNIE 4.5's moe_layer_start_index / end_index / interval,
    Arctic's moe_layer_frequency, Jamba's expert_layer_period / offset, Motif's n_dense_first_layers, StepFun's
    moe_layers_enum, mlp_layer_types ("dense" / "sparse" per layer).
    tracegen puts them first; elsewhere, say so."""
    if cfg.get("first_k_dense_replace") is not None:
        return min(_whole(cfg["first_k_dense_replace"], "first_k_dense_replace", where), layers)
    sparse = [True] * layers
    step = _whole(cfg.get("decoder_sparse_step") or cfg.get("interleave_moe_layer_step")
                  or cfg.get("moe_layer_interval") or cfg.get("moe_layer_frequency") or 1,
                  "decoder_sparse_step / interleave_moe_layer_step", where, least=1)
    if step > 1:
        sparse = [(i + 1) % step == 0 for i in range(layers)]
    if cfg.get("n_dense_first_layers") is not None:  # Motif: the first N layers dense
        first_dense = _whole(cfg["n_dense_first_layers"], "n_dense_first_layers", where)
        sparse = [s and i >= first_dense for i, s in enumerate(sparse)]
    enum = cfg.get("moe_layers_enum")                 # StepFun: the MoE layers' indices, "3,4,5,..." or a list
    if enum is not None:
        listed = enum.split(",") if isinstance(enum, str) else enum
        if not isinstance(listed, list) or not all(str(x).strip().isdigit() and int(x) < layers for x in listed):
            raise UserError(f"{where}: moe_layers_enum must list layer numbers below {layers}, got {enum!r}")
        moe = {int(x) for x in listed}
        sparse = [i in moe for i in range(layers)]
    kinds = cfg.get("mlp_layer_types")                # a layer's MLP by name: "dense" / "sparse"
    if kinds is not None:
        if not isinstance(kinds, list) or len(kinds) != layers or not set(map(str, kinds)) <= {"dense", "sparse"}:
            raise UserError(f"{where}: mlp_layer_types must name each of the {layers} layers 'dense' or 'sparse'")
        sparse = [k == "sparse" for k in kinds]
    period = cfg.get("expert_layer_period")         # Jamba: an MoE layer every period layers from the offset
    if period is not None:
        period = _whole(period, "expert_layer_period", where, least=1)
        offset = _whole(cfg.get("expert_layer_offset") or 0, "expert_layer_offset", where)
        sparse = [i >= offset and (i - offset) % period == 0 for i in range(layers)]
    first = cfg.get("moe_layer_start_index")        # ERNIE 4.5: MoE layers from this index to moe_layer_end_index
    if first is not None:
        last = cfg.get("moe_layer_end_index")
        last = layers - 1 if last is None or last == -1 else _whole(last, "moe_layer_end_index", where)
        first = _whole(first, "moe_layer_start_index", where)
        sparse = [s and first <= i <= last for i, s in enumerate(sparse)]
    only = cfg.get("mlp_only_layers") or []
    if not isinstance(only, list):
        raise UserError(f"{where}: mlp_only_layers must be a list of layer numbers, got {only!r}")
    for i in only:
        if 0 <= _whole(i, "mlp_only_layers[]", where) < layers:
            sparse[i] = False
    dense = sparse.count(False)
    if dense and any(sparse[:dense]):
        notes.append(f"its {dense} dense-MLP layers are interleaved; modelled as the first {dense}")
    return dense


__all__ = ["is_hf_config", "model_entry", "not_modelled", "notes", "line_note", "KEYS", "NOT_MODELLED"]
