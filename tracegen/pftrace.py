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


class _Tracks:
    """Track descriptors, each written once before the first event that uses it: a process track
    per pid, under it a track per thread and per counter."""

    def __init__(self, b: TraceProtoBuilder, events: list[dict[str, Any]]):
        self.b = b
        self.uuid = iter(range(1, 1 << 62))
        self.proc: dict[Any, int] = {}
        self.children: dict[tuple[Any, Any, bool], int] = {}
        self.names = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events
                      if e["ph"] == "M" and e["name"] in ("process_name", "thread_name")}

    def process(self, pid: Any) -> int:
        if pid not in self.proc:
            self.proc[pid] = next(self.uuid)
            td = self.b.add_packet().track_descriptor
            td.uuid = self.proc[pid]
            td.process.pid = int(pid) + 1 if isinstance(pid, int) else 1
            td.process.process_name = self.names.get((pid, 0), str(pid))
        return self.proc[pid]

    def _child(self, pid: Any, key: Any, name: str, counter: bool) -> int:
        """A named track under the process `pid` (a thread's slices, or a counter)."""
        k = (pid, key, counter)
        if k not in self.children:
            parent = self.process(pid)
            self.children[k] = next(self.uuid)
            td = self.b.add_packet().track_descriptor
            td.uuid = self.children[k]
            td.parent_uuid = parent
            td.name = name
            if counter:
                td.counter.SetInParent()
            else:
                td.sibling_order_rank = int(key) if isinstance(key, int) else 0
        return self.children[k]

    def thread(self, pid: Any, tid: Any) -> int:
        return self._child(pid, tid, self.names.get((pid, tid), f"thread {tid}"), False)

    def counter(self, pid: Any, name: str) -> int:
        return self._child(pid, name, name, True)


def _flows(events: list[dict[str, Any]], slices: list[dict[str, Any]]
           ) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
    """Flow ids leaving and entering each slice (by index): a flow event binds to the slice on its
    thread that encloses its timestamp."""
    by_track: dict[tuple[Any, Any], list[tuple[float, float, int]]] = {}
    for i, e in enumerate(slices):
        by_track.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"], i))
    for v in by_track.values():
        v.sort()
    starts = {k: [s for s, _, _ in v] for k, v in by_track.items()}
    out_flows: dict[int, list[int]] = {}
    in_flows: dict[int, list[int]] = {}
    for e in events:
        if e["ph"] not in ("s", "f") or (e["pid"], e["tid"]) not in by_track:
            continue
        k = (e["pid"], e["tid"])
        j = bisect.bisect_right(starts[k], e["ts"]) - 1
        if j >= 0 and by_track[k][j][0] <= e["ts"] <= by_track[k][j][1]:
            (out_flows if e["ph"] == "s" else in_flows).setdefault(by_track[k][j][2], []).append(int(e["id"]))
    return out_flows, in_flows


def _timeline(events: list[dict[str, Any]], slices: list[dict[str, Any]]
              ) -> list[tuple[int, int, int, int, tuple[str, dict[str, Any]]]]:
    """(time ns, order, slice, begin/end, payload) in write order: at one instant the slices that end
    go first, then those that begin; a zero-length slice's end follows its own begin; counters last."""
    items: list[tuple[int, int, int, int, tuple[str, dict[str, Any]]]] = []
    for i, e in enumerate(slices):
        t0, t1 = _ns(e["ts"]), _ns(e["ts"] + e["dur"])
        items.append((t0, 1, i, 0, ("B", e)))
        items.append((t1, 1 if t1 == t0 else 0, i, 1, ("E", e)))
    for i, e in enumerate(events):
        if e["ph"] == "C":
            items.append((_ns(e["ts"]), 2, i, 0, ("C", e)))
    items.sort(key=lambda x: x[:4])
    return items


def encode_pftrace(_sched: Any, chrome: dict[str, Any]) -> bytes:
    b = TraceProtoBuilder()
    events = chrome["traceEvents"]
    last = max((e["ts"] + e.get("dur", 0) for e in events if "ts" in e), default=0.0)
    if _ns(last) >= 2 ** 63:
        raise UserError(f"the timeline lasts {last / 1e6:.3g} s: beyond what a .pftrace timestamp holds; "
                        "write .json instead")
    tracks = _Tracks(b, events)
    slices = [e for e in events if e["ph"] == "X"]
    out_flows, in_flows = _flows(events, slices)
    # every track is described before any event uses it
    for e in slices:
        tracks.thread(e["pid"], e["tid"])
    for e in events:
        if e["ph"] == "C":
            for name in e["args"]:
                tracks.counter(e["pid"], f"{e['name']} ({name})")
    first = True
    for ts, _, i, _, (what, e) in _timeline(events, slices):
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
                te.track_uuid = tracks.counter(e["pid"], f"{e['name']} ({name})")
                te.double_counter_value = float(value)
            continue
        te.track_uuid = tracks.thread(e["pid"], e["tid"])
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
