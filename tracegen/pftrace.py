"""Native Perfetto protobuf from a Chrome-trace object (the same slices, counters and flows),
built with the `perfetto` package's protos."""
from __future__ import annotations

import bisect
from typing import Any

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb
from perfetto.trace_builder.proto_builder import TraceProtoBuilder

from .base.errors import UserError

SEQ = 1


def _ns(us: float) -> int:
    return int(round(us * 1000))


def _annotate(ev: Any, key: str, value: Any) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _annotate(ev, f"{key}.{k}", v)
        return
    a = ev.debug_annotations.add()
    a.name = key
    if isinstance(value, bool):
        a.bool_value = value
    elif isinstance(value, int) and -(2 ** 63) <= value < 2 ** 63:
        a.int_value = value
    elif isinstance(value, (int, float)):
        a.double_value = float(value)
    elif isinstance(value, float):
        a.double_value = value
    else:
        a.string_value = str(value)


def encode_pftrace(_sched: Any, chrome: dict[str, Any]) -> bytes:
    b = TraceProtoBuilder()
    events = chrome["traceEvents"]
    last = max((e["ts"] + e.get("dur", 0) for e in events if "ts" in e), default=0.0)
    if _ns(last) >= 2 ** 63:
        raise UserError(f"the timeline lasts {last / 1e6:.3g} s: beyond what a .pftrace timestamp holds; "
                        "write .json instead")
    uuid = iter(range(1, 1 << 62))
    proc: dict[Any, int] = {}
    thread: dict[tuple[Any, Any], int] = {}
    counters: dict[tuple[Any, str], int] = {}
    names = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events
             if e["ph"] == "M" and e["name"] in ("process_name", "thread_name")}

    def proc_track(pid: Any) -> int:
        if pid not in proc:
            proc[pid] = next(uuid)
            p = b.add_packet()
            p.track_descriptor.uuid = proc[pid]
            p.track_descriptor.process.pid = int(pid) + 1 if isinstance(pid, int) else 1
            p.track_descriptor.process.process_name = names.get((pid, 0), str(pid))
        return proc[pid]

    def child_track(table: dict, pid: Any, key: Any, name: str, counter: bool = False) -> int:
        """A named track under the process `pid` (a thread's slices, or a counter)."""
        if (pid, key) not in table:
            parent = proc_track(pid)
            table[(pid, key)] = next(uuid)
            td = b.add_packet().track_descriptor
            td.uuid = table[(pid, key)]
            td.parent_uuid = parent
            td.name = name
            if counter:
                td.counter.SetInParent()
            else:
                td.sibling_order_rank = int(key) if isinstance(key, int) else 0
        return table[(pid, key)]

    def thread_track(pid: Any, tid: Any) -> int:
        return child_track(thread, pid, tid, names.get((pid, tid), f"thread {tid}"))

    def counter_track(pid: Any, name: str) -> int:
        return child_track(counters, pid, name, name, counter=True)

    slices = [e for e in events if e["ph"] == "X"]
    by_track: dict[tuple[Any, Any], list[tuple[float, float, int]]] = {}
    for i, e in enumerate(slices):
        by_track.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"], i))
    for v in by_track.values():
        v.sort()
    starts = {k: [s for s, _, _ in v] for k, v in by_track.items()}

    def enclosing(e: dict[str, Any]) -> int | None:
        k = (e["pid"], e["tid"])
        if k not in by_track:
            return None
        j = bisect.bisect_right(starts[k], e["ts"]) - 1
        if j >= 0 and by_track[k][j][0] <= e["ts"] <= by_track[k][j][1]:
            return by_track[k][j][2]
        return None

    out_flows: dict[int, list[int]] = {}
    in_flows: dict[int, list[int]] = {}
    for e in events:
        if e["ph"] in ("s", "f"):
            idx = enclosing(e)
            if idx is not None:
                (out_flows if e["ph"] == "s" else in_flows).setdefault(idx, []).append(int(e["id"]))
    # every track is described before any event uses it
    for e in slices:
        thread_track(e["pid"], e["tid"])
    for e in events:
        if e["ph"] == "C":
            for name in e["args"]:
                counter_track(e["pid"], f"{e['name']} ({name})")
    # (time ns, order, slice, begin/end, payload): at one instant the slices that end go first, then
    # those that begin; a zero-length slice's end follows its own begin; counters last
    items: list[tuple[int, int, int, int, Any]] = []
    for i, e in enumerate(slices):
        t0, t1 = _ns(e["ts"]), _ns(e["ts"] + e["dur"])
        items.append((t0, 1, i, 0, ("B", e)))
        items.append((t1, 1 if t1 == t0 else 0, i, 1, ("E", e)))
    for i, e in enumerate(events):
        if e["ph"] == "C":
            items.append((_ns(e["ts"]), 2, i, 0, ("C", e)))
    items.sort(key=lambda x: x[:4])
    first = True
    for ts, _, i, _, (what, e) in items:
        p = b.add_packet()
        p.timestamp = ts
        p.trusted_packet_sequence_id = SEQ
        if first:
            p.sequence_flags = pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
            first = False
        te = p.track_event
        if what == "C":
            for name, value in e["args"].items():
                if te.HasField("track_uuid") or te.type:
                    p = b.add_packet()
                    p.timestamp = ts
                    p.trusted_packet_sequence_id = SEQ
                    te = p.track_event
                te.type = pb.TrackEvent.TYPE_COUNTER
                te.track_uuid = counter_track(e["pid"], f"{e['name']} ({name})")
                te.double_counter_value = float(value)
            continue
        te.track_uuid = thread_track(e["pid"], e["tid"])
        if what == "E":
            te.type = pb.TrackEvent.TYPE_SLICE_END
            continue
        te.type = pb.TrackEvent.TYPE_SLICE_BEGIN
        te.name = e["name"]
        te.categories.append(e.get("cat", ""))
        for k, v in (e.get("args") or {}).items():
            _annotate(te, k, v)
        te.flow_ids.extend(out_flows.get(i, []))
        te.terminating_flow_ids.extend(in_flows.get(i, []))
    return b.serialize()
