"""Cause -> advice (data/advice.toml): what each idle cause and group means and what to do about it,
with the condition on the trace that the advice needs (two-batch-overlap advice only where the
rank communicates with two micro-batches). findings.py builds its messages here; docs/diagnosis.md
is `table()`."""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from tracegen.base.contract import IDLE_GROUPS

# recurring: the finding's call does it in 2 or more profiled steps; syncs: the rank's steps wait in host syncs;
# the names of advice.toml's [conditions] (collective, device_free): the call the CPU sat in matches that regex
WHEN = ("always", "tbo", "no_tbo", "recurring", "syncs")


@dataclass(frozen=True)
class Advice:
    cause: str
    group: str
    when: str
    what: str
    advice: str


@lru_cache(maxsize=1)
def _raw() -> dict:
    return tomllib.loads((resources.files("replay") / "data" / "advice.toml").read_text("utf-8"))


@lru_cache(maxsize=1)
def conditions() -> dict[str, re.Pattern[str]]:
    """advice.toml's conditions on the call the CPU sat in (a collective's host path, a device free), by name."""
    return {name: re.compile(rx) for name, rx in _raw()["conditions"].items()}


@lru_cache(maxsize=1)
def load() -> tuple[Advice, ...]:
    raw = _raw()
    rows = tuple(Advice(r["cause"], r["group"], r.get("when", "always"), r["what"], r["advice"])
                 for r in raw["advice"])
    for r in rows:
        if r.group not in IDLE_GROUPS.get(r.cause, ()) or (r.when not in WHEN and r.when not in conditions()):
            raise ValueError(f"advice.toml: unknown cause/group/when {r.cause}/{r.group}/{r.when}")
    return rows


def pick(cause: str, group: str, comm: bool, microbatches: int, steps: int = 0, sync_call: str = "",
         call: str = "") -> Advice | None:
    """The first row for (cause, group) whose condition the rank (`sync_call`: the call its largest
    sync wait sat in, "" for none) and the finding (`steps`: the profiled steps in which its call held
    the launch path the same way; `call`: the span the CPU sat in) meet."""
    ctx = {"always": True, "tbo": comm and microbatches >= 2, "no_tbo": comm and microbatches < 2,
           "recurring": steps >= 2, "syncs": bool(sync_call)}
    ctx.update({name: bool(rx.search(call or "")) for name, rx in conditions().items()})
    return next((r for r in load() if r.cause == cause and r.group == group and ctx[r.when]), None)


def message(cause: str, group: str, lost_us: float, next_name: str, call: str, peer: int | None,
            comm: bool, microbatches: int, steps: int = 0, sync_call: str = "") -> str:
    a = pick(cause, group, comm, microbatches, steps, sync_call, call)
    nxt = _short(next_name) or "the next kernel"
    if a is None:
        return f"compute idle {lost_us:.1f} us ({cause}, {group})"
    fill = {"next": nxt, "call": _short(call) or "its step", "peer": peer if peer is not None else "?", "steps": steps,
            "sync_call": _short(sync_call)}
    return f"compute idle {lost_us:.1f} us: {a.what.format(**fill)}; {a.advice.format(**fill)}"


def table() -> str:
    """The cause -> advice table as Markdown (docs/diagnosis.md)."""
    out = ["| cause | group | when | what it means | what to do |", "|---|---|---|---|---|"]
    for r in load():
        out.append(f"| `{r.cause}` | `{r.group}` | {r.when} | {r.what} | {r.advice} |")
    return "\n".join(out) + "\n"


def _short(name: str, n: int = 90) -> str:
    return name if len(name) <= n else name[: n - 3] + "..."


__all__ = ["Advice", "conditions", "load", "pick", "message", "table"]
