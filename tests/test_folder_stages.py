"""A folder analysed in two stages (replay/folder.py: per rank file, then across ranks on compact
tables, then per rank file again) gives exactly the JSON of the analysis of the whole concatenated
table (analyze()), on the real multi-rank captures and on folders built to hit every cross-rank
case: a missing rank, ranks that disagree, two files claiming one rank, an unreadable file, clocks
that need aligning; and under --window, --rank, --step and --jobs."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from replay.analyze import analyze, parse_window
from replay.cli import main as replay
from replay.folder import Options, analyze_folder
from tracegen.base.errors import UserError

CAP = Path(__file__).resolve().parents[1] / "traces" / "observed" / "deepep-h100x4"


def same(path: Path, **kw) -> dict:
    """Both analyses of `path` as JSON text; asserts they are equal and returns the dict."""
    whole = analyze(path, use_cache=False, progress=False, **kw).to_dict()
    opts = Options(use_cache=False, **{k: v for k, v in kw.items() if k in Options.__dataclass_fields__})
    staged = analyze_folder(path, opts, progress=False).to_dict()
    a, b = json.dumps(whole, default=str), json.dumps(staged, default=str)
    if a != b:
        diff = [k for k in whole if json.dumps(whole[k], default=str) != json.dumps(staged.get(k), default=str)]
        raise AssertionError(f"{path}: the staged analysis differs in {diff}")
    return whole


@pytest.mark.parametrize("run", sorted(p.name for p in CAP.iterdir() if p.is_dir()))
def test_every_capture_gives_the_same_json(run):
    same(CAP / run)


def _folder(tmp_path: Path, files: dict[str, Path | bytes]) -> Path:
    d = tmp_path / "ranks"
    d.mkdir()
    for name, src in files.items():
        if isinstance(src, bytes):
            (d / name).write_bytes(src)
        else:
            shutil.copy(src, d / name)
    return d


def _shifted(src: Path, us: float) -> bytes:
    """A rank file with every timestamp moved by `us` (another host's clock)."""
    data = json.loads(gzip.decompress(src.read_bytes()))
    data["traceEvents"] = [{**e, "ts": e["ts"] + us} if isinstance(e.get("ts"), (int, float)) else e
                           for e in data["traceEvents"]]
    return gzip.compress(json.dumps(data).encode())


def test_cross_rank_cases_give_the_same_json(tmp_path):
    pp = CAP / "prefill-proper"
    cases = {
        "missing": {f"rank{r}.json.gz": pp / f"rank{r}.json.gz" for r in (0, 1, 3)},
        "disagree": {**{f"rank{r}.json.gz": pp / f"rank{r}.json.gz" for r in (0, 1, 2)},
                     "rank3.json.gz": CAP / "decode-proper" / "rank3.json.gz"},
        "collide": {**{f"rank{r}.json.gz": pp / f"rank{r}.json.gz" for r in range(4)},
                    "rank0-again.json.gz": pp / "rank1.json.gz"},
        "unreadable": {**{f"rank{r}.json.gz": pp / f"rank{r}.json.gz" for r in range(3)},
                       "rank3.json.gz": (pp / "rank3.json.gz").read_bytes()[:5000]},
        "clocks": {**{f"rank{r}.json.gz": pp / f"rank{r}.json.gz" for r in range(2)},
                   **{f"rank{r}.json.gz": _shifted(pp / f"rank{r}.json.gz", 40_000.0) for r in (2, 3)}},
    }
    for name, files in cases.items():
        (tmp_path / name).mkdir()
        folder = _folder(tmp_path / name, files)
        if name == "disagree":        # a decode rank among prefill ranks: two runs, refused by both paths alike
            errors = []
            for run in (lambda: analyze(folder, use_cache=False, progress=False),
                        lambda: analyze_folder(folder, Options(use_cache=False), progress=False)):
                with pytest.raises(UserError, match="look like different runs") as exc:
                    run()
                errors.append(str(exc.value))
            assert errors[0] == errors[1]
            out = same(folder, allow_mixed=True)
            assert any("different runs" in s["message"] for s in out["suspicious_input"])
            continue
        out = same(folder)
        if name == "clocks":
            assert out["clock"].startswith("clocks aligned")
        if name == "collide":
            assert any(s["what"] == "duplicate_rank" for s in out["suspicious_input"])


def test_options_give_the_same_json():
    late = CAP / "prefill-late"
    same(late, window=parse_window("5ms:40ms"))
    same(late, rank=2)
    steps = sorted({s["step"] for r in same(late)["ranks"] for s in r.get("steps", [])})
    same(late, step=steps[-1])


def test_the_cli_runs_the_stages_and_jobs_change_nothing(capsys):
    outs = []
    for extra in ([], ["--jobs", "2"]):
        assert replay(["analyze", str(CAP / "prefill-skew"), "--json", "--no-cache", *extra]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]
    from tracegen.base.cliutil import clean          # --json prints floats to 12 significant digits
    whole = json.dumps(clean(analyze(CAP / "prefill-skew", use_cache=False, progress=False).to_dict()), default=str)
    assert json.dumps({k: v for k, v in json.loads(outs[0]).items() if k != "schema"}) == \
        json.dumps(json.loads(whole))


def test_bad_options_stay_one_line(capsys):
    assert replay(["analyze", str(CAP / "prefill-late"), "--rank", "9", "--no-cache"]) == 2
    assert replay(["analyze", str(CAP / "prefill-late"), "--window", "1000s:2000s", "--no-cache"]) == 2
    assert replay(["analyze", str(CAP / "prefill-late"), "--step", "99", "--no-cache"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "--rank 9" in err[0] and "--window" in err[1] and "--step 99" in err[2]


def test_a_cpu_only_file_beside_the_ranks_is_left_out(tmp_path):
    """SGLang writes its scheduler's own trace (<id>-TP-0-perfetto.json.gz: CPU slices, no kernels) beside
    the ranks' profiler files. It is not a rank: both analyses leave it out and say so, strict or not,
    and the ranks read exactly as without it."""
    d = tmp_path / "run"
    shutil.copytree(CAP / "prefill-proper", d)
    ev = [{"ph": "X", "name": "scheduler.forward", "pid": 1, "tid": 1, "ts": 1000 + 100 * i, "dur": 50,
           "cat": "sglang"} for i in range(20)]
    with gzip.open(d / "1733.5-TP-0-perfetto.json.gz", "wt") as f:
        json.dump({"traceEvents": ev}, f)
    out = same(d)
    base = analyze(CAP / "prefill-proper", use_cache=False, progress=False).to_dict()
    assert out["ranks"] == base["ranks"]
    said = [s for s in out["suspicious_input"] if s["what"] == "cpu_only_file"]
    assert len(said) == 1 and "perfetto" in said[0]["message"]
    assert not any(s["what"] in ("duplicate_rank", "unreadable_file") for s in out["suspicious_input"])
    assert analyze(d, use_cache=False, progress=False, strict=True).to_dict()["ranks"] == base["ranks"]
