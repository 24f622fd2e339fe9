"""`replay merge DIR`: one Chrome JSON trace of every rank, processes named for their rank, each
rank's clock moved by the offset the peer analysis found."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

from replay.cli import main as replay

CAP = Path(__file__).resolve().parents[1] / "traces" / "observed" / "deepep-h100x4"


def test_merged_trace_holds_every_rank_on_one_clock(tmp_path, capsys):
    d = tmp_path / "ranks"
    d.mkdir()
    for r in range(4):                                # ranks 2 and 3 recorded on a clock 40 ms ahead
        data = json.loads(gzip.decompress((CAP / "prefill-proper" / f"rank{r}.json.gz").read_bytes()))
        if r >= 2:
            data["traceEvents"] = [{**e, "ts": e["ts"] + 40_000.0} if isinstance(e.get("ts"), (int, float)) else e
                                   for e in data["traceEvents"]]
        (d / f"rank{r}.json.gz").write_bytes(gzip.compress(json.dumps(data).encode()))
    out = tmp_path / "merged.json.gz"
    assert replay(["merge", str(d), "-o", str(out), "--no-cache", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert sorted(r["rank"] for r in res["ranks"]) == [0, 1, 2, 3]
    offs = {r["rank"]: r["offset_us"] for r in res["ranks"]}
    assert abs((offs[2] - offs[0]) - 40_000.0) < 50 and abs(offs[3] - offs[2]) < 50
    merged = json.loads(gzip.decompress(out.read_bytes()))["traceEvents"]
    names = {e["args"]["name"].split(":")[0] for e in merged if e.get("name") == "process_name"}
    assert names == {"rank 0", "rank 1", "rank 2", "rank 3"}
    # the n-th dispatch kernel of every rank ends within 1 ms of the others' after the move
    ends: dict[int, list[float]] = {}
    pid_rank = {e["pid"]: int(e["args"]["name"].split(":")[0].split()[1]) for e in merged
                if e.get("name") == "process_name"}
    for e in merged:
        if e.get("cat") == "kernel" and "intranode::dispatch" in e.get("name", ""):
            ends.setdefault(pid_rank[e["pid"]], []).append(e["ts"] + e["dur"])
    firsts = [sorted(v)[0] for v in ends.values()]
    assert max(firsts) - min(firsts) < 1000.0
    assert replay(["analyze", str(out), "--no-cache"]) == 2          # a view, not a trace to analyse
    assert "replay merge" in capsys.readouterr().err


def test_merge_needs_a_folder(tmp_path, capsys):
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(CAP / "prefill-proper" / "rank0.json.gz", one / "rank0.json.gz")
    assert replay(["merge", str(one), "-o", str(tmp_path / "m.json"), "--no-cache"]) == 2
    assert not (tmp_path / "m.json").exists()


def test_merge_keeps_going_past_fields_of_the_wrong_type(tmp_path, capsys):
    """distributedInfo that is not an object, metadata args that are not an object, pids that are lists
    (found by the commands' fuzz campaign): the rank comes from the file name, the pid is kept as text."""
    src = CAP.parent / "h200x2-nccl"
    d = tmp_path / "ranks"
    d.mkdir()
    data = json.loads(gzip.decompress((src / "rank0.json.gz").read_bytes()))
    data["distributedInfo"] = -1e18
    for e in data["traceEvents"]:
        if e.get("ph") == "M":
            e["args"] = [1]
    for e in data["traceEvents"][:10]:
        e["pid"] = [1, 2]
    (d / "rank0.json").write_text(json.dumps(data))
    shutil.copy(src / "rank1.json.gz", d / "rank1.json.gz")
    out = tmp_path / "merged.json.gz"
    assert replay(["merge", str(d), "-o", str(out), "--no-cache", "--json"]) == 0
    assert sorted(r["rank"] for r in json.loads(capsys.readouterr().out)["ranks"]) == [0, 1]
    merged = json.loads(gzip.decompress(out.read_bytes()))["traceEvents"]
    names = {e["args"]["name"] for e in merged if e.get("name") == "process_name"}
    assert any(n.startswith("rank 0: [1, 2]") for n in names) and any(n.startswith("rank 1:") for n in names)
