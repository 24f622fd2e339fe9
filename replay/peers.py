"""Who waited for whom across ranks: the n-th communication kernel of a name on every rank is one
collective (DeepEP notify / dispatch / combine, an NCCL call); it cannot finish before its last
peer arrives, so a rank whose kernel started earlier spent (last start - its start) waiting for
that peer. The rank that arrived last is the straggler of that collective, and the reason is read
from its own timeline: it started its step late, its CPU launched the kernel late, or it computed
longer before it (more tokens: load imbalance).

Ranks of one host share a clock; otherwise the ends of matched collectives (which finish together)
give each rank's offset, and the clocks are aligned on them (said in `clock`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tracegen.base.contract import COMM
from tracegen.base.errors import UserError

from .events import text
from .intervals import coverage, union
from .overlap import gpu_work

SHARED_CLOCK_US = 1000.0   # matched collective ends this close (median per rank) -> one clock
LAUNCH_GATED_US = 30.0     # a kernel starting this soon after its launch call ended waited for its CPU
STEP_LATE_SHARE = 0.5      # a rank whose step began this share of its lateness late "started late"; one whose
                           # compute before the collective exceeds its peers' by this share "computed longer"
STEP_LATE = "started its step late"
CPU_LATE = "its CPU launched the collective late"
MORE_COMPUTE = "longer compute before the collective (more tokens: load imbalance)"
STEP_HINT = " (no step ranges: the rank's first kernel came late; --step-regex names the step range)"
UNSEEN = "arrived late (no longer compute, launch or step start seen on its timeline)"
# not collectives of every rank: point-to-point kernels (a pipeline's send/recv pair two ranks, not
# all), and copies (classed as communication by a taxonomy rule, but no peer waits on them)
POINT_TO_POINT = ("nccl_sendrecv",)
KERNEL_CATS = ("kernel", COMM)      # profiler kernels, and tracegen's communication stage slices
# a folder whose ranks ran the same collectives matches nearly all of them; below this share on a rank,
# its files come from different runs (or the trace is cut mid-step) and the peer analysis would pair
# unrelated kernels
MIXED_MATCH_SHARE = 0.5


@dataclass
class Peers:
    table: pd.DataFrame                  # one row per rank and matched collective
    wait_by_rank: dict[int, float]       # peer_wait_us per rank
    stragglers: list[dict[str, Any]]     # ranks ordered by the waiting they caused
    clock: str
    offsets_us: dict[int, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def intervals(self, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This rank's stretches of waiting for a peer: starts, ends, the peer waited for."""
        t = self.table[(self.table["rank"] == rank) & (self.table["wait_us"] > 0)]
        return (t["start_us"].to_numpy(), (t["start_us"] + t["wait_us"]).to_numpy(),
                t["last_rank"].to_numpy())


    def unwaited(self) -> pd.DataFrame:
        """Each matched collective's kernel on the rank that arrived last: the time it took free of
        waiting for peers (name, step, rank, dur_us)."""
        t = self.table[self.table["rank"] == self.table["last_rank"]]
        return pd.DataFrame({"name": t["name"].to_numpy(), "step": t["step"].to_numpy(),
                             "rank": t["rank"].to_numpy(), "dur_us": (t["end_us"] - t["start_us"]).to_numpy()})


def with_step_waits(steps: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """The per-(rank, step) table with each rank's time waiting for peers in that step added."""
    if steps.empty:
        return steps
    pw = table.groupby(["rank", "step"])["wait_us"].sum() if len(table) else pd.Series(dtype=float)
    steps["peer_wait_us"] = [float(pw.get((r, s), 0.0)) for r, s in zip(steps["rank"], steps["step"])]
    return steps


def empty(clock: str = "one rank") -> Peers:
    return Peers(pd.DataFrame(columns=["rank", "step", "name", "n", "start_us", "end_us", "last_start_us",
                                       "last_rank", "wait_us"]), {}, [], clock)


def _subgroups(meta: dict[str, Any] | None) -> bool:
    """Whether the trace's process groups include one smaller than the world (TP / DP groups)."""
    info = (meta or {}).get("distributedInfo") or {}
    world = info.get("world_size")
    sizes = [g.get("pg_size") for g in info.get("pg_config") or [] if isinstance(g, dict)]
    return isinstance(world, int) and any(isinstance(n, int) and n < world for n in sizes)


def kernel_table(events: pd.DataFrame) -> pd.DataFrame:
    """The per-rank part of the peer analysis: each rank's candidate collective kernels (all-rank
    communication kernels) with what the cross-rank part needs to judge them - the end of the CPU
    call that launched each, and the rank's compute covered up to its start and its end. A function
    of one rank's events, so a folder's ranks can be reduced to this table one at a time."""
    g = gpu_work(events)
    c = g[(g["klass"] == "comm") & g["cat"].isin(KERNEL_CATS) & ~g["subclass"].isin(POINT_TO_POINT)]
    step = c["step"].to_numpy() if "step" in c else np.full(len(c), -1)
    start = c["start_us"].to_numpy()
    end = start + c["dur_us"].to_numpy()
    rank = c["rank"].to_numpy()
    corr = c["correlation"].to_numpy()
    launches = events[events["launch"] & (events["correlation"] >= 0)]
    launch_end = pd.Series((launches["start_us"] + launches["dur_us"]).to_numpy(),
                           index=pd.MultiIndex.from_arrays([launches["rank"].to_numpy(),
                                                            launches["correlation"].to_numpy()]))
    launch_end = launch_end[~launch_end.index.duplicated()]
    le = launch_end.reindex(pd.MultiIndex.from_arrays([rank, corr])).to_numpy() if len(c) else np.zeros(0)
    cov_start, cov_end = np.zeros(len(c)), np.zeros(len(c))
    comp = g[g["klass"] == "compute"]
    for r, df in comp.groupby("rank"):
        mine = rank == r
        if mine.any():
            F = coverage(*union(df["start_us"].to_numpy(), (df["start_us"] + df["dur_us"]).to_numpy()))
            cov_start[mine], cov_end[mine] = F(start[mine]), F(end[mine])
    return pd.DataFrame({"rank": rank, "step": step, "name": text(c["name"]), "start_us": start, "end_us": end,
                         "correlation": corr, "nccl": c["subclass"].astype(str).str.startswith("nccl").to_numpy(),
                         "launch_end_us": le, "cov_start": cov_start, "cov_end": cov_end})


def first_kernels(events: pd.DataFrame) -> pd.Series:
    """Per (step, rank): the start of the rank's first GPU work in that profiler step; step -1: in the
    whole trace (where a trace has no steps, its start is the only step start there is)."""
    g = gpu_work(events)
    if "step" not in g:
        g = g.assign(step=-1)
    per_step = g[g["step"] >= 0].groupby(["step", "rank"])["start_us"].min()
    whole = g.groupby("rank")["start_us"].min()
    whole.index = pd.MultiIndex.from_arrays([np.full(len(whole), -1), whole.index], names=["step", "rank"])
    return pd.concat([per_step, whole])


def match(kernels: pd.DataFrame, meta: dict[str, Any] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Collective kernels (kernel_table of every rank) numbered per (rank, step, name); groups whose
    count differs between ranks are left out with a warning (never matched silently). Where the
    trace has process groups smaller than the world, NCCL kernels are left out too: the trace does
    not say which group each ran in, and matching them across all ranks would charge waits between
    groups that never met."""
    c = kernels
    warnings = []
    if _subgroups(meta):
        nccl = c["nccl"].to_numpy(dtype=bool)
        if nccl.any():
            warnings.append(f"the trace has process groups smaller than the world and does not say which one "
                            f"each NCCL kernel ran in: {int(nccl.sum())} NCCL kernels left out of the peer analysis")
            c = c[~nccl]
    k = c.drop(columns=["nccl"])
    steps_of = k.groupby("rank")["step"].agg(lambda x: tuple(sorted(set(x))))
    if steps_of.nunique() > 1:         # ranks disagree on their steps: match the collectives over the trace
        warnings.append("ranks disagree on their steps: collectives matched in order over the whole trace")
        k = k.assign(step=-1)
    k = k.sort_values(["rank", "step", "name", "start_us"], kind="stable")
    k["n"] = k.groupby(["rank", "step", "name"], sort=False).cumcount()
    ranks = sorted(k["rank"].unique())
    counts = k.groupby(["step", "name", "rank"]).size().unstack("rank")
    bad = counts[counts.isna().any(axis=1) | (counts.nunique(axis=1) > 1)] if len(counts) else counts
    if len(bad):
        ex = bad.index[0]
        per = ", ".join(f"rank {r}: {int(v) if v == v else 0}" for r, v in bad.iloc[0].items())
        warnings.append(f"ranks disagree on {len(bad)} communication kernel group(s), left out of the peer "
                        f"analysis (e.g. step {ex[0]}, {ex[1][:60]}: {per})")
        keep = ~k.set_index(["step", "name"]).index.isin(bad.index)
        k = k[keep]
    if len(ranks) < 2:
        return k.iloc[0:0], warnings
    return k, warnings


def _clock(k: pd.DataFrame) -> tuple[dict[int, float], str]:
    """Per-rank clock offsets from the ends of matched collectives."""
    if k.empty:
        return {}, "no matched collectives"
    med_end = k.groupby(["step", "name", "n"])["end_us"].transform("median")
    off = (k["end_us"] - med_end).groupby(k["rank"]).median()
    spread = float(off.abs().max())
    if spread <= SHARED_CLOCK_US:
        return {}, f"one clock (matched collective ends agree within {spread:.0f} us)"
    offsets = {int(r): float(v) for r, v in off.items()}
    return offsets, (f"clocks aligned on the ends of {k.groupby(['step', 'name', 'n']).ngroups} matched "
                     f"collectives (offsets up to {spread / 1e3:.1f} ms)")


def analyze(events: pd.DataFrame, meta: dict[str, Any] | None = None, allow_mixed: bool = False
            ) -> tuple[Peers, pd.DataFrame]:
    """Peer waits and stragglers; returns them and the events on one clock."""
    ranks = sorted(events["rank"].unique())
    peers = cross(kernel_table(events), first_kernels(events), meta, [int(r) for r in ranks], allow_mixed)
    if peers.offsets_us:
        shift = events["rank"].map(peers.offsets_us).fillna(0.0).to_numpy()
        events = events.assign(start_us=events["start_us"].to_numpy() - shift)
    return peers, events


def cross(kernels: pd.DataFrame, first: pd.Series, meta: dict[str, Any] | None, ranks: list[int],
          allow_mixed: bool = False) -> Peers:
    """The cross-rank part: match the ranks' collective kernels (kernel_table), align the clocks,
    measure each rank's waits and name the stragglers. Reads only the compact per-rank tables.
    Files of different runs are refused (mixed_runs) unless `allow_mixed`."""
    if len(ranks) < 2:
        return empty()
    k, warnings = match(kernels, meta)
    mixed = mixed_runs(kernels, k)
    if mixed:
        if not allow_mixed:
            raise UserError(f"{mixed}{_claimed_twice(meta)}; analyse one run's files together (--allow-mixed "
                            "analyses them anyway)")
        warnings.append(mixed + ": analysed anyway (--allow-mixed); peer waits pair unrelated kernels")
    offsets, clock = _clock(k)
    if offsets:
        sk = k["rank"].map(offsets).fillna(0.0).to_numpy()
        k = k.assign(start_us=k["start_us"] - sk, end_us=k["end_us"] - sk, launch_end_us=k["launch_end_us"] - sk)
        if len(first):
            fr = first.index.get_level_values("rank").map(lambda r: offsets.get(int(r), 0.0)).to_numpy(dtype=float)
            first = first - fr
    if k.empty:
        p = empty(clock)
        p.warnings = warnings
        p.offsets_us = offsets
        return p
    grp = k.groupby(["step", "name", "n"], sort=False)
    k["last_start_us"] = grp["start_us"].transform("max")
    last_idx = grp["start_us"].idxmax()
    last_rank = pd.Series(k.loc[last_idx, "rank"].to_numpy(), index=pd.MultiIndex.from_frame(
        k.loc[last_idx, ["step", "name", "n"]]))
    k["last_rank"] = last_rank.reindex(pd.MultiIndex.from_frame(k[["step", "name", "n"]])).to_numpy()
    k["wait_us"] = np.clip(np.minimum(k["last_start_us"], k["end_us"]) - k["start_us"], 0.0, None)
    wait_by_rank = {int(r): float(v) for r, v in k.groupby("rank")["wait_us"].sum().items()}
    for r in ranks:
        wait_by_rank.setdefault(int(r), 0.0)
    stragglers = _stragglers(first, k)
    table = k.drop(columns=["launch_end_us", "cov_start", "cov_end"]).reset_index(drop=True)
    return Peers(table, wait_by_rank, stragglers, clock, offsets, warnings)


def _claimed_twice(meta: dict[str, Any] | None) -> str:
    """Where files claimed the same rank (the usual cause of a mixed folder: two runs in one folder; SGLang's
    per-stage files are refused by name before, kineto.folder_files), which files did."""
    moved = (meta or {}).get("rank_collisions") or []
    if not moved:
        return ""
    names = ", ".join(c["file"] for c in moved[:3]) + (f" and {len(moved) - 3} more" if len(moved) > 3 else "")
    return f" ({len(moved)} file(s) claim a rank an earlier file holds: {names})"


def mixed_runs(kernels: pd.DataFrame, matched: pd.DataFrame) -> str:
    """Why the ranks look like different runs ("" if they do not): a rank of which less than
    MIXED_MATCH_SHARE of its collective kernels found their peers on every other rank."""
    if kernels.empty:
        return ""
    have = kernels.groupby("rank").size()
    got = matched.groupby("rank").size().reindex(have.index).fillna(0) if len(matched) else have * 0
    share = got / have
    bad = share[(share < MIXED_MATCH_SHARE) & (have >= 4)]
    if bad.empty:
        return ""
    desc = ", ".join(f"rank {int(r)}: {int(got[r])} of {int(have[r])}" for r in bad.index[:4])
    return (f"the ranks do not run the same collectives (matched across all ranks: {desc}): "
            f"these files look like different runs")


def _median(values: Any) -> float:
    """np.median of a collective's few ranks' values, without numpy's per-call overhead (thousands of
    collectives: it was half the cross-rank step); the same float, NaN included."""
    if isinstance(values, np.ndarray):
        if not len(values) or np.isnan(values).any():
            return float("nan")
        s = sorted(values.tolist())
    else:
        s = sorted(float(v) for v in values)
        if not s or any(v != v for v in s):
            return float("nan")
    n = len(s)
    m = n // 2
    return s[m] if n % 2 else (s[m - 1] + s[m]) / 2


def _stragglers(first_kernel: pd.Series, k: pd.DataFrame) -> list[dict[str, Any]]:
    caused = k.groupby(["step", "name", "n"], sort=False).agg(caused=("wait_us", "sum"), rank=("last_rank", "first"),
                                                              start=("last_start_us", "first"))
    caused = caused[caused["caused"] > 0].reset_index()
    if caused.empty:
        return []

    # each rank's previous collective end before a given collective: the compute window
    k = k.sort_values(["rank", "start_us"])
    k["prev_end"] = k.groupby("rank")["end_us"].shift(1)
    # compute of the rank between its previous collective's end and this one's start
    k["busy_before"] = np.maximum(k["cov_start"] - k.groupby("rank")["cov_end"].shift(1).fillna(0.0), 0.0)
    first_in_step = k.groupby(["rank", "step"])["start_us"].transform("min") == k["start_us"]
    k["first_in_step"] = first_in_step
    # one collective = a run of rows sorted by (step, name, n, rank): plain arrays, no per-row pandas
    k = k.sort_values(["step", "name", "n", "rank"], kind="stable")
    step_v, n_v, name_v = k["step"].to_numpy(), k["n"].to_numpy(), k["name"].to_numpy()
    name_c = pd.factorize(name_v)[0]
    cut = np.flatnonzero((step_v[1:] != step_v[:-1]) | (name_c[1:] != name_c[:-1]) | (n_v[1:] != n_v[:-1])) + 1
    firsts, lasts = np.r_[0, cut], np.r_[cut, len(k)]
    where = {(step_v[a], name_v[a], n_v[a]): (a, b) for a, b in zip(firsts.tolist(), lasts.tolist())} if len(k) else {}
    rank_a = k["rank"].to_numpy()
    start_a = k["start_us"].to_numpy(dtype=float)
    first_a = k["first_in_step"].to_numpy(dtype=bool)
    launch_a = k["launch_end_us"].to_numpy(dtype=float)
    busy_a = k["busy_before"].to_numpy(dtype=float)
    has_prev = ~np.isnan(k["prev_end"].to_numpy(dtype=float))
    fk = {(int(st), int(r)): float(v) for (st, r), v in first_kernel.items()} if len(first_kernel) else {}
    per_rank: dict[int, dict[str, float]] = {}
    count: dict[int, int] = {}
    for row in caused.itertuples(index=False):
        L = int(row.rank)
        rows = np.arange(*where[(row.step, row.name, row.n)])
        mine_i = rows[rank_a[rows] == L][0]
        others = rows[rank_a[rows] != L]
        late = float(row.start - _median(start_a[others]))
        reason = UNSEEN
        step = int(row.step)
        if bool(first_a[mine_i]) and (step, L) in fk:      # the rank's first collective of its step (or trace)
            mine = fk[(step, L)]
            theirs = _median([fk[(step, int(r))] for r in rank_a[others] if (step, int(r)) in fk] or [mine])
            if mine - theirs >= STEP_LATE_SHARE * late:
                reason = STEP_LATE if step >= 0 else STEP_LATE + STEP_HINT
        if reason == UNSEEN:
            le = launch_a[mine_i]
            if np.isfinite(le) and row.start - le <= LAUNCH_GATED_US:
                reason = CPU_LATE
        if reason == UNSEEN:
            # compute before the collective against its peers' (since the previous collective, or since
            # the start for the first): more is load imbalance only where it explains the lateness
            comparable = has_prev[others] == has_prev[mine_i]
            theirs_b = busy_a[others][comparable]
            if len(theirs_b) and busy_a[mine_i] - _median(theirs_b) >= STEP_LATE_SHARE * late:
                reason = MORE_COMPUTE
        d = per_rank.setdefault(L, {})
        d[reason] = d.get(reason, 0.0) + float(row.caused)
        count[L] = count.get(L, 0) + 1
    out = []
    for r, reasons in per_rank.items():
        total = sum(reasons.values())
        top = max(reasons, key=reasons.get)
        out.append({"rank": int(r), "caused_us": total, "reason": top, "collectives": count[r],
                    "reasons_us": {k2: float(v) for k2, v in sorted(reasons.items(), key=lambda x: -x[1])}})
    return sorted(out, key=lambda x: -x["caused_us"])
