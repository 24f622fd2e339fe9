"""Event-driven simulation of a serving deployment, step by step: pool instances (one expert-parallel
group each, its DP groups stepping together) take requests, run prefill steps (chunked to a token
budget) and decode steps (continuous batching up to the memory limit), and hand KV caches from
prefill to decode over the scale-out link. Step times come from steptime.py's tables.

Modes: `pd` (prefill and decode pools), `colocated` (every instance does both; a waiting prompt
takes the next step, as SGLang's default scheduler does, so decoding requests stall meanwhile),
`prefill` / `decode` (one pool on its own, as per-role benchmarks measure it: requests leave after
prefill, or arrive with their KV cache in place)."""
from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..base.errors import UserError
from .steptime import StepTable
from .workload import Workload

PD, COLOCATED = "pd", "colocated"      # deployment modes beside the one-role "prefill" / "decode" (the phases)
MODES = (PD, COLOCATED, "prefill", "decode")
PREFILL, DECODE = 0, 1          # step kinds
MAX_STEPS = 20_000_000          # a guard against a plan that never drains (e.g. a zero-time step)


@dataclass(frozen=True)
class Pool:
    """Instances of one role. Each instance is `gpus` GPUs (tp x dp, expert-parallel over all)."""
    role: str                      # "prefill", "decode" or "colocated"
    instances: int
    gpus: int                      # per instance
    dp: int                        # attention-DP groups per instance
    gpus_per_node: int
    prefill: StepTable | None      # step times of prefill steps on this instance shape
    decode: StepTable | None
    token_budget: float = 16384    # prefill: new tokens per DP group per step (chunked prefill)
    max_batch: float = 0           # decode: requests per DP group (0: no limit beyond memory)
    kv_tokens: float = math.inf    # decode: KV-cache tokens one DP group holds
    tokens_per_step: float = 1.0   # decode: expected output tokens per request per step (1 + MTP accepted)

    @property
    def nodes(self) -> float:
        return self.instances * self.gpus / self.gpus_per_node

    def batch_limit(self, request_tokens: float) -> float:
        """Decode: requests one DP group holds at once - what its KV cache holds of requests of
        `request_tokens` (prompt + output) each, or --decode-batch (or the TPOT target's cap) if lower."""
        kv = self.kv_tokens / max(1.0, request_tokens)
        kv = max(1.0, float(math.floor(kv))) if math.isfinite(kv) else kv             # whole requests
        return float(min(self.max_batch, kv) if self.max_batch else kv)

    def decode_slots(self, request_tokens: float) -> float:
        """Decode: requests the whole pool holds at once."""
        return self.instances * max(1, self.dp) * self.batch_limit(request_tokens)


@dataclass
class Result:
    """Per-request times (seconds; NaN where a request never reached that point) and per-step
    records of every instance."""
    workload: Workload
    pools: list[Pool]
    mode: str
    prefill_start: np.ndarray
    first_token: np.ndarray        # the first output token reaches the client
    prefill_end: np.ndarray
    decode_start: np.ndarray
    finish: np.ndarray
    instance_pool: np.ndarray      # per global instance: its pool index
    # per step: instance, kind, start, end, load (prefill: new tokens, decode: requests), tokens (prefill:
    # new tokens computed, decode: output tokens made), requests, kv (tokens reserved), queue
    steps: dict[str, np.ndarray] = field(default_factory=dict)


class _Instance:
    __slots__ = ("i", "pool", "queue", "queued_tokens", "pending", "ids", "produced", "target", "ctx", "grp",
                 "g_reserved", "g_count", "group_of", "busy", "step")

    def __init__(self, i: int, pool: Pool):
        self.i, self.pool = i, pool
        self.queue: deque[list[int]] = deque()      # [request, new tokens left]
        self.queued_tokens = 0.0
        self.pending: deque[int] = deque()           # KV in place, waiting for a decode slot
        self.ids = np.empty(0, np.int64)
        self.produced = np.empty(0)
        self.target = np.empty(0)
        self.ctx = np.empty(0)
        self.grp = np.empty(0, np.int64)             # the DP group each decoding request runs in
        # per DP group (a request's KV lives in one): KV tokens reserved, and requests holding them
        self.g_reserved = np.zeros(max(1, pool.dp))
        self.g_count = np.zeros(max(1, pool.dp), np.int64)
        self.group_of: dict[int, int] = {}           # request -> its DP group
        self.busy = False
        self.step: tuple = ()

    @property
    def reserved(self) -> float:
        """KV tokens reserved by the requests held here."""
        return float(self.g_reserved.sum())

    @property
    def holding(self) -> int:
        """Requests holding KV here (and a batch slot)."""
        return int(self.g_count.sum())


def simulate(w: Workload, pools: list[Pool], mode: str, transfer_s: np.ndarray | None = None) -> Result:
    """Run every request of `w` through `pools` (pd: [prefill, decode]; colocated: [colocated];
    prefill / decode: that one pool)."""
    return ServingSimulation(w, pools, mode, transfer_s).run()


STEP_END, KV_READY = 0, 1       # event kinds


class ServingSimulation:
    """The deployment simulation: events (on_arrivals, on_step_end, on_kv_ready), the admission policy
    (slot, fits, hold, release), the batchers (start_prefill, start_decode) and the step clock (decode_ms)."""

    def __init__(self, w: Workload, pools: list[Pool], mode: str, transfer_s: np.ndarray | None = None):
        if mode not in MODES:
            raise UserError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.w, self.pools, self.mode = w, pools, mode
        n = self.n = len(w)
        nan = lambda: np.full(n, np.nan)        # noqa: E731
        self.p_start, self.p_end, self.first, self.d_start, self.finish = nan(), nan(), nan(), nan(), nan()
        self.pool_of = np.array([k for k, pool in enumerate(pools) for _ in range(pool.instances)], np.int64)
        self.insts = [_Instance(i, pools[k]) for i, k in enumerate(self.pool_of)]
        by_role = {pool.role: [x for x in self.insts if x.pool is pool] for pool in pools}
        self.entry = by_role.get("prefill") or by_role.get("colocated") or by_role.get("decode")
        self.decoders = by_role.get("decode") or by_role.get("colocated") or []
        self.new_tokens = (w.input_len - w.prefix_hit_len).astype(float)
        self.out_left = (w.output_len - 1).astype(float)               # the first token comes from prefill
        self.transfer = np.zeros(n) if transfer_s is None else transfer_s
        self.rec: dict[str, list] = {k: [] for k in ("instance", "kind", "start", "end", "load", "tokens", "requests",
                                                     "kv", "queue")}
        self.events: list[tuple[float, int, int, int]] = []             # (time, seq, what, who)
        self.seq = 0

    def push(self, t: float, what: int, who: int) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, what, who))

    # ------------------------------------------------------------------ admission policy
    def slot(self, inst: _Instance, r: int) -> tuple[int, float]:
        """The DP group request r joins (the one with the least KV reserved: its KV lives there) and
        the KV tokens it reserves up front (prompt + all output tokens)."""
        return int(np.argmin(inst.g_reserved)), float(self.w.input_len[r] + self.w.output_len[r])

    def fits(self, inst: _Instance, r: int) -> bool:
        """Room for request r's KV and a batch slot in the DP group it would join."""
        p = inst.pool
        g, need = self.slot(inst, r)
        return ((not p.max_batch or inst.g_count[g] + 1 <= p.max_batch)
                and inst.g_reserved[g] + need <= p.kv_tokens)

    def hold(self, inst: _Instance, r: int) -> None:
        g, need = self.slot(inst, r)
        inst.group_of[r] = g
        inst.g_reserved[g] += need
        inst.g_count[g] += 1

    def release(self, inst: _Instance, rs: np.ndarray) -> None:
        """Requests rs are done: their KV and batch slots are free."""
        need = (self.w.input_len[rs] + self.w.output_len[rs]).astype(float)
        gs = np.array([inst.group_of.pop(int(r)) for r in rs], np.int64)
        np.subtract.at(inst.g_reserved, gs, need)
        np.subtract.at(inst.g_count, gs, 1)

    # ------------------------------------------------------------------ batchers
    def start_prefill(self, inst: _Instance, t: float, colocated: bool) -> bool:
        """Fill the instance's DP groups from its queue, each prompt (or chunk) into the least-loaded
        group, up to the token budget per group. The step takes the busiest group's time (attention
        runs per group, and the groups meet in every all-to-all) except for the routed experts, which
        see every group's tokens spread over the EP ranks: those at the groups' mean (StepTable)."""
        p = inst.pool
        groups = np.zeros(p.dp)
        done: list[int] = []
        lens: list[float] = []
        while inst.queue:
            g = int(np.argmin(groups))
            room = p.token_budget - groups[g]
            if room <= 0:
                break
            item = inst.queue[0]
            r = item[0]
            fresh = math.isnan(self.p_start[r])
            if colocated and fresh:
                if not self.fits(inst, r):
                    break                               # no KV room for it yet: the decode batch goes on
                self.hold(inst, r)                      # its KV lives here from its first chunk on
            if fresh:
                self.p_start[r] = t
            chunk = min(item[1], room)
            item[1] -= chunk
            groups[g] += chunk
            lens.append(float(self.w.input_len[r]))
            if item[1] <= 0:
                inst.queue.popleft()
                done.append(r)
        if not lens:
            return False
        used = float(groups.sum())
        inst.queued_tokens -= used
        ms = p.prefill(float(groups.max()), sum(lens) / len(lens), used / p.dp)
        inst.step = (PREFILL, done)
        self.record(inst, t, t + ms / 1e3, PREFILL, used, len(lens), used)
        return True

    def start_decode(self, inst: _Instance, t: float) -> bool:
        p = inst.pool
        rs = []
        while inst.pending and (p.role == "colocated" or self.fits(inst, inst.pending[0])):
            r = inst.pending.popleft()
            if p.role != "colocated":
                self.hold(inst, r)                      # colocated requests hold theirs since prefill
            rs.append(r)
        if rs:
            a = np.asarray(rs, np.int64)
            self.d_start[a] = t
            inst.ids = np.concatenate([inst.ids, a])
            inst.produced = np.concatenate([inst.produced, np.zeros(len(a))])
            inst.target = np.concatenate([inst.target, self.out_left[a]])
            inst.ctx = np.concatenate([inst.ctx, self.w.input_len[a].astype(float) + 1])
            inst.grp = np.concatenate([inst.grp, np.array([inst.group_of[int(r)] for r in a], np.int64)])
        b = len(inst.ids)
        if b == 0:
            return False
        ms = self.decode_ms(inst, b)
        inst.step = (DECODE, None)
        # output tokens this step gives: the expected accepted tokens, none past a request's last
        made = float(np.minimum(p.tokens_per_step, inst.target - inst.produced).clip(min=0).sum())
        self.record(inst, t, t + ms / 1e3, DECODE, b, b, made)
        return True

    @staticmethod
    def decode_ms(inst: _Instance, b: int) -> float:
        """The step waits for its busiest DP group (attention and the all-to-all run per group: the
        group with the most requests or the longest contexts), except for the routed experts, which
        see every group's tokens spread over the EP ranks: those at the groups' mean (StepTable)."""
        p = inst.pool
        dp = max(1, p.dp)
        counts = np.bincount(inst.grp, minlength=dp)
        sums = np.bincount(inst.grp, weights=inst.ctx, minlength=dp)
        busy = counts > 0
        c, ctx = counts[busy], sums[busy] / counts[busy]
        # the step time grows with both: only the longest context at each batch size can be the busiest
        order = np.argsort(c, kind="stable")
        c, ctx = c[order], ctx[order]
        starts = np.flatnonzero(np.concatenate(([True], c[1:] != c[:-1])))
        return p.decode.busiest(c[starts], np.maximum.reduceat(ctx, starts), b / dp)

    def record(self, inst: _Instance, t0: float, t1: float, kind: int, load: float, requests: int,
               made: float) -> None:
        inst.busy = True
        for k, v in (("instance", inst.i), ("kind", kind), ("start", t0), ("end", t1), ("load", load),
                     ("tokens", made), ("requests", requests), ("kv", inst.reserved),
                     ("queue", len(inst.queue) + len(inst.pending))):
            self.rec[k].append(v)
        self.push(t1, STEP_END, inst.i)

    def wake(self, inst: _Instance, t: float) -> None:
        if inst.busy:
            return
        role = inst.pool.role
        if role == "prefill":
            self.start_prefill(inst, t, False)
        elif role == "decode":
            self.start_decode(inst, t)
        else:
            # a waiting prompt goes first (prefill-priority scheduling), then the decode batch
            if not (inst.queue and self.start_prefill(inst, t, True)):
                self.start_decode(inst, t)

    def to_decoder(self, r: int, t: float, now: bool = True) -> _Instance | None:
        """Hand request r (its KV in place) to the least-loaded decode instance; wake it unless the
        caller wakes it after handing over everything that arrives at t."""
        if self.out_left[r] <= 0:
            self.finish[r] = t
            return None
        inst = min(self.decoders, key=lambda x: x.holding + len(x.pending))
        inst.pending.append(r)
        if now:
            self.wake(inst, t)
        return inst

    # ------------------------------------------------------------------ events
    def on_step_end(self, inst: _Instance, t: float) -> None:
        inst.busy = False
        kind, done = inst.step
        if kind == PREFILL:
            self._prefilled(inst, done, t)
        else:
            p = inst.pool
            inst.produced += p.tokens_per_step
            inst.ctx += p.tokens_per_step
            done_mask = inst.produced >= inst.target - 1e-9
            if done_mask.any():
                gone = inst.ids[done_mask]
                self.finish[gone] = t
                self.release(inst, gone)
                keep = ~done_mask
                inst.ids, inst.produced, inst.target, inst.ctx, inst.grp = (
                    inst.ids[keep], inst.produced[keep], inst.target[keep], inst.ctx[keep], inst.grp[keep])
        self.wake(inst, t)

    def _prefilled(self, inst: _Instance, done: list[int], t: float) -> None:
        """Prompts whose last chunk ran: their first token, and on to decode (or out)."""
        role = inst.pool.role
        for r in done:
            self.p_end[r] = t
            if role == "colocated":
                self.first[r] = t
                if self.out_left[r] <= 0:
                    self.finish[r] = t
                    self.release(inst, np.array([r]))
                else:
                    inst.pending.append(r)
            elif self.mode == "prefill":
                self.first[r] = self.finish[r] = t
            else:
                self.first[r] = t + self.transfer[r]
                self.push(self.first[r], KV_READY, r)

    def on_kv_ready(self, r: int, t: float) -> None:
        self.to_decoder(r, t)

    def on_arrivals(self, ptr: int) -> int:
        """Every request arriving at the time of request `ptr` joins its entry instance (the one with
        the fewest queued tokens; in decode mode, a decoder); those instances wake. Returns the next."""
        w = self.w
        t = float(w.arrival_s[ptr])
        touched = set()
        while ptr < self.n and w.arrival_s[ptr] <= t:
            r = ptr
            ptr += 1
            if self.mode == "decode":
                self.first[r] = self.p_end[r] = t
                inst = self.to_decoder(r, t, now=False)
                if inst is not None:
                    touched.add(inst.i)
                continue
            inst = min(self.entry, key=lambda x: x.queued_tokens)
            inst.queue.append([r, float(self.new_tokens[r])])
            inst.queued_tokens += float(self.new_tokens[r])
            touched.add(inst.i)
        for k in sorted(touched):
            self.wake(self.insts[k], t)
        return ptr

    # ------------------------------------------------------------------ the loop
    def run(self) -> Result:
        w, n, events = self.w, self.n, self.events
        ptr = 0
        steps = 0
        while ptr < n or events:
            t_evt = events[0][0] if events else math.inf
            if ptr < n and w.arrival_s[ptr] <= t_evt:
                ptr = self.on_arrivals(ptr)
                continue
            t, _, what, who = heapq.heappop(events)
            steps += 1
            if steps > MAX_STEPS:
                raise UserError(f"the simulation ran past {MAX_STEPS:,} events without draining the workload: "
                                "a step of zero time or a pool that can admit nothing")
            if what == STEP_END:
                self.on_step_end(self.insts[who], t)
            elif what == KV_READY:
                self.on_kv_ready(who, t)
        stuck = np.isnan(self.finish)
        if stuck.any():
            r = int(np.argmax(stuck))
            raise UserError(f"request {r} ({w.input_len[r]} + {w.output_len[r]} tokens) never fits a decode "
                            "instance's KV cache: the plan holds fewer tokens per DP group than one request needs")
        steps_arr = {k: np.asarray(v, float if k in ("start", "end", "load", "tokens", "kv") else np.int64)
                     for k, v in self.rec.items()}
        return Result(w, self.pools, self.mode, self.p_start, self.first, self.p_end, self.d_start, self.finish,
                      self.pool_of, steps_arr)


__all__ = ["Pool", "Result", "ServingSimulation", "simulate", "MODES", "PREFILL", "DECODE"]
