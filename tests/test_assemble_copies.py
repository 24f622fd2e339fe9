"""The folder's assembly and the report's top findings avoid whole-table copies (issue 30: a 64-rank
folder's peak was the main process holding the findings three times). The shortcuts must give exactly
what the plain pandas expressions they replace give."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from replay.analysis import Analysis
from replay.findings import FINDING_COLUMNS, as_dicts
from replay.pipeline import _by_rank


def _reference(frames: list[pd.DataFrame]) -> pd.DataFrame:
    out = pd.concat([f for f in frames if len(f)], ignore_index=True)
    return out.sort_values("rank", kind="stable").reset_index(drop=True)


def _frame(rng: np.random.Generator, ranks: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"rank": ranks, "x": rng.random(len(ranks)), "name": [f"k{i}" for i in rng.integers(0, 5, len(ranks))]})


@pytest.mark.parametrize("layout", ["one rank a file", "files out of order", "ranks shared", "ranks interleaved"])
def test_by_rank_equals_a_stable_sort_of_the_concatenation(layout: str) -> None:
    rng = np.random.default_rng(7)
    if layout == "one rank a file":
        frames = [_frame(rng, np.full(n, r)) for r, n in enumerate([5, 0, 7, 3])]
    elif layout == "files out of order":
        frames = [_frame(rng, np.full(n, r)) for r, n in [(3, 4), (0, 6), (2, 2), (1, 5)]]
    elif layout == "ranks shared":        # two files hold rank 1: the fast path must not apply
        frames = [_frame(rng, np.array([1, 1, 2])), _frame(rng, np.array([0, 1]))]
    else:                                 # one file's rows not in rank order
        frames = [_frame(rng, np.array([4, 5, 4, 5])), _frame(rng, np.array([0, 1, 0]))]
    got = _by_rank(frames)
    pd.testing.assert_frame_equal(got, _reference(frames))


def _findings(rng: np.random.Generator, n: int) -> pd.DataFrame:
    kinds = np.array(["compute_idle", "waiting_on_peer", "launch_bound"])
    return pd.DataFrame({
        "kind": kinds[rng.integers(0, 3, n)], "group": "", "rank": rng.integers(0, 4, n),
        "step": rng.integers(-1, 3, n).astype(np.int32), "layer": rng.integers(-1, 5, n).astype(np.int32),
        "microbatch": np.zeros(n, dtype=np.int32), "stage": "", "start_us": rng.random(n) * 1e4,
        "lost_us": rng.integers(0, 6, n).astype(float),         # many ties: the order among them counts
        "next": "gemm", "call": "", "peer": np.full(n, -1), "comm": False, "microbatches": np.ones(n, dtype=np.int64),
    })[list(FINDING_COLUMNS)]


@pytest.mark.parametrize("n, per_kind", [(None, None), (None, 3), (7, 3), (5, None), (1000, 2)])
def test_top_findings_equal_the_sorted_table(n: int | None, per_kind: int | None) -> None:
    table = _findings(np.random.default_rng(3), 400)
    a = SimpleNamespace(finding_table=table, step_regex=r"ProfilerStep#(\d+)")
    t = table.sort_values("lost_us", ascending=False, kind="stable")
    if per_kind is not None:
        t = t.groupby(["kind", "rank"], sort=False).head(per_kind)
    want = as_dicts(t if n is None else t.head(n), a.step_regex)      # what top_findings did before
    got = Analysis.top_findings(a, n, per_kind)
    assert [f["lost_us"] for f in got] == [f["lost_us"] for f in want]
    assert got == want
