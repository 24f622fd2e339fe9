"""A folder as an engine writes it (replay/data/annotations.toml [files]): SGLang's /start_profile names
its rank files `<id>-TP-<r>[-<STAGE>].trace.json.gz` and may merge them into `merged-<id>.trace.json.gz`
beside them (scheduler_profiler_mixin.py, utils/profile_merger.py). Neither may make up ranks: the merge
is left out beside its sources, and files of two profiled stages (a rank's prefill and its decode,
profiled apart) are refused in one line. torch.profiler's tensorboard_trace_handler writes one file per profiling
cycle, `<worker>.<time_ns>.pt.trace.json` (torch/profiler/profiler.py): a process's cycles are not ranks either."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

from replay.cli import main as replay

CAP = Path(__file__).resolve().parents[1] / "traces" / "observed" / "h200x2-nccl"


def _sglang_folder(tmp_path: Path, stages: tuple[str, ...]) -> Path:
    """The two H200 ranks under SGLang's names, one copy per stage ('' for no stage suffix)."""
    d = tmp_path / "sglang"
    d.mkdir()
    for stage in stages:
        for r in (0, 1):
            suffix = f"-{stage}" if stage else ""
            (d / f"1733-TP-{r}{suffix}.trace.json.gz").write_bytes((CAP / f"rank{r}.json.gz").read_bytes())
    return d


def _merged(into: Path, same_device: bool = False) -> Path:
    """SGLang's merge of the two ranks: every event's pid prefixed by the rank's label, as profile_merger
    writes it (`[TP00] <pid>`), the other keys from the first file. `same_device`: both ranks' GPU on device
    0, as two nodes' ranks would be."""
    out: dict = {"traceEvents": []}
    for r in (0, 1):
        doc = json.loads(gzip.decompress((CAP / f"rank{r}.json.gz").read_bytes()))
        gpu = {e.get("pid") for e in doc["traceEvents"] if e.get("cat") == "kernel"}
        for e in doc["traceEvents"]:
            pid = 0 if same_device and e.get("pid") in gpu else e.get("pid")
            e["pid"] = f"[TP{r:02d}] {pid}"
        out["traceEvents"] += doc.pop("traceEvents")
        for k, v in doc.items():
            out.setdefault(k, v)
    path = into / "merged-1733.trace.json.gz"
    path.write_bytes(gzip.compress(json.dumps(out).encode()))
    return path


def _ranks(capsys, path: Path) -> tuple[list[dict], str]:
    assert replay(["analyze", str(path), "--json", "--no-cache"]) == 0
    out, err = capsys.readouterr()
    return json.loads(out)["ranks"], err


def test_the_merge_beside_its_rank_files_is_left_out_with_one_line(tmp_path, capsys):
    d = _sglang_folder(tmp_path, ("",))
    want, err = _ranks(capsys, d)
    assert len(want) == 2 and not err
    _merged(d)
    got, err = _ranks(capsys, d)
    assert [r["rank"] for r in got] == [0, 1]            # not four ranks: the same events twice
    assert [r["span_us"] for r in got] == [r["span_us"] for r in want]
    assert err.strip().startswith("warning: merged-1733.trace.json.gz: left out") and len(err.strip().splitlines()) == 1


def test_the_merge_alone_is_read_as_its_ranks(tmp_path, capsys):
    """A merged file on its own is a trace of every rank, each event's rank from its pid's label: the same
    figures as the rank files, host-side causes included (before, a rank per GPU device, each with every
    rank's host rows), and on ranks whose GPUs have the same device number (two nodes' merge)."""
    keys = ("rank", "span_us", "compute_us", "idle_by_group_us", "peer_wait_us")
    want, _ = _ranks(capsys, _sglang_folder(tmp_path, ("",)))
    for same_device in (False, True):
        alone = tmp_path / f"alone-{same_device}"
        alone.mkdir()
        got, _ = _ranks(capsys, _merged(alone, same_device))
        assert [[r[k] for k in keys] for r in got] == [[r[k] for k in keys] for r in want]


def test_rank_files_of_two_profiled_stages_are_refused_in_one_line(tmp_path, capsys):
    d = _sglang_folder(tmp_path, ("EXTEND", "DECODE"))
    assert replay(["analyze", str(d)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "2 profiled stages" in err and "DECODE" in err and "EXTEND" in err
    assert "Traceback" not in err


def test_one_stage_s_files_are_its_ranks(tmp_path, capsys):
    got, err = _ranks(capsys, _sglang_folder(tmp_path, ("DECODE",)))
    assert [r["rank"] for r in got] == [0, 1] and not err


DEEPEP = Path(__file__).resolve().parents[1] / "traces" / "observed" / "deepep-h100x4" / "decode-proper"


def _steps(capsys, path: Path, *extra: str) -> list[dict]:
    assert replay(["analyze", str(path), "--json", "--no-cache", *extra]) == 0
    return [s for r in json.loads(capsys.readouterr().out)["ranks"] for s in r["steps"]]


def test_a_profiled_stage_is_the_phase_of_every_step(tmp_path, capsys):
    """SGLang's DECODE files: every step of every rank a decode step (counts unknown), in the one-table and
    the two-stage analysis alike; the same files under plain names say no phase."""
    plain = _steps(capsys, DEEPEP)
    assert plain and all("phase" not in s for s in plain)
    d = tmp_path / "decode"
    d.mkdir()
    for r in range(4):
        (d / f"1733-TP-{r}-EP-{r}-DECODE.trace.json.gz").write_bytes((DEEPEP / f"rank{r}.json.gz").read_bytes())
    for extra in ((), ("--jobs", "2")):
        got = _steps(capsys, d, *extra)
        assert len(got) == len(plain) and {s["phase"] for s in got} == {"decode"}
        assert all(s["decode_tokens"] is None for s in got)
        assert [s["span_us"] for s in got] == [s["span_us"] for s in plain]
    one = _steps(capsys, d / "1733-TP-1-EP-1-DECODE.trace.json.gz")       # one file of the stage
    assert one and {s["phase"] for s in one} == {"decode"}
    (d / "1733-TP-0-EP-0-DECODE.trace.json.gz").rename(d / "1733-TP-0-EP-0-TARGET_VERIFY.trace.json.gz")
    assert replay(["analyze", str(d)]) == 2            # two stages in one folder: refused
    assert "TARGET_VERIFY" in capsys.readouterr().err


def test_older_sglang_stage_suffixes(tmp_path, capsys):
    """Older SGLang wrote str(stage): `-ForwardMode.DECODE` (Python 3.10) is DECODE, a phase; the IntEnum's
    number (Python 3.11+) tells the stages apart, two of them refused, one of them no phase."""
    d = tmp_path / "old"
    d.mkdir()
    for r in (0, 1):
        (d / f"1733-TP-{r}-ForwardMode.DECODE.trace.json.gz").write_bytes((DEEPEP / f"rank{r}.json.gz").read_bytes())
    assert {s["phase"] for s in _steps(capsys, d)} == {"decode"}
    for f in d.iterdir():
        f.rename(d / f.name.replace("ForwardMode.DECODE", "2"))
    assert all("phase" not in s for s in _steps(capsys, d))
    (d / "1733-TP-0-1.trace.json.gz").write_bytes((DEEPEP / "rank0.json.gz").read_bytes())
    assert replay(["analyze", str(d)]) == 2
    assert "2 profiled stages" in capsys.readouterr().err


def _cycles(d: Path, workers: dict[str, Path], cycles: int) -> list[Path]:
    """tensorboard_trace_handler's files: each worker's capture once per cycle, named as the handler names them
    (the later cycles' events moved 8 s on each, as a later cycle's are); returns each worker's latest file."""
    d.mkdir()
    latest = []
    for worker, src in workers.items():
        doc = json.loads(gzip.decompress(src.read_bytes()))
        for k in range(cycles):
            events = [{**e, "ts": e["ts"] + k * 8e6} if isinstance(e.get("ts"), (int, float)) else e
                      for e in doc["traceEvents"]]
            path = d / f"{worker}.{1733600000000000000 + k * 8_000_000_000}.pt.trace.json"
            path.write_text(json.dumps({**doc, "traceEvents": events}))
        latest.append(path)
    return latest


def _analysis(capsys, path: Path) -> tuple[dict, str]:
    assert replay(["analyze", str(path), "--json", "--no-cache"]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    return {"ranks": doc["ranks"], "layers": doc.get("layers")}, err


def test_profiling_cycles_of_one_process_are_not_ranks(tmp_path, capsys):
    """The profiler tutorial's recipe (schedule(..., repeat=2), on_trace_ready=tensorboard_trace_handler(DIR)) on one
    process: two files, one rank - its latest cycle, exactly as that file alone - and one line naming the earlier."""
    latest = _cycles(tmp_path / "one", {"myhost_4242": CAP / "rank0.json.gz"}, cycles=2)
    got, err = _analysis(capsys, tmp_path / "one")
    want, _ = _analysis(capsys, latest[0])
    assert len(got["ranks"]) == 1 and got == want
    assert len(err.strip().splitlines()) == 1 and "profiling cycles" in err
    assert "myhost_4242.1733600000000000000.pt.trace.json" in err        # the earlier cycle, named


def test_each_process_keeps_its_latest_cycle(tmp_path, capsys):
    """Two processes (the two H200 ranks), three cycles each: two ranks, the same as a folder of the latest files;
    one cycle per process: no line, as before."""
    latest = _cycles(tmp_path / "two", {"node_1": CAP / "rank0.json.gz", "node_2": CAP / "rank1.json.gz"}, cycles=3)
    got, err = _analysis(capsys, tmp_path / "two")
    only = tmp_path / "latest"
    only.mkdir()
    for f in latest:
        (only / f.name).write_bytes(f.read_bytes())
    want, quiet = _analysis(capsys, only)
    assert len(got["ranks"]) == 2 and got == want and not quiet.strip()
    assert "4 file(s) left out" in err and "node_1, node_2" in err


def test_a_gzip_copy_beside_its_file_is_not_another_rank(tmp_path, capsys):
    """rank0.json kept beside rank0.json.gz (a copy gzipped to share): two ranks, as without the copy, and one
    line naming it; before, the copy was a third rank doubling the straggler's cost."""
    d = tmp_path / "twins"
    d.mkdir()
    for r in (0, 1):
        (d / f"rank{r}.json.gz").write_bytes((CAP / f"rank{r}.json.gz").read_bytes())
    want, quiet = _analysis(capsys, d)
    (d / "rank0.json").write_bytes(gzip.decompress((CAP / "rank0.json.gz").read_bytes()))
    got, err = _analysis(capsys, d)
    assert len(got["ranks"]) == 2 and got == want and not quiet.strip()
    assert len(err.strip().splitlines()) == 1 and "rank0.json.gz" in err and "gzip copies" in err


CYCLES = CAP.parent / "profiler-cycles"


def test_a_real_tensorboard_trace_handler_folder_is_one_rank(tmp_path, capsys):
    """The handler's own files (traces/observed/profiler-cycles: the tutorial's repeat=2 on one H100): the folder is
    the latest cycle alone, one rank, and the warning names the earlier file; each file alone holds its cycle's
    profiled steps (the capture's truth)."""
    truth = json.loads((CYCLES / "cycles-capture.json").read_text())
    files = [CYCLES / n for n in truth["files"]]
    d = tmp_path / "log"
    d.mkdir()
    for f in files:
        (d / f.name).write_bytes(f.read_bytes())
    got, err = _analysis(capsys, d)
    want, _ = _analysis(capsys, files[-1])
    assert len(got["ranks"]) == 1 and got == want
    assert files[0].name in err and "profiling cycles" in err
    for f in files:
        steps = _steps(capsys, f)
        assert len(steps) == truth["profiled_steps_per_cycle"]


def test_every_command_that_reads_the_folder_names_what_it_left_out(tmp_path, capsys):
    """whatif and viz html read the folder as analyze does, and say so: the earlier cycle named on stderr."""
    from viz.cli import main as viz
    latest = _cycles(tmp_path / "log", {"myhost_4242": CAP / "rank0.json.gz"}, cycles=2)
    assert replay(["whatif", str(tmp_path / "log"), "-o", str(tmp_path / "w.json"), "--no-cache"]) == 2
    err = capsys.readouterr().err       # refused (no stage to re-time), after the line on the folder
    assert "profiling cycles" in err and latest[0].name in err and "no stage of rank 0" in err
    assert viz(["html", str(tmp_path / "log"), "-o", str(tmp_path / "r.html"), "--no-cache"]) == 0
    assert "profiling cycles" in capsys.readouterr().err


def test_the_json_says_what_the_folder_left_out(tmp_path, capsys):
    """For scripts: each left-out file is a suspicious_input entry (left_out_file), in the one-table and the
    two-stage analysis alike."""
    _cycles(tmp_path / "log", {"node_1": CAP / "rank0.json.gz", "node_2": CAP / "rank1.json.gz"}, cycles=2)
    for extra in ((), ("--jobs", "2")):
        assert replay(["analyze", str(tmp_path / "log"), "--json", "--no-cache", *extra]) == 0
        doc = json.loads(capsys.readouterr().out)
        left = [s for s in doc["suspicious_input"] if s["what"] == "left_out_file"]
        assert len(doc["ranks"]) == 2 and len(left) == 1 and "2 file(s) left out" in left[0]["message"]


def test_a_json_file_that_is_no_trace_takes_no_rank_place(tmp_path, capsys):
    """Files that name no rank take their place among the folder's traces: a metadata JSON sorted before them
    (a capture's notes, a config) is left out with its line and moves no rank (before: ranks 1 and 2)."""
    d = tmp_path / "unnamed"
    d.mkdir()
    (d / "0-notes.json").write_text(json.dumps({"what": "the run's settings", "batch": 8}))
    truth = json.loads((CYCLES / "cycles-capture.json").read_text())
    for name, src in zip(("a.json.gz", "b.json.gz"), truth["files"]):
        (d / name).write_bytes((CYCLES / src).read_bytes())
    for extra in ((), ("--jobs", "2")):
        assert replay(["analyze", str(d), "--json", "--no-cache", *extra]) == 0
        out, err = capsys.readouterr()
        assert [r["rank"] for r in json.loads(out)["ranks"]] == [0, 1]
        assert "0-notes.json" in err


def test_the_number_that_tells_a_folders_names_apart_is_the_rank(tmp_path, capsys):
    """Files named trace_<rank>_<step>.json with no distributedInfo: the one number that differs between the
    folder's names is the rank (before: the last number, the step, was every file's rank: both files rank 17).
    A name that states its rank with a word keeps it (rank0_step5 / rank0_step6 are not ranks 5 and 6)."""
    from replay.kineto import varying_number
    d = tmp_path / "steps"
    d.mkdir()
    for r in (0, 1):
        doc = json.loads(gzip.decompress((CAP / f"rank{r}.json.gz").read_bytes()))
        doc.pop("distributedInfo", None)
        (d / f"trace_{r}_17.json.gz").write_bytes(gzip.compress(json.dumps(doc).encode()))
    for extra in ((), ("--jobs", "2")):
        assert replay(["analyze", str(d), "--json", "--no-cache", *extra]) == 0
        out, err = capsys.readouterr()
        assert [r["rank"] for r in json.loads(out)["ranks"]] == [0, 1], err
    assert replay(["merge", str(d), "-o", str(tmp_path / "m.json.gz"), "--json", "--no-cache"]) == 0
    assert [r["rank"] for r in json.loads(capsys.readouterr().out)["ranks"]] == [0, 1]
    names = lambda *n: [Path(x) for x in n]  # noqa: E731
    assert varying_number(names("gpu0_iter7.json", "gpu1_iter7.json")) == [0, 1]
    assert varying_number(names("rank0_step5.json", "rank0_step6.json")) is None
    assert varying_number(names("a-TP-0-DP-0-EP-0.trace.json.gz", "a-TP-1-DP-0-EP-1.trace.json.gz")) is None
    assert varying_number(names("trace_3.json", "trace_4.json")) is None          # one number: rank_from_name's
    assert varying_number(names("x_0_1.json", "x_1_2.json")) is None              # two numbers differ
