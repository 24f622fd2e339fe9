"""Helpers shared by tests: build schedules and traces the way the CLI does, and read traces back."""
from __future__ import annotations

import gzip
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from tracegen.base.contract import OBSERVED_IDLE_CAUSES, UNEXPLAINED
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


def launched_inside(ev: list[dict[str, Any]], is_range) -> list[dict[str, Any]]:
    """The kernels launched inside the CPU ranges `is_range(event)` picks, by plain loops: a launch call within a
    range on its thread, its kernel by correlation id."""
    ranges = [e for e in ev if e.get("ph") == "X" and is_range(e)]
    launches = [e for e in ev if e.get("cat") in ("cuda_runtime", "cuda_driver") and "aunch" in e.get("name", "")
                and "correlation" in e.get("args", {})]
    inside = set()
    for r in ranges:
        for ln in launches:
            if ln["tid"] == r["tid"] and r["ts"] <= ln["ts"] and ln["ts"] + ln["dur"] <= r["ts"] + r["dur"]:
                inside.add(ln["args"]["correlation"])
    return [e for e in ev if e.get("cat") == "kernel" and e.get("args", {}).get("correlation") in inside]


__all__ = ["make_schedule", "read_trace", "slices", "replace", "merged", "overlap", "launched_inside"]


def kernel_gaps(ev: list[dict[str, Any]]) -> list[list[float]]:
    """Compute idle of a single-GPU capture, by plain loops: the gaps between its merged kernels."""
    ks = merged((e["ts"], e["ts"] + e["dur"]) for e in ev if e.get("ph") == "X" and e.get("cat") == "kernel")
    return [[ks[i][1], ks[i + 1][0]] for i in range(len(ks) - 1)]


def idle_total(a) -> float:
    """A one-rank analysis' compute idle, over every cause."""
    return sum(a.idle_totals[0][c] for c in (*OBSERVED_IDLE_CAUSES, UNEXPLAINED))


def launch_path_idle(ev: list[dict[str, Any]]) -> float:
    """Compute idle of a single-GPU capture in gaps, within a profiler step, whose next kernel was launched
    only after the GPU went idle (its launch call ended inside the gap): the host's, by plain loops."""
    launch_end = {e["args"]["correlation"]: e["ts"] + e["dur"] for e in ev
                  if e.get("cat") in ("cuda_runtime", "cuda_driver") and "aunch" in e.get("name", "")
                  and "correlation" in e.get("args", {})}
    ks = sorted((e for e in ev if e.get("ph") == "X" and e.get("cat") == "kernel"), key=lambda e: e["ts"])
    steps = merged((e["ts"], e["ts"] + e["dur"]) for e in ev if str(e.get("name", "")).startswith("ProfilerStep#"))
    step_of = lambda t: next((i for i, (s, x) in enumerate(steps) if s <= t < x), -1)  # noqa: E731
    truth, end = 0.0, ks[0]["ts"] + ks[0]["dur"]
    for k in ks[1:]:
        g0, g1 = end, k["ts"]
        le = launch_end.get(k["args"].get("correlation"))
        if g1 > g0 and le is not None and le > g0 and step_of(g0) == step_of(g1):
            truth += g1 - g0
        end = max(end, k["ts"] + k["dur"])
    return truth
