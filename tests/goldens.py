"""Golden traces: the configurations and the writer behind `make goldens`.

Each golden is exactly what `tracegen trace ARGS -o traces/golden/NAME.json.gz` writes; review a
regeneration as a diff (`git diff --stat traces/golden`, then the summary printed here)."""
from __future__ import annotations

import sys
from pathlib import Path

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "traces" / "golden"
COMMON = ["--layers", "6", "--ranks", "2"]
GOLDENS: dict[str, list[str]] = {
    "h800-prefill-proper": ["--hardware", "h800", "--phase", "prefill", "--tbo", "proper", *COMMON],
    "h800-prefill-improper": ["--hardware", "h800", "--phase", "prefill", "--tbo", "improper", *COMMON],
    "h800-decode-ibgda": ["--hardware", "h800", "--phase", "decode", "--comm", "ibgda", "--imbalance", "1.2",
                          *COMMON],
    "h800-decode-cpu-proxy": ["--hardware", "h800", "--phase", "decode", "--comm", "cpu-proxy", *COMMON],
    "ascend910c-decode-fused": ["--hardware", "ascend-910c", "--phase", "decode", "--comm", "ascend-fused",
                                *COMMON],
    "ascend910c-decode-unfused": ["--hardware", "ascend-910c", "--phase", "decode", "--comm", "normal",
                                  *COMMON],
}


def golden_path(name: str) -> Path:
    return GOLDEN_DIR / f"{name}.json.gz"


def main() -> int:
    from tracegen.cli import main as tracegen
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    for name, args in GOLDENS.items():
        print(f"== {name}: tracegen trace {' '.join(args)}", flush=True)
        code = tracegen(["trace", *args, "-o", str(golden_path(name))])
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
