"""Held-out diagnosis checks on a Hugging Face-style eager MoE decode (bench/capture/capture_hf_decode.py,
one lent GPU), written and committed before the capture was made and before replay ran on it: a GQA model
of another family and shape than the corpus the rules were built on (traces/observed/h200), in three
variants - transformers' expert loop (a sync per expert and per step), the same model with no sync (host
overhead only) and that step as a CUDA graph. Every truth is computed here from the raw JSON with plain
loops, or was measured outside the profiler by the capture script, never by the code under test."""
from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

import pytest

from replay.analyze import analyze

from .helpers import idle_total, kernel_gaps, launch_path_idle, merged, overlap

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "traces" / "observed" / "hf-decode"      # the card it ran on: the truth file's env
TRUTH = HERE / "hf-decode-capture.json"
pytestmark = pytest.mark.skipif(not TRUTH.exists(), reason=f"no capture in {HERE} (bench/capture/capture_hf_decode.py)")
RUNS = json.loads(TRUTH.read_text())["runs"] if TRUTH.exists() else {}
TBO_WORDS = ("two-batch", "micro-batch")
# what a sync in transformers' loop is recorded as: torch.where -> aten::nonzero, generate's stopping
# check -> aten::is_nonzero -> item; the runtime calls inside them
SYNC_CALLS = {"aten::nonzero", "aten::where", "aten::is_nonzero", "aten::item", "aten::_local_scalar_dense",
              "cudaStreamSynchronize", "cudaMemcpyAsync", "cudaDeviceSynchronize"}


@lru_cache(maxsize=None)
def raw(variant: str) -> list[dict]:
    with gzip.open(HERE / RUNS[variant]["file"], "rt") as f:
        return json.load(f)["traceEvents"]


@lru_cache(maxsize=None)
def result(variant: str):
    return analyze(HERE / RUNS[variant]["file"], use_cache=False, progress=False)


def kernels(variant: str) -> list[dict]:
    return sorted((e for e in raw(variant) if e.get("ph") == "X" and e.get("cat") == "kernel"), key=lambda e: e["ts"])


def idle_gaps(variant: str) -> list[list[float]]:
    return kernel_gaps(raw(variant))


def launch_path_truth(variant: str) -> float:
    """Idle in gaps, within a step, whose next kernel was launched only after the GPU went idle: the
    host's, whether it was launching or waiting in a sync (helpers.launch_path_idle)."""
    return launch_path_idle(raw(variant))


def span(variant: str) -> float:
    ks = kernels(variant)
    return max(k["ts"] + k["dur"] for k in ks) - ks[0]["ts"]


@pytest.mark.parametrize("variant", ["hf", "nosync"])
def test_layers_and_steps_from_module_ranges(variant):
    run = RUNS[variant]
    a = result(variant)
    per = a.layers.groupby("step")["layer"].nunique().to_dict()
    assert len(per) == run["steps"] and set(per.values()) == {run["layers_per_step"]}, (a.structure, per)


@pytest.mark.parametrize("variant", ["graph", "compiled"])
def test_no_ranges_make_no_layers_up(variant):
    """No ranges: layers from the kernel sequence (4 per step), or none with a reason; never another count."""
    if variant not in RUNS:
        pytest.skip(f"the {variant} capture failed: {RUNS.get(variant + '_error')}")
    a = result(variant)
    if len(a.layers):
        per = a.layers.groupby("step")["layer"].nunique().to_dict()
        assert len(per) == RUNS[variant]["steps"] and set(per.values()) == {4}, (a.structure, per)
    else:
        assert a.structure.startswith("none ("), a.structure


def test_no_sync_eager_decode_is_the_launch_path():
    """No sync inside the step: the idle is the host's launch path, told from blocking waits; the advice
    is CUDA graphs, never two-batch overlap."""
    a = result("nosync")
    idle = idle_total(a)
    assert idle == pytest.approx(sum(b - x for x, b in idle_gaps("nosync")), rel=1e-6)
    t = a.idle_totals[0]
    assert t["cpu_blocked_launch"] <= 0.1 * idle
    assert t["launch_bound"] == pytest.approx(launch_path_truth("nosync"), rel=0.10)
    assert t["launch_bound"] >= 0.7 * idle
    msgs = [f["message"] for f in a.findings]
    assert not any(w in m for m in msgs for w in TBO_WORDS)
    assert any("CUDA graphs" in f["message"] for f in a.findings if f["kind"] == "launch_bound")


def test_no_sync_idle_share_is_at_least_the_unprofiled_host_overhead():
    """Measured outside the profiler: 1 - graph step / eager step is the share of an eager step the GPU
    idles for the host alone. Profiling only adds host time, so the profiled idle share is at least that
    (less 5 points for the timing noise of 20 steps)."""
    a = result("nosync")
    share = idle_total(a) / span("nosync")
    assert share >= RUNS["nosync"]["host_idle_share_unprofiled"] - 0.05, share


def test_compiled_idle_is_told_by_the_launch_path_rule():
    """torch.compile's default mode (Inductor's wrapper launches Triton kernels, no CUDA graphs): no sync,
    so no blocked idle, and the launch-bound idle is the gap-by-gap truth."""
    if "compiled" not in RUNS:
        pytest.skip(f"the compiled capture failed: {RUNS.get('compiled_error')}")
    a = result("compiled")
    idle = idle_total(a)
    t = a.idle_totals[0]
    assert t["cpu_blocked_launch"] <= 0.1 * max(idle, 1.0)
    assert t["launch_bound"] == pytest.approx(launch_path_truth("compiled"), rel=0.10, abs=50.0)
    assert not any(w in f["message"] for f in a.findings for w in TBO_WORDS)


def test_graph_replay_is_not_launch_bound():
    a = result("graph")
    assert a.idle_totals[0]["launch_bound"] <= 500.0
    assert a.idle_totals[0]["cpu_blocked_launch"] <= 0.1 * max(idle_total(a), 1.0)


def _sync_spans(names: tuple[str, ...]) -> list[list[float]]:
    return merged((e["ts"], e["ts"] + e["dur"]) for e in raw("hf") if e.get("ph") == "X" and e.get("name") in names)


SYNC_OPS = ("aten::nonzero", "aten::is_nonzero", "aten::item", "aten::_local_scalar_dense")


def test_transformers_loop_names_its_syncs_and_accounts_for_the_host():
    """A sync per expert (torch.where) and per step (the stopping check): the waits are named by the op (or
    the runtime call inside it), never by the module or step range around it; with the launch path, the
    blocked idle makes up the host's idle (the gap-by-gap truth)."""
    run = RUNS["hf"]
    nonzero = [e for e in raw("hf") if e.get("ph") == "X" and e.get("name") == "aten::nonzero"]
    assert len(nonzero) == 16 * run["layers_per_step"] * run["steps"]      # the capture did what it says
    a = result("hf")
    calls = {f["blocking_call"] for f in a.findings if f["blocked_by"] == "sync"}
    assert calls and calls <= SYNC_CALLS, calls
    t = a.idle_totals[0]
    assert t["launch_bound"] + t["cpu_blocked_launch"] == pytest.approx(launch_path_truth("hf"), rel=0.10)
    assert not any(w in f["message"] for f in a.findings for w in TBO_WORDS)


@pytest.mark.xfail(strict=True, reason=(
    "held-out miss, kept visible: the truth pinned before the capture counted all idle inside the sync ops "
    "(10,599 us); replay's blocked/sync is 2,860 us. Seen after: all 128 aten::nonzero calls start on an "
    "already idle GPU (the CPU is the bottleneck: 126 ms of 136 ms idle is the launch path's), each spends "
    "~86 us in host work and ~6 us waiting in cudaStreamSynchronize; the idle before the wait (5.3 ms) is the "
    "op's own host work, which the GPU would sit through with or without the sync. The pinned definition was "
    "the wrong truth for a host-bound step; the bounds test below is written after seeing this"))
def test_transformers_loop_blocked_idle_is_the_idle_inside_its_sync_ops():
    """As pinned before the capture: the idle while the CPU sat in a sync op is cpu_blocked_launch / sync."""
    a = result("hf")
    truth = overlap(merged(idle_gaps("hf")), _sync_spans(SYNC_OPS))
    assert a.idle_groups[0]["cpu_blocked_launch"]["sync"] == pytest.approx(truth, rel=0.10)


def test_transformers_loop_blocked_idle_lies_between_the_waits_and_the_sync_ops():
    """Written after the miss above (not held out): blocked/sync holds at least the idle while the CPU sat in
    the waiting runtime call itself, and at most the idle inside the ops that wait."""
    a = result("hf")
    gaps = merged(idle_gaps("hf"))
    waits = overlap(gaps, _sync_spans(("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")))
    got = a.idle_groups[0]["cpu_blocked_launch"]["sync"]
    assert waits > 0 and waits <= got <= overlap(gaps, _sync_spans(SYNC_OPS)), (waits, got)


def test_whatif_with_no_change_reproduces_the_decode_or_refuses():
    """Issue 27's bar on captures it never saw: with no change, span within 5 % and hidden share within
    2 points; the variants without ranges may instead be refused in one line (no stage to re-time)."""
    from bench.whatif_fidelity import HF_DECODE_MAY_REFUSE, HF_DECODE_REFUSAL, HIDDEN_BAR_PTS, SPAN_BAR_PCT, hf_decode_rows
    rows = hf_decode_rows()
    assert {r["capture"] for r in rows} >= {"hf-decode/hf", "hf-decode/nosync"}
    for r in rows:
        if "refused" in r:
            assert r["capture"] in HF_DECODE_MAY_REFUSE and HF_DECODE_REFUSAL in r["refused"], r
        else:
            assert abs(r["span_error_pct"]) <= SPAN_BAR_PCT and abs(r["hidden_error_pts"]) <= HIDDEN_BAR_PTS, r


def test_a_long_op_in_every_step_is_not_called_first_call_work():
    """Written after seeing this capture (not held out): transformers' loop grows the KV cache by
    concatenation, so SDPA's cuDNN backend plans again for each new length - ~38 ms of host work in layer
    0's attention in each profiled step. A long op that recurs in 2 or more steps is named as such, with
    advice on shapes, not first-call warm-up; a long op in no step (rules-h100/first-call) keeps the
    first-call advice."""
    a = result("hf")
    longs = [f for f in a.findings if f["blocked_by"] == "long_op"]
    assert {f["step"] for f in longs} == {1, 2} and {f["stage"] for f in longs} == {"ATTN"}
    for f in longs:
        assert "each of 2 profiled steps" in f["message"] and "first-call work (" not in f["message"], f["message"]
    top = a.top_findings(1)            # a listed subset says what the whole table says
    assert top[0]["blocked_by"] == "long_op" and "each of 2 profiled steps" in top[0]["message"]
    once = analyze(ROOT / "traces" / "observed" / "rules-h100" / "first-call.json.gz", use_cache=False, progress=False)
    msg = next(f["message"] for f in once.findings if f["blocked_by"] == "long_op")
    assert "first-call work (" in msg and "profiled steps" not in msg


def test_graph_advice_on_a_step_with_syncs_says_remove_them_first():
    """Written after seeing this capture (not held out): its host overhead drew "CUDA graphs" advice, but
    a step that waits in torch.where cannot be captured as a graph. Where a rank's steps block in host
    syncs, the launch-path advice names the costliest one and says to remove the syncs first; where they
    block in none (the nosync variant), the advice is as before."""
    a = result("hf")
    msgs = [f["message"] for f in a.findings if f["blocked_by"] == "host_overhead"]
    assert msgs and all("first remove the host syncs" in m and "aten::nonzero" in m for m in msgs)
    listed = [f for f in a.top_findings(4) if f["blocked_by"] == "host_overhead"]    # no sync finding among them
    assert listed and all("first remove the host syncs" in f["message"] for f in listed)
    b = result("nosync")
    assert not any("host syncs" in f["message"] for f in b.findings)
    assert any("CUDA graphs" in f["message"] for f in b.findings if f["blocked_by"] == "host_overhead")


def test_every_recording_option_changes_nothing_the_diagnosis_reads():
    """Pinned before its capture: the nosync step profiled with record_shapes, profile_memory (memory
    instant events), with_flops, with_stack and with_modules - the options users turn on - reads as the
    plain one does: 2 steps x 4 layers, no suspicious input but the missing communication, the launch
    path by the gap-by-gap rule, no blocked idle."""
    if "full" not in RUNS:
        pytest.skip("no hf-decode-full capture")
    a = result("full")
    per = a.layers.groupby("step")["layer"].nunique().to_dict()
    assert len(per) == RUNS["full"]["steps"] and set(per.values()) == {RUNS["full"]["layers_per_step"]}, per
    assert {s["what"] for s in a.suspicious} <= {"no_communication"}, a.suspicious
    t = a.idle_totals[0]
    assert t["cpu_blocked_launch"] <= 0.1 * idle_total(a)
    assert t["launch_bound"] == pytest.approx(launch_path_truth("full"), rel=0.10)


def test_a_change_with_nothing_to_change_is_refused(tmp_path, capsys):
    """Written after seeing it (not held out): `replay whatif --launch-order proper` on these layers, which
    label no communication stage, printed a re-time "with launch_order=proper" equal to the observed order
    (exit 0), as if the order changed nothing; --comm / --comm-scale the same. Each is refused in one line,
    with no output file; and a re-time assumes no all-to-all backend where there is none."""
    from replay.cli import main
    out = tmp_path / "w.json.gz"
    for flags, needle in ((["--launch-order", "proper"], "nothing to reorder"), (["--comm-scale", "0.5"], "labels none"),
                          (["--comm", "normal"], "labels none")):
        code = main(["whatif", str(HERE / RUNS["nosync"]["file"]), "-o", str(out), "--no-cache", *flags])
        assert code == 2 and not out.exists()
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    # what it assumes says no backend, not an all-to-all it never saw
    assert main(["whatif", str(HERE / RUNS["nosync"]["file"]), "-o", str(out), "--no-cache"]) == 0
    said = capsys.readouterr().out
    assert "no all-to-all backend assumed" in said and "ibgda" not in said


def _side_stream_of_compute_is_compute():
    """Pinned before its capture: the shared expert on a side stream beside the routed experts (SGLang's
    alt_stream). Both streams compute (no communication role); compute busy is the union of every kernel;
    idle the gaps of that union, told by the same launch-path rule; 2 steps x 4 layers."""
    a = result("altstream")
    per = a.layers.groupby("step")["layer"].nunique().to_dict()
    assert len(per) == RUNS["altstream"]["steps"] and set(per.values()) == {RUNS["altstream"]["layers_per_step"]}, per
    roles = a.streams.groupby("role")["stream"].nunique().to_dict()
    assert roles.get("compute", 0) >= 2 and not roles.get("comm"), roles
    ks = merged((e["ts"], e["ts"] + e["dur"]) for e in kernels("altstream"))
    assert a.ranks[0]["compute_us"] == pytest.approx(sum(b - x for x, b in ks), rel=1e-3)
    assert idle_total(a) == pytest.approx(sum(b - x for x, b in idle_gaps("altstream")), rel=1e-6)
    t = a.idle_totals[0]
    assert t["cpu_blocked_launch"] <= 0.1 * idle_total(a)
    assert t["launch_bound"] == pytest.approx(launch_path_truth("altstream"), rel=0.10)
    assert {s["what"] for s in a.suspicious} <= {"no_communication"}, a.suspicious


# The side-stream capture was pinned on 2026-12-07 but no GPU could be started to take it
# (capture_hf_decode.py --only altstream): its check runs once the capture is committed, and is no
# test before (a skip would fail CI's strict mode, and there is nothing to check)
if "altstream" in RUNS:
    test_a_side_stream_of_compute_is_compute = _side_stream_of_compute_is_compute

