"""`replay sql`: DuckDB over the event table and replay's results. The answers are checked against
the analysis itself and against what the committed DeepEP captures are known to hold (their
README: rank 2 of prefill-skew routes ~3x the expert rows; rank 3 of prefill-late starts late)."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from replay.analyze import analyze
from replay.cli import main as replay
from replay.schemas import SCHEMAS

CAP = Path(__file__).resolve().parents[1] / "traces" / "observed" / "deepep-h100x4"
pytest.importorskip("duckdb")


def _json(capsys, *argv: str) -> dict:
    assert replay(["sql", *argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    SCHEMAS["replay-sql"][0]          # the schema exists
    assert out["schema"] == "replay-sql/1"
    return out


def test_ranks_view_is_the_analysis(capsys):
    a = analyze(CAP / "prefill-late", use_cache=False)
    out = _json(capsys, str(CAP / "prefill-late"), "SELECT rank, span_us, peer_wait_us FROM ranks ORDER BY rank")
    assert out["columns"] == ["rank", "span_us", "peer_wait_us"]
    for (rank, span, wait), r in zip(out["rows"], sorted(a.ranks, key=lambda r: r["rank"])):
        assert rank == r["rank"] and span == pytest.approx(r["span_us"])
        assert wait == pytest.approx(a.peers.wait_by_rank[rank])
    # the late rank waits least: everyone else waits for it
    assert min(out["rows"], key=lambda row: row[2])[0] == 3


def test_skewed_rank_found_by_a_users_query(capsys):
    q = ("WITH m AS (SELECT rank, sum(dur_us) AS mlp_us FROM kernels WHERE stage LIKE 'MLP%' AND klass = 'compute' "
         "GROUP BY rank) SELECT rank, mlp_us / (SELECT median(mlp_us) FROM m) AS x FROM m "
         "WHERE mlp_us > 1.2 * (SELECT median(mlp_us) FROM m)")
    out = _json(capsys, str(CAP / "prefill-skew"), q)
    assert [row[0] for row in out["rows"]] == [2] and 2.5 < out["rows"][0][1] < 3.5


def test_kernels_view_counts_match_the_event_table(capsys, tmp_path):
    a = analyze(CAP / "decode-proper", use_cache=False)
    ev = a.events
    want = int(((ev["device"] == "gpu") & (ev["cat"] == "kernel")).sum())
    out = _json(capsys, str(CAP / "decode-proper"), "SELECT count(*) FROM kernels WHERE cat = 'kernel'")
    assert out["rows"] == [[want]]
    # times count from the trace's first event, as every replay output does
    out = _json(capsys, str(CAP / "decode-proper"), "SELECT min(start_us) FROM events")
    assert out["rows"][0][0] == pytest.approx(0.0, abs=1e-6)
    dest = tmp_path / "layers.csv"
    assert replay(["sql", str(CAP / "decode-proper"), "SELECT * FROM layers", "--csv", str(dest)]) == 0
    assert len(list(csv.DictReader(dest.open()))) == len(a.layers)


def test_views_and_table_output(capsys):
    assert replay(["sql", str(CAP / "graph"), "--views"]) == 0
    text = capsys.readouterr().out
    for view in ("events", "kernels", "layers", "findings", "ranks", "steps"):
        assert f"{view} (" in text
    assert replay(["sql", str(CAP / "graph"), "SELECT name FROM kernels", "--max-rows", "3"]) == 0
    text = capsys.readouterr().out
    assert "more rows" in text and len(text.strip().splitlines()) == 1 + 3 + 1


@pytest.mark.parametrize("argv,needle", [
    (["SELECT nope FROM ranks"], "SQL error"),
    (["DROP TABLE ranks; SELECT 1"], "SQL error"),
    ([], "give a query"),
])
def test_bad_queries_are_one_line_and_exit_2(capsys, argv, needle):
    assert replay(["sql", str(CAP / "graph"), *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_without_duckdb_it_says_how_to_install(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "duckdb", None)
    assert replay(["sql", str(CAP / "graph"), "SELECT 1"]) == 2
    assert "moe-timeline[sql]" in capsys.readouterr().err



def test_queries_never_download_an_extension(capsys):
    """Nothing downloads at run time: DuckDB's autoinstall / autoload of known extensions is off, so an
    https:// path is refused in one line instead of fetching httpfs from DuckDB's server."""
    out = _json(capsys, str(CAP.parent / "h200x2-nccl"),
                "SELECT current_setting('autoinstall_known_extensions'), current_setting('autoload_known_extensions')")
    assert out["rows"] == [[False, False]]
    assert replay(["sql", str(CAP.parent / "h200x2-nccl"), "SELECT * FROM read_parquet('https://example.com/x.parquet')"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "httpfs" in err[0]


def test_kernels_view_holds_the_work_the_figures_count(capsys):
    """A torch.profiler trace copies each ProfilerStep range onto the GPU timeline (gpu_user_annotation, as long
    as the step): the kernels view held them as 'other_kernel' rows, so a user's sum of kernel time per rank
    counted each step's whole span once more. The view now holds the rows the busy-time figures count: the sum
    of its compute rows equals the raw file's kernel time."""
    import gzip
    path = Path(__file__).resolve().parents[1] / "traces" / "observed" / "hf-decode" / "hf-decode-nosync.json.gz"
    raw = json.loads(gzip.open(path).read())["traceEvents"]
    assert any(e.get("cat") == "gpu_user_annotation" for e in raw)              # the capture has them
    kernel_us = sum(e["dur"] for e in raw if e.get("cat") == "kernel")
    out = _json(capsys, str(path), "SELECT cat, count(*), sum(dur_us) FROM kernels GROUP BY cat")
    got = {row[0]: row for row in out["rows"]}
    assert "gpu_user_annotation" not in got
    assert got["kernel"][2] == pytest.approx(kernel_us, rel=1e-6)
