"""No silent wrong output (issue 14): each case a new user hit, reproduced. Every command either
gives the right answer or one clear line on stderr with exit status 2, no traceback and no file."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from replay.analyze import analyze
from replay.cli import main as replay
from tracegen.cli import main as tracegen
from viz.cli import main as viz

from .helpers import read_trace

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "traces" / "golden"
OBS = ROOT / "traces" / "observed" / "h100"


def one_line_error(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


# ----------------------------------------------------------------------------- 3: unwritable outputs
@pytest.mark.parametrize("target", ["/proc/out.json", "/sys/out.json"])
def test_unwritable_output_is_one_line(capsys, target):
    golden = str(GOLDEN / "h800-decode-ibgda.json.gz")
    one_line_error(capsys, tracegen(["trace", "--layers", "2", "-o", target]), "not writable")
    one_line_error(capsys, replay(["analyze", golden, "--csv", target.replace(".json", ".csv"), "--no-cache"]),
                   "not writable")
    one_line_error(capsys, viz(["html", golden, "-o", target.replace(".json", ".html"), "--no-cache"]),
                   "not writable")


# ----------------------------------------------------------------------------- 4: numbers in
@pytest.mark.parametrize("argv,needle", [
    (["estimate", "--hbm-gbps", "nan"], "'nan' is not a finite number"),
    (["trace", "--batch", "inf", "-o", "/tmp/never.json"], "'inf' is not a finite number"),
    (["estimate", "--imbalance=-inf"], "not a finite number"),
    (["estimate", "--dp", "512", "--ep", "512"], "leaves GPUs without an expert"),
    (["trace", "--layers", "1000", "-o", "/tmp/never.json"], "--layers must lie in [1, 61]"),
    (["trace", "--ranks", "100000", "-o", "/tmp/never.json"], "--ranks must lie in [1, 1024]"),
])
def test_impossible_numbers_are_refused(capsys, argv, needle):
    one_line_error(capsys, tracegen(argv), needle)
    assert not Path("/tmp/never.json").exists()


def test_whatif_scales_must_be_finite(capsys, tmp_path):
    one_line_error(capsys, replay(["whatif", str(GOLDEN / "h800-decode-ibgda.json.gz"), "--compute-scale", "nan",
                                   "-o", str(tmp_path / "w.json")]), "not a finite number")


def test_catalog_numbers_must_be_finite_and_rates_positive(capsys, tmp_path):
    for value, needle in (("nan", "finite"), ("0", "must be positive")):
        f = tmp_path / f"hw-{value}.toml"
        f.write_text(f'[lab]\nbase = "h100"\nhbm_gbps = {value}\n')
        one_line_error(capsys, tracegen(["estimate", "--hardware-file", str(f)]), "hbm_gbps", needle)


def test_a_user_file_may_build_on_a_builtin_entry(capsys, tmp_path):
    f = tmp_path / "lab.toml"
    f.write_text('[my-h100]\nbase = "h100"\ndisplay = "My H100"\nhbm_gbps = "3 TB/s"\n')
    assert tracegen(["estimate", "--hardware-file", str(f), "--json"]) == 0
    mine = json.loads(capsys.readouterr().out)
    assert tracegen(["estimate", "--hardware", "h100", "--json"]) == 0
    stock = json.loads(capsys.readouterr().out)
    assert mine["hardware"] == "My H100" and mine["sum_ms"] > stock["sum_ms"]      # slower HBM, same rest


def _edited(tmp_path, name, edit) -> Path:
    t = read_trace(GOLDEN / "h800-decode-ibgda.json.gz")
    edit(t["traceEvents"])
    out = tmp_path / name
    out.write_text(json.dumps(t))
    return out


def test_negative_durations_are_left_out_and_reported(tmp_path, capsys):
    def neg(ev):
        e = next(e for e in ev if e.get("ph") == "X" and e.get("cat") == "comm")
        e["dur"] = -440.0
    path = _edited(tmp_path, "neg.json", neg)
    a = analyze(path, use_cache=False)
    assert (a.events["dur_us"] >= 0).all()
    (s,) = [x for x in a.suspicious if x["what"] == "negative_duration"]
    assert s["count"] == 1
    assert replay(["analyze", str(path), "--no-cache"]) == 0
    assert "suspicious input (negative_duration)" in capsys.readouterr().out


@pytest.mark.parametrize("field,value", [("ts", 1e300), ("dur", 1e300)])
def test_implausible_times_are_refused(tmp_path, capsys, field, value):
    def big(ev):
        next(e for e in ev if e.get("ph") == "X")[field] = value
    path = _edited(tmp_path, "big.json", big)
    one_line_error(capsys, replay(["analyze", str(path), "--no-cache"]), "not a plausible time")


def test_suspicious_input_is_named(tmp_path):
    def overlap_and_zero(ev):
        comp = [e for e in ev if e.get("ph") == "X" and e.get("cat") == "compute" and e["pid"] == 0]
        comp[3]["ts"] = comp[2]["ts"] + 1.0 + 0.5 * comp[2]["dur"]       # starts inside its predecessor
        comp[5]["dur"] = 0.0
    a = analyze(_edited(tmp_path, "odd.json", overlap_and_zero), use_cache=False)
    what = {s["what"]: s for s in a.suspicious}
    assert what["overlapping_kernels"]["count"] >= 1 and what["overlapping_kernels"]["ranks"] == [0]
    assert what["zero_duration"]["count"] == 1
    clean = analyze(GOLDEN / "h800-decode-ibgda.json.gz", use_cache=False)
    assert clean.suspicious == []


def test_identical_ranks_and_unknown_communication_are_named(tmp_path):
    d = tmp_path / "ranks"
    d.mkdir()
    for r in (0, 1):
        (d / f"rank{r}.json.gz").write_bytes((ROOT / "traces/observed/h200x2-nccl/rank0.json.gz").read_bytes())
    a = analyze(d, use_cache=False)
    assert {"identical_ranks", "duplicate_rank"} <= {s["what"] for s in a.suspicious}
    assert sorted(r["rank"] for r in a.ranks) == [0, 1]
    h100 = analyze(OBS / "layers-proper.json.gz", use_cache=False)      # its comm stand-ins need --taxonomy
    assert "no_communication" in {s["what"] for s in h100.suspicious}
    ok = analyze(OBS / "layers-proper.json.gz", taxonomy=str(OBS / "taxonomy.toml"), use_cache=False)
    assert "no_communication" not in {s["what"] for s in ok.suspicious}


# ----------------------------------------------------------------------------- 2, 8: viz
def test_viz_tells_same_named_files_apart(tmp_path, capsys):
    for run, golden in (("r1", "h800-decode-ibgda"), ("r2", "h800-decode-cpu-proxy")):
        (tmp_path / run).mkdir()
        (tmp_path / run / "trace.json.gz").write_bytes((GOLDEN / f"{golden}.json.gz").read_bytes())
    out = tmp_path / "cmp.html"
    assert viz(["html", str(tmp_path / "r1" / "trace.json.gz"), str(tmp_path / "r2" / "trace.json.gz"), "-o",
                str(out), "--no-cache"]) == 0
    page = out.read_text()
    assert "r1/trace.json.gz" in page and "r2/trace.json.gz" in page


def test_viz_align_layer_out_of_range_is_refused(tmp_path, capsys):
    a, b = GOLDEN / "h800-decode-ibgda.json.gz", GOLDEN / "h800-decode-cpu-proxy.json.gz"
    out = tmp_path / "x.html"
    one_line_error(capsys, viz(["html", str(a), str(b), "--align-layer", "99", "-o", str(out), "--no-cache"]),
                   "--align-layer 99", "layers 0-5")
    one_line_error(capsys, viz(["html", str(a), "--align-layer", "2", "-o", str(out), "--no-cache"]),
                   "two traces")
    assert not out.exists()


def test_viz_refuses_a_layout_bokeh_rejects():
    from bokeh.models import FactorRange
    from bokeh.plotting import figure

    from tracegen.base.errors import UserError
    from viz.report import check
    p = figure(x_range=FactorRange("a", "a"))
    p.vbar(x=["a"], top=[1])
    with pytest.raises(UserError, match="render blank"):
        check(p)


# ----------------------------------------------------------------------------- 7: numbers add up
@pytest.mark.parametrize("trace,taxonomy", [
    (GOLDEN / "h800-prefill-improper.json.gz", None), (GOLDEN / "ascend910c-decode-unfused.json.gz", None),
    (OBS / "layers-improper.json.gz", OBS / "taxonomy.toml"), (ROOT / "traces/observed/h200x2-nccl", None)])
def test_idle_causes_add_up_to_the_compute_idle_time(trace, taxonomy):
    a = analyze(trace, taxonomy=str(taxonomy) if taxonomy else None, use_cache=False)
    for r in a.ranks:
        causes = a.idle_totals[r["rank"]]
        assert sum(causes.values()) == pytest.approx(r["compute_idle_us"], rel=1e-9, abs=1e-6), r["rank"]


def test_tracegen_json_idle_adds_up(capsys, tmp_path):
    assert tracegen(["trace", "--layers", "8", "--ranks", "2", "--json", "-o", str(tmp_path / "t.json")]) == 0
    for r in json.loads(capsys.readouterr().out)["ranks"]:
        assert sum(r["idle_us"].values()) == pytest.approx(r["compute_idle_us"], rel=1e-9)
        assert r["idle_us"]["waiting_on_comm"] > 0


# ----------------------------------------------------------------------------- 1, 8: whatif and compare
def test_whatif_and_compare_refuse_a_training_trace(capsys, tmp_path, train_json):
    one_line_error(capsys, replay(["whatif", str(train_json), "-o", str(tmp_path / "x.json.gz"), "--no-cache"]),
                   "training trace")
    one_line_error(capsys, replay(["compare", str(GOLDEN / "h800-prefill-proper.json.gz"), str(train_json),
                                   "--no-cache"]), "the observed trace is a training trace")
    assert not (tmp_path / "x.json.gz").exists()


def test_whatif_prints_the_no_change_replay_error(capsys, tmp_path):
    tax = str(OBS / "taxonomy.toml")
    assert replay(["whatif", str(OBS / "layers-improper.json.gz"), "--launch-order", "proper", "--taxonomy", tax,
                   "-o", str(tmp_path / "w.json"), "--json", "--no-cache"]) == 0
    (r,) = json.loads(capsys.readouterr().out)["ranks"]
    # the capture re-timed as it ran reproduces its span (the CPU's observed time per stage, its observed
    # waits and the gaps between its kernels: stagegraph.py), and the report still prints the error
    assert abs(r["no_change_error_pct"]) < 5.0
    assert r["no_change_span_us"] > r["span_us"]          # the change itself still helps
    assert replay(["whatif", str(OBS / "layers-improper.json.gz"), "--launch-order", "proper", "--taxonomy", tax,
                   "-o", str(tmp_path / "w.json"), "--no-cache"]) == 0
    assert "replay err: the trace re-timed with no change against the trace itself" in capsys.readouterr().out
    # a generated trace replays exactly
    assert replay(["whatif", str(GOLDEN / "h800-prefill-improper.json.gz"), "--launch-order", "proper", "-o",
                   str(tmp_path / "g.json"), "--json", "--no-cache"]) == 0
    for r in json.loads(capsys.readouterr().out)["ranks"]:
        assert abs(r["no_change_error_pct"]) < 0.01


def test_whatif_rank_messages_say_what_to_do(capsys, tmp_path):
    one_line_error(capsys, replay(["whatif", str(GOLDEN / "h800-prefill-improper.json.gz"), "--rank", "1", "-o",
                                   str(tmp_path / "w.json"), "--no-cache"]), "leave --rank out")
    # an all-reduce beside GEMMs with no stage ranges and no layers (its compute is one GEMM repeated, no
    # evidence of layers): nothing to re-time
    one_line_error(capsys, replay(["whatif", str(ROOT / "traces/observed/h200x2-nccl"), "--rank", "1", "-o",
                                   str(tmp_path / "w.json"), "--no-cache"]), "no stage of rank 1 could be labelled")
    assert not (tmp_path / "w.json").exists()



def test_whatif_of_a_folder_retimes_its_ranks_together(capsys, tmp_path):
    """A profiler folder without --rank: every rank re-timed at once, each collective waiting for its last
    peer in the new schedule (the observed peer waits taken out first); with no change each rank's span
    and hidden share come back as observed."""
    assert replay(["whatif", str(ROOT / "traces/observed/deepep-h100x4/prefill-improper"), "-o",
                   str(tmp_path / "w.json.gz"), "--json", "--no-cache"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in res["ranks"]] == [0, 1, 2, 3]
    assert any("re-timed together" in a for a in res["assumptions"])
    assert not any("re-timed alone" in a for a in res["assumptions"])
    for r in res["ranks"]:
        assert abs(r["span_us"] / r["observed_span_us"] - 1) < 0.01, r
        assert abs(r["hidden_comm_pct"] - r["observed_hidden_comm_pct"]) < 1.0, r
    # the written trace holds every rank on the common clock
    assert replay(["analyze", str(tmp_path / "w.json.gz"), "--json", "--no-cache"]) == 0
    assert [r["rank"] for r in json.loads(capsys.readouterr().out)["ranks"]] == [0, 1, 2, 3]


def test_whatif_with_no_change_reproduces_every_real_capture_within_5_percent():
    """Issue 27: each rank of each capture in traces/observed re-timed with no change lands within 5 % of
    its observed span and its hidden share of communication within 2 points. (Each re-time reads its
    own trace's stage times, CPU work and SM waits: this checks the re-timing reproduces them, not a
    prediction; bench/whatif_fidelity.py also prints improper -> proper against the real proper run.)
    And no worse than it reached: span within 1 %. The held-out H200 pair (its rows fixed before it was
    captured) met the span bar and missed the hidden-share bar on its improper run (-2.26 pts) until the
    scheduler's fault behind it was found (bench/whatif_fidelity HELD_OUT_NOTES): every capture now meets the
    same 2 points, that one no longer held out."""
    from bench.whatif_fidelity import CAPTURES, HIDDEN_BAR_PTS, no_change_rows
    rows = no_change_rows()
    assert {r["capture"] for r in rows} == {k for k, (p, _) in CAPTURES.items() if p.exists()}
    for r in rows:
        assert abs(r["span_error_pct"]) <= 1.0, r
        assert abs(r["hidden_error_pts"]) <= HIDDEN_BAR_PTS, r


def test_whatif_with_no_change_reproduces_the_rest_of_the_corpus():
    """Issue 27, the rest of traces/observed (bench/whatif_fidelity.CORPUS: decode and prefill stacks with no
    communication, DeepEP's graph-replayed decode, the annotation-style corpus): within the issue's bars,
    5 % span and 2 points of hidden share. Not held out - three of them were wrong until this session
    (style-module +56 %, style-sglang +38 %, style-mbn/slash +37 points hidden; CORPUS_NOTES says why)."""
    from bench.whatif_fidelity import CORPUS, HIDDEN_BAR_PTS, SPAN_BAR_PCT, no_change_rows
    rows = no_change_rows(CORPUS)
    assert {r["capture"] for r in rows} == {k for k, (p, _) in CORPUS.items() if p.exists()}
    for r in rows:
        assert abs(r["span_error_pct"]) <= SPAN_BAR_PCT and abs(r["hidden_error_pts"]) <= HIDDEN_BAR_PTS, r


def test_every_capture_is_reproduced_or_refused_in_one_line(capsys, tmp_path):
    """Every capture in traces/observed is in the whatif fidelity table or refused with its reason: one line,
    exit 2, no output file (the style captures raised a traceback, a read-only array, before)."""
    from bench.whatif_fidelity import (CAPTURES, CORPUS, HF_DECODE, NCCL_A2A, OBS as ALL, QWEN3_PREFILL, REFUSED,
                                       SM_STANDIN)
    covered = {p.resolve() for p, _ in [*CAPTURES.values(), *CORPUS.values(), *HF_DECODE.values(), *QWEN3_PREFILL.values(),
                                        *NCCL_A2A.values(), *SM_STANDIN.values()]}
    refused = {p.resolve() for p, _, _ in REFUSED.values()}
    captures = {p.resolve() for p in ALL.glob("*/*.json.gz") if not p.name.startswith("rank")} | {
        d.resolve() for d in ALL.glob("*/*") if d.is_dir() and any(d.glob("rank*.json*"))} | {
        d.resolve() for d in ALL.glob("*") if d.is_dir() and any(d.glob("rank*.json*"))}
    assert captures and captures <= covered | refused, sorted(str(p) for p in captures - covered - refused)
    for name, (path, tax, needle) in REFUSED.items():
        out = tmp_path / "w.json"
        code = replay(["whatif", str(path), "-o", str(out), "--no-cache"] + (["--taxonomy", tax] if tax else []))
        one_line_error(capsys, code, needle)
        assert not out.exists(), name
