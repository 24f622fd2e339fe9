"""How far tracegen has been right, as `make validate` last measured it, written where tracegen reads it
(tracegen/data/accuracy.json) so that `tracegen estimate`, `trace` and `deploy` print it beside their
figures: a plan a user brings is in none of our tables, and the errors on the rows of its phase - with
their labels, misses included - are the honest answer to "how far can I trust this?".

    python -m bench.accuracy            # print the summary
    python -m bench.accuracy --write    # write it (make validate does)

Rows: the published step rows (bench/validate.py), the deployment rows (bench/validate_deploy.py; the
one-sided day-6 capacity checks are checks, not errors, and stay out) and the held-out rows whose target
exists (bench/heldout.py). Nothing here predicts anything of its own: it copies those tables' errors."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tracegen.accuracy import PATH, PAGE

from . import heldout, validate, validate_deploy


def _row(key: str, what: str, phase: str, label: str, error_pct: float) -> dict[str, Any]:
    return {"key": key, "what": what, "phase": phase, "label": label, "error_pct": round(float(error_pct), 1)}


def summary() -> dict[str, Any]:
    """Every validation row's error (rounded as the tables print it), by what it checks and its phase."""
    rows = [_row(t["key"], "step", p.phase, t["tag"], t["error_pct"])
            for t, p in zip(validate.throughput_rows(), (r.plan for r in validate.ROWS))]
    for r in validate_deploy.ROWS:
        if r.one_sided:
            continue
        m = validate_deploy.measure(r)
        if m["error_pct"] is not None:
            rows.append(_row(r.key, "deploy", r.phase, r.tag, m["error_pct"]))
    pins = heldout.pinned()
    held = [h for h in heldout.rows() if h["error_pct"] is not None]
    kinds: dict[str, list[dict[str, Any]]] = {"step": [], "kernel": []}
    for h in held:
        plan = pins[h["key"]].get("plan")
        row = _row(h["key"], "held-out", plan["phase"] if plan else "kernel", h["label"], h["error_pct"])
        if not plan:                     # a kernel table's row: the backend and hardware it checked
            row.update(comm=heldout.kernel_comm(pins[h["key"]]), hardware=pins[h["key"]]["hardware"],
                       dataset=h["dataset"], tokens=int(pins[h["key"]].get("tokens", heldout.DEEPEP_TOKENS)))
        rows.append(row)
        kinds["step" if plan else "kernel"].append(h)
    return {"written_by": "make validate (bench/accuracy.py)", "page": PAGE, "rows": rows,
            "heldout": _summary(held), "heldout_by_kind": {k: _summary(v) for k, v in kinds.items() if v}}


def _summary(held: list[dict[str, Any]]) -> dict[str, Any]:
    s = heldout.summary(held)
    return {"n": s["n"], "median_abs_pct": round(s["median_abs_pct"], 1), "max_abs_pct": round(s["max_abs_pct"], 1)}


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1) + "\n"


def write(path: Path = PATH) -> None:
    path.write_text(render(summary()))


def main(argv: list[str] | None = None) -> int:
    """Print the summary; with --write, write it where tracegen reads it (make validate does)."""
    if "--write" in (argv or []):
        write()
        print(f"wrote {PATH}: the rows' errors tracegen prints beside its figures")
        return 0
    print(render(summary()), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
