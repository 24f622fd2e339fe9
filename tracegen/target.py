"""What one estimate, trace or table is about: the model, the hardware as the preset sees it, the
preset and the plan, travelling as one frozen value (tracegen/resolve.py builds it from names and
flags; the op graph, estimate, scheduler and step tables take it whole)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterator

from .catalog import Hardware, Model
from .plan import Plan
from .preset import Preset, local_experts


@dataclass(frozen=True)
class Target:
    """The quartet, resolved once (unpacks as model, hardware, preset, plan)."""
    model: Model
    hardware: Hardware
    preset: Preset
    plan: Plan

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.hardware, self.preset, self.plan))

    def with_plan(self, plan: Plan) -> Target:
        """The same model, hardware and preset about another plan (a micro-batch's, MTP's, a pool's)."""
        return replace(self, plan=plan)

    def with_hardware(self, hw: Hardware) -> Target:
        """The same target on a variant of its hardware (a throttled clock, a what-if rate)."""
        return replace(self, hardware=hw)

    def held_note(self) -> str | None:
        """Where the plan's backend release publishes no figure for its EP size: which are held, and why."""
        hw, plan = self.hardware, self.plan
        if local_experts(plan, self.preset):      # no all-to-all runs: no figure is used
            return None
        release = hw.backend(plan.comm).pick(plan.comm_release) if self.preset.comm_figures == "published" else None
        held = release.held(plan.ep_size) if release is not None else []
        return (f"{plan.comm} release {release.name!r} publishes no figures for EP{plan.ep_size}: "
                f"{' and '.join(held)} held ({release.source})") if held and release is not None else None


__all__ = ["Target"]
