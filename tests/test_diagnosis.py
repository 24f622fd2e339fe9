"""Diagnosis on real single-GPU captures nobody tuned it to (traces/observed/h200, bench/capture/
capture_h200.py): host overhead is told from blocking waits, the call that waited is named, host work
outside any op is found, and the advice fits the trace. Every truth is computed here from the raw JSON
with plain loops (a sweep over kernels and host spans), never by calling the code under test."""
from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

import pytest

from replay.analyze import analyze
from tracegen.base.contract import UNEXPLAINED

from .helpers import idle_total, kernel_gaps, launch_path_idle, merged, overlap

ROOT = Path(__file__).resolve().parents[1]
H200 = ROOT / "traces" / "observed" / "h200"
# the held-out batch-256 stack was asked of an H200 and ran on the H100 the device tool lent instead
WHERE = {"decode-eager-b256.json.gz": ROOT / "traces" / "observed" / "h100"}
CAPTURE = json.loads((H200 / "capture.json").read_text())
SYNC_NAMES = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "aten::item",
              "aten::_local_scalar_dense")
TBO_WORDS = ("two-batch", "micro-batch")


@lru_cache(maxsize=None)
def raw(name: str) -> dict:
    with gzip.open(WHERE.get(name, H200) / name, "rt") as f:
        return json.load(f)


@lru_cache(maxsize=None)
def result(name: str):
    return analyze(WHERE.get(name, H200) / name, use_cache=False, progress=False)


def run_of(name: str) -> dict:
    return next(r for r in CAPTURE["runs"] if r["file"] == name)


def idle_gaps(name: str) -> list[list[float]]:
    """Compute idle of a single-GPU capture: the gaps between its (merged) kernels."""
    return kernel_gaps(raw(name)["traceEvents"])


def spans(name: str, names: tuple[str, ...]) -> list[list[float]]:
    return merged((e["ts"], e["ts"] + e["dur"]) for e in raw(name)["traceEvents"]
                  if e.get("ph") == "X" and e.get("name") in names)


def messages(a, kind: str | None = None) -> list[str]:
    return [f["message"] for f in a.findings if kind is None or f["kind"] == kind]


@pytest.mark.parametrize("name", ["decode-eager.json.gz", "decode-eager-b256.json.gz"])
def test_eager_decode_is_launch_bound_not_blocked(name):
    """12 eager decode layers: the CPU's per-op host work is slower than the kernels. The truth: the
    idle in gaps whose next kernel was launched only after the GPU went idle (its launch call ended
    inside the gap), outside any sync span, is the launch path's. decode-eager-b256 (batch 256) is held
    out: this test named it before it was captured."""
    a = result(name)
    idle = idle_total(a)
    assert idle == pytest.approx(sum(b - x for x, b in idle_gaps(name)), rel=1e-6)
    t = a.idle_totals[0]
    assert t["cpu_blocked_launch"] <= 0.1 * idle
    assert t["launch_bound"] == pytest.approx(launch_path_idle(raw(name)["traceEvents"]), rel=0.10)
    assert not any(w in m for m in messages(a) for w in TBO_WORDS), "two-batch-overlap advice on a trace without it"
    assert any("CUDA graphs" in m for m in messages(a, "launch_bound"))


@pytest.mark.parametrize("name", ["decode-eager.json.gz", pytest.param(
    "decode-eager-b256.json.gz", marks=pytest.mark.xfail(strict=True, reason=(
        "held-out miss, kept visible: the 70 % share was named before the capture; at batch 256 launch-bound "
        "is 69.9 % of idle (9,598 of 13,734 us; it equals the gap-by-gap truth above), the rest is kernel "
        "switches where the GPU's queue ran ahead of the CPU")))])
def test_eager_decode_idle_is_mostly_the_launch_path(name):
    """Most of an eager decode stack's compute idle is the launch path's (the share test named for both
    batch sizes before batch 256 was captured)."""
    a = result(name)
    assert a.idle_totals[0]["launch_bound"] >= 0.7 * idle_total(a)


@pytest.mark.parametrize("name", ["decode-graph.json.gz", "decode-compiled.json.gz"])
def test_graph_replay_is_not_launch_bound(name):
    """The same stack as one CUDA graph (and through torch.compile's reduce-overhead mode)."""
    a = result(name)
    assert a.idle_totals[0]["launch_bound"] <= 500.0
    assert a.idle_totals[0]["cpu_blocked_launch"] <= 0.1 * idle_total(a)


def test_item_sync_is_blocked_and_named():
    """One .item() per layer: compute idle while the CPU sat in aten::item is cpu_blocked_launch / sync,
    named aten::item (or what it calls), never the step or layer range around it."""
    name = "decode-item.json.gz"
    a = result(name)
    truth = overlap(merged(idle_gaps(name)), spans(name, ("aten::item",)))
    assert len(spans(name, ("aten::item",))) == run_of(name)["syncs_per_step"] * (run_of(name)["profiled_steps"])
    got = a.idle_groups[0]["cpu_blocked_launch"]["sync"]
    assert got == pytest.approx(truth, rel=0.10)
    calls = {f["blocking_call"] for f in a.findings if f["blocked_by"] == "sync"}
    assert calls and calls <= {"aten::item", "aten::_local_scalar_dense", "cudaStreamSynchronize"}, calls
    enclosing = {"decode_step"} | {f"ProfilerStep#{i}" for i in range(10)}
    assert not {f["blocking_call"] for f in a.findings if f["blocking_call"]} & enclosing


def test_host_pause_outside_ops_is_found():
    """~2 ms of Python between layers, outside any op: the compute idle inside the recorded pauses
    (host clock -> trace clock through baseTimeNanoseconds) is host work outside ops, and the finding
    names the ops before and after it."""
    name = "prefill-pause.json.gz"
    a = result(name)
    base_us = raw(name)["baseTimeNanoseconds"] / 1e3
    pauses = merged((s / 1e3 - base_us, e / 1e3 - base_us) for s, e in run_of(name)["pauses_epoch_ns"])
    assert len(pauses) == run_of(name)["pauses_per_step"] * run_of(name)["profiled_steps"]
    truth = overlap(merged(idle_gaps(name)), pauses)
    assert truth > 0.3 * idle_total(a)
    assert a.idle_groups[0]["cpu_blocked_launch"]["host"] == pytest.approx(truth, rel=0.10)
    host = [f for f in a.findings if f["blocked_by"] == "host"]
    assert host and all(f["blocking_call"].startswith("host work outside ops after aten::") and ", before aten::"
                        in f["blocking_call"] for f in host[:5])
    assert not any(w in m for m in messages(a) for w in TBO_WORDS)


@pytest.mark.parametrize("name", sorted(p.name for p in H200.glob("*.json.gz")))
def test_h200_captures_have_little_unexplained(name):
    a = result(name)
    assert a.idle_totals[0][UNEXPLAINED] < 0.10 * idle_total(a), a.idle_groups[0]


def test_causes_add_up_to_idle_by_group():
    """Each cause's total is the sum of its groups, and every cause and group comes from the contract."""
    a = result("decode-item.json.gz")
    for cause, groups in a.idle_groups[0].items():
        assert a.idle_totals[0][cause] == pytest.approx(sum(groups.values()))


# ----------------------------------------------------------------------------- across ranks
DEEPEP = ROOT / "traces" / "observed" / "deepep-h100x4"


def _renamed(src: Path, dst: Path, rename) -> Path:
    """A copy of a folder of rank files with every event name passed through `rename` (None: dropped)."""
    dst.mkdir()
    for f in sorted(src.glob("rank*.json.gz")):
        data = json.loads(gzip.decompress(f.read_bytes()))
        out = []
        for e in data["traceEvents"]:
            name = rename(e.get("name", "")) if isinstance(e.get("name"), str) else e.get("name")
            if name is not None:
                out.append({**e, "name": name})
        data["traceEvents"] = out
        (dst / f.name).write_bytes(gzip.compress(json.dumps(data).encode()))
    return dst


@pytest.mark.parametrize("step_name", ["forward_step", None])
def test_late_start_is_named_without_any_flag(tmp_path, step_name):
    """Rank 3 sleeps 30 ms before every step: its peers' first collective of each step waits for it.
    With the steps in a `forward_step` range (no ProfilerStep), or in no range at all (steps from the
    layer sequence), the reason is still "started its step late", with no --step-regex."""
    import re
    folder = _renamed(DEEPEP / "prefill-late", tmp_path / "late",
                      lambda n: (step_name if step_name else None) if re.match(r"ProfilerStep#\d+$", n) else n)
    a = analyze(folder, use_cache=False, progress=False)
    top = a.peers.stragglers[0]
    assert top["rank"] == 3 and top["reason"].startswith("started its step late"), a.peers.stragglers
    assert len({s for s in a.steps["step"]}) >= 2


def test_load_imbalance_only_with_more_compute():
    """prefill-skew routes ~3x the expert rows to rank 2: it is the straggler for computing longer; on
    the balanced proper run no rank's lateness is put down to more compute unless it computed more."""
    a = analyze(DEEPEP / "prefill-skew", use_cache=False, progress=False)
    assert a.peers.stragglers[0]["rank"] == 2
    assert a.peers.stragglers[0]["reason"].startswith("longer compute")


def test_a_folder_mixing_two_runs_is_refused(tmp_path, capsys):
    from replay.cli import main as replay_main
    d = tmp_path / "mixed"
    d.mkdir()
    for r in (0, 1):
        (d / f"rank{r}.json.gz").write_bytes((DEEPEP / "prefill-proper" / f"rank{r}.json.gz").read_bytes())
    for r in (2, 3):
        (d / f"rank{r}.json.gz").write_bytes((DEEPEP / "decode-proper" / f"rank{r}.json.gz").read_bytes())
    assert replay_main(["analyze", str(d), "--no-cache"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different runs" in err[0] and "--allow-mixed" in err[0]
    assert replay_main(["analyze", str(d), "--no-cache", "--allow-mixed", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert any("different runs" in s["message"] for s in out["suspicious_input"])


def test_imbalance_round_trip(tmp_path):
    """tracegen schedules 8 ranks with unequal expert loads: every collective ends when the last rank
    has joined, so the others wait for it. replay gives back the peer waits tracegen booked (per rank,
    within 5 %) and names the most loaded rank as the first straggler, for computing longer."""
    from tracegen.cli import main as tracegen_main
    out = tmp_path / "skew.json.gz"
    assert tracegen_main(["trace", "--ranks", "8", "--imbalance", "1.3", "--layers", "4", "-o", str(out)]) == 0
    with gzip.open(out, "rt") as f:
        meta = json.load(f)["otherData"]
    a = analyze(out, use_cache=False, progress=False)
    booked = [r["waiting_on_peer"] for r in meta["idle_us"]]
    assert sum(booked) > 0
    for r, want in enumerate(booked):
        assert a.idle_totals[r]["waiting_on_peer"] == pytest.approx(want, rel=0.05, abs=1.0)
    heavy = max(range(8), key=lambda r: meta["load_factors"][r])
    assert a.peers.stragglers[0]["rank"] == heavy
    assert a.peers.stragglers[0]["reason"].startswith("longer compute")


def test_every_cause_and_group_has_advice_and_the_doc_is_current():
    from replay.advice import load
    from tests.contract_doc import DIAGNOSIS, render_diagnosis
    from tracegen.base.contract import IDLE_GROUPS
    rows = load()
    for cause, groups in IDLE_GROUPS.items():
        for g in groups:
            assert any(r.cause == cause and r.group == g and r.when == "always" for r in rows), (cause, g)
    current = DIAGNOSIS.read_text()
    assert current == render_diagnosis(current), "docs/diagnosis.md is stale: run `make docs`"


REAL = sorted([*(p for p in DEEPEP.iterdir() if p.is_dir()), ROOT / "traces" / "observed" / "h200x2-nccl",
               ROOT / "traces" / "observed" / "h100" / "layers-proper.json.gz",
               ROOT / "traces" / "observed" / "h100" / "layers-improper.json.gz",
               ROOT / "traces" / "observed" / "h200" / "layers-proper.json.gz",
               ROOT / "traces" / "observed" / "h200" / "layers-improper.json.gz"])


@pytest.mark.parametrize("path", REAL, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_real_traces_have_little_unexplained(path):
    # the single-GPU layers (H100, and H200 re-captured) read their copy stand-ins as the all-to-all
    tax = str(ROOT / "traces" / "observed" / "h100" / "taxonomy.toml") if path.name.startswith("layers-") else None
    a = analyze(path, use_cache=False, progress=False, taxonomy=tax)
    idle = sum(sum(t.values()) for t in a.idle_totals.values())
    assert sum(t[UNEXPLAINED] for t in a.idle_totals.values()) < 0.10 * idle


def test_train_json_has_little_unexplained(train_json):
    a = analyze(train_json, use_cache=False, progress=False)
    idle = sum(sum(t.values()) for t in a.idle_totals.values())
    assert sum(t[UNEXPLAINED] for t in a.idle_totals.values()) < 0.10 * idle
    assert not any("two-batch" in f["message"] for f in a.findings), "TBO advice on a training trace"


def test_headline_blocked_orders_the_launch_orders():
    """Without any filter, cpu_blocked_launch ranks the DeepEP launch orders the way they behave:
    improper (the CPU waits inside dispatch before the other micro-batch's compute is queued) over
    proper over num_worst_tokens (no wait at all)."""
    blocked = {run: sum(t["cpu_blocked_launch"] for t in analyze(DEEPEP / run, use_cache=False,
                                                                 progress=False).idle_totals.values())
               for run in ("prefill-improper", "prefill-proper", "prefill-nosync")}
    assert blocked["prefill-improper"] > 2 * blocked["prefill-proper"] > 0 or blocked["prefill-proper"] == 0
    assert blocked["prefill-improper"] > blocked["prefill-proper"] >= blocked["prefill-nosync"]
    assert blocked["prefill-nosync"] < 0.05 * blocked["prefill-improper"]


def test_peer_of_picks_the_longest_overlapping_wait_as_a_loop_would():
    """findings._peer_of, vectorised, against the plain loop it replaced: for each window the peer of the
    wait overlapping it longest (the first on ties), -1 where none."""
    import numpy as np
    from replay.findings import _peer_of

    def loop(a, b, p0, p1, pp):
        out = np.full(len(a), -1, dtype=np.int64)
        for i in range(len(a)):
            lo, hi = np.searchsorted(p1, a[i], side="right"), np.searchsorted(p0, b[i], side="left")
            if hi > lo:
                ov = np.minimum(p1[lo:hi], b[i]) - np.maximum(p0[lo:hi], a[i])
                out[i] = int(pp[lo + int(np.argmax(ov))])
        return out
    rng = np.random.default_rng(7)
    for _ in range(200):
        k = int(rng.integers(0, 25))
        edges = np.sort(rng.choice(np.arange(0, 1000, 0.5), size=2 * k, replace=False))
        p0, p1, pp = edges[0::2], edges[1::2], rng.integers(0, 8, size=k)
        m = int(rng.integers(0, 30))
        a = rng.uniform(0, 1000, m)
        b = a + rng.choice([0.0, 5.0, 60.0, 300.0], size=m)
        assert (loop(a, b, p0, p1, pp) == _peer_of(a, b, p0, p1, pp)).all()


@pytest.mark.parametrize("call,when", [("c10d::alltoall_base_", "collective"), ("record_param_comms", "collective"),
                                       ("nccl:all_to_all", "collective"), ("aten::mm", "always"),
                                       ("aten::copy_", "always"), ("", "always")])
def test_host_overhead_advice_depends_on_the_call(call, when):
    from replay.advice import pick
    assert pick("launch_bound", "host_overhead", True, 1, call=call).when == when


def test_a_collectives_host_path_gets_its_own_advice():
    """The NCCL all-to-all script's one-GPU smoke run (traces/observed/nccl-a2a/smoke-ep1/sync): each
    all_to_all_single spends ~200 us of host time in c10d::alltoall_base_ (record_param_comms around the NCCL
    group calls) while the GPU waits. Such a finding says so and advises fewer, larger collectives or a library
    without a host enqueue, not only "CUDA graphs"; a finding in an aten op keeps the general advice. The
    op's host time is checked in the raw file: no sync call inside it, so this is host work, not a wait."""
    path = ROOT / "traces" / "observed" / "nccl-a2a" / "smoke-ep1" / "sync"
    raw = json.loads(gzip.open(path / "rank0.json.gz").read())["traceEvents"]
    ops = [e for e in raw if e.get("ph") == "X" and e.get("name") == "c10d::alltoall_base_"]
    assert ops and max(e["dur"] for e in ops) > 100
    for op in ops:
        inside = [e["name"] for e in raw if e.get("cat") == "cuda_runtime" and e.get("tid") == op["tid"]
                  and op["ts"] <= e["ts"] <= op["ts"] + op["dur"]]
        assert not any("Synchronize" in n for n in inside), inside
    a = analyze(path, use_cache=False)
    host = [f for f in a.findings if f["kind"] == "launch_bound" and f["blocked_by"] == "host_overhead"]
    coll = [f for f in host if "c10d::" in f["message"].split(" when ")[0]]
    assert coll and all("a collective's host path" in f["message"] and "fewer, larger collectives" in f["message"]
                        for f in coll)
    other = [f for f in host if "(aten::" in f["message"].split(" when ")[0]]
    assert other and not any("collective" in f["message"] for f in other)


def _freeing(path: Path, call: str) -> Path:
    """Two steps of 40 short GEMMs; halfway through each, the launching thread sits ~1 ms in `call` inside
    aten::empty (the caching allocator freeing its cache and retrying an allocation) while the GPU drains and idles."""
    ev = [{"ph": "M", "name": "thread_name", "pid": 0, "tid": 7, "args": {"name": "stream 7"}}]
    t, c = 1000.0, 100

    def launch() -> None:
        nonlocal t, c
        ev.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 11, "tid": 11, "ts": t,
                   "dur": 4, "args": {"correlation": c}})
        ev.append({"ph": "X", "cat": "kernel", "name": "sm90_xmma_gemm_bf16", "pid": 0, "tid": 7, "ts": t + 6,
                   "dur": 30, "args": {"correlation": c, "stream": 7, "device": 0}})
        t, c = t + 10, c + 1
    for step in range(2):
        ev.append({"ph": "X", "cat": "user_annotation", "name": f"ProfilerStep#{step}", "pid": 11, "tid": 11,
                   "ts": t - 1, "dur": 2200})
        for _ in range(20):
            launch()
        ev.append({"ph": "X", "cat": "cpu_op", "name": "aten::empty", "pid": 11, "tid": 11, "ts": t, "dur": 1000})
        ev.append({"ph": "X", "cat": "cuda_runtime", "name": call, "pid": 11, "tid": 11, "ts": t + 5, "dur": 980})
        t += 1005
        for _ in range(20):
            launch()
        t += 200
    path.write_text(json.dumps({"traceEvents": ev}))
    return path


@pytest.mark.parametrize("call,allocator", [("cudaFree", True), ("hipFree", True), ("cudaMalloc", True),
                                            ("cudaGetDeviceProperties", False)])
def test_a_runtime_call_that_held_the_launch_path_is_named(tmp_path, call, allocator):
    """Host overhead spent mostly in one runtime call is named after its op, `aten::empty (in cudaFree)`; a device
    free gets the allocator's advice (a free lets the GPU drain, then runs while it idles), not CUDA graphs. Before,
    the finding named aten::empty and advised CUDA graphs. The cause and its total do not change: naming only."""
    a = analyze(_freeing(tmp_path / "free.json", call), use_cache=False)
    top = a.top_findings(2)
    assert all(f["kind"] == "launch_bound" and f["blocked_by"] == "host_overhead" for f in top), top
    assert all(f"aten::empty (in {call})" in f["message"] for f in top), top[0]["message"]
    assert all(("caching allocator" in f["message"]) == allocator for f in top)
    assert all(("CUDA graphs" in f["message"]) != allocator for f in top)
    assert a.idle_groups[0]["launch_bound"]["host_overhead"] > 2 * 950


def test_the_sweeps_frees_are_named_with_the_allocators_advice():
    """traces/observed/h100/sweep: the launching thread sat 237 ms in cudaFree (905 calls, outside any op) while the
    GPU idled (checked in the raw file here). The host-overhead findings held mostly by one name it, with the
    allocator's advice; the idle stays launch_bound / host_overhead."""
    path = ROOT / "traces" / "observed" / "h100" / "sweep.json.gz"
    ev = json.loads(gzip.open(path).read())["traceEvents"]
    frees = [(e["ts"], e["ts"] + e["dur"]) for e in ev if e.get("name") == "cudaFree"]
    busy = merged([[e["ts"], e["ts"] + e["dur"]] for e in ev if e.get("cat") == "kernel"])
    held = sum(b - a for a, b in frees)
    assert held > 200e3 and overlap(merged([list(f) for f in frees]), busy) < 0.01 * held
    a = analyze(path, use_cache=False)
    ft = a.finding_table
    named = ft[ft["call"].astype(str) == "cudaFree"]
    assert set(named["group"]) == {"host_overhead"} and named["lost_us"].sum() > 0.4 * held
    msgs = [f["message"] for f in a.findings if f["blocked_by"] == "host_overhead" and "sat in cudaFree" in f["message"]]
    assert msgs and all("caching allocator" in m for m in msgs)
    grown = [f["message"] for f in a.findings if f["blocked_by"] == "host_overhead" and "(in cudaMalloc)" in f["message"]]
    assert grown and all("new memory" in m and "CUDA graphs" not in m for m in grown)
