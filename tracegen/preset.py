"""Cost-model presets: named sets of conventions (data files under data/presets/).

`seed004` keeps the published analysis's conventions and quirks so its tables come out exactly;
`default` is the physically consistent model. Each field is one convention, documented in the
TOML files; the cost model reads only these fields, so a reader finds every difference here."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from typing import Any

from .base.errors import UserError
from .catalog import DATA, Hardware, normalise

_CHOICES: dict[str, tuple[str, ...]] = {
    "comm_sms_in_compute": ("always", "while_comm"),
    "kv_hit_applies_to": ("kv_down_proj", "all"),
    "attention_mask": ("full", "causal"),
    "prefill_q_len": ("seq_len", "new_tokens"),
    "wo_class": ("attention", "gemm"),
    "allreduce_tokens": ("seq_len", "actual"),
    "memory_time": ("add_kv_load", "roofline"),
    "decode_mla_form": ("absorbed_merged", "absorbed", "standard"),
    "decode_moe_tokens": ("batch_per_gpu", "dp_share"),
    "decode_dispatch": ("all_remote_one_nic", "remote_fraction"),
    "overlap": ("compute_only", "sm_shared"),
    "kv_dtype": ("fp8", "bf16"),
    "comm_figures": ("published", "link"),
    "fanout": ("computed", "seed"),
}


@dataclass(frozen=True)
class Preset:
    name: str
    display: str
    usable_peak: float
    flat_discount: float | None
    comm_sms_in_compute: str
    decode_comm_sms: int
    kv_hit_applies_to: str
    attention_mask: str
    prefill_q_len: str
    wo_class: str
    allreduce_tokens: str
    dense_layer_attention_tp: int
    dense_mlp_split: bool
    binary_megabytes: bool
    decode_expert_factor: float
    memory_time: str
    decode_mla_form: str
    decode_moe_tokens: str
    quant_scale_bytes: bool
    gate: bool
    glue: bool
    decode_dispatch: str
    overlap: str
    kv_dtype: str
    comm_latency: bool
    comm_figures: str
    fanout: str
    step_terms: bool
    power_limit: bool
    comm_in_situ: bool
    hardware: dict[str, dict[str, Any]] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, dict[str, Any]] = field(default_factory=dict)   # phase -> Plan field defaults

    def apply(self, hw: Hardware) -> Hardware:
        """The hardware as this preset sees it (its table's figures where they differ)."""
        over = self.hardware.get(hw.key) or next(
            (v for k, v in self.hardware.items() if normalise(k) == normalise(hw.key)), None)
        return replace(hw, **over) if over else hw


    def resolve(self, hw: Hardware, **overrides: float) -> tuple[Hardware, "Preset"]:
        """Apply this preset's hardware table, then the user's what-if figures (which win).
        Returns the hardware to use and the preset with its table emptied (already applied)."""
        if not overrides:
            return hw, self
        return replace(self.apply(hw), **overrides), replace(self, hardware={})


PRESETS = ("default", "seed004")


@lru_cache(maxsize=None)
def load_preset(name: str = "default") -> Preset:
    key = normalise(name)
    match = next((p for p in PRESETS if normalise(p) == key), None)
    if match is None:
        raise UserError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    raw = tomllib.loads((DATA / "presets" / f"{match}.toml").read_text("utf-8"))
    known = {f.name for f in fields(Preset)} - {"name"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UserError(f"preset {match}: unknown key {unknown[0]!r}")
    raw.setdefault("flat_discount", None)
    for k, allowed in _CHOICES.items():
        if raw.get(k) not in allowed:
            raise UserError(f"preset {match}: {k} must be one of {', '.join(allowed)}, got {raw.get(k)!r}")
    missing = sorted(known - set(raw) - {"hardware", "memory", "plan"})
    if missing:
        raise UserError(f"preset {match}: missing key {missing[0]!r}")
    return Preset(name=match, **raw)


def local_experts(plan: Any, preset: Preset) -> bool:
    """EP1: every expert is on this GPU, so no all-to-all runs (a serving stack calls its fused MoE
    directly); a backend's fixed latency or its published EP8 figures would be time nobody spends. The
    seed's decode convention (every token sent over one NIC, whatever the EP) keeps its all-to-all."""
    return plan.ep_size == 1 and not (plan.phase == "decode" and preset.decode_dispatch == "all_remote_one_nic")
