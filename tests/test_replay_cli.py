"""`replay analyze` as a user runs it: table, JSON fields, CSV/Parquet, --rank, --window, cache."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from replay.cli import main
from tracegen.trace import write_trace

from .helpers import make_schedule


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    return write_trace(make_schedule(tbo="improper", layers=6, ranks=2), d / "improper.json.gz")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_has_the_documented_fields(gen, capsys):
    code, out, _ = run(capsys, "analyze", gen, "--json", "--no-cache")
    assert code == 0
    d = json.loads(out)
    for r in d["ranks"]:
        for k in ("rank", "span_us", "compute_us", "comm_us", "overlap_us", "exposed_comm_us", "compute_idle_us",
                  "hidden_comm_pct", "layers"):
            assert k in r
        assert r["overlap_us"] <= min(r["compute_us"], r["comm_us"]) + 1e-6
        assert r["compute_us"] <= r["span_us"] + 1e-6
    kinds = {f["kind"] for f in d["findings"]}
    assert kinds <= {"cpu_blocked_launch", "launch_bound", "waiting_on_comm"} and "cpu_blocked_launch" in kinds
    for f in d["findings"]:
        assert {"kind", "rank", "start_us", "lost_us", "message"} <= set(f) and f["lost_us"] > 0


def test_table_csv_parquet(gen, capsys, tmp_path):
    csv, pq = tmp_path / "l.csv", tmp_path / "l.parquet"
    code, out, _ = run(capsys, "analyze", gen, "--csv", csv, "--parquet", pq, "--no-cache")
    assert code == 0
    assert "overlap per rank" in out and "why compute idles" in out and "cpu_blocked_launch" in out
    a, b = pd.read_csv(csv), pd.read_parquet(pq)
    assert len(a) == len(b) == 12 and {"rank", "layer", "compute_us", "comm_us", "overlap_us"} <= set(a.columns)


def test_rank_and_window_narrow_the_view(gen, capsys):
    _, out, _ = run(capsys, "analyze", gen, "--json", "--rank", "1", "--no-cache")
    d = json.loads(out)
    assert [r["rank"] for r in d["ranks"]] == [1]
    _, out, _ = run(capsys, "analyze", gen, "--json", "--window", "20ms:40ms", "--no-cache")
    d = json.loads(out)
    assert all(r["span_us"] <= 20000 + 1e-6 for r in d["ranks"])
    code, _, err = run(capsys, "analyze", gen, "--rank", "7", "--no-cache")
    assert code == 2 and "has ranks 0, 1" in err
    code, _, err = run(capsys, "analyze", gen, "--window", "5:2", "--no-cache")
    assert code == 2 and "END must be after START" in err


def test_second_run_uses_the_cache(gen, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_TIMELINE_CACHE", str(tmp_path / "cache"))
    _, first, _ = run(capsys, "analyze", gen, "--json")
    _, second, _ = run(capsys, "analyze", gen, "--json")
    a, b = json.loads(first), json.loads(second)
    assert not a["cached"] and b["cached"]
    assert a["ranks"] == b["ranks"] and a["findings"] == b["findings"]
    assert list((tmp_path / "cache").glob("*.events.parquet"))
    _, third, _ = run(capsys, "analyze", gen, "--json", "--no-cache")
    assert not json.loads(third)["cached"]


def test_a_table_cached_by_other_code_is_not_read_back(gen, tmp_path, monkeypatch):
    """The cache key holds the table builders' source: a table cached by another version of the
    loader (an upgrade, a local change) is a miss, not a stale answer."""
    from replay import cache
    monkeypatch.setenv("MOE_TIMELINE_CACHE", str(tmp_path / "cache"))
    key = cache.content_key(gen)
    assert cache.load_cached(gen)[1] is False and cache.load_cached(gen)[1] is True
    monkeypatch.setattr(cache, "code_key", lambda: b"another loader")
    assert cache.content_key(gen) != key
    assert cache.load_cached(gen)[1] is False


def test_user_taxonomy_reclassifies(tmp_path, capsys):
    trace = {"traceEvents": [
        {"ph": "X", "cat": "kernel", "name": "my_fancy_a2a_kernel", "pid": 0, "tid": 1, "ts": 0, "dur": 10,
         "args": {"stream": 1}},
        {"ph": "X", "cat": "kernel", "name": "sm90_gemm", "pid": 0, "tid": 2, "ts": 5, "dur": 10,
         "args": {"stream": 2}}]}
    p = tmp_path / "t.json"
    p.write_text(json.dumps(trace))
    _, out, _ = run(capsys, "analyze", p, "--json", "--no-cache")
    assert json.loads(out)["ranks"][0]["comm_us"] == 0
    tax = tmp_path / "tax.toml"
    tax.write_text('[[rule]]\nclass = "comm"\nsubclass = "mine"\nregex = "fancy_a2a"\n')
    _, out, _ = run(capsys, "analyze", p, "--json", "--no-cache", "--taxonomy", tax)
    r = json.loads(out)["ranks"][0]
    assert r["comm_us"] == 10 and r["overlap_us"] == 5
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\nclass = "comms"\nregex = "x"\n')
    code, _, err = run(capsys, "analyze", p, "--no-cache", "--taxonomy", bad)
    assert code == 2 and "class must be one of" in err


def test_help_teaches(capsys):
    assert main(["analyze", "--help"]) == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "dpsk::ep::" in text and "--window" in text


DEEPEP_PROPER = __import__("pathlib").Path(__file__).resolve().parents[1] / "traces/observed/deepep-h100x4/prefill-proper"


def test_the_json_lists_the_largest_findings_of_each_kind_and_counts_them_all(capsys, tmp_path):
    from collections import Counter
    code, out, _ = run(capsys, "analyze", DEEPEP_PROPER, "--json", "--no-cache")
    d = json.loads(out)
    per = Counter((f["kind"], f["rank"]) for f in d["findings"])
    assert max(per.values()) <= 20 and d["findings_included"] == len(d["findings"]) < d["findings_total"]
    assert sum(k["n"] for k in d["findings_by_kind"].values()) == d["findings_total"]
    lost = [f["lost_us"] for f in d["findings"]]
    assert lost == sorted(lost, reverse=True)
    # every finding, for scripts: in the document on request, or in a file of any size
    code, out, _ = run(capsys, "analyze", DEEPEP_PROPER, "--json", "--no-cache", "--all-findings",
                       "--findings", tmp_path / "f.parquet")
    full = json.loads(out)
    assert code == 0 and full["findings_included"] == full["findings_total"] == d["findings_total"]
    table = pd.read_parquet(tmp_path / "f.parquet")
    assert len(table) == d["findings_total"]
    assert table["lost_us"].sum() == pytest.approx(sum(k["lost_us"] for k in d["findings_by_kind"].values()))
    assert run(capsys, "analyze", DEEPEP_PROPER, "--findings", tmp_path / "f.jsonl")[0] == 0
    assert len((tmp_path / "f.jsonl").read_text().splitlines()) == d["findings_total"]


def test_a_findings_file_of_an_unknown_kind_is_refused_before_the_analysis(capsys, tmp_path):
    code, _, err = run(capsys, "analyze", DEEPEP_PROPER, "--findings", tmp_path / "f.txt")
    assert code == 2 and "*.parquet" in err and not (tmp_path / "f.txt").exists()


def test_large_folders_are_parsed_one_process_per_core(monkeypatch):
    import replay.cli as cli
    assert cli._auto_jobs(str(DEEPEP_PROPER)) == 1            # 4 small rank files: start-up would dominate
    monkeypatch.setattr(cli, "AUTO_JOBS_MIN_BYTES", 0)
    import os
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert cli._auto_jobs(str(DEEPEP_PROPER)) == min(cores, 4)
    assert cli._auto_jobs(str(DEEPEP_PROPER / "rank0.json.gz")) == 1


@pytest.mark.parametrize("argv", [["analyze", "no-such-trace.json"], ["diff", "no-such-a.json", "no-such-b.json"]])
def test_a_missing_trace_is_refused_before_the_analysis_loads(argv):
    """The one-line error for a path that is not there comes before pandas and the analysis load
    (issue 30: start-up only for what is used)."""
    import subprocess
    import sys
    code = ("import sys; from replay.cli import main; rc = main(%r); "
            "print(rc, 'pandas' in sys.modules, 'replay.analyze' in sys.modules)" % (argv,))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.split() == ["2", "False", "False"], r.stdout + r.stderr
    assert r.stderr.strip().splitlines() == [f"replay: error: {argv[1]}: no such file or folder"]


def test_help_imports_no_analysis_library():
    """`replay --help` loads argparse and the command's own modules only: no msgspec, numpy, pandas,
    pyarrow or bokeh (issue 30: start-up <= 0.15 s; `make bench` times it against a bare interpreter)."""
    import subprocess
    import sys
    heavy = ("msgspec", "numpy", "pandas", "pyarrow", "bokeh", "tomllib")
    code = ("import sys, contextlib, io\nfrom replay.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
            f"print(len(out.getvalue()) > 500, [m for m in {heavy!r} if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "True []", r.stdout + r.stderr


def test_the_command_ends_with_its_output_whole_and_its_status(tmp_path):
    """The `replay` command (replay.cli.console) ends without the interpreter's teardown: its JSON is
    complete and equal to main()'s, a refusal still exits 2 with one line, exit handlers still run."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "replay.cli", "analyze", str(DEEPEP_PROPER), "--json", "--no-cache"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["analyze", str(DEEPEP_PROPER), "--json", "--no-cache"]) == 0
    e = json.loads(out.getvalue())
    assert {k: v for k, v in d.items() if k != "elapsed_s"} == {k: v for k, v in e.items() if k != "elapsed_s"}
    r = subprocess.run([sys.executable, "-m", "replay.cli", "analyze", str(tmp_path / "none.json")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"replay: error: {tmp_path / 'none.json'}: no such file or folder"]
    code = ("import atexit, sys\natexit.register(lambda: print('handler ran'))\n"
            "from tracegen.base.errors import exit_now\nprint('unflushed', end='')\nexit_now(3)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 3 and r.stdout == "unflushedhandler ran\n", r.stdout
