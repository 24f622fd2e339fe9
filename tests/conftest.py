"""Shared fixtures: where ../shared lives, and a skip when it is absent (a failure under
MOE_TIMELINE_STRICT=1, which CI sets: see tests/strict.py)."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MOE_SHARED", ROOT.parent / "shared"))
REFERENCE = SHARED / "reference"
pytest_plugins = ("tests.strict",)
TRAIN_JSON = SHARED / "traces" / "deepseek-profile-data" / "train.json"


def reference_rows(name: str) -> list[dict[str, str]]:
    """Rows of ../shared/reference/NAME, or a skip naming what is missing."""
    path = REFERENCE / name
    if not path.exists():
        pytest.skip(f"{path} is absent: the reference figures live in ../shared beside the checkout")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def train_json() -> Path:
    if not TRAIN_JSON.exists():
        pytest.skip(f"{TRAIN_JSON} is absent: DeepSeek's train.json lives in ../shared/traces")
    return TRAIN_JSON
