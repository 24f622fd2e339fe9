"""The fuzz campaign (issue 14): generated and mutated inputs against the loader, `analyze` and
tracegen, with the invariants every answer must keep. Each target either answers (and its answer
keeps the invariants) or raises UserError (one line, exit 2 at the CLI); anything else - a
traceback, a broken invariant - is a failure.

- loader: Kineto-shaped traces built by hypothesis (well-formed layers of kernels, launches and
  annotations, then mutated: truncation, type swaps, extreme and non-finite numbers, missing
  fields, reordered events, duplicate ids, unicode, gzip, garbage) -> replay.events.load_file
- analyze: the same traces when they load -> replay.analyze; invariants: busy <= span, overlap <=
  min(compute, comm), exposed >= 0, idle causes sum to the compute idle time, hidden in [0, 100]
- commands: real committed traces (traces/), mutated whole (fields of the wrong type, one clock for
  every event, device names that are not text, a category of events dropped) -> replay whatif, diff,
  stagegraph, merge and compare through the CLI: an answer, or one error line, exit 2 and no output file
- roundtrip: random valid plans -> tracegen's schedule -> its trace -> replay.analyze: the analysis gives back
  the schedule (span, busy, overlap, each idle cause, per layer) within 1 us
- agree: random plans as flags -> `tracegen estimate` and `tracegen trace`: both refuse or both answer, with
  the same step (within 0.5 %) and assumptions
- tracegen: random plans (flags as a user might type them, extremes included) -> resolve, estimate
  (every op time finite and >= 0), a small schedule (invariants as above, slices nest on every
  track, every flow pairs) and its .pftrace (balanced per track)

The suite runs each with a small fixed budget (tests/test_fuzz.py); `make fuzz` runs the campaign:
python -m tests.fuzz [--loader N] [--analyze N] [--commands N] [--tracegen N] [--roundtrip N] [--agree N]
(default 35,000 / 10,000 / 2,000 / 60,000 / 2,000 / 500)."""
from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hseed
from hypothesis import strategies as st

from tracegen.base.errors import UserError
from tracegen.target import Target

# ----------------------------------------------------------------------------- trace inputs
KERNELS = ["sm90_xmma_gemm_e4m3bf16_f32_tn_n_tilesize128x128", "deep_gemm::fp8_gemm_kernel<grouped>",
           "flash_fwd_kernel", "deep_ep::intranode::dispatch<8>", "deep_ep::intranode::combine<8>",
           "deep_ep::intranode::notify_dispatch", "ncclDevKernel_AllReduce_Sum_bf16_RING_LL",
           "void at::native::vectorized_elementwise_kernel<4>", "rms_norm_kernel", "名前カーネル", ""]
ANNOTATIONS = ["L{l}:ATTN({m})", "L{l}:DISPATCH({m})", "L{l}:MLP({m})", "L{l}:COMBINE({m})", "attn(F)",
               "dispatch(B)", "op=gemm name=x M=4 N=8 K=8 flops=512 bytes=64 dtype=fp8", "ProfilerStep#3"]
WEIRD: list[Any] = [None, "", "abc", -1, 0, 1, -1e300, 1e300, 2 ** 70, -(2 ** 70), True, [], {}, [1, 2], {"a": 1},
                    "名前\u0000", 1e-300, -0.0, float("nan"), float("inf"), float("-inf"), "12", "1e3", 3.5]


@st.composite
def kineto(draw: Any) -> dict[str, Any]:
    """A plausible one- or two-rank profiler trace: per layer and micro-batch, an annotation, launch
    calls and the kernels they launched (compute on one stream, all-to-all on another)."""
    layers = draw(st.integers(1, 4))
    mbs = draw(st.integers(1, 2))
    ranks = draw(st.integers(1, 2))
    ev: list[dict[str, Any]] = []
    corr = 0
    for r in range(ranks):
        t = draw(st.floats(0, 1e6)) + 1.7e15 * draw(st.booleans())
        for lay in range(layers):
            for m in range(mbs):
                for stage in ("ATTN", "DISPATCH", "MLP", "COMBINE"):
                    n = draw(st.integers(1, 3))
                    ann_start = t
                    for _ in range(n):
                        corr += 1
                        launch = draw(st.floats(1, 20))
                        comm = stage in ("DISPATCH", "COMBINE")
                        name = draw(st.sampled_from(KERNELS[3:6] if comm else KERNELS[:3] + KERNELS[7:]))
                        dur = draw(st.floats(0.5, 500))
                        gap = draw(st.floats(-5, 200))       # negative: overlapping on purpose
                        ev.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": r,
                                   "tid": 1, "ts": t, "dur": launch, "args": {"correlation": corr}})
                        ev.append({"ph": "X", "cat": "kernel", "name": name, "pid": r, "tid": 27 if comm else 7,
                                   "ts": t + launch + max(gap, 0), "dur": dur,
                                   "args": {"correlation": corr, "stream": 27 if comm else 7}})
                        ev.append({"ph": "s", "cat": "ac2g", "id": corr, "pid": r, "tid": 1, "ts": t})
                        t += launch + max(gap, 0) + (dur if draw(st.booleans()) else 0)
                    label = draw(st.sampled_from(ANNOTATIONS)).format(l=lay, m=m).replace("ATTN", stage)
                    ev.append({"ph": "X", "cat": "user_annotation", "name": label, "pid": r, "tid": 1,
                               "ts": ann_start, "dur": max(t - ann_start, 0.1)})
        if draw(st.booleans()):
            ev.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaDeviceSynchronize", "pid": r, "tid": 1,
                       "ts": t, "dur": draw(st.floats(0, 1000))})
        ev.append({"ph": "M", "name": "thread_name", "pid": r, "tid": 7, "args": {"name": "stream 7"}})
    out: dict[str, Any] = {"traceEvents": ev}
    if draw(st.booleans()):
        out["distributedInfo"] = {"rank": draw(st.sampled_from([0, 1, "x", None]))}
    return out


def _set_path(obj: Any, path: list[Any], value: Any) -> None:
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value


@st.composite
def mutated(draw: Any) -> bytes:
    """A kineto() trace with a few mutations, serialised (possibly gzipped, truncated or garbled)."""
    t = draw(kineto())
    ev = t["traceEvents"]
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["swap", "swap_arg", "drop", "shuffle", "dup_id", "unicode", "extreme", "ph",
                                   "meta", "none"]))
        if not ev:
            break
        i = draw(st.integers(0, len(ev) - 1))
        e = ev[i]
        if op == "swap":
            e[draw(st.sampled_from(["ph", "name", "cat", "pid", "tid", "ts", "dur", "id", "args"]))] = \
                draw(st.sampled_from(WEIRD))
        elif op == "swap_arg" and isinstance(e.get("args"), dict):
            e["args"][draw(st.sampled_from(["correlation", "stream", "layer", "stage", "kind", "flops", "rank",
                                            "name", "kernels", "blocking"]))] = draw(st.sampled_from(WEIRD))
        elif op == "drop" and e:
            e.pop(draw(st.sampled_from(sorted(e))), None)
        elif op == "shuffle":
            random.Random(draw(st.integers(0, 2 ** 16))).shuffle(ev)
        elif op == "dup_id":
            if not isinstance(e.get("args"), dict):
                e["args"] = {}
            e["args"]["correlation"] = 1
        elif op == "unicode":
            e["name"] = draw(st.text(max_size=12))
        elif op == "extreme":
            e[draw(st.sampled_from(["ts", "dur"]))] = draw(st.sampled_from([1e300, -1e9, -0.5, 0.0, 2 ** 62,
                                                                              1e16, 86_400e6 + 1]))
        elif op == "ph":
            e["ph"] = draw(st.sampled_from(["B", "E", "i", "C", "f", "t", "M", "", "XX"]))
        elif op == "meta":
            t["otherData"] = draw(st.sampled_from([{"generator": "tracegen 0.1"}, {"generator": 3},
                                                   {"generator": "tracegen", "format_version": 99}, "x"]))
    form = draw(st.sampled_from(["object", "object", "object", "array", "nan", "garbage"]))
    if form == "array":
        raw = json.dumps(ev).encode()
    elif form == "nan":
        raw = json.dumps(t, allow_nan=True).encode()
    elif form == "garbage":
        raw = draw(st.binary(max_size=200))
    else:
        raw = json.dumps(t, allow_nan=False, default=str).encode() if _finite(t) else json.dumps(t).encode()
    cut = draw(st.sampled_from(["whole", "whole", "whole", "truncate", "gzip", "gzip_truncated"]))
    if cut == "truncate" and raw:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif cut == "gzip":
        raw = gzip.compress(raw, mtime=0)
    elif cut == "gzip_truncated":
        z = gzip.compress(raw, mtime=0)
        raw = z[: draw(st.integers(0, len(z) - 1))]
    return raw


def _finite(x: Any) -> bool:
    if isinstance(x, float):
        return math.isfinite(x)
    if isinstance(x, dict):
        return all(_finite(v) for v in x.values())
    if isinstance(x, list):
        return all(_finite(v) for v in x)
    return True


# ----------------------------------------------------------------------------- oracles
class Violation(AssertionError):
    """An answer that breaks an invariant."""


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise Violation(what)


def check_trace(trace: Any) -> None:
    ev = trace.events
    _check(len(ev) > 0, "a loaded trace without events")
    _check(bool((ev["dur_us"] >= 0).all()), "a negative duration in the table")
    _check(bool(ev["start_us"].map(math.isfinite).all()), "a non-finite start in the table")


def check_analysis(a: Any) -> None:
    tol = 1e-6
    for r in a.ranks:
        span = r["span_us"]
        _check(r["compute_us"] <= span * (1 + tol) + tol and r["comm_us"] <= span * (1 + tol) + tol,
               f"busy time beyond the span on rank {r['rank']}")
        _check(r["overlap_us"] <= min(r["compute_us"], r["comm_us"]) * (1 + tol) + tol, "overlap beyond a side")
        _check(r["exposed_comm_us"] >= -tol and 0 <= r["hidden_comm_pct"] <= 100 + tol, "exposed < 0 or hidden%")
        causes = a.idle_totals.get(r["rank"], {})
        _check(abs(sum(causes.values()) - r["compute_idle_us"]) <= 1e-6 * max(1.0, span) + 1e-3,
               f"idle causes {sum(causes.values())} != compute idle {r['compute_idle_us']} on rank {r['rank']}")
    for _, lay in a.layers.iterrows():
        _check(lay["compute_us"] + lay["exposed_comm_us"] <= lay["span_us"] * (1 + tol) + tol,
               "a layer's compute + exposed communication exceeds its span")
    a.to_dict()


def load_bytes(raw: bytes, tmp: Path) -> Any:
    from replay.events import load_file
    p = tmp / "fuzz.json"
    p.write_bytes(raw)
    return load_file(p, progress=False)


def target_loader(raw: bytes, tmp: Path) -> str:
    try:
        check_trace(load_bytes(raw, tmp))
    except UserError:
        return "refused"
    return "answered"


def target_analyze(raw: bytes, tmp: Path) -> str:
    from replay.analyze import analyze
    try:
        tr = load_bytes(raw, tmp)
        check_analysis(analyze(tmp / "fuzz.json", use_cache=False, trace=tr, progress=False))
    except UserError:
        return "refused"
    return "answered"


# ----------------------------------------------------------------------------- commands on real traces
REAL = Path(__file__).resolve().parents[1] / "traces"
REAL_SOURCES = ["golden/h800-prefill-improper.json.gz", "observed/h200/layers-improper.json.gz",
                "observed/h200/style-slash.json.gz", "observed/rules-h100/gpu-only.json.gz",
                "outside/hta/alexnet_benchmark.json.gz", "outside/hta/mi250_minitoy_train_ROCm6_2_kineto.json.gz",
                "observed/h200x2-nccl"]       # a folder: its rank 0 mutated, rank 1 as captured
_ODD = [None, "x", "", "12", -1, 0, 1e300, -1e18, [], {}, True, 2**70, {"a": 1}]
_FIELDS = ["ts", "dur", "pid", "tid", "ph", "name", "cat", "args", "id"]
_SOURCES: dict[str, dict[str, Any]] = {}


def _source(name: str) -> dict[str, Any]:
    if name not in _SOURCES:
        path = REAL / name
        _SOURCES[name] = json.loads(gzip.open(path / "rank0.json.gz" if path.is_dir() else path).read())
    return json.loads(json.dumps(_SOURCES[name]))          # a copy to mutate


@st.composite
def real_mutated(draw: Any) -> tuple[str, dict[str, Any], list[str]]:
    """A real committed trace with a few whole-trace mutations (the kinds that broke commands past the
    loader: device names of the wrong type, one clock for every event, fields of the wrong type,
    events dropped by category), and the command to run on it."""
    name = draw(st.sampled_from(REAL_SOURCES))
    d = _source(name)
    ev = d["traceEvents"]
    rnd = random.Random(draw(st.integers(0, 2**32)))
    for _ in range(draw(st.integers(1, 2))):
        kind = draw(st.sampled_from(["field", "drop", "same_ts", "device", "category", "shift", "rank"]))
        if kind == "field":
            f, v = draw(st.sampled_from(_FIELDS)), draw(st.sampled_from(_ODD))
            for e in rnd.sample(ev, min(draw(st.integers(1, 8)), len(ev))):
                e[f] = v
        elif kind == "drop":
            f = draw(st.sampled_from(_FIELDS))
            for e in rnd.sample(ev, min(draw(st.integers(1, 20)), len(ev))):
                e.pop(f, None)
        elif kind == "same_ts":
            for e in ev:
                if "ts" in e:
                    e["ts"] = 1000.0
        elif kind == "device":
            d["deviceProperties"] = draw(st.sampled_from([None, "x", [1], [{"name": 5}], [{"name": None}], {}]))
        elif kind == "category":
            cat = draw(st.sampled_from(["kernel", "cuda_runtime", "cpu_op", "user_annotation", "ac2g"]))
            d["traceEvents"] = ev = [e for e in ev if e.get("cat") != cat]
        elif kind == "shift":
            off = draw(st.sampled_from([1e15, -1e6, 1e9]))
            for e in rnd.sample(ev, min(50, len(ev))):
                if isinstance(e.get("ts"), (int, float)):
                    e["ts"] += off
        else:
            d["distributedInfo"] = draw(st.sampled_from([None, "x", {"rank": "a"}, {"rank": -3}, {"rank": 1.5}]))
    cmd = draw(st.sampled_from([["whatif", "{f}", "--launch-order", "proper", "-o", "{o}"], ["whatif", "{f}", "-o", "{o}"],
                                ["diff", "{f}", "{g}"], ["stagegraph", "{f}"], ["merge", "{f}", "-o", "{o}"],
                                ["compare", "{g}", "{f}"]]))
    return name, d, cmd


def target_commands(x: tuple[str, dict[str, Any], list[str]], tmp: Path) -> str:
    """A command on a mutated real trace: it answers, or refuses in one line with exit 2 and writes no
    output file; a traceback, another exit status or a half-written output is a failure."""
    import contextlib
    import io

    from replay.cli import main as replay_main
    name, d, cmd = x
    f, o = tmp / "real.json", tmp / "out.json.gz"
    o.unlink(missing_ok=True)
    if (REAL / name).is_dir():       # the folder, its first rank mutated
        f = tmp / "ranks"
        shutil.rmtree(f, ignore_errors=True)
        f.mkdir()
        for rank in sorted((REAL / name).glob("rank*.json.gz"))[1:]:
            shutil.copy(rank, f / rank.name)
        (f / "rank0.json").write_text(json.dumps(d))
    else:
        f.write_text(json.dumps(d))
    argv = [a.format(f=f, g=REAL / name, o=o) for a in cmd] + (["--no-cache"] if cmd[0] != "merge" else [])
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = replay_main(argv)
    lines = [ln for ln in err.getvalue().splitlines() if "error:" in ln]
    _check(rc in (0, 1, 2), f"exit status {rc}")
    if rc == 2:
        _check(len(lines) == 1, f"refused in {len(lines)} error lines")
        _check(not o.exists(), "an output file written by a refused command")
        return "refused"
    return "answered"


# ----------------------------------------------------------------------------- plans
HARDWARE = ["h800", "h20", "h100", "h200", "b200", "ascend-910c"]
num = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 5000),
                st.sampled_from([0.5, 1.0, 1.3, 2.0, 16.0, 128.0, 1e9]))
small_int = st.one_of(st.none(), st.integers(-2, 600), st.sampled_from([1, 2, 8, 32, 64, 128, 256, 320]))
plans = st.fixed_dictionaries({
    "phase": st.sampled_from(["prefill", "decode"]), "hardware": st.sampled_from(HARDWARE),
    "preset": st.sampled_from(["default", "seed004"]),
}, optional={
    "batch": num, "seq_len": small_int, "kv_hit": num, "tp": small_int, "dp": small_int, "ep": small_int,
    "redundant_experts": small_int, "microbatches": st.sampled_from([None, 1, 2, 3, 0]),
    "comm": st.sampled_from([None, "normal", "ibgda", "cpu-proxy", "ascend-fused", "pcie-copy"]),
    "imbalance": num, "hbm_gbps": num, "scaleout_gbps": num, "launch_us": num,
    "tbo": st.sampled_from(["off", "proper", "improper"]), "ranks": st.sampled_from([1, 2, 3, 0, -1]),
    "layers": st.sampled_from([1, 2, 3, 4, 0, 99, None]),     # None: every layer, the LM head and MTP too
    "mtp": st.sampled_from([None, 0, 1, 2, -1, 9]), "mtp_accept": num, "sched_ms": num,
    "routing": st.sampled_from([None, "model", "uniform", "spread", "nearest"]),
    "comm_release": st.sampled_from([None, "first", "latest", "profile", "v9"]),
})


def check_schedule(sched: Any) -> None:
    from tracegen.pftrace import encode_pftrace
    from tracegen.schedule import summary
    from tracegen.trace import build_events, metadata
    for r in summary(sched):
        span = r["span_us"]
        _check(math.isfinite(span) and span >= 0, "a non-finite span")
        _check(r["compute_us"] <= span + 1e-6 and r["comm_us"] <= span + 1e-6, "busy beyond span")
        _check(r["overlap_us"] <= min(r["compute_us"], r["comm_us"]) + 1e-6, "overlap beyond a side")
        _check(abs(sum(r["idle_us"].values()) - r["compute_idle_us"]) <= 1e-6 * max(1.0, span), "idle causes")
    chrome = build_events(sched, metadata(sched, {}))
    stacks: dict[tuple[Any, Any], list[float]] = {}
    for e in sorted((e for e in chrome["traceEvents"] if e["ph"] == "X"), key=lambda e: (e["pid"], e["tid"], e["ts"])):
        _check(e["dur"] >= 0 and math.isfinite(e["ts"]), "a slice with a negative or non-finite time")
        st_ = stacks.setdefault((e["pid"], e["tid"]), [])
        tol = 1e-6 + 1e-12 * abs(e["ts"])           # the JSON keeps 1 ns; float sums round beyond that
        while st_ and st_[-1] <= e["ts"] + tol:
            st_.pop()
        _check(not st_ or e["ts"] + e["dur"] <= st_[-1] + tol, "slices overlap without nesting on a track")
        st_.append(e["ts"] + e["dur"])
    s = Counter(e["id"] for e in chrome["traceEvents"] if e["ph"] == "s")
    f = Counter(e["id"] for e in chrome["traceEvents"] if e["ph"] == "f")
    _check(s == f and max(s.values(), default=1) == 1, "flows do not pair")
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb
    t = pb.Trace()
    t.ParseFromString(encode_pftrace(sched, chrome))
    depth: Counter = Counter()
    known = set()
    for p in t.packet:
        if p.HasField("track_descriptor"):
            known.add(p.track_descriptor.uuid)
        elif p.HasField("track_event"):
            te = p.track_event
            _check(te.track_uuid in known, "a pftrace event before its track descriptor")
            if te.type == pb.TrackEvent.TYPE_SLICE_BEGIN:
                depth[te.track_uuid] += 1
            elif te.type == pb.TrackEvent.TYPE_SLICE_END:
                depth[te.track_uuid] -= 1
                _check(depth[te.track_uuid] >= 0, "a pftrace end without a begin")
    _check(not any(depth.values()), "pftrace slices left open")


def target_tracegen(plan: dict[str, Any], tmp: Path) -> str:
    from tracegen.estimate import estimate
    from tracegen.pipeline import TraceOptions, schedule
    from tracegen.resolve import PLAN_FIELDS, resolve_plan, resolve_target
    try:
        model, hw, preset = resolve_target(hardware=plan["hardware"], preset=plan["preset"],
                                           **{k: plan.get(k) for k in ("hbm_gbps", "scaleout_gbps")})
        p = resolve_plan(plan["phase"], model, hw, preset, **{k: plan.get(k) for k in PLAN_FIELDS if k in plan})
        est = estimate(Target(model, hw, preset, p))
        for row in est.rows:
            _check(math.isfinite(row.ms) and row.ms >= 0, f"op {row.name}: {row.ms} ms")
        _check(math.isfinite(est.sum_ms) and est.sum_ms > 0, "a non-finite or zero total")
        launch = plan.get("launch_us")
        opts = TraceOptions(tbo=plan.get("tbo", "proper"), layers=plan.get("layers", 3) if "layers" in plan else 3,
                            ranks=plan.get("ranks", 1), launch_us=launch)
        if opts.tbo == "off":
            p = resolve_plan(plan["phase"], model, hw, preset, **{**{k: plan.get(k) for k in PLAN_FIELDS if k in plan},
                                                                   "microbatches": 1})
        if launch is not None and not (isinstance(launch, (int, float)) and math.isfinite(launch)):
            raise UserError("--launch-us must be a finite number")       # what the CLI's type says
        check_schedule(schedule(Target(model, hw, preset, p), opts))
    except UserError:
        return "refused"
    return "answered"


# ----------------------------------------------------------------------------- round trips
roundtrip_plans = st.fixed_dictionaries({
    "phase": st.sampled_from(["prefill", "decode"]), "hardware": st.sampled_from(HARDWARE),
    "model": st.sampled_from(["deepseek-v3", "kimi-k2", "qwen3-30b-a3b", "qwen3-235b-a22b"]),
    "preset": st.sampled_from(["default", "seed004"]), "tbo": st.sampled_from(["proper", "improper", "off"]),
    "ranks": st.integers(1, 4), "layers": st.sampled_from([1, 2, 3, 5]),
}, optional={
    "comm": st.sampled_from(["normal", "ibgda", "cpu-proxy", "ascend-fused", "pcie-copy"]),
    "imbalance": st.sampled_from([1.0, 1.1, 1.5, 3.0]), "batch": st.sampled_from([1, 8, 64, 256]),
    "mtp": st.sampled_from([0, 1, 2]), "launch_us": st.sampled_from([1.0, 5.0, 20.0]),
})


def target_roundtrip(plan: dict[str, Any], tmp: Path) -> str:
    """A valid plan's trace, analysed by replay, gives back what tracegen scheduled: per rank the span,
    busy and overlap, each idle cause, nothing unexplained, and per layer compute, communication and
    overlap, within 1 us (tests/test_roundtrip.py on fixed plans; here on random ones)."""
    from replay.analyze import analyze
    from tracegen.base.contract import IDLE_CAUSES
    from tracegen.pipeline import TraceOptions, schedule
    from tracegen.resolve import resolve_plan, resolve_target
    from tracegen.schedule import summary
    from tracegen.trace import write_trace
    try:
        model, hw, preset = resolve_target(plan["model"], hardware=plan["hardware"], preset=plan["preset"])
        kw = {k: plan[k] for k in ("comm", "imbalance", "batch", "mtp") if k in plan}
        p = resolve_plan(plan["phase"], model, hw, preset, microbatches=1 if plan["tbo"] == "off" else 2, **kw)
        sched = schedule(Target(model, hw, preset, p), TraceOptions(tbo=plan["tbo"], layers=plan["layers"],
                                                                    ranks=plan["ranks"], launch_us=plan.get("launch_us")))
    except UserError:
        return "refused"
    a = analyze(write_trace(sched, tmp / "roundtrip.json"), use_cache=False, progress=False)
    got = {r["rank"]: r for r in a.ranks}
    for w in summary(sched):
        g = got.get(w["rank"])
        _check(g is not None, f"rank {w['rank']} not found")
        for k in ("span_us", "compute_us", "comm_us", "overlap_us", "exposed_comm_us", "compute_idle_us"):
            _check(abs(g[k] - w[k]) <= 1.0, f"rank {w['rank']} {k}: {g[k]:.1f} analysed, {w[k]:.1f} scheduled")
        idle = a.idle_totals[w["rank"]]
        for cause in IDLE_CAUSES:
            _check(abs(idle[cause] - w["idle_us"][cause]) <= 1.0,
                   f"rank {w['rank']} {cause}: {idle[cause]:.1f} analysed, {w['idle_us'][cause]:.1f} scheduled")
        _check(abs(idle["unexplained"]) <= 1.0, f"rank {w['rank']}: {idle['unexplained']:.1f} us unexplained")
        layers = a.layers[a.layers["rank"] == w["rank"]].set_index("layer")
        for layer, lw in w["layers"].items():
            _check(layer in layers.index, f"layer {layer} not found")
            for k in ("compute_us", "comm_us", "overlap_us"):
                _check(abs(layers.loc[layer, k] - lw[k]) <= 1.0, f"layer {layer} {k}: {layers.loc[layer, k]:.1f} vs {lw[k]:.1f}")
    return "answered"


# ----------------------------------------------------------------------------- estimate vs trace
agree_plans = st.fixed_dictionaries({}, optional={
    "--phase": st.sampled_from(["prefill", "decode"]), "--hardware": st.sampled_from(["h100", "h800", "h20", "ascend-910c", "b200", "h200"]),
    "--model": st.sampled_from(["deepseek-v3", "kimi-k2", "qwen3-30b-a3b", "qwen3-235b-a22b"]),
    "--stack": st.sampled_from(["sglang-2025-05", "deepseek-2025-02", "cloudmatrix"]),
    "--comm": st.sampled_from(["normal", "ibgda", "cpu-proxy"]), "--batch": st.sampled_from(["1", "8", "64", "256"]),
    "--ep": st.sampled_from(["8", "16", "32", "64"]), "--mtp": st.sampled_from(["0", "1"]),
    "--imbalance": st.sampled_from(["1.0", "1.2"]), "--clock": st.sampled_from(["limit", "boost"]),
    "--in-situ": st.sampled_from(["on", "off"]), "--precision": st.sampled_from(["fp8", "bf16"]),
    "--seq-len": st.sampled_from(["1024", "4096"]), "--sched-ms": st.sampled_from(["0", "5"]),
})


def target_agree(flags: dict[str, str], tmp: Path) -> str:
    """`tracegen estimate` and `tracegen trace` on the same plan: both answer or both refuse; the step
    (from its start, the CPU's scheduling included) within 0.5 %, and the same assumptions (issue 28)."""
    import contextlib
    import io

    from tracegen.cli import main as tracegen_main
    argv = [x for kv in flags.items() for x in kv]

    def run(*cmd: str) -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            rc = tracegen_main(list(cmd))
        return rc, out.getvalue()
    rc_e, est = run("estimate", *argv, "--json")
    rc_t, tr = run("trace", *argv, "--json", "-o", str(tmp / "agree.json.gz"))
    _check(rc_e == rc_t, f"estimate exits {rc_e}, trace {rc_t}")
    if rc_e:
        return "refused"
    e, t = json.loads(est), json.loads(tr)
    _check(abs(e["scheduled_step_ms"] - t["step_ms"]) <= 0.005 * t["step_ms"],
           f"step: estimate {e['scheduled_step_ms']:.3f} ms, trace {t['step_ms']:.3f} ms")
    strip = {"in_situ_applied"}
    _check({k: v for k, v in e["assumptions"].items() if k not in strip} ==
           {k: v for k, v in t["assumptions"].items() if k not in strip}, "different assumptions")
    return "answered"


# ----------------------------------------------------------------------------- running
def run(name: str, budget: int, seed: int | None = None) -> dict[str, Any]:
    """Drive one target with `budget` hypothesis examples; count outcomes and failures."""
    counts: Counter = Counter()
    failures: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="fuzz-"))
    target: Callable[[Any, Path], str]
    strategy, target = {"loader": (mutated(), target_loader), "analyze": (mutated(), target_analyze),
                        "commands": (real_mutated(), target_commands), "tracegen": (plans, target_tracegen),
                        "roundtrip": (roundtrip_plans, target_roundtrip), "agree": (agree_plans, target_agree)}[name]

    @settings(max_examples=budget, deadline=None, database=None, derandomize=seed is None,
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    @given(strategy)
    def prop(x: Any) -> None:    # never fails itself: it counts, so the campaign runs to its budget
        try:
            counts[target(x, tmp)] += 1
        except Exception as exc:      # noqa: BLE001 - every other outcome is a finding of the campaign
            counts["failed"] += 1
            if len(failures) < 5:
                failures.append(f"{type(exc).__name__}: {str(exc)[:300]} <- {repr(x)[:400]}")

    if seed is not None:         # one stream of examples per process
        prop = hseed(seed)(prop)
    t0 = time.perf_counter()
    prop()
    return {"target": name, "inputs": sum(counts.values()), **dict(counts), "failures": failures,
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--loader", type=int, default=35_000)
    p.add_argument("--analyze", type=int, default=10_000)
    p.add_argument("--commands", type=int, default=2_000)
    p.add_argument("--tracegen", type=int, default=60_000)
    p.add_argument("--roundtrip", type=int, default=2_000)
    p.add_argument("--agree", type=int, default=500)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes (each runs a share)")
    args = p.parse_args(argv)
    from concurrent.futures import ProcessPoolExecutor
    jobs = [(name, max(1, n // args.jobs), k) for name, n in (("loader", args.loader), ("analyze", args.analyze), ("commands", args.commands),
                                                             ("tracegen", args.tracegen), ("roundtrip", args.roundtrip),
                                                             ("agree", args.agree)) if n
            for k in range(args.jobs)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as ex:
        results = list(ex.map(run, *zip(*jobs)))
    total: dict[str, Counter] = {}
    fails: list[str] = []
    for r in results:
        c = total.setdefault(r["target"], Counter())
        for k in ("inputs", "answered", "refused", "failed"):
            c[k] += r.get(k, 0)
        fails += r["failures"]
    inputs = sum(c["inputs"] for c in total.values())
    failed = sum(c["failed"] for c in total.values())
    for name, c in total.items():
        print(f"{name:<9} {c['inputs']:>8,} inputs: {c['answered']:>8,} answered, {c['refused']:>8,} refused "
              f"with one line, {c['failed']:>4} failed")
    print(f"total     {inputs:>8,} inputs, {failed} failed (tracebacks or broken invariants), "
          f"{time.perf_counter() - t0:.0f} s on {args.jobs} processes")
    for f in fails[:10]:
        print("  " + f)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
