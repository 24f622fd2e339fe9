"""Which kernels take a rank's GPU time: per rank, the kernels (by name) with the most busy time,
their class, count, total and mean time and share of the rank's summed kernel time - the first table a user
reads when a rank is slow (HTA's kernel breakdown). A per-rank analysis in the pipeline's registry
(replay/pipeline.py ANALYSES): `replay analyze --json` lists it under analyses.top_kernels."""
from __future__ import annotations

import pandas as pd

from .events import text_sorted
from .overlap import gpu_work

TOP_KERNELS = 10           # per rank, in the --json document
COLUMNS = ("rank", "name", "klass", "count", "total_us", "mean_us", "share_pct")


def top_kernels(events: pd.DataFrame, n: int = TOP_KERNELS) -> pd.DataFrame:
    """The `n` kernels with the most summed duration on each rank (ties: by name)."""
    g = gpu_work(events)
    if g.empty:
        return pd.DataFrame(columns=list(COLUMNS))
    name, names = text_sorted(g["name"])
    klass, klasses = text_sorted(g["klass"])
    # summed in one order whatever the events' order (a rank file alone or the whole table: same bits):
    # by rank, name, class and duration, the names and classes as codes in text order (no string sort)
    df = pd.DataFrame({"rank": g["rank"].to_numpy(), "name": name, "klass": klass,
                       "dur": g["dur_us"].to_numpy(dtype=float)})
    df = df.sort_values(["rank", "name", "klass", "dur"], kind="stable")
    agg = df.groupby(["rank", "name", "klass"], sort=False)["dur"].agg(["size", "sum"]).reset_index()
    busy = df.groupby("rank")["dur"].sum()
    agg["name"], agg["klass"] = names[agg["name"].to_numpy()], klasses[agg["klass"].to_numpy()]
    agg = agg.rename(columns={"size": "count", "sum": "total_us"})
    agg["mean_us"] = agg["total_us"] / agg["count"]
    agg["share_pct"] = 100.0 * agg["total_us"] / agg["rank"].map(busy).where(lambda b: b > 0)
    agg = agg.sort_values(["rank", "total_us", "name"], ascending=[True, False, True], kind="stable")
    out = agg.groupby("rank", sort=True).head(n).reset_index(drop=True)
    out["rank"] = out["rank"].astype(int)
    out["count"] = out["count"].astype(int)
    return out[list(COLUMNS)].fillna({"share_pct": 0.0})


__all__ = ["top_kernels", "TOP_KERNELS"]
