"""Helpers shared by tests: build schedules and traces the way the CLI does, and read traces back."""
from __future__ import annotations

import gzip
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from tracegen.pipeline import TraceOptions, schedule
from tracegen.resolve import resolve_plan, resolve_target
from tracegen.target import Target


def make_schedule(phase: str = "prefill", hardware: str = "h800", model: str = "deepseek-v3",
                  preset: str = "default", tbo: str = "proper", ranks: int = 1, layers: int | None = 7,
                  launch_us: float | None = None, hw_over: dict | None = None, **plan_kw: Any):
    m, hw, p = resolve_target(model, hardware=hardware, preset=preset, **(hw_over or {}))
    plan_kw.setdefault("microbatches", 1 if tbo == "off" else 2)
    plan = resolve_plan(phase, m, hw, p, **plan_kw)
    return schedule(Target(m, hw, p, plan), TraceOptions(tbo=tbo, layers=layers, ranks=ranks, launch_us=launch_us))


def read_trace(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    return json.loads(raw)


def slices(trace: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in trace["traceEvents"] if e.get("ph") == "X"]


def merged(iv) -> list[list[float]]:
    """Intervals merged by plain loops (tests compute truths without the code under test)."""
    out: list[list[float]] = []
    for a, b in sorted(iv):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def overlap(a, b) -> float:
    """Length of the intersection of two merged interval lists (two pointers)."""
    i = j = 0
    total = 0.0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            total += hi - lo
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


__all__ = ["make_schedule", "read_trace", "slices", "replace", "merged", "overlap"]
