"""`tracegen estimate` / `list` / `roofline` as a user runs them."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tracegen.cli import build_parser, main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_estimate_help_explains_every_flag_with_its_unit(capsys):
    assert main(["estimate", "--help"]) == 0
    text = capsys.readouterr().out
    parser = build_parser()
    est = parser._subparsers._group_actions[0].choices["estimate"]
    for action in est._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, action.option_strings
    for unit in ("tokens", "GB/s", "GPUs", "sequences", "fraction"):
        assert unit in text
    assert "examples:" in text


def test_seed004_headline_figures(capsys):
    code, out, _ = run(capsys, "estimate", "--preset", "seed004")
    assert code == 0
    assert "167.802" in out and "259.803" in out and "52,240.1" in out and "33,741.0" in out
    code, out, _ = run(capsys, "estimate", "--preset", "seed004", "--phase", "decode", "--json")
    d = json.loads(out)
    assert round(d["tpot_overlap_ms"], 3) == 9.858 and round(d["tpot_ms"], 3) == 17.023
    assert round(d["tokens_per_s_per_gpu_overlap"], 3) == 3246.137


def test_json_has_rows_and_totals(capsys):
    code, out, _ = run(capsys, "estimate", "--phase", "decode", "--hardware", "h20", "--batch", "64", "--json")
    d = json.loads(out)
    assert d["hardware"] == "H20" and d["plan"]["batch"] == 64
    assert {r["op"] for r in d["rows"]} >= {"MLA", "RoutedExpert", "Dispatch", "Combine"}
    for r in d["rows"]:
        assert r["total_ms"] == pytest.approx(r["ms_per_layer"] * r["layers"])
    assert d["tpot_ms"] >= d["tpot_overlap_ms"] > 0 and d["max_batch"] > 0


@pytest.mark.parametrize("argv,pattern", [
    (["estimate", "--hardware", "h900"], r"unknown hardware 'h900'; known: .*h800"),
    (["estimate", "--model", "gpt5"], r"unknown model 'gpt5'; known: .*deepseek-v3"),
    (["estimate", "--kv-hit", "1.5"], r"--kv-hit must lie in \[0, 1\)"),
    (["estimate", "--tp", "3"], r"--tp 3 does not divide the 128 attention heads"),
    (["estimate", "--hardware-file", "/nonexistent/hw.toml"], r"no such file"),
    (["estimate", "--comm", "ascend-fused"], r"has no communication backend 'ascend-fused'"),
])
def test_bad_input_one_line_exit_2(capsys, argv, pattern):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert re.search(pattern, err), err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_list_and_roofline(capsys):
    for what in ("hardware", "models", "presets"):
        code, out, _ = run(capsys, "list", what, "--json")
        assert code == 0 and json.loads(out)
    code, out, _ = run(capsys, "roofline", "--hardware", "h20", "--json")
    assert json.loads(out)["min_ep"] == 42


def test_console_entry_point_runs_as_a_program():
    r = subprocess.run([sys.executable, "-m", "tracegen.cli", "estimate", "--hardware", "nope"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("tracegen: error: unknown hardware 'nope'")


@pytest.mark.parametrize("comm", ["ibgda", "intranode", "normal"])
def test_one_gpu_of_all_the_experts_runs_no_all_to_all(capsys, tmp_path, comm):
    """EP1 (one GPU holds every expert): no dispatch or combine runs, whatever the backend - they cost
    nothing, no release's EP8 figure is held for them, and the trace draws none. Found on the held-out
    HF decode row (bench/data/heldout.toml), where ibgda charged 0.77 ms a step of EP8 figures and
    intranode 2 x 20 us a layer. The seed's decode convention (every token over one NIC) keeps its own."""
    flags = ["--model", "qwen3-30b-a3b", "--hardware", "h100", "--phase", "decode", "--tp", "1", "--dp", "1",
             "--batch", "16", "--comm", comm]
    code, out, err = run(capsys, "estimate", *flags, "--json")
    assert code == 0
    d = json.loads(out)
    assert {r["op"]: r["ms_per_layer"] for r in d["rows"] if r["op"] in ("Dispatch", "Combine")} == {
        "Dispatch": 0.0, "Combine": 0.0}
    assert d["sum_ms"] == pytest.approx(d["sum_overlap_ms"])          # nothing left to hide
    assert [r["label"] for r in d["rows"]][0] == "GQA"                  # a model without MLA, as printed
    code, text, err = run(capsys, "estimate", *flags)
    assert "publishes no figures" not in text + err
    trace = tmp_path / "ep1.json.gz"
    assert main(["trace", *flags, "-o", str(trace)]) == 0
    capsys.readouterr()
    from tests.helpers import read_trace
    names = {e.get("name") for e in read_trace(trace)["traceEvents"] if e.get("ph") == "X"}
    assert not names & {"DISPATCH", "COMBINE"}, names & {"DISPATCH", "COMBINE"}


def test_the_seed_decode_convention_keeps_its_all_to_all(capsys):
    code, out, _ = run(capsys, "estimate", "--preset", "seed004", "--phase", "decode", "--tp", "1", "--dp", "1")
    assert code == 0
    rows = {line.split()[0]: float(line.split()[1]) for line in out.splitlines() if line.startswith(("Dispatch", "Combine"))}
    assert rows and all(v > 0 for v in rows.values()), rows


def test_hardware_not_measured_on_the_chip_says_so(capsys, tmp_path):
    """A catalog entry whose curves were not measured on the chip itself (B200: Hopper's carried over) says so
    in the assumptions of estimate, trace and deploy (text and JSON), and a hardware file built on it inherits
    the caveat; a chip measured here (H100) carries none."""
    from tracegen.catalog import builtin_hardware, hardware_to_dict, load_hardware
    b200 = builtin_hardware()["b200"]
    assert "B200" in b200.caveat and "Hopper" in b200.caveat
    for argv in (["estimate"], ["trace", "--layers", "2", "-o", str(tmp_path / "t.json.gz")]):
        rc, out, _ = run(capsys, *argv, "--hardware", "b200", "--json")
        assert rc == 0 and json.loads(out)["assumptions"]["hardware_caveat"] == b200.caveat
    rc, out, _ = run(capsys, "estimate", "--hardware", "b200")
    assert rc == 0 and out.splitlines()[0].endswith(f"hardware: {b200.caveat}")
    rc, out, _ = run(capsys, "deploy", "--hardware", "b200", "--mode", "prefill", "--prefill-nodes", "1",
                  "--requests", "50", "--json")
    assert rc == 0 and json.loads(out)["assumptions"]["hardware_caveat"] == b200.caveat
    rc, out, _ = run(capsys, "estimate", "--hardware", "h100", "--json")
    assert rc == 0 and "hardware_caveat" not in json.loads(out)["assumptions"]
    # list hardware names each entry's caveat, and none for a chip measured here
    rc, out, _ = run(capsys, "list", "hardware", "--json")
    rows = {r["name"]: r for r in json.loads(out)["hardware"]}
    assert rc == 0 and rows["b200"]["caveat"] == b200.caveat and rows["h100"]["caveat"] is None
    rc, out, _ = run(capsys, "list", "hardware")
    assert f"  b200: {b200.caveat}" in out.splitlines() and not any(x.startswith("  h100:") for x in out.splitlines())
    # a user's file from the catalog entry keeps it (hardware_to_dict round trip)
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(hardware_to_dict(b200)))
    assert load_hardware(path=path).caveat == b200.caveat
