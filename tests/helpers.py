"""Helpers shared by tests: build schedules and traces the way the CLI does, and read traces back."""
from __future__ import annotations

import gzip
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from tracegen.catalog import load_hardware, load_model
from tracegen.pipeline import TraceOptions, schedule
from tracegen.plan import Plan
from tracegen.preset import load_preset


def make_schedule(phase: str = "prefill", hardware: str = "h800", model: str = "deepseek-v3",
                  preset: str = "default", tbo: str = "proper", ranks: int = 1, layers: int | None = 7,
                  launch_us: float | None = None, hw_over: dict | None = None, **plan_kw: Any):
    p = load_preset(preset)
    hw, p = p.resolve(load_hardware(hardware), **(hw_over or {}))
    defaults = dict(p.plan[phase])
    comm = plan_kw.pop("comm", defaults.pop("comm"))
    if comm not in hw.comm:
        comm = "ascend-fused" if "ascend-fused" in hw.comm else "normal"
    kw = {**defaults, **plan_kw}
    kw.setdefault("microbatches", 1 if tbo == "off" else 2)
    plan = Plan(phase=phase, comm=comm, gpus_per_node=hw.gpus_per_node, **kw)
    return schedule(load_model(model), hw, plan, p, TraceOptions(tbo=tbo, layers=layers, ranks=ranks,
                                                                   launch_us=launch_us))


def read_trace(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    return json.loads(raw)


def slices(trace: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in trace["traceEvents"] if e.get("ph") == "X"]


__all__ = ["make_schedule", "read_trace", "slices", "replace"]
