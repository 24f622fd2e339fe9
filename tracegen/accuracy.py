"""How far the model has been right on published and held-out rows (data/accuracy.json, written by
`make validate`: bench/accuracy.py), shown beside every estimate, trace and deployment so that a figure
for a plan nobody validated comes with the errors on the rows of its phase - misses included - rather
than with nothing. It is the record of other configurations, not an error bar for this one."""
from __future__ import annotations

import json
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


def accuracy(phases: tuple[str, ...], kinds: tuple[str, ...]) -> dict[str, Any] | None:
    """The rows of these phases and kinds (step / deploy / held-out), and the held-out summary over all."""
    doc = _load()
    if doc is None:
        return None
    rows = [r for r in doc["rows"] if r["phase"] in phases and r["what"] in kinds]
    return {"phases": list(phases), "rows": rows, "heldout": doc["heldout"], "page": doc["page"]}


def accuracy_line(a: dict[str, Any] | None, lead: str = "accuracy            ") -> str:
    """One line: each kind's rows of the phase with their errors, then every held-out row's median and max."""
    if a is None:
        return ""
    parts = []
    for what, name in _WHAT.items():
        rs = [r for r in a["rows"] if r["what"] == what]
        if rs:
            parts.append(f"{name} " + ", ".join(f"{r['key']} {r['error_pct']:+.1f} %" for r in rs))
    h = a["heldout"]
    phase = " / ".join(a["phases"])
    return (f"{lead}{phase} rows where the model was checked ({a['page']}): " + "; ".join(parts or ["none"])
            + f". All {h['n']} held-out rows: median |error| {h['median_abs_pct']:.1f} %, max {h['max_abs_pct']:.1f} %"
            " (other configurations: not an error bar for this plan)")


__all__ = ["accuracy", "accuracy_line", "PATH", "PAGE"]
