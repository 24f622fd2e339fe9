"""`viz`: Bokeh views of predicted and observed timelines (placeholder until the viz issue lands)."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("viz: not built yet", file=sys.stderr)
    return 2
