"""`replay diff BEFORE AFTER` on real captures: the launch order's effect is named (blocked in dispatch
down, the step shorter), the verdict gates CI with an exit status, and bad input is one line."""
from __future__ import annotations

import json
from pathlib import Path

from replay.cli import main as replay

CAP = Path(__file__).resolve().parents[1] / "traces" / "observed" / "deepep-h100x4"


def _run(capsys, *argv) -> tuple[int, dict]:
    rc = replay(["diff", *map(str, argv), "--json", "--no-cache"])
    return rc, json.loads(capsys.readouterr().out)


def test_improper_to_proper_names_the_launch_orders_effect(capsys):
    rc, d = _run(capsys, CAP / "prefill-improper", CAP / "prefill-proper")
    assert rc == 0 and d["slower_pct"] < 0 and "faster" in d["verdict"]
    g = {x["what"]: x for x in d["groups"]}
    assert g["cpu_blocked_launch/dispatch"]["delta_us"] < 0 and g["cpu_blocked_launch/dispatch"]["after_us"] == 0
    assert d["matched"]["ranks"] == [0, 1, 2, 3] and d["matched"]["steps_before"] == 3
    assert any(x["what"].startswith("cpu_blocked_launch/") for x in d["largest_changes"][:4])
    overall = {x["what"]: x for x in d["overall"]}
    assert overall["span_us"]["after_us"] < overall["span_us"]["before_us"]


def test_fail_if_slower_exits_1_in_the_reverse_direction(capsys):
    rc, d = _run(capsys, CAP / "prefill-proper", CAP / "prefill-improper")
    assert d["slower_pct"] > 0
    assert replay(["diff", str(CAP / "prefill-proper"), str(CAP / "prefill-improper"), "--no-cache",
                   "--fail-if-slower", "0"]) == 1
    out = capsys.readouterr().out
    assert "fails --fail-if-slower 0" in out
    assert replay(["diff", str(CAP / "prefill-proper"), str(CAP / "prefill-improper"), "--no-cache",
                   "--fail-if-slower", "50"]) == 0


def test_html_view_and_one_line_errors(capsys, tmp_path):
    html = tmp_path / "diff.html"
    assert replay(["diff", str(CAP / "prefill-improper"), str(CAP / "prefill-proper"), "--no-cache",
                   "--html", str(html)]) == 0
    assert html.exists() and "bokeh" in html.read_text().lower()
    capsys.readouterr()
    assert replay(["diff", str(CAP / "prefill-improper"), str(tmp_path / "missing.json"), "--no-cache"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.json" in err[0]
    assert replay(["diff", str(CAP / "prefill-improper"), str(CAP / "prefill-proper"), "--fail-if-slower", "-1"]) == 2


def test_two_single_rank_files_with_different_rank_numbers_are_paired(capsys, tmp_path):
    """Two one-GPU runs whose files name different ranks (HTA's trace_diff pair: rank 3 vs rank 1)
    are compared, and the pairing is said; the same files as themselves give no change."""
    import gzip
    src = json.loads(gzip.open(CAP / "prefill-proper" / "rank0.json.gz").read())
    paths = []
    for rank in (3, 1):
        d = {**src, "distributedInfo": {**src.get("distributedInfo", {}), "rank": rank}}
        p = tmp_path / f"run{rank}.json"
        p.write_text(json.dumps(d))
        paths.append(p)
    rc, d = _run(capsys, *paths)
    assert rc == 0 and d["matched"]["ranks"] == [3]
    assert "paired (before rank 3, after rank 1)" in d["matched"]["how"]
    assert all(x["delta_us"] == 0 for x in d["overall"])
    # the text says the pairing, not a match by rank number the two files do not share
    assert replay(["diff", *map(str, paths), "--no-cache"]) == 0
    said = capsys.readouterr().out
    assert "matched: the one rank of each side paired (before rank 3, after rank 1)" in said
    assert "ranks by number" not in said


def test_stages_are_compared_only_where_both_runs_name_them(capsys):
    """The HF-style capture with nn.Module ranges against the same program without ranges (layers from the
    kernel sequence, no stage labels): its kernels would all fall in the default stage (ATTN +797 %, MLP
    -100 %), so stages are left out and the match says why; the step figures are still compared."""
    hf = CAP.parent / "hf-moe-h100"
    rc, d = _run(capsys, hf / "hf-moe-module.json.gz", hf / "hf-moe-plain.json.gz")
    assert rc == 0
    assert d["stages"] == [] and "stages not compared: after has no stage labels" in d["matched"]["how"]
    assert d["overall"][0]["before_us"] > 0 and d["overall"][0]["after_us"] > 0
    _, both = _run(capsys, CAP / "prefill-improper", CAP / "prefill-proper")
    assert {x["what"] for x in both["stages"]} >= {"ATTN", "MLP", "DISPATCH", "COMBINE"}


def _vllm_named(tmp_path, name: str, phases: list[str]) -> Path:
    """style-slash's two steps renamed as vLLM V1 names its iterations, one phase each."""
    import gzip
    label = {"prefill": "execute_context_1(4096)_generation_0(0)", "decode": "execute_context_0(0)_generation_16(16)"}
    doc = json.loads(gzip.open(CAP.parent / "h200" / "style-slash.json.gz", "rt").read())
    ranges = [e for e in doc["traceEvents"] if e.get("name") == "forward_step"]
    starts = sorted({float(e["ts"]) for e in ranges if e.get("cat") != "gpu_user_annotation"})
    names = dict(zip(starts, [label[p] for p in phases]))
    for e in ranges:
        e["name"] = names[min(starts, key=lambda t: abs(t - float(e["ts"])))]
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(doc))
    return path


def test_steps_by_phase_where_both_runs_name_them(capsys, tmp_path):
    """Two runs of the same steps, one labelled prefill + decode and one decode + decode: the mixes differ,
    which the match line says, and the decode rows compare like with like (the same work: within 10 %)."""
    before = _vllm_named(tmp_path, "before", ["prefill", "decode"])
    after = _vllm_named(tmp_path, "after", ["decode", "decode"])
    rc, d = _run(capsys, before, after)
    assert rc == 0
    assert [x["what"] for x in d["phases"]] == ["decode step span"]
    dec = d["phases"][0]
    assert abs(dec["change_pct"]) < 10, dec
    assert "before: decode 1, prefill 1; after: decode 2" in d["matched"]["how"] and "the mixes differ" in d["matched"]["how"]
    rc, same = _run(capsys, before, before)
    assert "mixes differ" not in same["matched"]["how"] and {x["change_pct"] for x in same["phases"]} == {0.0}
    rc, plain = _run(capsys, CAP / "prefill-improper", CAP / "prefill-proper")
    assert plain["phases"] == [] and "phase" not in plain["matched"]["how"]
