"""A pytest plugin: under MOE_TIMELINE_STRICT=1 (set by .ci/run) a skipped test fails, naming why
it would have skipped, so a CI run cannot pass with ../shared or the browser missing. Locally a
skip stays a skip, and `-rs` (in pyproject's addopts) prints its reason."""
from __future__ import annotations

import os

import pytest

STRICT_VAR = "MOE_TIMELINE_STRICT"


def strict() -> bool:
    return os.environ.get(STRICT_VAR, "") not in ("", "0")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if strict() and rep.skipped and not hasattr(rep, "wasxfail"):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"{STRICT_VAR}=1: a skip fails here ({reason})"
