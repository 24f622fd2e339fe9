"""replay's ledger (data/thresholds.toml): every number a replay rule decides with, its kind (chosen
from data, assumed, bound, engineering, output) and what it rests on - the counterpart of tracegen's
fit ledger for the analysis side. docs/diagnosis.md prints it (`table()`); tests/test_thresholds.py
checks each value against its module and that no numeric constant of replay/ is missing."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

KINDS = ("chosen from data", "assumed", "bound", "engineering", "output")


@dataclass(frozen=True)
class Threshold:
    name: str           # module.CONSTANT, the module under replay/
    value: float
    kind: str
    basis: str
    why: str


@lru_cache(maxsize=1)
def load() -> tuple[Threshold, ...]:
    raw = tomllib.loads((resources.files("replay") / "data" / "thresholds.toml").read_text("utf-8"))
    rows = tuple(Threshold(r["name"], r["value"], r["kind"], r["basis"], r["why"]) for r in raw["threshold"])
    for r in rows:
        if r.kind not in KINDS:
            raise ValueError(f"thresholds.toml: {r.name}: unknown kind {r.kind!r} (one of {', '.join(KINDS)})")
    return rows


def table() -> str:
    """The ledger as Markdown, by kind (the ones that decide an answer first)."""
    out = ["| constant | value | kind | rests on | what it decides |", "|---|---:|---|---|---|"]
    for r in sorted(load(), key=lambda r: (KINDS.index(r.kind), r.name)):
        out.append(f"| `{r.name}` | {r.value:g} | {r.kind} | {r.basis} | {r.why} |")
    return "\n".join(out) + "\n"


__all__ = ["KINDS", "Threshold", "load", "table"]
