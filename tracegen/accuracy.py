"""How far the model has been right on published and held-out rows (data/accuracy.json, written by
`make validate`: bench/accuracy.py), shown beside every estimate, trace and deployment so that a figure
for a plan nobody validated comes with the errors on the rows of its phase - misses included - rather
than with nothing. It is the record of other configurations, not an error bar for this one."""
from __future__ import annotations

import json
import math
from functools import lru_cache
from typing import Any

from .catalog import DATA

PATH = DATA / "accuracy.json"
PAGE = "docs/validation.md"
_WHAT = {"step": "published steps", "deploy": "published pools", "held-out": "held-out"}


@lru_cache(maxsize=1)
def _load() -> dict[str, Any] | None:
    try:
        return json.loads(PATH.read_text("utf-8"))
    except (OSError, ValueError):          # an install without the file: say nothing rather than fail
        return None


def accuracy(phases: tuple[str, ...], kinds: tuple[str, ...], comm: str = "",
             a2a_tokens: float | None = None) -> dict[str, Any] | None:
    """The rows of these phases and kinds (step / deploy / held-out), the held-out kernel-table rows of the
    plan's all-to-all backend `comm` (published kernel times the catalog's backend was checked on; with the
    plan's tokens per rank per dispatch `a2a_tokens`, the rows of each table nearest that payload are named
    too), and the held-out summary over all."""
    doc = _load()
    if doc is None:
        return None
    rows = [r for r in doc["rows"] if r["phase"] in phases and r["what"] in kinds]
    kernels = [r for r in doc["rows"] if comm and r["phase"] == "kernel" and r.get("comm") == comm]
    return {"phases": list(phases), "rows": rows, "kernels": kernels, "a2a_tokens": a2a_tokens, "heldout": doc["heldout"],
            "heldout_by_kind": doc.get("heldout_by_kind", {}), "page": doc["page"]}


def _span(rows: list[dict[str, Any]]) -> str:
    errs = [r["error_pct"] for r in rows]
    return f"{len(rows)} row{'s' if len(rows) > 1 else ''} {min(errs):+.1f}..{max(errs):+.1f} %"


def nearest_payload(rows: list[dict[str, Any]], tokens: float) -> list[dict[str, Any]]:
    """A table's rows at the payload (tokens per rank) nearest `tokens`, by ratio: a kernel's fixed cost dominates
    a small payload and its bandwidth a large one, so a table's error at one payload says little of another's."""
    sized = [r for r in rows if r.get("tokens")]
    if not sized or tokens <= 0:
        return []
    best = min({r["tokens"] for r in sized}, key=lambda t: abs(math.log(t / tokens)))
    return [r for r in sized if r["tokens"] == best]


def _kernel_part(rows: list[dict[str, Any]], tokens: float | None) -> str:
    """The backend's held-out kernel rows, per published table: how many, on which hardware, their error range,
    and, where the table has several payloads, its rows nearest the plan's."""
    parts = []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == ds]
        hw = "/".join(dict.fromkeys(r["hardware"] for r in mine))
        part = f"{ds} on {hw} {_span(mine)}"
        near = nearest_payload(mine, tokens) if tokens else []
        if near and len(near) < len(mine):
            n = near[0]["tokens"]
            part += (f" (at {n:,} token{'s' if n != 1 else ''} per rank, nearest this plan's {tokens:,.4g}: "
                     f"{_span(near)})")
        parts.append(part)
    return f"held-out {rows[0]['comm']} kernels " + ", ".join(parts)


def accuracy_line(a: dict[str, Any] | None, lead: str = "accuracy            ") -> str:
    """One line: each kind's rows of the phase with their errors, then every held-out row's median and max."""
    if a is None:
        return ""
    parts = []
    for what, name in _WHAT.items():
        rs = [r for r in a["rows"] if r["what"] == what]
        if rs:
            parts.append(f"{name} " + ", ".join(f"{r['key']} {r['error_pct']:+.1f} %" for r in rs))
    if a.get("kernels"):
        parts.append(_kernel_part(a["kernels"], a.get("a2a_tokens")))
    h = a["heldout"]
    phase = " / ".join(a["phases"])
    kinds = a.get("heldout_by_kind") or {}
    split = ("; " + ", ".join(f"{k} rows {v['n']}: median {v['median_abs_pct']:.1f} %, max {v['max_abs_pct']:.1f} %"
                              for k, v in kinds.items())) if len(kinds) > 1 else ""
    return (f"{lead}{phase} rows where the model was checked ({a['page']}): " + "; ".join(parts or ["none"])
            + f". All {h['n']} held-out rows: median |error| {h['median_abs_pct']:.1f} %, max {h['max_abs_pct']:.1f} %"
            + split + " (other configurations: not an error bar for this plan)")


__all__ = ["accuracy", "accuracy_line", "nearest_payload", "PATH", "PAGE"]
