"""From names and flags to the objects the cost model runs on: (model, hardware, preset) and a
validated plan, with the preset's per-phase plan defaults and the hardware's default backend
filled in. The one resolver the CLI, the dashboard and the tests share."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from .base.errors import UserError
from .catalog import Hardware, Model, load_hardware, load_model
from .plan import ASCEND_FUSED, NORMAL, Plan, validate
from .preset import Preset, load_preset
from .stack import load_stack
from .target import Target

# plan fields a caller may set; unset ones take the preset's defaults for the phase
PLAN_FIELDS = ("batch", "seq_len", "kv_hit", "tp", "dp", "ep", "gpus_per_node", "redundant_experts",
               "microbatches", "comm", "comm_sms", "precision", "kv_dtype", "decode_len", "imbalance",
               "routing", "comm_release", "mtp", "mtp_accept", "sched_ms")
HARDWARE_WHATIFS = ("scaleout_gbps", "scaleup_gbps", "hbm_gbps")
MIN_RATE, MAX_RATE = 1e-3, 1e7      # GB/s: a what-if outside this is a typo, and would time ops at 0 or inf


def resolve_target(model: str | None = None, model_file: str | None = None, hardware: str | None = None,
                   hardware_file: str | None = None, preset: str = "default",
                   **whatifs: float | None) -> tuple[Model, Hardware, Preset]:
    """The model, the hardware as the preset sees it (with the user's what-if figures, which win)
    and the preset."""
    unknown = sorted(set(whatifs) - set(HARDWARE_WHATIFS))
    if unknown:
        raise TypeError(f"unknown hardware what-if {unknown[0]!r}")
    m = load_model(model, model_file)
    hw = load_hardware(hardware, hardware_file)
    p = load_preset(preset)
    over: dict[str, float] = {}
    for name, v in whatifs.items():
        if v is not None:
            if not (math.isfinite(v) and MIN_RATE <= v <= MAX_RATE):
                raise UserError(f"--{name.replace('_', '-')} must lie in [{MIN_RATE:g}, {MAX_RATE:g}] GB/s, got {v}")
            over[name] = v
    hw, p = p.resolve(hw, **over)
    return m, hw, p


def default_backend(preset: Preset, phase: str, hw: Hardware) -> str:
    """The preset's backend for the phase, or the hardware's own where it has no such backend."""
    comm = preset.plan.get(phase, {}).get("comm", NORMAL)
    if comm not in hw.comm:
        comm = ASCEND_FUSED if ASCEND_FUSED in hw.comm else NORMAL
    return comm


def resolve_plan(phase: str, model: Model, hw: Hardware, preset: Preset, tokens: float | None = None,
                 balancedness: float | None = None, stack: str = "", **fields: Any) -> Plan:
    """A validated plan: the fields given (None: unset), else the preset's defaults for the phase, under
    the serving stack's conventions where one is named (its release and scheduler term; a field given
    explicitly wins). `tokens` (prefill prompt tokens per GPU) sets the batch; `balancedness` sets
    imbalance = 1/x."""
    unknown = sorted(set(fields) - set(PLAN_FIELDS))
    if unknown:
        raise TypeError(f"unknown plan field {unknown[0]!r}")
    kw: dict[str, Any] = {k: v for k, v in preset.plan.get(phase, {}).items() if k != "comm"}
    kw["comm"] = default_backend(preset, phase, hw)
    if kw.get("precision", "fp8") != "bf16":     # the preset's 8-bit default is the chip's own format
        kw["precision"] = hw.q8_format
    kw.update({k: v for k, v in fields.items() if v is not None})
    kw.setdefault("gpus_per_node", hw.gpus_per_node)
    if balancedness is not None:
        if not 0 < balancedness <= 1:
            raise UserError(f"--balancedness must lie in (0, 1], got {balancedness}")
        kw["imbalance"] = 1.0 / balancedness
    if tokens is not None:
        if phase != "prefill":
            raise UserError("--tokens is for prefill; use --batch for decode")
        if not (math.isfinite(tokens) and tokens > 0):
            raise UserError(f"--tokens is prompt tokens per GPU per step, a positive number, got {tokens:g}")
        kw["batch"] = tokens * kw.get("tp", 1) / kw.get("seq_len", 4096)
    plan = validate(Plan(phase=phase, **kw), model, hw)
    if stack:
        plan = validate(load_stack(stack).apply(plan, hw, frozenset(k for k, v in fields.items() if v is not None)),
                        model, hw)
    return plan


def whole_experts(plan: Plan, model: Model) -> Plan:
    """A plan a user typed must give every GPU whole experts (a pool in `deploy` may average them)."""
    experts = model.routed_experts + plan.redundant_experts
    if experts % plan.ep_size:
        raise UserError(f"EP{plan.ep_size} splits {experts} experts ({model.routed_experts} routed + "
                        f"{plan.redundant_experts} redundant) into {experts / plan.ep_size:.2f} per GPU: choose an "
                        f"EP size that divides them (or --redundant-experts to make it so)")
    return plan


def resolve(flags: dict[str, Any]) -> Target:
    """The command line's flags (argparse's namespace as a dict; absent or None: the defaults) as a
    Target: catalog entries and the user's hardware what-ifs, the preset switches (--mla-form, --clock,
    --in-situ), then the plan under the serving stack, every GPU holding whole experts."""
    get = flags.get
    model, hw, preset = resolve_target(get("model"), get("model_file"), get("hardware"), get("hardware_file"),
                                       get("preset") or "default", **{k: get(k) for k in HARDWARE_WHATIFS})
    if get("mla_form"):
        preset = replace(preset, decode_mla_form=get("mla_form"))
    if get("clock", "limit") == "boost":
        preset = replace(preset, power_limit=False)
    if get("in_situ", "on") == "off":
        preset = replace(preset, comm_in_situ=False)
    plan = whole_experts(resolve_plan(get("phase") or "prefill", model, hw, preset, tokens=get("tokens"),
                                      balancedness=get("balancedness"), stack=get("stack") or "",
                                      **{k: get(k) for k in PLAN_FIELDS}), model)
    return Target(model, hw, preset, plan)


__all__ = ["Target", "resolve", "resolve_target", "resolve_plan", "whole_experts", "default_backend", "PLAN_FIELDS", "HARDWARE_WHATIFS"]
