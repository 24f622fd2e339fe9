"""The trace contract (tracegen/base/contract.py): every key tracegen writes is declared, every
declared key is written, the readers decode exactly the declared keys, every key declared as read
is read somewhere in replay or viz, and a trace made from a user's own hardware and model files
replays (whatif, calibrate, compare) without those files."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import msgspec
import pytest

from replay.analyze import analyze
from replay.cli import main as replay
from replay.columns import _COLUMN_ARGS, EXTRA_ARGS
from replay.events import GeneratedMeta
from replay.kineto import _KINETO_ARGS, Args
from tracegen.base import contract as C
from tracegen.catalog import hardware_to_dict, load_hardware, load_model, model_to_dict
from tracegen.cli import main as tracegen

from .helpers import read_trace

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {   # together they write every key and every track: proxy, waits, load factors, dense layers
    "prefill-improper": ["--tbo", "improper", "--ranks", "2", "--imbalance", "1.3", "--layers", "5"],
    "decode-cpu-proxy": ["--phase", "decode", "--comm", "cpu-proxy", "--layers", "5"],
    "ascend-fused": ["--hardware", "ascend-910c", "--phase", "decode", "--comm", "ascend-fused", "--layers", "5"],
    # every layer: the step's LM head, the MTP module, the CPU's scheduling slice
    "decode-mtp-sched": ["--phase", "decode", "--mtp", "1", "--sched-ms", "2"],
}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    d = tmp_path_factory.mktemp("contract")
    traces = {}
    for name, argv in VARIANTS.items():
        out = d / f"{name}.json"
        assert tracegen(["trace", *argv, "-o", str(out)]) == 0
        traces[name] = read_trace(out)
    w = d / "whatif.json"
    assert replay(["whatif", str(d / "prefill-improper.json"), "--launch-order", "proper", "-o", str(w),
                   "--no-cache", "--json"]) == 0
    traces["whatif"] = read_trace(w)
    return traces


def test_every_written_key_is_declared_and_every_declared_key_written(written):
    args, other, cats, flows, threads, counters = set(), set(), set(), set(), set(), set()
    for t in written.values():
        other |= set(t["otherData"])
        for e in t["traceEvents"]:
            if e["ph"] == "X":
                args |= set(e["args"])
                cats.add(e["cat"])
            elif e["ph"] in ("s", "f"):
                flows.add(e["cat"])
            elif e["ph"] == "M" and e["name"] == "thread_name":
                threads.add(e["args"]["name"])
            elif e["ph"] == "C":
                counters.add((e["name"], tuple(sorted(e["args"]))))
    assert args == set(C.ARG_NAMES)
    assert other == set(C.OTHER_DATA_NAMES)
    assert cats == {C.CAT_LAUNCH, C.CAT_WAIT, C.CAT_PROXY, C.CAT_SCHED, C.COMPUTE, C.COMM}
    assert flows == {C.FLOW_DEPENDENCY, C.FLOW_LAUNCH}
    assert threads == {name for _, name in C.TRACKS.values()}
    assert counters == {(C.COUNTER_SMS, ("comm", "compute"))}
    assert all(t["otherData"]["format_version"] == C.FORMAT_VERSION for t in written.values())


def test_value_types_and_stages_follow_the_contract(written):
    types = {k.name: k.type for k in C.SLICE_ARGS} | {k.name: k.type for k in C.OTHER_DATA}
    stages = set()
    for t in written.values():
        for k, v in t["otherData"].items():
            assert isinstance(v, types[k]) or (types[k] is float and isinstance(v, int)), (k, v)
        for e in t["traceEvents"]:
            if e["ph"] != "X":
                continue
            for k, v in e["args"].items():
                assert isinstance(v, types[k]) or (types[k] is float and isinstance(v, int)), (k, v)
            if e["cat"] in (C.COMPUTE, C.COMM):
                stages.add(e["args"]["stage"])
                assert C.STAGE_STREAM[e["args"]["stage"]] == e["args"]["kind"] == e["cat"]
                assert e["tid"] == C.TRACKS[e["cat"]][0]
    assert stages == set(C.STAGE_STREAM)
    programs = {s for p in C.PROGRAM.values() for s in p}
    assert programs == set(C.STAGE_STREAM)


def test_a_stage_that_runs_nothing_is_not_drawn(tmp_path):
    """The contract's EP1 rule: one GPU of every expert runs no all-to-all, so its trace has no
    DISPATCH / COMBINE slice and no launch of one; at EP2 both are drawn."""
    from tracegen.trace import write_trace

    from .helpers import make_schedule
    drawn = {}
    for dp in (1, 2):
        out = write_trace(make_schedule("decode", "h100", "qwen3-30b-a3b", tbo="off", layers=2, tp=1, dp=dp),
                          tmp_path / f"dp{dp}.json")
        drawn[dp] = {e["args"].get("stage") for e in read_trace(out)["traceEvents"] if e["ph"] == "X"
                     and isinstance(e.get("args"), dict)}
    assert not drawn[1] & {"DISPATCH", "COMBINE"} and {"DISPATCH", "COMBINE"} <= drawn[2], drawn


def test_readers_decode_exactly_the_declared_keys():
    read_args = {k.name for k in C.read_keys(C.SLICE_ARGS)}
    kineto_own = {name for name, _, _ in _KINETO_ARGS}
    assert set(Args.__struct_fields__) - (kineto_own - read_args) == read_args
    assert set(_COLUMN_ARGS) | set(EXTRA_ARGS) == read_args and not set(_COLUMN_ARGS) & set(EXTRA_ARGS)
    assert set(GeneratedMeta.__struct_fields__) == {k.name for k in C.read_keys(C.OTHER_DATA)}


def _reads(paths: list[Path]) -> set[str]:
    """Names a module reads as keys: obj.NAME, obj.get("NAME"), obj["NAME"]."""
    found: set[str] = set()
    for p in paths:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Attribute):
                found.add(node.attr)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                    and node.args and isinstance(node.args[0], ast.Constant):
                found.add(str(node.args[0].value))
            elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
                found.add(str(node.slice.value))
    return found


def test_every_key_declared_as_read_is_read_by_replay_or_viz():
    sources = sorted((ROOT / "replay").glob("*.py")) + sorted((ROOT / "viz").glob("*.py"))
    reads = _reads(sources)
    assert "is_generated" in reads                       # 'generator': through contract.is_generated
    for k in C.read_keys(C.OTHER_DATA):
        if k.name != "generator":
            assert k.name in reads, f"otherData key {k.name!r} is declared as read but nothing reads it"
    for name in EXTRA_ARGS:
        assert name in reads, f"args key {name!r} is declared as read but nothing reads it"


def test_only_the_event_table_touches_raw_otherdata():
    """Everything else reads a generated trace's metadata through the typed GeneratedMeta, so a
    key that is not declared (hence not written) cannot be read by accident."""
    allowed = {"kineto.py", "events.py"}
    for p in sorted((ROOT / "replay").glob("*.py")) + sorted((ROOT / "viz").glob("*.py")):
        if p.name not in allowed:
            assert "otherData" not in _reads([p]), f"{p.relative_to(ROOT)} reads otherData directly"


def test_a_newer_format_is_refused(tmp_path, capsys):
    out = tmp_path / "t.json"
    assert tracegen(["trace", "--layers", "4", "-o", str(out)]) == 0
    t = json.loads(out.read_text())
    t["otherData"]["format_version"] = C.FORMAT_VERSION + 1
    out.write_text(json.dumps(t))
    capsys.readouterr()
    assert replay(["analyze", str(out), "--no-cache"]) == 2
    assert "newer tracegen" in capsys.readouterr().err


# ----------------------------------------------------------------------------- user files
@pytest.fixture(scope="module")
def own_files(tmp_path_factory):
    """A lab GPU (an H800 with other figures, under a name no catalog knows) and a renamed model."""
    d = tmp_path_factory.mktemp("own")
    base = hardware_to_dict(load_hardware("h800"))["h800"]
    base.update(display="My lab H800", aliases=[], hbm_gbps=2600.0, scaleout_gbps=40.0)
    base["efficiency"]["gemm"]["max"] = 0.61
    hw = d / "lab.json"
    hw.write_text(json.dumps({"my-lab-h800": base}))
    m = model_to_dict(load_model("deepseek-v3"))["deepseek-v3"]
    m.update(display="My MoE", aliases=[], layers=9)
    model = d / "model.json"
    model.write_text(json.dumps({"my-moe": m}))
    return d, hw, model


def test_trace_from_own_files_replays_without_them(own_files, capsys):
    d, hw, model = own_files
    # boost clock: the improper order waits on the CPU, draws less and would run at another clock than
    # the proper one; whatif keeps the traced clock (tracegen/power.py)
    own = ["--hardware-file", str(hw), "--model-file", str(model), "--ranks", "2", "--clock", "boost"]
    improper, proper = d / "improper.json.gz", d / "proper.json.gz"
    assert tracegen(["trace", *own, "--tbo", "improper", "-o", str(improper)]) == 0
    assert tracegen(["trace", *own, "--tbo", "proper", "-o", str(proper)]) == 0
    hw.rename(d / "gone.json")          # the files are not needed any more
    model.rename(d / "gone-model.json")
    try:
        other = read_trace(improper)["otherData"]
        assert other["hardware"] == "My lab H800" and other["hardware_key"] == "my-lab-h800"
        assert other["model"] == "My MoE" and len(other["layers"]) == 9 + 1    # + the LM head
        capsys.readouterr()
        assert replay(["whatif", str(improper), "--launch-order", "proper", "-o", str(d / "w.json"), "--json",
                       "--no-cache"]) == 0
        res = json.loads(capsys.readouterr().out)
        want = analyze(proper, use_cache=False).ranks[0]["span_us"]
        assert res["ranks"][0]["span_us"] == pytest.approx(want, rel=0.01)
        assert read_trace(d / "w.json")["otherData"]["hardware"] == "My lab H800"
        # calibrate starts from the trace's own hardware and recovers the file's GEMM curve
        assert replay(["calibrate", str(proper), "-o", str(d / "fit.json"), "--json"]) == 0
        fitted = json.loads(capsys.readouterr().out)["hardware"]
        (entry,) = fitted.values()
        assert entry["display"] == "My lab H800 (calibrated)" and entry["hbm_gbps"] == 2600.0
        assert entry["efficiency"]["gemm"]["max"] == pytest.approx(0.61, rel=0.02)
    finally:
        (d / "gone.json").rename(hw)
        (d / "gone-model.json").rename(model)


def test_generated_meta_rejects_a_broken_contract(tmp_path, capsys):
    out = tmp_path / "t.json"
    assert tracegen(["trace", "--layers", "4", "-o", str(out)]) == 0
    t = json.loads(out.read_text())
    t["otherData"]["ranks"] = "two"
    out.write_text(json.dumps(t))
    capsys.readouterr()
    assert replay(["analyze", str(out), "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert "trace contract" in err and "ranks" in err
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"ranks": "two"}, GeneratedMeta)


def test_the_docs_page_holds_the_current_tables():
    from .contract_doc import DOC, render
    current = DOC.read_text()
    assert current == render(current), "docs/trace-contract.md is stale: run `make docs`"
