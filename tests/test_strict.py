"""Under MOE_TIMELINE_STRICT=1 a skip is a failure that names its reason; without it, a skip with
its reason shown."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, strict: bool) -> subprocess.CompletedProcess:
    t = tmp_path / "test_skips.py"
    t.write_text("import pytest\n\ndef test_needs_shared():\n    pytest.skip('../shared is absent')\n")
    env = {k: v for k, v in os.environ.items() if k != "MOE_TIMELINE_STRICT"}
    if strict:
        env["MOE_TIMELINE_STRICT"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "tests.strict", "-p",
                           "no:cacheprovider", str(t)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_a_skip_fails_under_the_strict_variable(tmp_path):
    r = _run(tmp_path, strict=True)
    assert r.returncode == 1, r.stdout
    assert "1 failed" in r.stdout and "MOE_TIMELINE_STRICT=1: a skip fails here" in r.stdout
    assert "../shared is absent" in r.stdout


def test_a_skip_is_a_skip_with_its_reason_otherwise(tmp_path):
    r = _run(tmp_path, strict=False)
    assert r.returncode == 0, r.stdout
    assert "1 skipped" in r.stdout and "../shared is absent" in r.stdout
