"""Loading traces: formats, folders of ranks, streaming across chunk boundaries, and one clear
error line with exit status 2 (and nothing written) for every kind of bad input."""
from __future__ import annotations

import gzip
import json

import pytest

import replay.kineto as kineto
from replay.cli import main
from replay.events import load


def _kineto(rank=0, n=50, t0=1000.0):
    ev = [{"ph": "M", "name": "thread_name", "pid": 0, "tid": 7, "args": {"name": "stream 7"}}]
    for i in range(n):
        c = 100 + i
        ev.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 11, "tid": 11,
                   "ts": t0 + 10 * i, "dur": 2, "args": {"correlation": c}})
        ev.append({"ph": "X", "cat": "kernel", "name": "sm90_xmma_gemm_bf16" if i % 2 else "ncclDevKernel_AllReduce",
                   "pid": 0, "tid": 7 if i % 2 else 9, "ts": t0 + 10 * i + 3, "dur": 6,
                   "args": {"correlation": c, "stream": 7 if i % 2 else 9, "device": 0}})
    return {"schemaVersion": 1, "distributedInfo": {"rank": rank, "world_size": 2}, "traceEvents": ev,
            "traceName": "x"}


def test_json_gz_and_array_forms_load_the_same(tmp_path):
    obj = _kineto()
    (tmp_path / "a.json").write_text(json.dumps(obj, indent=1))
    (tmp_path / "a.json.gz").write_bytes(gzip.compress(json.dumps(obj).encode()))
    (tmp_path / "arr.json").write_text(json.dumps(obj["traceEvents"]))
    (tmp_path / "open.json").write_text(json.dumps(obj["traceEvents"])[:-1] + ",\n")   # no closing bracket
    frames = [load(tmp_path / n).events for n in ("a.json", "a.json.gz", "arr.json", "open.json")]
    for f in frames[1:]:
        assert len(f) == len(frames[0]) == 100
        assert list(f["name"].astype(str)) == list(frames[0]["name"].astype(str))
    assert (frames[0]["rank"] == 0).all()
    assert frames[0].loc[frames[0]["device"] == "gpu", "stream"].isin([7, 9]).all()


def test_streaming_chunks_give_the_same_table(tmp_path, monkeypatch):
    obj = _kineto(n=400)
    obj["traceEvents"].insert(5, {"ph": "X", "cat": "user_annotation", "name": "tricky }, { name", "pid": 11, "tid": 11,
                                  "ts": 1.0, "dur": 1.0, "args": {"nested": [{"a": 1}, {"b": "}, {"}]}})
    p = tmp_path / "t.json"
    p.write_text(json.dumps(obj, indent=2))
    whole = load(p).events
    monkeypatch.setattr(kineto, "CHUNK", 997)           # cut it into hundreds of pieces
    pieces = load(p).events
    assert len(pieces) == len(whole) == 801
    assert (pieces["start_us"].to_numpy() == whole["start_us"].to_numpy()).all()
    assert list(pieces["name"].astype(str)) == list(whole["name"].astype(str))


def test_folder_of_ranks(tmp_path):
    d = tmp_path / "ranks"
    d.mkdir()
    (d / "rank0.json").write_text(json.dumps(_kineto(rank=0)))
    obj = _kineto(rank=1)
    del obj["distributedInfo"]                      # rank from the file name
    (d / "worker_rank1.json.gz").write_bytes(gzip.compress(json.dumps(obj).encode()))
    t = load(d)
    assert sorted(t.events["rank"].unique()) == [0, 1]


def test_a_folders_ranks_join_with_their_strings_intact(tmp_path):
    """The ranks' tables are joined with their string columns kept categorical (categories united, sorted as
    astype('category') sorts them): every value is the one its file gave, in file order, and a name only one
    rank has stays."""
    from replay.columns import STRING_COLUMNS
    from replay.events import load_file
    d = tmp_path / "ranks"
    d.mkdir()
    for r in (0, 1):
        obj = _kineto(rank=r)
        obj["traceEvents"][-1]["name"] = f"only_on_rank{r}"
        (d / f"rank{r}.json").write_text(json.dumps(obj))
    t = load(d).events
    alone = [load_file(d / f"rank{r}.json").events for r in (0, 1)]
    for col in STRING_COLUMNS + ("device",):
        assert str(t[col].dtype) == "category", col
        assert list(t[col].cat.categories) == sorted(t[col].cat.categories), col
        assert list(t[col].astype(str)) == [v for a in alone for v in a[col].astype(str)], col
    assert {"only_on_rank0", "only_on_rank1"} <= set(t["name"].astype(str))
    assert (t["start_us"].to_numpy() == [v for a in alone for v in a["start_us"]]).all()


def test_begin_end_events_become_slices(tmp_path):
    ev = [{"ph": "B", "name": "k", "cat": "kernel", "pid": 0, "tid": 1, "ts": 10},
          {"ph": "E", "pid": 0, "tid": 1, "ts": 25}]
    p = tmp_path / "be.json"
    p.write_text(json.dumps({"traceEvents": ev}))
    e = load(p).events
    assert len(e) == 1 and e["dur_us"].iloc[0] == 15 and e["start_us"].iloc[0] == 10


BAD = {
    "truncated.json": lambda o: json.dumps(o)[: len(json.dumps(o)) // 2],
    "empty.json": lambda o: "",
    "notjson.json": lambda o: "hello world",
    "noevents.json": lambda o: json.dumps({"schemaVersion": 1}),
    "zeroevents.json": lambda o: json.dumps({"traceEvents": []}),
    "missing_ts.json": lambda o: json.dumps({"traceEvents": [{"ph": "X", "name": "k", "pid": 0, "tid": 0, "dur": 1}]}),
    "bad_ts.json": lambda o: json.dumps({"traceEvents": [{"ph": "X", "name": "k", "pid": 0, "tid": 0, "ts": "soon",
                                                          "dur": 1}]}),
    "missing_pid.json": lambda o: json.dumps({"traceEvents": [{"ph": "X", "name": "k", "tid": 0, "ts": 1, "dur": 1}]}),
    "bad_args.json": lambda o: json.dumps({"traceEvents": o["traceEvents"][:3] + [
        {"ph": "X", "name": "gemm", "cat": "kernel", "pid": 0, "tid": 7, "ts": 5, "dur": 1,
         "args": {"correlation": [1, 2]}}]}),
}
MESSAGES = {"truncated.json": "truncated", "empty.json": "empty file", "notjson.json": "not a JSON trace",
            "noevents.json": "without 'traceEvents'", "zeroevents.json": "no events",
            "missing_ts.json": "without 'ts'", "bad_ts.json": "not a number", "missing_pid.json": "'pid'",
            "bad_args.json": "event 'gemm' at pid 0 tid 7 ts 5.0: Expected `int | str | null`, got `array` - at "
                             "`args.correlation`"}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, name):
    p = tmp_path / name
    p.write_text(BAD[name](_kineto()))
    before = p.read_bytes()
    out_csv = tmp_path / "layers.csv"
    code = main(["analyze", str(p), "--no-cache", "--csv", str(out_csv)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("replay: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert MESSAGES[name] in err and name in err
    assert not out_csv.exists() and p.read_bytes() == before


def test_bad_gzip_and_missing_file(tmp_path, capsys):
    fake = tmp_path / "fake.json.gz"
    fake.write_text("{}")
    assert main(["analyze", str(fake), "--no-cache"]) == 2
    assert "not gzip" in capsys.readouterr().err
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(gzip.compress(json.dumps(_kineto()).encode())[:200])
    assert main(["analyze", str(cut), "--no-cache"]) == 2
    assert "truncated" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "nope.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    empty = tmp_path / "emptydir"
    empty.mkdir()
    assert main(["analyze", str(empty)]) == 2
    assert "holds no .json" in capsys.readouterr().err


def test_nccl_trace_classified(tmp_path, capsys):
    p = tmp_path / "n.json"
    p.write_text(json.dumps(_kineto()))
    assert main(["analyze", str(p), "--no-cache", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    (r,) = d["ranks"]
    # 25 all-reduces and 25 GEMMs of 6 us each, on two streams, never at the same time
    assert r["comm_us"] == 150 and r["compute_us"] == 150 and r["overlap_us"] == 0
    roles = {s["stream"]: s["role"] for s in d["streams"]}
    assert roles == {7: "compute", 9: "comm"}
    assert d["streams"][1]["top_comm"] == {"nccl_allreduce": 25}


def test_parallel_ranges_give_the_same_table(tmp_path, monkeypatch):
    obj = _kineto(n=3000)
    p = tmp_path / "big.json"
    p.write_text(json.dumps(obj, indent=1))
    one = load(p).events
    monkeypatch.setattr(kineto, "PARALLEL_MIN_BYTES", 1)      # split even this small file
    monkeypatch.setenv("REPLAY_WORKERS", "2")
    many = load(p).events
    assert len(many) == len(one) == 6000
    key = ["start_us", "dur_us", "correlation", "stream"]
    a = one.sort_values(key).reset_index(drop=True)
    b = many.sort_values(key).reset_index(drop=True)
    for col in key + ["name", "cat", "thread", "device", "rank"]:
        assert list(a[col].astype(str)) == list(b[col].astype(str)), col


def test_a_perfetto_protobuf_trace_says_what_to_give_instead(tmp_path, capsys):
    """tracegen writes .pftrace too; replay reads JSON: the error names the format and the way out."""
    from tracegen.cli import main as tracegen
    out = tmp_path / "t.pftrace"
    assert tracegen(["trace", "--layers", "2", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["analyze", str(out), "--no-cache"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Perfetto protobuf" in err[0] and ".json.gz" in err[0]
