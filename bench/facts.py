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
OBS = ROOT / "traces" / "observed"
# prose (README, docs) and the capture records (traces/observed/*/README.md: what was measured at capture
# time stays as written; what the project computes from a capture - replay's readings, predictions,
# re-times, fits - sits in markers like the prose's)
PROSE = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FILES = PROSE + sorted(OBS.glob("*/README.md"))
MARKER = re.compile(r"<!-- fact:(?P<name>[\w.-]+) -->(?P<value>.*?)<!-- /fact -->")
# a table: `<!-- fact-block:NAME -->` on a line of its own, the rows, `<!-- /fact-block -->`
BLOCK = re.compile(r"<!-- fact-block:(?P<name>[\w.-]+) -->\n(?P<value>.*?)\n?<!-- /fact-block -->", re.S)
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
            "mlp_over_median": (mlp / mlp.median()).to_dict(), "stragglers": list(a.peers.stragglers)}


def _straggler(run: str) -> dict:
    """The rank that caused the most peer waiting in a DeepEP capture (peers.stragglers' first)."""
    return deepep(run)["stragglers"][0]


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
                row = analyze(p, use_cache=False, progress=False).ranks[0]
            pred = row["span_us"]
            out[(order, clock)] = 100 * (pred - seen) / seen
            out[(order, "row", clock)] = row
            if clock == "power" and sched.power is not None:
                out[(order, "draw_w")] = sched.power.demand_w
        out[(order, "row", "observed")] = obs.ranks[0]
    return out


def h100_layers_table() -> str:
    """The single-H100 layers observed and predicted (at the clock the draw sets, and at boost), as the
    capture README's table."""
    t = h100_layers()
    lines = ["| order | | span ms | compute ms | comm ms | overlap ms | hidden |", "|---|---|---:|---:|---:|---:|---:|"]
    for order in ("proper", "improper"):
        seen = t[(order, "row", "observed")]["span_us"]
        for which, label in (("observed", "observed"), ("power", "predicted (power-limited clock)"),
                             ("boost", "predicted (boost clock)")):
            r = t[(order, "row", which)]
            span = f"{r['span_us'] / 1e3:.2f}" + ("" if which == "observed" else
                                                  f" ({100 * (r['span_us'] - seen) / seen:+.1f} %)")
            lines.append(f"| {order} | {label} | {span} | {r['compute_us'] / 1e3:.2f} | {r['comm_us'] / 1e3:.2f} | "
                         f"{r['overlap_us'] / 1e3:.2f} | {r['hidden_comm_pct']:.1f} % |")
    return "\n".join(lines)


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
def capture_idle(folder: str, name: str) -> dict:
    """A single-GPU capture's idle time by cause (ms), cpu_blocked_launch and launch_bound by group (ms),
    its span (ms) and its structure's layers."""
    from replay.analyze import analyze
    a = analyze(OBS / folder / f"{name}.json.gz", use_cache=False, progress=False)
    (causes,), (groups,) = a.idle_totals.values(), a.idle_groups.values()
    out = {c: us / 1e3 for c, us in causes.items()}
    out.update({f"blocked/{g}": us / 1e3 for g, us in groups.get("cpu_blocked_launch", {}).items()})
    out.update({f"launch/{g}": us / 1e3 for g, us in groups.get("launch_bound", {}).items()})
    out["idle"] = sum(causes.values()) / 1e3
    out["span"] = a.ranks[0]["span_us"] / 1e3
    return out


def h200_idle(name: str) -> dict:
    """A single-H200 diagnosis capture's idle time by cause (ms) and cpu_blocked_launch by group (ms)."""
    return capture_idle("h200", name)


def _hf(name: str, key: str, fmt: str) -> Callable[[], str]:
    return _f(fmt, lambda: capture_idle("hf-decode", f"hf-decode-{name}")[key])


@lru_cache(maxsize=None)
def heldout() -> dict[str, dict]:
    """The held-out rows by key (bench/heldout.py predicts them all: computed once for every fact that quotes one)."""
    from bench.heldout import rows
    return {r["key"]: r for r in rows()}


def heldout_set(dataset: str) -> dict[str, float]:
    """Median and max |error| of one held-out figure set (bench/heldout.py set_summary)."""
    from bench.heldout import set_summary
    return set_summary(list(heldout().values()), dataset)


def hf_heldout() -> dict:
    """The held-out row of the HF decode graph step (bench/heldout.py): tracegen's tokens/s and its error."""
    return heldout()["hf-decode-h100-graph"]


@lru_cache(maxsize=None)
def hf_whatif() -> dict:
    """`replay whatif` with no change of each HF decode capture: span error (%), or None where refused."""
    from bench.whatif_fidelity import hf_decode_rows
    return {r["capture"].split("/")[1]: r.get("span_error_pct") for r in hf_decode_rows()}


def _idle_fact(name: str, key: str, fmt: str) -> Callable[[], str]:
    return _f(fmt, lambda: h200_idle(name)[key])


def _power():
    """The H100's power model (hardware.toml [h100.power], fitted by bench/power.py; tests/test_power.py re-fits)."""
    from tracegen.catalog import load_hardware
    return load_hardware("h100").power


def _fitted_h100():
    """The h100 entry as make calibrate fits it (tests/test_calibrate.py checks the catalog equals it)."""
    return sweep_fit()[0]


def calibration_table() -> str:
    """`make calibrate`'s error table per op kind and set, before (published-figure curves) and after the fit."""
    table = sweep_fit()[1]
    lines = ["| kind | set | n | median before | median after | p90 before | p90 after |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for (kind, st), g in table.groupby(["kind", "set"], sort=True):
        b, a = g[g["model"] == "before"].iloc[0], g[g["model"] != "before"].iloc[0]
        bold = "**" if st == "held out" else ""
        lines.append(f"| {kind} | {st} | {int(a['n'])} | {b['median_abs_err_pct']:.1f} % | "
                     f"{bold}{a['median_abs_err_pct']:.1f} %{bold} | {b['p90_abs_err_pct']:.1f} % | "
                     f"{a['p90_abs_err_pct']:.1f} % |")
    return "\n".join(lines)


@lru_cache(maxsize=None)
def reorder(gpu: str) -> dict:
    """The single-GPU improper layers re-timed in the proper order, against the real proper run."""
    from .whatif_fidelity import _reorder
    return _reorder(OBS / gpu / "layers-improper.json.gz", OBS / gpu / "layers-proper.json.gz",
                    str(OBS / "h100" / "taxonomy.toml"), 0)


@lru_cache(maxsize=None)
def retimed(gpu: str, order: str) -> dict:
    """`replay whatif` with no change of a single-GPU layer capture: its span and hidden share, and the observed ones."""
    from .whatif_fidelity import _one
    return _one(OBS / gpu / f"layers-{order}.json.gz", str(OBS / "h100" / "taxonomy.toml"), 0)


def nochange(gpu: str, order: str) -> dict:
    """That re-time against the observed run (whatif_fidelity.errors): span error (%), hidden-share error (pts)."""
    from .whatif_fidelity import errors
    return errors(retimed(gpu, order))


def whatif_h100() -> dict:
    """`replay whatif` of the single-H100 improper capture with no change: its span and the observed one."""
    return retimed("h100", "improper")


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
    # the capture records' computed figures (traces/observed/*/README.md)
    "qwen3.prefill_error_pct": _f("+.0f", lambda: heldout()["qwen3-30b-4l-h100-prefill"]["error_pct"]),
    "qwen3.compiled_error_pct": _f("+.0f", lambda: heldout()["qwen3-30b-4l-h100-prefill-compiled"]["error_pct"]),
    "heldout.ascend.median": _f(".0f", lambda: heldout_set("deepep-ascend-readme")["median_abs_pct"]),
    "heldout.ascend.max": _f(".0f", lambda: heldout_set("deepep-ascend-readme")["max_abs_pct"]),
    "heldout.uccl.median": _f(".0f", lambda: heldout_set("uccl-ep-readme")["median_abs_pct"]),
    "heldout.uccl.max": _f(".0f", lambda: heldout_set("uccl-ep-readme")["max_abs_pct"]),
    "heldout.pplx.median": _f(".0f", lambda: heldout_set("pplx-kernels-readme")["median_abs_pct"]),
    "heldout.pplx.max": _f(".0f", lambda: heldout_set("pplx-kernels-readme")["max_abs_pct"]),
    "hf.hf.span": _hf("hf", "span", ".1f"),
    "hf.hf.idle": _hf("hf", "idle", ".1f"),
    "hf.hf.launch_bound": _hf("hf", "launch_bound", ".1f"),
    "hf.hf.long_op": _hf("hf", "launch/long_op", ".1f"),
    "hf.hf.host_overhead": _hf("hf", "launch/host_overhead", ".1f"),
    "hf.hf.submission": _hf("hf", "launch/submission", ".1f"),
    "hf.hf.blocked_sync": _hf("hf", "blocked/sync", ".1f"),
    "hf.hf.blocked_sync_us": _f(",.0f", lambda: 1e3 * capture_idle("hf-decode", "hf-decode-hf")["blocked/sync"]),
    "hf.nosync.span": _hf("nosync", "span", ".1f"),
    "hf.nosync.idle": _hf("nosync", "idle", ".1f"),
    "hf.nosync.launch_bound": _hf("nosync", "launch_bound", ".1f"),
    "hf.nosync.idle_share_pct": _f(".1f", lambda: 100 * capture_idle("hf-decode", "hf-decode-nosync")["idle"]
                                   / capture_idle("hf-decode", "hf-decode-nosync")["span"]),
    "hf.nosync.launch_share_pct": _f(".1f", lambda: 100 * capture_idle("hf-decode", "hf-decode-nosync")["launch_bound"]
                                     / capture_idle("hf-decode", "hf-decode-nosync")["idle"]),
    "hf.graph.idle": _hf("graph", "idle", ".1f"),
    "hf.graph.kernel_switch": _hf("graph", "kernel_switch", ".2f"),
    "hf.graph.step_boundary": _hf("graph", "step_boundary", ".2f"),
    "hf.graph.launch_bound": _hf("graph", "launch_bound", ".0f"),
    "hf.compiled.idle": _hf("compiled", "idle", ".1f"),
    "hf.compiled.launch_bound": _hf("compiled", "launch_bound", ".1f"),
    "hf.full.span": _hf("full", "span", ".1f"),
    "hf.full.idle": _hf("full", "idle", ".1f"),
    "hf.full.launch_bound": _hf("full", "launch_bound", ".1f"),
    "hf.altstream.span": _hf("altstream", "span", ".1f"),
    "hf.altstream.idle": _hf("altstream", "idle", ".1f"),
    "hf.altstream.launch_bound": _hf("altstream", "launch_bound", ".1f"),
    "hf.altstream.blocked": _hf("altstream", "cpu_blocked_launch", ".1f"),
    **{f"hf.whatif.{v}_pct": _f("+.2f", lambda v=v: hf_whatif()[v])
       for v in ("hf", "nosync", "graph", "full", "altstream")},
    "hf.heldout.predicted": _f(",.1f", lambda: hf_heldout()["predicted"]),
    "hf.heldout.error_pct": _f("+.1f", lambda: hf_heldout()["error_pct"]),
    "h200.eager.idle": _idle_fact("decode-eager", "idle", ".1f"),
    "h200.eager.launch_bound": _idle_fact("decode-eager", "launch_bound", ".1f"),
    "h200.eager.step_boundary": _idle_fact("decode-eager", "step_boundary", ".1f"),
    "h200.eager.kernel_switch": _idle_fact("decode-eager", "kernel_switch", ".2f"),
    "h200.eager.cpu_blocked_launch": _idle_fact("decode-eager", "cpu_blocked_launch", ".0f"),
    "h200.eager.unexplained": _idle_fact("decode-eager", "unexplained", ".0f"),
    "h200.graph.idle": _idle_fact("decode-graph", "idle", ".1f"),
    "h200.graph.launch_bound": _idle_fact("decode-graph", "launch_bound", ".2f"),
    "h200.graph.kernel_switch": _idle_fact("decode-graph", "kernel_switch", ".2f"),
    "h200.graph.step_boundary": _idle_fact("decode-graph", "step_boundary", ".2f"),
    "h200.compiled.idle": _idle_fact("decode-compiled", "idle", ".1f"),
    "h200.compiled.launch_bound": _idle_fact("decode-compiled", "launch_bound", ".2f"),
    "h200.compiled.step_boundary": _idle_fact("decode-compiled", "step_boundary", ".2f"),
    "h200.compiled.kernel_switch": _idle_fact("decode-compiled", "kernel_switch", ".2f"),
    "h200.item.blocked_sync": _idle_fact("decode-item", "blocked/sync", ".3f"),
    "h200.pause.blocked_host": _idle_fact("prefill-pause", "blocked/host", ".2f"),
    "h200.eager.launch_share_pct": _f(".0f", lambda: 100 * h200_idle("decode-eager")["launch_bound"] / h200_idle("decode-eager")["idle"]),
    "power.compute_w": _f(".0f", lambda: _power().compute_w),
    "power.memory_w": _f(".0f", lambda: _power().memory_w),
    "power.idle_w": _f(".0f", lambda: _power().idle_w),
    "power.limit_w": _f(".0f", lambda: _power().limit_w),
    "power.saturate": _f(".2f", lambda: _power().saturate),
    # the compute-bound share at which the mean draw reaches the limit, mixed with copies / with waiting
    "power.knee_copy": _f(".2f", lambda: (_power().limit_w - _power().memory_w) / (_power().compute_w - _power().memory_w)),
    "power.knee_wait": _f(".2f", lambda: (_power().limit_w - _power().idle_w) / (_power().compute_w - _power().idle_w)),
    "calib.grouped_k_half": _f(".0f", lambda: _fitted_h100().efficiency["grouped_gemm"].k_half),
    "deepep.late_caused_ms": _f(".0f", lambda: _straggler("prefill-late")["caused_us"] / 1e3),
    "deepep.late_straggler": lambda: str(_straggler("prefill-late")["rank"]),
    "deepep.late_launch_bound_ms": _f(".1f", lambda: deepep("prefill-late")["totals"].get("launch_bound", 0.0) / 1e3),
    "deepep.skew_caused_ms": _f(".0f", lambda: _straggler("prefill-skew")["caused_us"] / 1e3),
    "deepep.skew_straggler": lambda: str(_straggler("prefill-skew")["rank"]),
    "whatif.h100_reorder_ms": _f(".2f", lambda: reorder("h100")["predicted_ms"]),
    "whatif.h100_proper_ms": _f(".2f", lambda: reorder("h100")["proper_ms"]),
    "whatif.h100_reorder_pct": _f("+.1f", lambda: 100 * (reorder("h100")["predicted_ms"] / reorder("h100")["proper_ms"]
                                                         - 1)),
    "whatif.h200_reorder_ms": _f(".2f", lambda: reorder("h200")["predicted_ms"]),
    "whatif.h200_proper_ms": _f(".2f", lambda: reorder("h200")["proper_ms"]),
    "whatif.h200_reorder_pct": _f("+.1f", lambda: 100 * (reorder("h200")["predicted_ms"] / reorder("h200")["proper_ms"]
                                                         - 1)),
    "whatif.h200_improper_span_pct": _f("+.2f", lambda: nochange("h200", "improper")["span_error_pct"]),
    "whatif.h200_proper_span_pct": _f("+.2f", lambda: nochange("h200", "proper")["span_error_pct"]),
    "whatif.h200_improper_hidden_pts": _f("+.2f", lambda: nochange("h200", "improper")["hidden_error_pts"]),
    "whatif.h200_proper_hidden_pts": _f("+.2f", lambda: nochange("h200", "proper")["hidden_error_pts"]),
}

# tables (fact-block markers)
BLOCKS: dict[str, Callable[[], str]] = {
    "h100.layers_table": h100_layers_table,
    "calib.table": calibration_table,
}


def values() -> dict[str, str]:
    """Every fact's current value (tables included)."""
    return {name: fn() for name, fn in {**FACTS, **BLOCKS}.items()}


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def _markers(text: str) -> list[tuple[str, str]]:
    return [(m.group("name"), m.group("value")) for m in (*MARKER.finditer(text), *BLOCK.finditer(text))]


def stale(files: list[Path] = FILES, current: dict[str, str] | None = None) -> list[str]:
    """'file: fact NAME says X, now Y' for every marker whose value is not the current one, and every
    marker naming no fact."""
    current = values() if current is None else current
    out = []
    for path in files:
        for name, have in _markers(path.read_text("utf-8")):
            if name not in current:
                out.append(f"{_shown(path)}: fact {name} is not in bench/facts.py FACTS")
            elif have != current[name]:
                out.append(f"{_shown(path)}: fact {name} says {have!r}, now {current[name]!r}")
    return out


def write(files: list[Path] = FILES, current: dict[str, str] | None = None) -> None:
    """Rewrite every marker's value (markers naming no fact are left for stale() to report)."""
    current = values() if current is None else current
    for path in files:
        text = path.read_text("utf-8")
        new = MARKER.sub(lambda m: (f"<!-- fact:{m.group('name')} -->{current[m.group('name')]}<!-- /fact -->"
                                    if m.group("name") in current else m.group(0)), text)
        new = BLOCK.sub(lambda m: (f"<!-- fact-block:{m.group('name')} -->\n{current[m.group('name')]}\n"
                                   "<!-- /fact-block -->" if m.group("name") in current else m.group(0)), new)
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
