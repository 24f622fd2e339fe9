"""The figures the README and docs quote in their prose, computed: each sits in the text as
`<!-- fact:NAME -->VALUE<!-- /fact -->`, `make validate` writes every VALUE from FACTS, and
tests/test_facts.py fails when a file holds a stale one or a figure outside a marker, a generated
section or a dated measurement log (the benchmark and fuzzing tables).

    python -m bench.facts            # each fact and its value
    python -m bench.facts --write    # rewrite the markers (make validate does)"""
from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"<!-- fact:(?P<name>[\w.-]+) -->(?P<value>.*?)<!-- /fact -->")
OBS = ROOT / "traces" / "observed"
DEEPEP = OBS / "deepep-h100x4"
TRAIN = ROOT.parent / "shared" / "traces" / "deepseek-profile-data" / "train.json"


def _cli(main: Callable[[list[str]], int], argv: list[str]) -> dict:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        if main(argv) != 0:
            raise RuntimeError(f"{argv}: non-zero exit")
    return json.loads(buf.getvalue())


@lru_cache(maxsize=None)
def seed004() -> dict:
    from tracegen.cli import main
    return _cli(main, ["estimate", "--preset", "seed004", "--json"])


@lru_cache(maxsize=None)
def train() -> dict:
    """train.json analysed as `replay analyze` does: its streams, kernels by kind, overlap."""
    from replay.analyze import analyze
    a = analyze(TRAIN, use_cache=False, progress=False)
    streams = a.streams
    r = a.ranks[0]
    gpu = a.events[(a.events["device"] == "gpu") & (a.events["klass"] == "comm")]
    counts = gpu["subclass"].astype(str).value_counts().to_dict()
    return {"compute_stream": int(streams.loc[streams["role"] == "compute", "stream"].iloc[0]),
            "comm_stream": int(streams.loc[streams["role"] == "comm", "stream"].iloc[0]),
            "comm_ms": r["comm_us"] / 1e3, "hidden_pct": r["hidden_comm_pct"], "counts": counts}


@lru_cache(maxsize=None)
def deepep(run: str) -> dict:
    """A DeepEP capture's idle causes (all ranks) and each rank's peer wait and expert compute."""
    from replay.analyze import analyze
    a = analyze(DEEPEP / run, use_cache=False, progress=False)
    groups: dict = {}
    for by_cause in a.idle_groups.values():
        for cause, by_group in by_cause.items():
            for g, us in by_group.items():
                groups[(cause, g)] = groups.get((cause, g), 0.0) + us
    totals: dict = {}
    for t in a.idle_totals.values():
        for cause, us in t.items():
            totals[cause] = totals.get(cause, 0.0) + us
    ev = a.events
    mlp = ev[(ev["klass"] == "compute") & ev["stage"].astype(str).str.startswith("MLP")].groupby("rank")["dur_us"].sum()
    return {"groups": groups, "totals": totals, "peer_wait": dict(a.peers.wait_by_rank),
            "mlp_over_median": (mlp / mlp.median()).to_dict()}


def _cpu_blocked(run: str) -> float:
    g = deepep(run)["groups"]
    return sum(g.get(("cpu_blocked_launch", k), 0.0) for k in ("dispatch", "pipeline_fill")) / 1e3


@lru_cache(maxsize=None)
def h100_layers() -> dict:
    """The single-H100 layer capture against tracegen's prediction of it, both launch orders: span error
    ((predicted - observed) / observed) at the clock the step's draw sets and at the boost clock, and the draw."""
    from replay.analyze import analyze, analyze_one_step
    from tracegen.catalog import load_hardware, load_model
    from tracegen.pipeline import TraceOptions, schedule
    from tracegen.plan import Plan
    from tracegen.preset import load_preset
    from tracegen.target import Target
    from tracegen.trace import write_trace
    from dataclasses import replace
    plan = Plan(phase="prefill", batch=2, seq_len=4096, dp=32, comm="pcie-copy", routing="spread")
    preset = load_preset("default")
    targets = {"power": Target(load_model("deepseek-v3"), load_hardware("h100"), preset, plan)}
    targets["boost"] = replace(targets["power"], preset=replace(preset, power_limit=False))
    tax = str(OBS / "h100" / "taxonomy.toml")
    out = {}
    for order in ("proper", "improper"):
        obs = analyze_one_step(str(OBS / "h100" / f"layers-{order}.json.gz"), None, taxonomy=tax, use_cache=False)[0]
        seen = obs.ranks[0]["span_us"]
        for clock in ("power", "boost"):
            sched = schedule(targets[clock], TraceOptions(tbo=order, layers=4, skip_dense=True))
            with tempfile.TemporaryDirectory() as d:
                p = Path(d) / "p.json.gz"
                write_trace(sched, p, {"tbo": order})
                pred = analyze(p, use_cache=False, progress=False).ranks[0]["span_us"]
            out[(order, clock)] = 100 * (pred - seen) / seen
            if clock == "power" and sched.power is not None:
                out[(order, "draw_w")] = sched.power.demand_w
    return out


HOLDOUT_M = {3, 24, 96, 384, 1536, 6144, 48, 768}          # the Makefile's `make calibrate` hold-outs
HOLDOUT_NAMES = {"shared_up", "shared_down"}


@lru_cache(maxsize=None)
def sweep_fit() -> tuple:
    """`make calibrate`: the H100 sweep fitted from the published-figure curves, the ops above held out
    (calibrate_files' result; computed once per process, tests/test_calibrate.py reads the same)."""
    from replay.calibrate import calibrate_files
    return calibrate_files([str(OBS / "h100" / "sweep.json.gz")], "h100-datasheet", None, HOLDOUT_M, HOLDOUT_NAMES)


def calibration() -> dict:
    """`make calibrate`'s held-out errors: the median (and 90th percentile) |error| of the ops the fit
    never saw, under the published-figure curves and under the fit, per op kind."""
    table = sweep_fit()[1]
    held = table[table["set"] == "held out"]
    return {("published" if r.model == "before" else "fit", r.kind, stat): float(getattr(r, f"{stat}_abs_err_pct"))
            for r in held.itertuples() for stat in ("median", "p90")}


@lru_cache(maxsize=None)
def whatif_h100() -> dict:
    """`replay whatif` of the single-H100 improper capture with no change: its span and the observed one."""
    from .whatif_fidelity import _one
    return _one(OBS / "h100" / "layers-improper.json.gz", str(OBS / "h100" / "taxonomy.toml"), 0)


def _f(fmt: str, fn: Callable[[], float]) -> Callable[[], str]:
    return lambda: format(fn(), fmt)


FACTS: dict[str, Callable[[], str]] = {
    "seed004.overlap_ms": _f(".3f", lambda: seed004()["sum_overlap_ms"]),
    "seed004.serial_ms": _f(".3f", lambda: seed004()["sum_ms"]),
    "seed004.node_overlap": _f(".1f", lambda: seed004()["tokens_per_s_per_node_overlap"]),
    "seed004.node_serial": _f(".1f", lambda: seed004()["tokens_per_s_per_node"]),
    "train.compute_stream": lambda: str(train()["compute_stream"]),
    "train.comm_stream": lambda: str(train()["comm_stream"]),
    "train.notify": lambda: str(train()["counts"].get("deepep_notify", 0)),
    "train.dispatch": lambda: str(train()["counts"].get("deepep_dispatch", 0)),
    "train.combine": lambda: str(train()["counts"].get("deepep_combine", 0)),
    "train.comm_ms": _f(".1f", lambda: train()["comm_ms"]),
    "train.hidden_pct": _f(".1f", lambda: train()["hidden_pct"]),
    "deepep.late_peer_ms": _f(".0f", lambda: deepep("prefill-late")["totals"].get("waiting_on_peer", 0.0) / 1e3),
    "deepep.late_others_min_ms": _f(".0f", lambda: min(v for r, v in deepep("prefill-late")["peer_wait"].items()
                                                       if r != 3) / 1e3),
    "deepep.late_others_max_ms": _f(".0f", lambda: max(v for r, v in deepep("prefill-late")["peer_wait"].items()
                                                       if r != 3) / 1e3),
    "deepep.skew_ratio": _f(".2f", lambda: deepep("prefill-skew")["mlp_over_median"][2]),
    "deepep.blocked_improper_ms": _f(".1f", lambda: _cpu_blocked("prefill-improper")),
    "deepep.blocked_proper_ms": _f(".1f", lambda: _cpu_blocked("prefill-proper")),
    "deepep.blocked_nosync_ms": _f(".1f", lambda: _cpu_blocked("prefill-nosync")),
    "h100.span_proper_pct": _f("+.1f", lambda: h100_layers()[("proper", "power")]),
    "h100.span_improper_pct": _f("+.1f", lambda: h100_layers()[("improper", "power")]),
    "h100.span_proper_boost_pct": _f("+.1f", lambda: h100_layers()[("proper", "boost")]),
    "h100.span_improper_boost_pct": _f("+.1f", lambda: h100_layers()[("improper", "boost")]),
    "h100.draw_proper_w": _f(".0f", lambda: h100_layers()[("proper", "draw_w")]),
    "h100.draw_improper_w": _f(".0f", lambda: h100_layers()[("improper", "draw_w")]),
    "whatif.h100_nochange_ms": _f(".3f", lambda: whatif_h100()["span_us"] / 1e3),
    "whatif.h100_observed_ms": _f(".3f", lambda: whatif_h100()["observed_span_us"] / 1e3),
    "whatif.h100_nochange_pct": _f("+.1f", lambda: 100 * (whatif_h100()["span_us"] / whatif_h100()["observed_span_us"]
                                                          - 1)),
    "calib.grouped_published": _f(".1f", lambda: calibration()[("published", "grouped_gemm", "median")]),
    "calib.grouped_fit": _f(".1f", lambda: calibration()[("fit", "grouped_gemm", "median")]),
    "calib.gemm_published": _f(".1f", lambda: calibration()[("published", "gemm", "median")]),
    "calib.gemm_fit": _f(".1f", lambda: calibration()[("fit", "gemm", "median")]),
    "calib.gemm_p90_published": _f(".1f", lambda: calibration()[("published", "gemm", "p90")]),
    "calib.gemm_p90_fit": _f(".1f", lambda: calibration()[("fit", "gemm", "p90")]),
}


def values() -> dict[str, str]:
    """Every fact's current value."""
    return {name: fn() for name, fn in FACTS.items()}


def stale(files: list[Path] = FILES, current: dict[str, str] | None = None) -> list[str]:
    """'file: fact NAME says X, now Y' for every marker whose value is not the current one, and every
    marker naming no fact."""
    current = values() if current is None else current
    out = []
    for path in files:
        for m in MARKER.finditer(path.read_text("utf-8")):
            name, have = m.group("name"), m.group("value")
            if name not in current:
                out.append(f"{path.name}: fact {name} is not in bench/facts.py FACTS")
            elif have != current[name]:
                out.append(f"{path.name}: fact {name} says {have!r}, now {current[name]!r}")
    return out


def write(files: list[Path] = FILES, current: dict[str, str] | None = None) -> None:
    """Rewrite every marker's value (markers naming no fact are left for stale() to report)."""
    current = values() if current is None else current
    for path in files:
        text = path.read_text("utf-8")
        new = MARKER.sub(lambda m: (f"<!-- fact:{m.group('name')} -->{current[m.group('name')]}<!-- /fact -->"
                                    if m.group("name") in current else m.group(0)), text)
        if new != text:
            path.write_text(new, "utf-8")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    current = values()
    for name, v in current.items():
        print(f"{name:<32}{v}")
    if "--write" in argv:
        write(current=current)
    return 0


if __name__ == "__main__":
    sys.exit(main())
