"""A generated trace opens in ui.perfetto.dev and chrome://tracing: well-formed events, named
tracks, paired flows, counters; the .pftrace holds the same slices."""
from __future__ import annotations

import bisect
from collections import Counter, defaultdict

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from tracegen.cli import main
from tracegen.trace import build_events, metadata

from .helpers import make_schedule, read_trace, slices


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    d = tmp_path_factory.mktemp("traces")
    out = {}
    for name, argv in {
        "prefill": ["--layers", "6", "--ranks", "2"],
        "decode": ["--phase", "decode", "--layers", "6", "--ranks", "3", "--comm", "cpu-proxy"],
        "graphs": ["--launch-us", "0", "--layers", "4", "--tbo", "improper"],     # zero-length launch slices
    }.items():
        for ext in (".json", ".json.gz", ".pftrace"):
            path = d / f"{name}{ext}"
            assert main(["trace", *argv, "-o", str(path)]) == 0
            out[name + ext] = path
    return out


@pytest.mark.parametrize("name", ["prefill", "decode"])
def test_json_events_are_well_formed(traces, name):
    trace = read_trace(traces[name + ".json"])
    assert trace == read_trace(traces[name + ".json.gz"])
    ev = trace["traceEvents"]
    named_proc = {e["pid"] for e in ev if e["ph"] == "M" and e["name"] == "process_name"}
    named_thread = {(e["pid"], e["tid"]) for e in ev if e["ph"] == "M" and e["name"] == "thread_name"}
    thread_names = {e["args"]["name"] for e in ev if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {"CPU launch", "compute stream", "comm stream"} <= thread_names
    for e in slices(trace):
        for field in ("ts", "dur", "pid", "tid", "name"):
            assert field in e, e
        assert e["dur"] >= 0 and e["pid"] in named_proc and (e["pid"], e["tid"]) in named_thread
        if e["tid"] in (2, 3):
            for arg in ("layer", "microbatch", "stage", "flops", "bytes", "cost_us"):
                assert arg in e["args"], e
            assert e["name"] == e["args"]["stage"]
    # slices on one track never overlap (each stream runs one stage at a time)
    by_track = defaultdict(list)
    for e in slices(trace):
        by_track[(e["pid"], e["tid"])].append((e["ts"], e["ts"] + e["dur"]))
    for spans in by_track.values():
        spans.sort()
        assert all(b[0] >= a[1] - 1e-6 for a, b in zip(spans, spans[1:]))
    # flows pair up, each end inside a slice of its track
    starts = defaultdict(list)
    for track, spans in by_track.items():
        starts[track] = [s for s, _ in spans]
    kinds = Counter()
    for e in ev:
        if e["ph"] in ("s", "f"):
            kinds[(e["id"], e["ph"])] += 1
            spans = by_track[(e["pid"], e["tid"])]
            j = bisect.bisect_right(starts[(e["pid"], e["tid"])], e["ts"]) - 1
            assert j >= 0 and spans[j][0] <= e["ts"] <= spans[j][1] + 1e-9, e
    ids = {i for i, _ in kinds}
    assert ids and all(kinds[(i, "s")] == 1 and kinds[(i, "f")] == 1 for i in ids)
    assert {e["cat"] for e in ev if e["ph"] == "s"} == {"dependency", "launch"}
    counters = [e for e in ev if e["ph"] == "C"]
    assert counters and all(set(e["args"]) == {"compute", "comm"} for e in counters)
    if name == "decode":
        assert "CPU proxy" in thread_names


def _pftrace_slices(path):
    t = pb.Trace()
    t.ParseFromString(path.read_bytes())
    names, parents, proc_names = {}, {}, {}
    open_at = {}
    out = []
    flows_out, flows_in = 0, 0
    for p in t.packet:
        if p.HasField("track_descriptor"):
            td = p.track_descriptor
            names[td.uuid] = td.name
            parents[td.uuid] = td.parent_uuid
            if td.HasField("process"):
                proc_names[td.uuid] = td.process.process_name
        elif p.HasField("track_event"):
            te = p.track_event
            assert te.track_uuid in names, "an event uses a track before its descriptor"
            if te.type == pb.TrackEvent.TYPE_SLICE_BEGIN:
                open_at.setdefault(te.track_uuid, []).append((p.timestamp, te.name))
                flows_out += len(te.flow_ids)
                flows_in += len(te.terminating_flow_ids)
            elif te.type == pb.TrackEvent.TYPE_SLICE_END:
                assert open_at.get(te.track_uuid), f"an end without a begin on {names[te.track_uuid]}"
                ts, name = open_at[te.track_uuid].pop()       # slices nest: the innermost ends first
                assert p.timestamp >= ts
                out.append((proc_names[parents[te.track_uuid]], names[te.track_uuid], name, ts, p.timestamp - ts))
    assert not any(open_at.values()), "slices left open"
    return sorted(out), flows_out, flows_in


@pytest.mark.parametrize("name", ["prefill", "decode", "graphs"])
def test_pftrace_holds_the_same_slices(traces, name):
    trace = read_trace(traces[name + ".json"])
    ev = trace["traceEvents"]
    pname = {e["pid"]: e["args"]["name"] for e in ev if e["ph"] == "M" and e["name"] == "process_name"}
    tname = {(e["pid"], e["tid"]): e["args"]["name"] for e in ev if e["ph"] == "M" and e["name"] == "thread_name"}
    want = sorted((pname[e["pid"]], tname[(e["pid"], e["tid"])], e["name"], round(e["ts"] * 1000),
                   round((e["ts"] + e["dur"]) * 1000) - round(e["ts"] * 1000)) for e in slices(trace))
    got, fo, fi = _pftrace_slices(traces[name + ".pftrace"])
    assert got == want
    n_flows = sum(1 for e in ev if e["ph"] == "s")
    assert fo == fi == n_flows


def test_metadata_names_the_configuration():
    sched = make_schedule(layers=5)
    meta = build_events(sched, metadata(sched, {"tbo": "proper"}))["otherData"]
    assert meta["model"] == "DeepSeek-V3" and meta["hardware"] == "H800" and meta["tbo"] == "proper"
    assert meta["plan"]["phase"] == "prefill" and meta["layers"] == [0, 1, 2, 3, 4]


def test_bad_trace_arguments(capsys, tmp_path):
    for argv, msg in ((["trace", "-o", str(tmp_path / "x.txt")], "unknown format"),
                      (["trace", "--ranks", "0", "-o", str(tmp_path / "x.json")], "--ranks must lie in [1, 1024]"),
                      (["trace", "--order", str(tmp_path / "none.toml"), "-o", str(tmp_path / "x.json")],
                       "cannot read"),
                      (["trace", "-o", str(tmp_path / "nodir" / "x.json")], "does not exist")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1
    assert not list(tmp_path.glob("**/*.json"))


def test_user_order_file(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('phase = "prefill"\nsteps = [[0, "MLP", 0], [0, "ATTN", 0], [0, "DISPATCH", 0], '
                   '[0, "COMBINE", 0], [0, "SHARED", 0], [1, "ATTN", 0], [1, "SHARED", 0], [1, "DISPATCH", 0],'
                   ' [1, "MLP", 0], [1, "COMBINE", 0]]\n')
    assert main(["trace", "--order", str(bad), "--layers", "5", "-o", str(tmp_path / "o.json")]) == 2
    assert "launches MLP of micro-batch 0" in capsys.readouterr().err
    short = tmp_path / "short.toml"
    short.write_text('phase = "prefill"\nsteps = [[0, "ATTN", 0]]\n')
    assert main(["trace", "--order", str(short), "--layers", "5", "-o", str(tmp_path / "o.json")]) == 2
    assert "never launches" in capsys.readouterr().err
    good = tmp_path / "good.toml"
    good.write_text('phase = "prefill"\nsteps = [[0, "ATTN", 0], [0, "SHARED", 0], [0, "DISPATCH", 0], '
                    '[0, "MLP", 0], [0, "COMBINE", 0], [1, "ATTN", 0], [1, "SHARED", 0], [1, "DISPATCH", 0],'
                    ' [1, "MLP", 0], [1, "COMBINE", 0]]\n')
    assert main(["trace", "--order", str(good), "--layers", "5", "-o", str(tmp_path / "o.json")]) == 0
