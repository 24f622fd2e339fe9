"""A folder of per-rank traces with one unreadable file (issue 12): named in one line, the other
ranks analysed; --strict makes it an error."""
from __future__ import annotations

import json
from pathlib import Path

from replay.cli import main as replay

CAP = Path(__file__).resolve().parents[1] / "traces" / "observed" / "deepep-h100x4"


def test_an_unreadable_rank_file_is_left_out_with_one_warning(tmp_path, capsys):
    """Issue 12: in a folder of good ranks, a truncated file is named in one line and the others are
    analysed (exit 0); --strict makes it an error (exit 2); both with and without the cache."""
    folder = tmp_path / "run"
    folder.mkdir()
    for f in sorted((CAP / "decode-proper").glob("rank*.json.gz")):
        (folder / f.name).write_bytes(f.read_bytes())
    good = (folder / "rank3.json.gz").read_bytes()
    (folder / "rank3.json.gz").write_bytes(good[:4000])
    for cache in (["--no-cache"], []):
        assert replay(["analyze", str(folder), "--json", *cache]) == 0
        out, err = capsys.readouterr()
        res = json.loads(out)
        assert sorted(r["rank"] for r in res["ranks"]) == [0, 1, 2]
        assert [line for line in err.splitlines() if "rank3.json.gz" in line] == [err.strip()]
        assert any(s["what"] == "unreadable_file" for s in res["suspicious_input"])
        assert replay(["analyze", str(folder), "--strict", *cache]) == 2
        err = capsys.readouterr().err
        assert "rank3.json.gz" in err and "truncated" in err and "Traceback" not in err
    (folder / "rank3.json.gz").write_bytes(good)          # the input files are never changed by replay
    assert replay(["analyze", str(folder), "--json", "--no-cache"]) == 0
    assert len(json.loads(capsys.readouterr().out)["ranks"]) == 4
    for f in folder.glob("rank[012].json.gz"):
        assert f.read_bytes() == (CAP / "decode-proper" / f.name).read_bytes()


def test_one_progress_bar_across_the_folder(capsys):
    """Issue 12: one bar for the folder - ranks read of all, and MB/s - not one bar per file."""
    from replay.events import load
    load(CAP / "prefill-proper", progress=True)
    err = capsys.readouterr().err.replace("\r", "\n")
    lines = [x for x in err.splitlines() if x.strip()]
    assert lines and all(" ranks [" in x and x.rstrip().endswith("MB/s") for x in lines)
    assert lines[-1].startswith("4/4 ranks") and not any("rank0.json.gz" in x for x in lines)
