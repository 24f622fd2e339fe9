"""Writers: a schedule as a Chrome trace (JSON, optionally gzipped) or a native Perfetto trace.
Every name written here (tracks, categories, args and otherData keys, flows) is declared in the
trace contract (base/contract.py), which replay reads from: every GPU slice carries its meaning in
`args`, and otherData carries the model and hardware as they ran."""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import msgspec

from . import __version__
from .base import contract as C
from .base.contract import COMM, COMPUTE, IDLE_CAUSES, TRACKS
from .base.errors import UserError
from .base.fileio import atomic_write
from .catalog import hardware_to_dict, model_to_dict
from .schedule import Interval, Schedule

_CATEGORY = {"launch": C.CAT_LAUNCH, "wait": C.CAT_WAIT, "post": C.CAT_PROXY, "sched": C.CAT_SCHED, **C.CAT_STAGE}


def _r(x: float) -> float:
    return round(x, 3)       # nanosecond resolution in microsecond timestamps


def _static_args(sched: Schedule, iv: Interval, load: float) -> dict[str, Any]:
    """The args of a stage slice that do not depend on the rank (cached per stage and load)."""
    layer, mb, stage = iv.key  # type: ignore[misc]
    st = sched.graph.stages[iv.key]  # type: ignore[index]
    args: dict[str, Any] = {"layer": layer, "microbatch": mb, "stage": stage}
    if iv.track in (COMPUTE, COMM):
        args.update(kind=st.stream, flops=st.flops * load, bytes=st.bytes * load,
                    work_us=_r(st.work_us * load), ops_us={k: _r(v * load) for k, v in st.ops_us.items()},
                    cost_us={k: _r(v * load) for k, v in st.terms_us.items()})
        if iv.track == COMM:
            args.update(latency_us=_r(st.latency_us), post_us=_r(st.post_us), sms=st.holds_sms,
                        backend=sched.graph.plan.comm, blocking=st.blocking)
        if load != 1.0:
            args["load_factor"] = round(load, 6)
    elif iv.activity == "launch":
        args["kernels"] = st.kernels
    elif iv.activity == "wait":
        args["blocking"] = True
    return args


def _sm_counters(sched: Schedule, intervals: list[Interval]) -> list[tuple[float, int, int]]:
    """(time, SMs computing, SMs communicating) at every change, from one rank's intervals."""
    S = sched.graph.hardware.sm_count
    # separate vector cores (Ascend AIV) hold the comm: the compute cores stay whole
    comm_takes_sms = not sched.graph.hardware.vector_cores
    edges: list[tuple[float, int, str, int]] = []
    for iv in intervals:
        if iv.track == COMPUTE:
            edges += [(iv.start, 1, "c", 0), (iv.end, -1, "c", 0)]
        elif iv.track == COMM:
            sms = sched.graph.stages[iv.key].holds_sms  # type: ignore[index]
            edges += [(iv.start, 1, "m", sms), (iv.end, -1, "m", sms)]
    edges.sort(key=lambda e: (e[0], e[1]))
    out: list[tuple[float, int, int]] = []
    comp = 0
    comm_sms = 0
    for t, d, what, sms in edges:
        if what == "c":
            comp += d
        else:
            comm_sms += d * sms
        value = ((S - comm_sms if comm_takes_sms else S) if comp else 0, comm_sms)
        if out and out[-1][0] == t:
            out[-1] = (t, *value)
        elif not out or out[-1][1:] != value:
            out.append((t, *value))
    return out


def build_events(sched: Schedule, meta: dict[str, Any]) -> dict[str, Any]:
    """The Chrome-trace object: metadata, slices, counters and flows."""
    hw = sched.graph.hardware
    ev: list[dict[str, Any]] = []
    for r in range(sched.ranks):
        ev.append({"ph": "M", "name": "process_name", "pid": r, "tid": 0,
                   "args": {"name": C.PROCESS_NAME.format(rank=r)}})
        ev.append({"ph": "M", "name": "process_labels", "pid": r, "tid": 0, "args": {"labels": hw.name}})
        ev.append({"ph": "M", "name": "process_sort_index", "pid": r, "tid": 0, "args": {"sort_index": r}})
        tracks = [C.CPU, COMPUTE, COMM] + ([C.PROXY] if any(i.track == C.PROXY for i in sched.intervals) else [])
        for t in tracks:
            tid, name = TRACKS[t]
            ev.append({"ph": "M", "name": "thread_name", "pid": r, "tid": tid, "args": {"name": name}})
            ev.append({"ph": "M", "name": "thread_sort_index", "pid": r, "tid": tid, "args": {"sort_index": tid}})
    corr: dict[tuple[int, Any], int] = {}
    gpu_iv: dict[tuple[int, Any], Interval] = {}
    launch_iv: dict[tuple[int, Any], Interval] = {}
    cache: dict[tuple[Any, str, str, float], dict[str, Any]] = {}
    by_rank: dict[int, list[Interval]] = {}
    for iv in sched.intervals:
        by_rank.setdefault(iv.rank, []).append(iv)
        if iv.key is None:      # the step's scheduling on the CPU (no stage)
            ev.append({"ph": "X", "name": iv.name, "cat": _CATEGORY[iv.activity], "pid": iv.rank,
                       "tid": TRACKS[iv.track][0], "ts": _r(iv.start), "dur": _r(_r(iv.end) - _r(iv.start)),
                       "args": {"rank": iv.rank, "sched_ms": sched.graph.plan.sched_ms}})
            continue
        if not sched.graph.stages[iv.key].kernels and iv.end <= iv.start:
            continue            # an empty stage (EP1's all-to-all): nothing ran, nothing is drawn
        c = corr.setdefault((iv.rank, iv.key), len(corr) + 1)
        cat = _CATEGORY[iv.activity]
        load = sched.load[iv.rank] if iv.key[2] == "MLP" and iv.key[0] not in sched.graph.dense else 1.0
        ck = (iv.key, iv.track, iv.activity, load)
        static = cache.get(ck)
        if static is None:
            static = cache[ck] = _static_args(sched, iv, load)
        ev.append({"ph": "X", "name": iv.name, "cat": cat, "pid": iv.rank, "tid": TRACKS[iv.track][0],
                   "ts": _r(iv.start), "dur": _r(_r(iv.end) - _r(iv.start)),
                   "args": {**static, "rank": iv.rank, "correlation": c}})
        if iv.track in (COMPUTE, COMM):
            gpu_iv[(iv.rank, iv.key)] = iv
        elif iv.activity == "launch":
            launch_iv[(iv.rank, iv.key)] = iv
    flow_id = 0

    def flow(src: Interval, dst: Interval, cat: str) -> None:
        nonlocal flow_id
        flow_id += 1
        ts = _r(max(src.start, src.end - min(0.001, src.dur / 2)))
        ev.append({"ph": "s", "id": flow_id, "name": cat, "cat": cat, "pid": src.rank,
                   "tid": TRACKS[src.track][0], "ts": ts})
        ev.append({"ph": "f", "bp": "e", "id": flow_id, "name": cat, "cat": cat, "pid": dst.rank,
                   "tid": TRACKS[dst.track][0], "ts": _r(dst.start)})

    for (r, key), iv in sorted(gpu_iv.items(), key=lambda kv: (kv[1].rank, kv[1].start)):
        st = sched.graph.stages[key]
        for d in st.deps:
            src = gpu_iv.get((r, d))
            if src is not None and src.track != iv.track:
                flow(src, iv, C.FLOW_DEPENDENCY)
        li = launch_iv.get((r, key))
        if li is not None:
            flow(li, iv, C.FLOW_LAUNCH)
    for r in range(sched.ranks):
        for t, comp, comm in _sm_counters(sched, by_rank.get(r, [])):
            ev.append({"ph": "C", "name": C.COUNTER_SMS, "pid": r, "tid": 0, "ts": _r(t),
                       "args": {"compute": comp, "comm": comm}})
    return {"traceEvents": ev, "displayTimeUnit": "ms", "otherData": meta}   # ts stay microseconds (the format)


def metadata(sched: Schedule, extra: dict[str, Any]) -> dict[str, Any]:
    """otherData: what was modelled (model and hardware as they ran, preset, plan) and the schedule's
    own totals, keyed as the contract's OTHER_DATA says."""
    g = sched.graph
    plan = {k: getattr(g.plan, k) for k in g.plan.__dataclass_fields__}
    return {"generator": f"{C.GENERATOR} {__version__}", "format_version": C.FORMAT_VERSION,
            "model": g.model.name, "model_spec": model_to_dict(g.model),
            "hardware": g.hardware.name, "hardware_key": g.hardware.key, "hardware_spec": hardware_to_dict(g.hardware),
            "preset": g.preset.name, "comm_in_situ": bool(g.preset.comm_in_situ), "plan": plan, "ranks": sched.ranks, "layers": list(g.layers),
            "dense_layers": sorted(g.dense), "launch_us": sched.launch_us, "sm_count": g.hardware.sm_count,
            "load_factors": sched.load, "span_us": _r(sched.span_us),
            "idle_us": [{cause: _r(sched.idle_us(r, cause)) for cause in IDLE_CAUSES} for r in range(sched.ranks)],
            **({"power": sched.power.to_dict()} if sched.power else {}),
            **extra}


def output_format(path: str | Path) -> str:
    """The output's format from its name: .json, .json.gz or .pftrace (else a UserError)."""
    name = str(path)
    for fmt in (".json.gz", ".json", ".pftrace"):
        if name.endswith(fmt):
            return fmt
    raise UserError(f"output {path}: unknown format; name it *.json, *.json.gz or *.pftrace")


def write_trace(sched: Schedule, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    fmt = output_format(path)
    meta = metadata(sched, extra or {})
    if fmt == ".pftrace":
        from .pftrace import encode_pftrace
        return atomic_write(path, encode_pftrace(sched, build_events(sched, meta)))
    data = msgspec.json.encode(build_events(sched, meta))
    if fmt == ".json.gz":
        data = gzip.compress(data, compresslevel=6, mtime=0)
    return atomic_write(path, data)
