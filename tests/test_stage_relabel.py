"""structure._replaced builds the stage column after annotations relabel some rows; it must be the
categorical pd.Categorical makes of that text (categories used, sorted; "nan" for a missing value),
codes and category dtype included, on random columns."""
from __future__ import annotations

import numpy as np
import pandas as pd

from replay.events import text
from replay.structure import _replaced


def test_relabelled_column_is_the_categorical_of_its_text():
    rng = np.random.default_rng(11)
    pool = ["", "ATTN(0)", "MLP(1)", "DISPATCH(0)", "b", "Z", "nan", "é(1)", "a b"]
    for _ in range(800):
        n = int(rng.integers(0, 60))
        values = rng.choice(pool, n).tolist()
        cats = list(dict.fromkeys(rng.permutation(pool).tolist()))
        col = pd.Series(pd.Categorical(values, categories=cats))
        if n and rng.random() < 0.3:
            col = col.cat.set_categories([c for c in cats if c != values[0]])     # rows with a missing value
        pos = np.sort(rng.choice(n, int(rng.integers(0, n + 1)), replace=False)) if n else np.zeros(0, dtype=int)
        labels = rng.choice(pool + ["NEW(3)"], len(pos)).astype(object)
        want_text = text(col)
        want_text[pos] = labels
        want = pd.Categorical(want_text)
        got = _replaced(col, pos, labels)
        assert list(got.categories) == list(want.categories) and got.categories.dtype == want.categories.dtype
        assert np.array_equal(np.asarray(got.codes), np.asarray(want.codes)) and got.codes.dtype == want.codes.dtype
