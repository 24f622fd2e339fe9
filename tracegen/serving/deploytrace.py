"""A simulated deployment as a Perfetto / Chrome JSON trace: one process per pool and one track per
pool instance with its steps as slices (batch, tokens, KV in args), counters per pool (batch size,
KV tokens held, queue length), and requests as async slices (queue, prefill, KV transfer, decode
wait, decode) under a "requests" process. Opens in ui.perfetto.dev."""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from .. import __version__
from ..base import contract as C
from ..base.errors import UserError
from ..base.fileio import atomic_write
from .simulate import DECODE, Result

GENERATOR = f"{C.GENERATOR} deploy"
FORMAT = C.DEPLOY_FORMAT
DEFAULT_REQUESTS = 5000            # requests drawn as async slices (evenly spaced over the workload)


def _us(x: float) -> float:
    return round(float(x) * 1e6, 3)


def build_events(r: Result, meta: dict[str, Any], max_requests: int = DEFAULT_REQUESTS) -> dict[str, Any]:
    ev: list[dict[str, Any]] = []
    s = r.steps
    req_pid = len(r.pools) + 1
    first_inst = np.concatenate([[0], np.cumsum([p.instances for p in r.pools])])
    for k, pool in enumerate(r.pools):
        pid = k + 1
        ev.append({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": f"{pool.role} pool"}})
        ev.append({"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": pid}})
        for i in range(pool.instances):
            ev.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": i + 1,
                       "args": {"name": f"instance {i} ({pool.gpus} GPUs, DP{pool.dp})"}})
    ev.append({"ph": "M", "name": "process_name", "pid": req_pid, "args": {"name": "requests"}})
    ev.append({"ph": "M", "name": "process_sort_index", "pid": req_pid, "args": {"sort_index": req_pid}})
    for j in range(len(s["start"])):
        g = int(s["instance"][j])
        k = int(r.instance_pool[g])
        pool = r.pools[k]
        local = g - int(first_inst[k])
        kind = "decode" if s["kind"][j] == DECODE else "prefill"
        args = {"requests": int(s["requests"][j]), "kv_tokens": float(s["kv"][j]), "queue": int(s["queue"][j])}
        if kind == "decode":
            args["batch_per_dp"] = float(s["requests"][j] / pool.dp)
        else:
            args["new_tokens"] = float(s["load"][j])
        ts = _us(s["start"][j])
        ev.append({"ph": "X", "name": f"{kind} step", "cat": kind, "pid": k + 1, "tid": local + 1, "ts": ts,
                   "dur": round(_us(s["end"][j]) - ts, 3), "args": args})
        ev.append({"ph": "C", "name": "batch (requests)", "pid": k + 1, "ts": ts,
                   "args": {f"instance {local}": int(s["requests"][j])}})
        ev.append({"ph": "C", "name": "KV tokens held", "pid": k + 1, "ts": ts,
                   "args": {f"instance {local}": float(s["kv"][j])}})
        ev.append({"ph": "C", "name": "queue (requests)", "pid": k + 1, "ts": ts,
                   "args": {f"instance {local}": int(s["queue"][j])}})
    w = r.workload
    n = len(w)
    pick = np.unique(np.linspace(0, n - 1, min(n, max_requests)).astype(int)) if max_requests > 0 else []
    phases = (("queue", w.arrival_s, r.prefill_start), ("prefill", r.prefill_start, r.prefill_end),
              ("KV transfer", r.prefill_end, r.first_token), ("decode wait", r.first_token, r.decode_start),
              ("decode", r.decode_start, r.finish))
    for i in pick:
        i = int(i)
        rid = f"0x{i:x}"
        n_out = int(w.output_len[i])
        args = {"request": i, "input_len": int(w.input_len[i]), "output_len": n_out,
                "prefix_hit_len": int(w.prefix_hit_len[i]),
                "ttft_ms": round(1e3 * float(r.first_token[i] - w.arrival_s[i]), 3)}
        if n_out > 1 and np.isfinite(r.decode_start[i]):
            args["tpot_ms"] = round(1e3 * float(r.finish[i] - r.first_token[i]) / (n_out - 1), 3)
        ev.append({"ph": "b", "cat": "request", "name": f"request {i}", "id": rid, "pid": req_pid,
                   "ts": _us(w.arrival_s[i]), "args": args})
        for name, a, b in phases:
            if np.isfinite(a[i]) and np.isfinite(b[i]) and b[i] > a[i]:
                ev.append({"ph": "b", "cat": "request", "name": name, "id": rid, "pid": req_pid, "ts": _us(a[i])})
                ev.append({"ph": "e", "cat": "request", "name": name, "id": rid, "pid": req_pid, "ts": _us(b[i])})
        ev.append({"ph": "e", "cat": "request", "name": f"request {i}", "id": rid, "pid": req_pid,
                   "ts": _us(r.finish[i])})
    other = {"generator": f"{GENERATOR} {__version__}", "format": FORMAT,
             "requests_drawn": len(pick), "requests": n, **meta}
    return {"traceEvents": ev, "displayTimeUnit": "ms", "otherData": other}


def check_path(path: str | Path) -> None:
    """A deployment trace is JSON (.json, .json.gz); refuse any other name before simulating."""
    if not str(path).endswith((".json", ".json.gz")):
        raise UserError(f"output {path}: a deployment trace is written as *.json or *.json.gz")


def write(r: Result, path: str | Path, meta: dict[str, Any], max_requests: int = DEFAULT_REQUESTS) -> Path:
    check_path(path)
    name = str(path)
    data = msgspec.json.encode(build_events(r, meta, max_requests))
    if name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    return atomic_write(path, data)


__all__ = ["build_events", "check_path", "write", "GENERATOR", "FORMAT", "DEFAULT_REQUESTS"]
