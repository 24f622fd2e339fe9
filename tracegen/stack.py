"""Serving stacks (data/stacks.toml): the conventions a deployment runs under - which release of the
all-to-all library, the scheduler's CPU time per step, the default expert placement's cost - fixed
per stack so that a validation row, or a user's run, picks a stack and never a constant of its own."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from functools import lru_cache

from .base.errors import UserError
from .catalog import DATA, Hardware, normalise
from .plan import Plan

DEFAULT_STACK = "sglang-2025-05"     # the most used open large-EP stack; `--stack catalog` for none
PHASES = ("prefill", "decode")


@dataclass(frozen=True)
class Stack:
    key: str
    display: str
    date: str
    releases: dict[str, str]        # all-to-all backend -> release name
    sched_ms: dict[str, float]      # phase -> CPU ms per step
    eplb: dict[str, float]          # phase -> throughput of the default placement / a balanced one
    source: str

    def release(self, backend: str) -> str:
        """The release this stack uses for a backend ("" : the catalog's default)."""
        return self.releases.get(backend, "")

    def apply(self, plan: Plan, hw: Hardware, explicit: frozenset[str] = frozenset()) -> Plan:
        """The plan under this stack's conventions; fields in `explicit` (set by the user) stay."""
        fields: dict = {}
        rel = self.release(plan.comm)
        if "comm_release" not in explicit and rel and rel in hw.backend(plan.comm).releases:
            fields["comm_release"] = rel
        if "sched_ms" not in explicit:
            fields["sched_ms"] = self.sched_ms[plan.phase]
        return replace(plan, **fields) if fields else plan

    def assumptions(self, plan: Plan, hw: Hardware) -> dict[str, object]:
        """What sets the figures beyond the plan: printed at the top of outputs and in their JSON."""
        backend = hw.backend(plan.comm)
        return {"stack": self.key, "stack_display": self.display,
                "comm": plan.comm, "release": plan.comm_release or backend.release or "(link x efficiency)",
                "sched_ms": plan.sched_ms, "eplb": self.eplb[plan.phase],
                "in_situ_slowdown": hw.in_situ.slowdown if hw.in_situ and backend.sms else 0.0,
                "clock": "power-limited (power.py)" if hw.power else "boost"}


@lru_cache(maxsize=1)
def _raw() -> dict:
    return tomllib.loads((DATA / "stacks.toml").read_text("utf-8"))


def stack_names() -> tuple[str, ...]:
    return tuple(_raw())


@lru_cache(maxsize=None)
def load_stack(name: str = DEFAULT_STACK) -> Stack:
    raw = _raw()
    key = next((k for k in raw if normalise(k) == normalise(name)), None)
    if key is None:
        raise UserError(f"unknown stack {name!r}; known: {', '.join(raw)}")
    e = raw[key]
    for f in ("display", "date", "releases", "sched_ms", "eplb", "source"):
        if f not in e:
            raise UserError(f"stacks.toml [{key}]: missing field {f!r}")
    for f in ("sched_ms", "eplb"):
        if set(e[f]) != set(PHASES):
            raise UserError(f"stacks.toml [{key}].{f}: give exactly {' and '.join(PHASES)}")
    return Stack(key=key, display=e["display"], date=e["date"], releases=dict(e["releases"]),
                 sched_ms={p: float(v) for p, v in e["sched_ms"].items()},
                 eplb={p: float(v) for p, v in e["eplb"].items()}, source=e["source"])
