"""The op graph of a forward pass: per layer and per micro-batch, the two-batch-overlap stages
(ATTN, SHARED, DISPATCH, MLP, COMBINE; decode splits ATTN into ATTN-0 and ATTN-1) with their
durations at full SMs, kernel counts and the data dependencies between them.

Stage durations come from the cost model (ops.py + cost.py) applied to one micro-batch."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from .base.contract import COMM, COMPUTE, PROGRAM
from .catalog import Hardware, Model
from .cost import Timed, comm_sms, op_time
from .ops import layer_ops, tokens
from .plan import Plan
from .power import compute_bound
from .preset import Preset, local_experts
from .target import Target
from .step import MTP_ROW, head_ops, mtp_plan, mtp_proj_ops

# Kernels one op launches (norms, casts, rope, top-k ... included): sets the CPU launch cost.
KERNELS = {"mla_proj": 7, "q_absorb": 1, "o_absorb": 1, "attn_proj": 5, "attn_core": 2, "mla_out": 2, "attn_out": 2, "tp_allreduce": 1,
           "gate": 1, "routing": 5, "shared_expert": 4, "routed_up": 3, "routed_down": 2, "dense_mlp": 4, "dispatch": 2, "combine": 1}


@dataclass(frozen=True)
class Stage:
    """One stage of one micro-batch in one layer, on one rank's template."""
    layer: int
    mb: int
    name: str
    stream: str                     # "compute" or "comm"
    work_us: float                  # compute: time at full SMs; comm: transfer time
    latency_us: float = 0.0         # comm: fixed cost before data flows (normal: the count exchange)
    post_us: float = 0.0            # comm via CPU proxy: time the proxy thread spends posting
    blocking: bool = False          # the CPU waits for the count exchange (DeepEP normal dispatch)
    holds_sms: int = 0              # SMs (vector cores on Ascend) the comm kernel holds while in flight
    kernels: int = 1
    flops: float = 0.0
    bytes: float = 0.0
    ops_us: dict[str, float] = field(default_factory=dict)
    terms_us: dict[str, float] = field(default_factory=dict)
    deps: tuple[tuple[int, int, str], ...] = ()
    vector_us: float = 0.0          # compute: the part in elementwise kernels (vector units)
    hot_us: float = 0.0             # compute: the part in compute-bound kernels (power.py: they set the draw)
    cpu_us: float | None = None     # the CPU's time to launch it, where observed (replay whatif); else
                                    # kernels x the hardware's launch cost
    cpu_first_us: float | None = None   # of which before its first kernel is launched: the GPU may start it
                                        # then (observed; else only once all its kernels are launched)
    cpu_after_us: float = 0.0       # a blocking stage, observed: of cpu_us, the part after the wait ends (the
                                    # CPU's work from the counts' arrival to the stage's last launch)
    gap_us: float = 0.0             # compute, observed: the gaps between its kernels (it lasts work + gap)
    sm_wait_us: float = 0.0         # comm, observed: how long its first kernel waits for SMs when compute
                                    # runs as it becomes ready (a running GEMM's blocks hold them); 0: none
    segments: tuple[tuple[float, float], ...] = ()   # observed: where its kernels ran, as shares of its span
                                                     # (0-1): the trace draws it so, stretched to its duration
    sm_loss: float | None = None    # compute, observed: the rate lost per SM communication holds (its kernels' own,
                                    # measured beside and alone: replay/beside.py); None: the SM share (vector_rate)
    in_situ: bool | None = None     # comm: slowed beside compute (pipeline.settle); None: when it holds SMs
                                    # (observed stages hold none in the simulator, their compute is as seen)

    @property
    def slows_beside_compute(self) -> bool:
        return self.stream == "comm" and (self.holds_sms > 0 if self.in_situ is None else self.in_situ)

    @property
    def key(self) -> tuple[int, int, str]:
        return (self.layer, self.mb, self.name)


@dataclass(frozen=True)
class OpGraph:
    model: Model
    hardware: Hardware
    plan: Plan
    preset: Preset
    layers: tuple[int, ...]         # model layer indices emitted
    dense: frozenset[int]           # which of them are dense
    stages: dict[tuple[int, int, str], Stage]
    serial: bool                    # TBO off: every stage waits for the one before it
    kinds: dict[int, str] = field(default_factory=dict)   # layer -> dense, moe, head, mtp, mtp_head

    def layer_kind(self, layer: int) -> str:
        return self.kinds.get(layer) or ("dense" if layer in self.dense else "moe")

    def layer_stages(self, layer: int) -> tuple[str, ...]:
        return PROGRAM[(self.plan.phase, layer_type(self.layer_kind(layer)))]

    @property
    def moe_layers(self) -> list[int]:
        """The model's MoE layers (not the MTP module's)."""
        return [layer for layer in self.layers if self.layer_kind(layer) == "moe"]


def _stage_from_ops(layer: int, mb: int, name: str, timed: list[Timed], plan: Plan, hw: Hardware,
                    preset: Preset) -> Stage:
    comm = [t for t in timed if t.work.kind == "a2a"]
    terms: dict[str, float] = {}
    for t in timed:
        for k, v in t.terms.items():
            k = k.removesuffix("_ms") + "_us"
            terms[k] = terms.get(k, 0.0) + v * 1e3
    ops_us = {t.work.name: t.us for t in timed}
    # launches: with the glue ops modelled on their own (the default preset) every op launches the
    # kernels it is costed for; without them (the seed's preset) KERNELS folds the glue into each op
    kernels = sum(t.work.kernels if preset.glue else KERNELS.get(t.work.name, 1) for t in timed)
    flops = sum(t.work.flops for t in timed)
    if comm and local_experts(plan, preset):
        # EP1: every expert is local, no all-to-all runs: an empty stage - no kernel, no launch, no CPU
        # wait - kept so the layer's program and launch orders stay whole
        return Stage(layer, mb, name, COMM, 0.0, 0.0, 0.0, False, 0, 0, flops, 0.0, ops_us, terms)
    if comm:
        (c,) = comm
        backend = hw.backend(plan.comm)
        lat = c.terms.get("latency_ms", 0.0) * 1e3
        post = c.terms.get("proxy_ms", 0.0) * 1e3
        fused = sum(t.us for t in timed if t is not c)      # gating fused into the dispatch kernel
        xfer = c.us - lat - post + fused
        link_bytes = c.work.scaleout_bytes + c.work.scaleup_bytes
        blocking = name == "DISPATCH" and backend.cpu_block_us > 0
        sms = comm_sms(plan, hw, preset) if preset.comm_sms_in_compute == "while_comm" else 0
        return Stage(layer, mb, name, COMM, xfer, lat, post, blocking, sms, kernels, flops, link_bytes,
                     ops_us, terms)
    work = sum(t.us for t in timed)
    hbm = sum(t.work.hbm_bytes for t in timed)
    vector = sum(t.us for t in timed if t.work.kind == "elementwise")
    hot = sum(t.us for t in timed if hw.power and compute_bound(t.terms, t.work.kind, hw.power))
    return Stage(layer, mb, name, COMPUTE, work, kernels=kernels, flops=flops, bytes=hbm, ops_us=ops_us,
                 terms_us=terms, vector_us=vector, hot_us=hot)


def _placed(stage: Stage, layer: int, mb: int, deps: tuple[tuple[int, int, str], ...]) -> Stage:
    """replace(stage, layer=, mb=, deps=) without re-running __init__: a step of 61 layers links tens of
    thousands of stages per deployment table, and build() hands link() one shared template per kind."""
    new = object.__new__(Stage)
    new.__dict__.update(stage.__dict__, layer=layer, mb=mb, deps=deps)
    return new


def link(stages: dict[tuple[int, int, str], Stage], layers: tuple[int, ...] | list[int], n_mb: int, serial: bool,
         phase: str, types: dict[int, str]) -> dict[tuple[int, int, str], Stage]:
    """The stages with their data dependencies: inside a layer by program order (SHARED and
    DISPATCH need the attention's output, MLP the dispatch, COMBINE the MLP), across layers the
    next attention needs this layer's COMBINE and SHARED (or its dense MLP). TBO off (`serial`):
    every stage waits for the one before it. `types`: each layer's PROGRAM type (dense, moe, head)."""
    out: dict[tuple[int, int, str], Stage] = {}
    prev: dict[int, tuple[tuple[int, int, str], ...]] = {mb: () for mb in range(n_mb)}
    for layer in layers:
        kind = types[layer]
        program = PROGRAM[(phase, kind)]
        before = dict(prev)
        for mb in range(n_mb):
            done: dict[str, tuple[int, int, str]] = {}
            last: tuple[tuple[int, int, str], ...] = prev[mb]
            for name in program:
                key = (layer, mb, name)
                if key not in stages:
                    continue
                attn = done.get("ATTN-1") or done.get("ATTN")
                if serial:
                    deps = last
                elif name in ("ATTN", "ATTN-0"):
                    deps = prev[mb]
                elif name in ("SHARED", "DISPATCH"):
                    deps = (attn,) if attn else prev[mb]
                elif name == "ATTN-1":
                    deps = (done["ATTN-0"],) if "ATTN-0" in done else prev[mb]
                elif name == "MLP":
                    deps = (done["DISPATCH"],) if "DISPATCH" in done else ((attn,) if attn else prev[mb])
                else:   # COMBINE
                    deps = (done["MLP"],) if "MLP" in done else prev[mb]
                out[key] = _placed(stages[key], layer, mb, tuple(deps))
                done[name] = key
                last = (key,)
            # the next layer needs this layer's output: the combine (+ shared) or the dense MLP
            tails = [done[n] for n in ("COMBINE", "SHARED") if n in done] or [done[n] for n in ("MLP",) if n in done]
            if done:
                prev[mb] = last if serial else tuple(tails or list(last))
        if kind == "head" and (layer, 0, "HEAD") in out:
            # one head for the whole batch: it needs every micro-batch's output, and every
            # micro-batch of the next layer needs it
            head = (layer, 0, "HEAD")
            out[head] = replace(out[head], deps=tuple(sorted({d for mb in range(n_mb) for d in before[mb]})))
            prev = {mb: (head,) for mb in range(n_mb)}
    return out


def _by_stage(timed: list[Timed], fused_gate: bool) -> dict[str, list[Timed]]:
    by_stage: dict[str, list[Timed]] = {}
    for t in timed:
        stage = t.work.stage
        if fused_gate and t.work.name in ("gate", "routing"):
            stage = "DISPATCH"      # Ascend: gating + quantisation fused into the dispatch kernel
        by_stage.setdefault(stage, []).append(t)
    return by_stage


def build(target: Target, layers: int | None = None, skip_dense: bool = False) -> OpGraph:
    """Stages for every emitted layer and micro-batch (identical micro-batches: the batch split evenly).
    With every layer emitted, the step's tail follows the model's layers as layers of their own: the
    LM head (kind "head"), then per MTP draft token the MTP module (kind "mtp": an MoE layer on one
    token per request) and its head."""
    model, hw, preset, plan = target
    hw = preset.apply(hw)
    target = target.with_hardware(hw)
    n_mb = plan.microbatches
    mb_plan = replace(plan.split(n_mb), imbalance=1.0)
    fused = hw.backend(plan.comm).fused
    timed = lambda works, p: [op_time(w, p, hw, preset) for w in works]  # noqa: E731
    per_kind: dict[str, dict[str, list[Timed]]] = {
        kind: _by_stage(timed(layer_ops(target.with_plan(mb_plan), kind == "dense"), mb_plan), fused and kind == "moe")
        for kind in ("dense", "moe")}
    all_layers = [i for i in range(model.layers) if not (skip_dense and i < model.dense_layers)]
    chosen = list(all_layers[:layers] if layers else all_layers)
    kinds = {i: "dense" if i < model.dense_layers else "moe" for i in chosen}
    if preset.step_terms and chosen and chosen[-1] == model.layers - 1:
        # the LM head runs once on the whole batch (the micro-batches merged), as micro-batch 0
        whole = replace(plan, imbalance=1.0)
        per_kind["head"] = _by_stage(timed(head_ops(model, whole, tokens(model, whole, preset)), whole), False)
        tail = ["head"]
        if plan.mtp:
            mp = mtp_plan(mb_plan)
            per_kind["mtp"] = _by_stage(timed(mtp_proj_ops(model, mb_plan, preset)
                                              + layer_ops(target.with_plan(mp), False), mp), fused)
            mw = mtp_plan(whole)
            per_kind["mtp_head"] = _by_stage(timed(head_ops(model, mw, tokens(model, mw, preset), MTP_ROW, "mtp_"),
                                                   mw), False)
            tail += ["mtp", "mtp_head"] * plan.mtp
        for i, kind in enumerate(tail):
            kinds[model.layers + i] = kind
            chosen.append(model.layers + i)
    dense = frozenset(i for i in chosen if kinds[i] == "dense")
    serial = n_mb == 1
    # a stage's costs depend on its layer's kind and its name only: one template each, which link()
    # copies with the stage's layer, micro-batch and dependencies
    template = {(kind, name): _stage_from_ops(-1, -1, name, ops, mb_plan, hw, preset)
                for kind in set(kinds.values()) for name, ops in per_kind[kind].items()
                if name in PROGRAM[(plan.phase, layer_type(kind))]}
    stages: dict[tuple[int, int, str], Stage] = {}
    for layer in chosen:
        kind = kinds[layer]
        for mb in range(1 if layer_type(kind) == "head" else n_mb):
            for name in PROGRAM[(plan.phase, layer_type(kind))]:
                if name in per_kind[kind]:
                    stages[(layer, mb, name)] = template[(kind, name)]
    types = {i: layer_type(k) for i, k in kinds.items()}
    stages = link(stages, tuple(chosen), n_mb, serial, plan.phase, types)
    return OpGraph(model, hw, plan, preset, tuple(chosen), dense, stages, serial, kinds)


def layer_type(kind: str) -> str:
    """The contract's layer type (PROGRAM's key) of a layer kind: the MTP module is an MoE layer,
    the LM heads are "head" layers."""
    return {"mtp": "moe", "mtp_head": "head"}.get(kind, kind)
