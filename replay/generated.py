"""What a tracegen trace says was modelled: the model, hardware, preset and plan, rebuilt from its
otherData (the trace contract's model_spec / hardware_spec), so that a trace made with a user's
--model-file or --hardware-file replays without that file."""
from __future__ import annotations

from dataclasses import dataclass, replace

from tracegen.base.errors import UserError
from tracegen.catalog import (
    Hardware,
    Model,
    hardware_from_dict,
    load_hardware,
    load_model,
    model_from_dict,
)
from tracegen.plan import Plan
from tracegen.preset import Preset, load_preset
from tracegen.target import Target

from .events import Trace


@dataclass(frozen=True)
class GeneratedRun:
    """The target a tracegen trace was generated for, and how it ran (ranks, launch cost, loads)."""
    model: Model
    hardware: Hardware        # as it ran: the preset's table and the user's what-ifs applied
    preset: Preset
    plan: Plan
    ranks: int
    launch_us: float
    load_factors: tuple[float, ...]
    dense_layers: frozenset[int]

    @property
    def target(self) -> Target:
        return Target(self.model, self.hardware, self.preset, self.plan)


def generated_run(trace: Trace) -> GeneratedRun:
    """The generated trace's target; a UserError for a profiler trace or a broken contract."""
    meta = trace.generator
    src = trace.sources[0] if trace.sources else "trace"
    if meta is None:
        raise UserError(f"{src}: not a tracegen trace (its otherData names no generator)")
    if meta.model_spec is not None:
        model = model_from_dict(meta.model_spec, f"{src}: otherData.model_spec")
    else:                       # format 1: the display name, resolved in the catalog
        model = load_model(meta.model)
    if meta.hardware_spec is not None:
        hw = hardware_from_dict(meta.hardware_spec, f"{src}: otherData.hardware_spec")
    else:
        hw = load_hardware(meta.hardware)
    throttle = (meta.power or {}).get("throttle", 0.0)
    if isinstance(throttle, bool) or not isinstance(throttle, (int, float)) or not 0.0 <= throttle <= 1.0:
        raise UserError(f"{src}: otherData.power.throttle must be a number in [0, 1], got {throttle!r}")
    if throttle:
        hw = replace(hw, throttle=float(throttle))     # the clock the step's draw set
    if meta.plan is None:
        raise UserError(f"{src}: otherData has no plan")
    try:
        plan = Plan(**meta.plan)
    except TypeError as exc:
        raise UserError(f"{src}: otherData.plan does not match this version's plan ({exc})") from None
    loads = tuple(float(x) for x in (meta.load_factors or [1.0]))
    preset = load_preset(meta.preset or "default")
    if meta.comm_in_situ is not None:
        preset = replace(preset, comm_in_situ=bool(meta.comm_in_situ))
    return GeneratedRun(model, hw, preset, plan, int(meta.ranks or 1),
                        float(meta.launch_us if meta.launch_us is not None else hw.cpu_launch_us), loads,
                        frozenset(int(x) for x in (meta.dense_layers or [])))


__all__ = ["GeneratedRun", "generated_run"]
