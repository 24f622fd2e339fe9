"""Adding a thing touches data and at most two code files (issue 31, docs/architecture.md "Where a
new thing goes"), shown end to end the way a user or the next engineer would add one:

- an all-to-all backend for tracegen: data only, a `comm` table in a hardware file; estimate, trace
  and replay take it by name, and its figures move with its own numbers;
- a per-rank analysis for replay: a function of the event table and one entry in
  replay/pipeline.py ANALYSES; both the whole-table and the two-stage folder path run it and the
  `--json` document lists it."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from replay import pipeline
from replay.analyze import analyze
from replay.cli import main as replay
from replay.folder import Options, analyze_folder
from tracegen.cli import main as tracegen

CAP = Path(__file__).resolve().parents[1] / "traces" / "observed" / "deepep-h100x4"

BACKEND = """
[h800-uccl]
base = "h800"
display = "H800 with UCCL-EP"
source = "assumed [user]: a test entry"

[h800-uccl.comm.uccl-ep]
link = "scaleout"
expert_layout = "masked"
sms = 0
bw_eff = {bw_eff}
latency_us = 25.0
cpu_block_us = 0.0
per_message_us = 0.0
fused = false
source = "assumed [user]: UCCL-EP low-latency kernels, GPU-initiated, no SMs held"
"""


def _dispatch_ms(capsys, hw: Path) -> float:
    assert tracegen(["estimate", "--hardware-file", str(hw), "--phase", "decode", "--comm", "uccl-ep", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["plan"]["comm"] == "uccl-ep" and out["hardware"] == "H800 with UCCL-EP"
    return next(r["ms_per_layer"] for r in out["rows"] if r["op"] == "Dispatch")


def test_a_new_backend_is_data_only(tmp_path, capsys):
    fast, slow = tmp_path / "fast.toml", tmp_path / "slow.toml"
    fast.write_text(BACKEND.format(bw_eff=0.8))
    slow.write_text(BACKEND.format(bw_eff=0.4))
    f, s = _dispatch_ms(capsys, fast), _dispatch_ms(capsys, slow)
    # its time is the latency plus the payload at link x bw_eff: half the efficiency, twice the transfer
    assert s - 0.025 == pytest.approx(2 * (f - 0.025), rel=0.02)
    trace = tmp_path / "t.json.gz"
    assert tracegen(["trace", "--hardware-file", str(slow), "--phase", "decode", "--comm", "uccl-ep",
                     "--layers", "4", "-o", str(trace)]) == 0
    capsys.readouterr()
    assert replay(["analyze", str(trace), "--json", "--no-cache"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ranks"][0]["comm_us"] > 0


def test_an_unknown_backend_is_one_line_naming_the_hardwares(capsys):
    assert tracegen(["estimate", "--comm", "uccl-ep"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no communication backend 'uccl-ep'" in err and "ibgda" in err


def kernel_count(events: pd.DataFrame) -> pd.DataFrame:
    """The analysis a user adds: GPU kernels per rank."""
    g = events[events["device"] == "gpu"]
    return g.groupby("rank").size().rename("kernels").reset_index()


def test_a_new_analysis_is_one_function_and_one_line(monkeypatch, capsys):
    monkeypatch.setitem(pipeline.ANALYSES, "kernel_count", kernel_count)
    assert replay(["analyze", str(CAP / "prefill-proper"), "--json", "--no-cache"]) == 0
    docs = [json.loads(capsys.readouterr().out)]
    rows = docs[0]["analyses"]["kernel_count"]
    assert [r["rank"] for r in rows] == [0, 1, 2, 3] and all(r["kernels"] > 0 for r in rows)
    # the whole-table path and the two-stage folder path (one rank file at a time) give the same rows
    whole = analyze(CAP / "prefill-proper", use_cache=False, progress=False).to_dict()["analyses"]
    staged = analyze_folder(CAP / "prefill-proper", Options(use_cache=False), progress=False).to_dict()["analyses"]
    assert whole == staged and whole["kernel_count"] == rows
    # and the built-in one beside it: each rank's largest kernels, sharing no more than all its time
    top = pd.DataFrame(docs[0]["analyses"]["top_kernels"])
    assert set(top["rank"]) == {0, 1, 2, 3}
    assert (top.groupby("rank")["share_pct"].sum() <= 100.0 + 1e-6).all()
    assert (top.groupby("rank")["total_us"].apply(lambda s: s.is_monotonic_decreasing)).all()


def test_top_kernels_match_an_independent_sum_of_the_raw_trace():
    """The largest kernel of each rank, and its count and total, as a plain sum over the rank file's
    'X' events of category kernel gives them (read with the standard library, not the code under test)."""
    import gzip
    from collections import defaultdict
    top = pd.DataFrame(analyze(CAP / "prefill-proper", use_cache=False, progress=False).to_dict()["analyses"]["top_kernels"])
    for rank in range(4):
        events = json.loads(gzip.open(CAP / "prefill-proper" / f"rank{rank}.json.gz").read())["traceEvents"]
        total, count = defaultdict(float), defaultdict(int)
        for e in events:
            if e.get("ph") == "X" and e.get("cat") == "kernel":
                total[e["name"]] += e["dur"]
                count[e["name"]] += 1
        name = max(total, key=total.get)
        mine = top[top["rank"] == rank].iloc[0]
        assert mine["name"] == name and mine["count"] == count[name]
        assert mine["total_us"] == pytest.approx(total[name], rel=1e-9)
